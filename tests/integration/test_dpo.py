"""`vlmkit dpo` the way users run it: preference rows in the real schemas of RLAIF-V, RLHF-V, TRL, ms-swift and
LLaMA-Factory, through the CLI on tiny Qwen2-VL models (LoRA; a full fine-tune resumed after a kill), once on a
generic-family model, and the checkpoint answered by `vlmkit infer --ckpt`. The loss's parity with TRL driven
directly is in tests/parity/test_dpo_trl.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_answers import assert_export_and_serve_answer_as_infer
from killed_runs import assert_same_weights, killed_and_resumed, vlmkit_main
from preference_rows import QUESTION, rlaif_v_parquet, rows_in_every_format, write_jsonl
from safetensors.torch import load_file

from vlmkit.train.plots import plotted_series

# TRL 1.16 reads transformers' renamed `is_gradient_checkpointing`; vlmkit.train.dpo_trainer silences it for runs,
# and pytest resets warning filters per test
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def vlmkit_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dpo")
    for name, rows in rows_in_every_format(root).items():
        write_jsonl(root / f"{name}.jsonl", rows)
    return root


def dpo_args(steps: int = 2, batch: int = 2) -> tuple:
    """Options of every run here: `steps` steps of `batch` pairs, a checkpoint and a log line at each step."""
    return ("--max-steps", steps, "--batch-size", batch, "--lr", "1e-2", "--save-steps", 1, "--logging-steps", 1,
            "--no-progress", "--report-to", "none", "--num-workers", 0)  # fmt: skip


QWEN = ("--max-pixels", 4000)  # small images: few image tokens


@pytest.fixture(scope="module")
def lora_run(small_model, root) -> Path:
    """`vlmkit dpo --tuner lora` on a tiny Qwen2-VL, RLAIF-V rows as the hub stores them (Parquet), 2 steps;
    validated on the 4 pairs of TRL's format."""
    data = rlaif_v_parquet(root / "rlaif_v.parquet")
    result = vlmkit_cli("dpo", "--model", small_model, "--dataset", data, "--val-dataset", root / "trl.jsonl",
                        "--output-dir", root / "out", *QWEN, *dpo_args())  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # correct input is silent
    return next((root / "out").glob("*/*/checkpoint-2"))


