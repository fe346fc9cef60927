"""`vlmkit grpo` the way a user runs it: prompts with a `solution` column, a verifiable reward by name and a
user's own, LoRA on a tiny Qwen2-VL, 2 GRPO steps; each reward component, the KL and completion lengths in
train_log.jsonl; the checkpoint answers through `vlmkit infer --ckpt`; the prompt the policy sees is
`vlmkit infer`'s encoding id for id; a row whose image tokens would be cut is refused in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow


def vlmkit(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmkit", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write_rows(folder: Path, n: int = 4) -> Path:
    """Counting prompts in the messages format, with CJK and multi-line text, and their solutions."""
    colours = ["red", "blue", "green", "white"]
    rows = []
    for k in range(n):
        Image.new("RGB", (56 + 28 * k, 56), colours[k % 4]).save(folder / f"img{k}.png")
        rows.append({
            "messages": [{"role": "user", "content": f"<image>有几个方块?\nHow many squares? ({k})"}],
            "images": [f"img{k}.png"],
            "solution": k % 3,
        })  # fmt: skip
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def grpo_run(small_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo")
    write_rows(folder)
    (folder / "my_rewards.py").write_text(
        "def short(completions, solutions, **row):\n    return [-len(c) / 100 for c in completions]\n"
    )
    done = vlmkit(
        "grpo", "--model", str(small_model), "--dataset", "prompts.jsonl", "--reward", "count,format:0.2,my_rewards:short:0.1",
        "--max-steps", "2", "--batch-size", "2", "--num-generations", "2", "--max-completion-length", "6",
        "--lr", "1e-3", "--save-steps", "2", "--output-dir", "out", "--report-to", "none", "--no-progress",
        "--seed", "0", cwd=folder,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done


def test_grpo_logs_each_reward_component_kl_and_lengths(grpo_run):
    folder, done = grpo_run
    assert "warning" not in done.stderr.lower(), done.stderr  # correct input is silent
    [run_dir] = (folder / "out").glob("*/v*")
    logs = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    first = logs[0]
    for key in ("rewards/count/mean", "rewards/format/mean", "rewards/short/mean", "kl", "completions/mean_length"):
        assert key in first, sorted(first)
    assert "rewards/count/unparsed" in first  # replies without a number are counted
    assert first["completions/mean_length"] <= 6
    settings = json.loads((run_dir / "vlmkit.json").read_text())
    assert settings["family"] == "qwen2-vl"
    assert json.loads((run_dir / "args.json").read_text())["reward"] == "count,format:0.2,my_rewards:short:0.1"


def test_grpo_checkpoint_answers_through_infer(grpo_run):
    folder, _ = grpo_run
    [checkpoint] = (folder / "out").glob("*/v*/checkpoint-2")
    answered = vlmkit("infer", "--ckpt", str(checkpoint), "--input", "prompts.jsonl", "--output", "preds.jsonl",
                      "--max-new-tokens", "3", cwd=folder)  # fmt: skip
    assert answered.returncode == 0, answered.stderr[-2000:]
    predictions = [json.loads(line) for line in (folder / "preds.jsonl").read_text().splitlines()]
    assert len(predictions) == 4 and all("response" in p for p in predictions)


def test_grpo_refuses_a_row_whose_image_tokens_would_be_cut(small_model, tmp_path):
    write_rows(tmp_path)
    done = vlmkit(
        "grpo", "--model", str(small_model), "--dataset", "prompts.jsonl", "--reward", "count",
        "--max-length", "40", "--max-completion-length", "16", "--batch-size", "2", "--num-generations", "2",
        "--output-dir", "out", "--report-to", "none", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: prompts.jsonl:") and "image tokens are never cut" in line
    assert not list((tmp_path / "out").glob("*/v*"))  # no empty run folder left behind


def test_grpo_unknown_reward_is_one_line(small_model, tmp_path):
    done = vlmkit("grpo", "--model", str(small_model), "--dataset", "x.jsonl", "--reward", "iuo",
                  "--batch-size", "2", "--num-generations", "2", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: --reward iuo: unknown reward 'iuo'; known: accuracy, count, iou, iou@0.5, format, box_format, "
        "length, repetition, or your own as module:function or file.py:function"
    )


def test_policy_prompt_ids_are_infers_encoding(small_model, tmp_path):
    """The ids (and image inputs) the GRPO trainer generates from are those `vlmkit infer` encodes."""
    import vlmkit
    from vlmkit.data import load_datasets
    from vlmkit.train.grpo_trainer import Prompts, VlmGRPOTrainer

    data = load_datasets([str(write_rows(tmp_path))])
    vlm = vlmkit.load(str(small_model))
    prompts = Prompts(data, vlm.template, [0] * len(data))
    trainer = object.__new__(VlmGRPOTrainer)  # only the prompt path: no model, no TRL set-up
    trainer.vlm_prompts, trainer._batch_rows = prompts, [0, 3]
    trainer._pending_media = prompts.media([0, 3])
    ids, images, fields = trainer._tokenize_prompts(["ignored", "ignored"])
    expected = [vlm.encode(data[row]) for row in (0, 3)]  # what `vlmkit infer` generates from
    assert ids == [list(e["input_ids"]) for e in expected]
    assert images is None
    assert fields["image_grid_thw"].tolist() == [e["image_grid_thw"].tolist()[0] for e in expected]
    assert torch.equal(fields["pixel_values"], torch.cat([e["pixel_values"] for e in expected]))
