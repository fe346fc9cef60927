"""`vlmkit kto` the way users run it: TRL's unpaired rows with images and CJK multi-line replies, through the CLI on
a tiny Qwen2-VL (LoRA), the checkpoint answered by `vlmkit infer --ckpt`; a row over --max-length refused
naming it (and counted by `vlmkit data check`); a file of desirable rows only trained (a full fine-tune) with one
warning line.
The loss's parity with TRL driven directly is in tests/parity/test_kto_trl.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from preference_rows import QUESTION, unpaired_rows_in_every_format, write_jsonl
from safetensors.torch import load_file
from test_dpo import QWEN, dpo_args, vlmkit_cli, vlmkit_main

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kto")
    for name, rows in unpaired_rows_in_every_format(root).items():
        write_jsonl(root / f"{name}.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def lora_run(small_model, root) -> Path:
    """`vlmkit kto --tuner lora` on TRL's unpaired rows (4 desirable, 4 undesirable), 2 steps of 4 rows; validated
    on 4 of LLaMA-Factory's sharegpt KTO rows."""
    result = vlmkit_cli("kto", "--model", small_model, "--dataset", root / "trl.jsonl", "--output-dir", root / "out",
                        "--val-dataset", f"{root / 'sharegpt.jsonl'}#4", *QWEN, *dpo_args(2, 4))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # correct input is silent
    return next((root / "out").glob("*/*/checkpoint-2"))


@pytest.mark.slow
def test_lora_kto_trains_the_adapter_and_infer_answers_with_it(lora_run, root, tmp_path):
    adapter = load_file(lora_run / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every one moved
    logged = [json.loads(line) for line in (lora_run.parent / "train_log.jsonl").read_text().splitlines()]
    first, second = (next(line for line in logged if line["step"] == s and "loss" in line) for s in (1, 2))
    assert abs(first["loss"] - 0.5) < 1e-3 and first["kl"] == 0.0  # policy == reference at step 1: 1 - sigmoid(0)
    assert {"rewards/chosen", "rewards/rejected", "logps/chosen", "kl"} <= set(second)
    assert second["rewards/chosen"] > second["rewards/rejected"]  # after one step at lr 1e-2
    evaluated = next(line for line in logged if "eval_loss" in line)  # at the last step, on the validation rows
    assert evaluated["step"] == 2 and "eval_kl" in evaluated
    settings = json.loads((lora_run / "vlmkit.json").read_text())
    assert settings["family"] == "qwen2-vl" and settings["max_pixels"] == 4000 and settings["tuner"] == "lora"
    questions = write_jsonl(tmp_path / "q.jsonl", [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"}],
                                                     "images": [str(root / "0.png")]}])  # fmt: skip
    result = vlmkit_cli("infer", "--ckpt", lora_run, "--input", questions, "--output", tmp_path / "p.jsonl",
                        "--max-new-tokens", 3)  # fmt: skip
    assert result.returncode == 0 and result.stderr == "", result.stderr
    (prediction,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert isinstance(prediction["response"], str) and "error" not in prediction


@pytest.mark.slow
def test_a_row_that_does_not_fit_max_length_is_refused_naming_it(small_model, root, tmp_path, monkeypatch, capsys):
    rows = [json.loads(line) for line in (root / "ms-swift.jsonl").read_text().splitlines()]
    rows[2]["messages"][-1]["content"] = "很长的回答。\n" * 40  # this conversation alone is over --max-length
    data = write_jsonl(tmp_path / "long.jsonl", [{**r, "images": [str(root / i) for i in r["images"]]} for r in rows])
    code, out, _ = vlmkit_main(["data", "check", "--model", small_model, "--dataset", data, "--max-length", 120, *QWEN,
                                "--no-progress", "--histogram", tmp_path / "lengths.png"], monkeypatch, capsys)  # fmt: skip
    assert code == 1
    assert "checked 8 rows in 1 file: 7 good, 1 bad" in out
    assert f"{data}:3: desirable conversation:" in out and "over --max-length 120" in out
    code, out, err = vlmkit_main(["kto", "--model", small_model, "--dataset", data, "--output-dir", tmp_path / "out",
                                  "--max-length", 120, *QWEN, *dpo_args()], monkeypatch, capsys)  # fmt: skip
    assert code == 2
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "1 of 8 train rows are bad" in error and f"the first {data}:3: desirable conversation:" in error
    assert not list((tmp_path / "out").glob("*/*/checkpoint-*"))  # nothing trained


@pytest.mark.slow
def test_desirable_rows_only_train_a_full_fine_tune_with_one_warning(small_model, root, tmp_path, monkeypatch, capsys):
    """TRL's KTOTrainer trains on one label alone; the run says so in one line. With --tuner full the reference is
    a frozen copy: the policy's weights move, the saved checkpoint is the policy's."""
    rows = [json.loads(line) for line in (root / "sharegpt.jsonl").read_text().splitlines() if '"kto_tag": true' in line]
    data = write_jsonl(tmp_path / "good.jsonl", [{**r, "images": [str(root / i) for i in r["images"]]} for r in rows])
    code, out, err = vlmkit_main(["kto", "--model", small_model, "--dataset", data, "--output-dir", tmp_path / "out",
                                  "--tuner", "full", *QWEN, *dpo_args(1)], monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert err.splitlines() == ["warning: all 4 training rows are desirable; KTO trains on them, but rows of the other "
                                "label teach it what to move away from (or towards)"]  # fmt: skip
    checkpoint = next((tmp_path / "out").glob("*/*/checkpoint-1"))
    base, trained = (load_file(p / "model.safetensors") for p in (small_model, checkpoint))
    assert any(not torch.equal(trained[k], base[k]) for k in base)