@pytest.mark.slow
def test_lora_dpo_trains_the_adapter_and_infer_answers_with_it(lora_run, root, tmp_path, monkeypatch, capsys):
    adapter = load_file(lora_run / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every one moved
    assert not any(".ref." in k for k in adapter)  # the reference is the base (adapter disabled), not saved
    logged = [json.loads(line) for line in (lora_run.parent / "train_log.jsonl").read_text().splitlines()]
    first = logged[0]
    assert first["step"] == 1 and abs(first["loss"] - 0.6931) < 1e-3  # policy == reference at step 1: log 2
    assert first["rewards/margins"] == 0.0 and "logps/chosen" in first
    second = next(line for line in logged if line["step"] == 2 and "loss" in line)
    assert second["rewards/margins"] > 0  # after one step at lr 1e-2, the chosen replies gained
    evaluated = next(line for line in logged if "eval_loss" in line)  # at the last step, on the validation pairs
    assert evaluated["step"] == 2 and "eval_rewards/margins" in evaluated
    # loss.png draws the implicit rewards beside the loss: the plotted points are the logged ones
    plotted = plotted_series(lora_run.parent / "loss.png")
    trained = [line for line in logged if "loss" in line]
    assert plotted["rewards"]["rewards/margins"] == [[line["step"], line["rewards/margins"]] for line in trained]
    assert not (lora_run.parent / "README.md").exists()  # no TRL model card in the run folder
    settings = json.loads((lora_run / "vlmkit.json").read_text())
    assert settings["family"] == "qwen2-vl" and settings["max_pixels"] == 4000 and settings["tuner"] == "lora"
    questions = write_jsonl(tmp_path / "q.jsonl", [{"messages": [{"role": "user", "content": f"<image>{QUESTION}"}],
                                                     "images": [str(root / "0.png")]}])  # fmt: skip
    code, _, err = vlmkit_main(["infer", "--ckpt", lora_run, "--input", questions, "--output", tmp_path / "p.jsonl",
                                "--max-new-tokens", 3], monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    (prediction,) = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert isinstance(prediction["response"], str) and "error" not in prediction


@pytest.mark.slow
def test_dpo_checkpoint_answers_alike_through_infer_its_export_and_serve(lora_run, root, tmp_path):
    assert_export_and_serve_answer_as_infer(lora_run, root / "1.png", QUESTION, tmp_path)


@pytest.mark.slow
def test_infer_val_on_a_dpo_run_refuses_its_pairs_in_one_line(lora_run, root, monkeypatch, capsys):
    """The run's --val-dataset holds pairs: read as conversations, each row would be answered against a wrong
    reference (or fail); refused, naming the file and where the pairs' scores are."""
    code, _, err = vlmkit_main(["infer", "--ckpt", lora_run, "--val"], monkeypatch, capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: --val: the run's --val-dataset {root / 'trl.jsonl'} holds preference pairs")
    assert str(lora_run.parent / "train_log.jsonl") in line
    assert not list(lora_run.parent.glob("*.val.preds.jsonl"))  # nothing written


def test_dpo_help_promises_only_what_dpo_does_with_validation_data():
    result = subprocess.run([sys.executable, "-m", "vlmkit", "dpo", "--help"], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.replace("│", " ").split())  # the help as one line, its table's wrapping undone
    assert "--val-dataset <list[str]> Validation data, listed as for --dataset; its eval loss is logged every --eval-steps." in text
    assert "answers" not in text  # dpo generates none


@pytest.mark.slow
def test_a_pair_that_does_not_fit_max_length_is_refused_naming_its_row(small_model, root, tmp_path, monkeypatch, capsys):
    rows = [json.loads(line) for line in (root / "ms-swift.jsonl").read_text().splitlines()]
    rows[2]["rejected_response"] = "很长的回答。" * 40  # the rejected conversation alone is over --max-length
    data = write_jsonl(tmp_path / "long.jsonl", [{**r, "images": [str(root / i) for i in r["images"]]} for r in rows])
    code, out, _ = vlmkit_main(["data", "check", "--model", small_model, "--dataset", data, "--max-length", 120, *QWEN,
                                "--no-progress", "--histogram", tmp_path / "lengths.png"], monkeypatch, capsys)  # fmt: skip
    assert code == 1
    assert "checked 4 rows in 1 file: 3 good, 1 bad" in out
    assert f"{data}:3: rejected conversation:" in out and "over --max-length 120" in out
    code, out, err = vlmkit_main(["dpo", "--model", small_model, "--dataset", data, "--output-dir", tmp_path / "out",
                                  "--max-length", 120, *QWEN, *dpo_args()], monkeypatch, capsys)  # fmt: skip
    assert code == 2
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "1 of 4 train rows are bad" in error and f"the first {data}:3: rejected conversation:" in error
    assert not list((tmp_path / "out").glob("*/*/checkpoint-*"))  # nothing trained


# -- a full fine-tune, killed and resumed -------------------------------------------------------------------


def full_args(model: Path, root: Path, out: Path, *extra) -> list:
    """`vlmkit dpo --tuner full` on the ms-swift rows: 3 steps of 1 pair, a checkpoint at each step."""
    return ["dpo", "--model", model, "--dataset", root / "ms-swift.jsonl", "--tuner", "full", "--output-dir", out,
            *QWEN, *dpo_args(3, 1), *extra]  # fmt: skip


@pytest.mark.slow
def test_full_dpo_resumed_after_a_kill_equals_the_uninterrupted_run(small_model, root, tmp_path, monkeypatch, capsys):
    full, resumed = killed_and_resumed(lambda out: full_args(small_model, root, out), tmp_path, monkeypatch, capsys)
    base, trained = (load_file(p / "model.safetensors") for p in (small_model, full / "checkpoint-3"))
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # the policy moved; its frozen copy did not
    assert_same_weights(resumed / "checkpoint-3", full / "checkpoint-3", "model.safetensors")


# -- a generic-family model ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_dpo_on_a_generic_family_model(root, tmp_path, monkeypatch, capsys):
    from generic_models import BUILDERS

    model = BUILDERS["idefics3"](tmp_path / "idefics3")
    code, _, err = vlmkit_main(["dpo", "--model", model, "--dataset", root / "trl.jsonl", "--output-dir", tmp_path / "out",
                                *dpo_args()], monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    checkpoint = next((tmp_path / "out").glob("*/*/checkpoint-2"))
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
