"""`vlmkit grpo` the way a user runs it: prompts with a `solution` column, a verifiable reward by name and a
user's own, LoRA on a tiny Qwen2-VL, 2 GRPO steps; each reward component, the KL and completion lengths in
train_log.jsonl; sample rollouts with their images in RUN/samples.jsonl and TensorBoard; the checkpoint answers
through `vlmkit infer --ckpt`, its merged export in plain transformers and `vlmkit serve --ckpt` alike; the
prompt the policy sees is `vlmkit infer`'s encoding id for id; a row whose image tokens would be cut is refused
in one line (and counted by `vlmkit data check`); a full fine-tune killed and resumed samples the same
completions and ends with the same weights as uninterrupted; the generic path (a tiny Idefics3) trains too."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoint_answers import assert_export_and_serve_answer_as_infer
from killed_runs import assert_same_weights, killed_and_resumed, vlmkit_main
from PIL import Image
from safetensors.torch import load_file

from vlmkit.train.plots import plotted_series

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


SHORT = "def short(completions, solutions, **row):\n    return [-len(c) / 100 for c in completions]\n"
TRACKER = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"  # the `train` extra


@pytest.fixture(scope="module")
def grpo_run(small_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo")
    write_rows(folder)
    (folder / "my_rewards.py").write_text(SHORT)
    done = vlmkit(
        "grpo", "--model", str(small_model), "--dataset", "prompts.jsonl", "--reward", "count,format:0.2,my_rewards:short:0.1",
        "--max-steps", "2", "--batch-size", "2", "--num-generations", "2", "--max-completion-length", "6",
        "--lr", "1e-3", "--save-steps", "2", "--logging-steps", "1", "--output-dir", "out", "--report-to", TRACKER,
        "--no-progress", "--seed", "0", cwd=folder,
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
    # loss.png draws the reward and each component, the KL and the completions' length: the logged points
    plotted, steps = plotted_series(run_dir / "loss.png"), [line for line in logs if "reward" in line]
    assert plotted["reward"]["rewards/count/mean"] == [[line["step"], line["rewards/count/mean"]] for line in steps]
    assert set(plotted["reward"]) == {"reward", "rewards/count/mean", "rewards/format/mean", "rewards/short/mean"}
    assert plotted["KL"]["kl"] == [[line["step"], line["kl"]] for line in steps] and len(steps) == 2
    assert "completions/mean_length" in plotted["completion length"]
    assert not (run_dir / "README.md").exists()  # no TRL model card in the run folder
    settings = json.loads((run_dir / "vlmkit.json").read_text())
    assert settings["family"] == "qwen2-vl"
    assert json.loads((run_dir / "args.json").read_text())["reward"] == "count,format:0.2,my_rewards:short:0.1"


def test_grpo_writes_sample_rollouts_with_their_images_to_the_run_folder_and_the_tracker(grpo_run):
    folder, _ = grpo_run
    [run_dir] = (folder / "out").glob("*/v*")
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2]  # each logging step: its first prompt's 2 completions
    for sample in samples:
        assert sample["where"].startswith("prompts.jsonl:") and "How many squares?" in sample["prompt"]
        assert sample["solution"] == (int(sample["where"].rsplit(":", 1)[1]) - 1) % 3 and set(sample["rewards"]) == {"count", "format", "short"}
        # the completion shown is the one the rewards scored: the user's reward is minus its length / 100
        assert sample["rewards"]["short"] == pytest.approx(-len(sample["completion"]) / 100, abs=1e-6)
        weighted = sample["rewards"]["count"] + 0.2 * sample["rewards"]["format"] + 0.1 * sample["rewards"]["short"]
        assert sample["reward"] == pytest.approx(weighted, abs=1e-5)
        with Image.open(run_dir / sample["image"]) as image:  # the row's image, saved once per step
            assert image.size == Image.open(folder / f"img{int(sample['where'][-1]) - 1}.png").size
    assert len({s["image"] for s in samples}) == 2
    if TRACKER == "none":
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "runs").rglob("events.out.tfevents.*")).parent)).Reload()
    table = events.Tensors("train/samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert samples[-1]["completion"].replace("|", "\\|").replace("\n", " ") in table
    assert "train/sample_1" in events.Tags()["images"]


def test_grpo_checkpoint_answers_alike_through_infer_its_export_and_serve(grpo_run, tmp_path):
    folder, _ = grpo_run
    [checkpoint] = (folder / "out").glob("*/v*/checkpoint-2")
    assert_export_and_serve_answer_as_infer(checkpoint, folder / "img1.png", "有几个方块?\nHow many squares?", tmp_path)


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


def test_data_check_counts_the_prompts_grpo_would_refuse(small_model, tmp_path):
    """A file whose rows have a `solution` column is checked as GRPO prompts: a prompt (no reply needed) whose
    tokens, image tokens included, plus --max-completion-length fit --max-length, and a solution."""
    rows = [json.loads(line) for line in write_rows(tmp_path).read_text(encoding="utf-8").splitlines()]
    rows[2]["solution"] = None
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    done = vlmkit("data", "check", "--model", str(small_model), "--dataset", "prompts.jsonl", "--max-length", "80",
                  "--max-completion-length", "16", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr  # some rows are bad
    assert "checked 4 rows in 1 file: 2 good, 2 bad" in done.stdout
    assert "prompts.jsonl:3: no 'solution'" in done.stdout
    # the image of row 4 is the largest: its 67 prompt tokens and 16 for the completion are over 80
    assert ("prompts.jsonl:4: the prompt is 67 tokens (image tokens included), which with --max-completion-length 16 "
            "is over --max-length 80; image tokens are never cut") in done.stdout  # fmt: skip
    assert "no assistant reply" not in done.stdout  # a GRPO row is a prompt


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


# -- a full fine-tune, killed and resumed; the generic path ----------------------------------------------------


def full_args(model: Path, folder: Path, out: Path) -> list:
    """`vlmkit grpo --tuner full`: 3 steps of one prompt's 2 completions, a checkpoint and a log line at each step."""
    return ["grpo", "--model", model, "--dataset", folder / "prompts.jsonl", "--reward", f"count,{folder / 'short.py'}:short",
            "--tuner", "full", "--max-steps", 3, "--batch-size", 2, "--num-generations", 2, "--max-completion-length", 6,
            "--lr", "1e-2", "--save-steps", 1, "--logging-steps", 1, "--output-dir", out, "--report-to", "none",
            "--no-progress", "--seed", 0]  # fmt: skip


def test_full_grpo_resumed_after_a_kill_samples_and_ends_as_the_uninterrupted_run(small_model, tmp_path, monkeypatch, capsys):
    write_rows(tmp_path)
    (tmp_path / "short.py").write_text(SHORT)
    full, resumed = killed_and_resumed(lambda out: full_args(small_model, tmp_path, out), tmp_path, monkeypatch, capsys)
    base, trained = (load_file(p / "model.safetensors") for p in (small_model, full / "checkpoint-3"))
    assert any(not torch.equal(trained[k], base[k]) for k in base)  # the policy moved
    # the rollouts sampled after the resume are those of the uninterrupted run, and so are the weights
    expected = (full / "samples.jsonl").read_text(encoding="utf-8")
    assert [json.loads(line)["step"] for line in expected.splitlines()] == [1, 1, 2, 2, 3, 3]
    assert (resumed / "samples.jsonl").read_text(encoding="utf-8") == expected
    assert_same_weights(resumed / "checkpoint-3", full / "checkpoint-3", "model.safetensors")


def test_lora_grpo_on_a_generic_family_model(tmp_path, monkeypatch, capsys):
    from generic_models import BUILDERS

    model = BUILDERS["idefics3"](tmp_path / "idefics3")
    write_rows(tmp_path)
    (tmp_path / "short.py").write_text(SHORT)
    code, _, err = vlmkit_main(["grpo", "--model", model, "--dataset", tmp_path / "prompts.jsonl", "--reward",
                                f"count,{tmp_path / 'short.py'}:short", "--max-steps", 2, "--batch-size", 2,
                                "--num-generations", 2, "--max-completion-length", 6, "--lr", "1e-2", "--save-steps", 2,
                                "--output-dir", tmp_path / "out", "--report-to", "none", "--no-progress"],
                               monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    [checkpoint] = (tmp_path / "out").glob("*/v*/checkpoint-2")
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # every adapter moved
    assert json.loads((checkpoint / "vlmkit.json").read_text())["family"] == "idefics3"
