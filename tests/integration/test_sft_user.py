"""`vlmkit sft` as a user runs it: the README's command on a small dataset, what the run prints and
leaves behind, resuming, running twice at once, and the failures that must not lose a run (issues 11, 12)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import random_image
from safetensors.torch import load_file
from typer.testing import CliRunner

from vlmkit.errors import VlmkitError
from vlmkit.train import SFTConfig, sft


def write_rows(path: Path, images: Path, n: int, start: int = 0) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": "<image>What is it?"},
                {"role": "assistant", "content": f"shape {i % 3}"},
            ],
            "images": [f"{images.name}/{i % 3}.png"],  # relative to the file, as users write them
        }
        for i in range(start, start + n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    """A folder with imgs/0..2.png and a.jsonl (4 rows), b.jsonl (4 rows), val.jsonl (2 rows)."""
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        random_image(40, 50, seed=i).save(images / f"{i}.png")
    write_rows(tmp_path / "a.jsonl", images, 4)
    write_rows(tmp_path / "b.jsonl", images, 4, start=4)
    write_rows(tmp_path / "val.jsonl", images, 2, start=8)
    return tmp_path


def run(model: Path, folder: Path, **kw) -> Path:
    options = dict(
        model=str(model),
        dataset=[str(folder / "a.jsonl")],
        output_dir=str(folder / "out"),
        max_steps=2,
        max_pixels=4000,
        logging_steps=1,
        progress=False,
        report_to="none",
        eval_generate=0,
    )
    return sft(SFTConfig(**{**options, **kw}))


def vlmkit_cli(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
def test_readme_lora_command_on_a_small_dataset_trains_and_says_what_it_made(small_model, data):
    """README: `vlmkit sft --model M --dataset A.jsonl B.json#N --val-dataset val.jsonl --tuner lora --epochs 1
    --batch-size 2 --grad-accum 8 --lr 1e-4`. 6 rows pack into one sequence: one optimizer step, which warm-up
    used to run at lr 0, leaving every lora_B at 0.0."""
    result = vlmkit_cli(
        "sft", "--model", str(small_model),
        "--dataset", "a.jsonl", "b.jsonl#2",  # several values after one --dataset, as `data check` takes them
        "--val-dataset", "val.jsonl",
        "--tuner", "lora", "--target-modules", "ALL", "--max-pixels", "4000",
        "--epochs", "1", "--batch-size", "2", "--grad-accum", "8", "--lr", "1e-4",
        "--eval-generate", "1", "--eval-max-new-tokens", "3",
        "--output-dir", "out", "--report-to", "none",
        cwd=data,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    run_dir = next((data / "out" / small_model.name).iterdir())
    checkpoint = run_dir / "checkpoint-1"
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    lora_b = [name for name in adapter if "lora_B" in name]
    assert lora_b and all(adapter[name].abs().sum() > 0 for name in lora_b)
    # --target-modules ALL is all-linear: every Linear of the language model, the head left out.
    targets = json.loads((checkpoint / "adapter_config.json").read_text())["target_modules"]
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= {
        t.rsplit(".", 1)[-1] for t in targets
    } and not any("lm_head" in t or "visual" in t for t in targets)

    # correct input is silent (no is_gradient_checkpointing), but for the one line that says how ms-swift's ALL
    # differs (issue 28 #1)
    noise = [line for line in output.splitlines() if "warn" in line.lower() and "--target-modules ALL" not in line]
    assert not noise, output
    assert "train rows=6 (in 1 packed sequences), val rows=2" in output  # rows counted as rows
    assert "step 1: eval loss " in output  # shown while the progress bar runs
    assert f"last checkpoint: out/{small_model.name}/{run_dir.name}/checkpoint-1" in output
    assert f"best checkpoint: out/{small_model.name}/{run_dir.name}/checkpoint-1 (eval loss " in output
    assert f"chat with it: vlmkit infer --ckpt out/{small_model.name}/{run_dir.name}/checkpoint-1" in output

    args = json.loads((run_dir / "args.json").read_text())
    assert args["dataset"] == [
        str(data / "a.jsonl"),
        f"{data / 'b.jsonl'}#2",
    ]  # absolute: usable from anywhere
    assert args["val_dataset"] == [str(data / "val.jsonl")]
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [line["learning_rate"] for line in log if "loss" in line] == [1e-4]  # full lr, no warm-up to 0
    # loss.png shows loss, learning rate and grad norm: the plotted points are the logged ones.
    from vlmkit.train.plots import plotted_series

    plotted = plotted_series(run_dir / "loss.png")
    assert plotted["learning rate"]["learning rate"] == [[1.0, 1e-4]]
    grad_norms = [[float(line["step"]), line["grad_norm"]] for line in log if "grad_norm" in line]
    assert plotted["grad norm"]["grad norm"] == grad_norms and grad_norms
    assert [p[0] for p in plotted["loss"]["eval loss"]] == [1.0]
    predictions = [json.loads(line) for line in (run_dir / "val_predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 1 and predictions[0]["labels"] == "shape 2"


def test_a_run_that_changed_no_weights_says_so_loudly(small_model, data):
    from vlmkit.cli import app

    args = ["sft", "--model", str(small_model), "--dataset", str(data / "a.jsonl"), "--output-dir",
            str(data / "out"), "--max-steps", "2", "--max-pixels", "4000", "--report-to", "none", "--no-progress"]  # fmt: skip
    quiet = CliRunner().invoke(app, [*args, "--lr", "1e-60"], catch_exceptions=False)  # below fp32: no change
    assert quiet.exit_code == 0
    assert "WARNING: training ran 2 step(s) and changed none of the" in quiet.output
    assert "the checkpoint equals the starting weights" in quiet.output
    trained = CliRunner().invoke(app, [*args, "--lr", "1e-3"], catch_exceptions=False)
    assert trained.exit_code == 0 and "WARNING" not in trained.output


@pytest.mark.parametrize(
    ("wanted", "total", "expected"), [(1, 1, 0), (1, 2, 0), (1, 3, 1), (5, 100, 5), (50, 100, 33)]
)
def test_warmup_takes_at_most_a_third_of_the_run(wanted, total, expected):
    from vlmkit.train.callbacks import capped_warmup_steps

    assert capped_warmup_steps(wanted, total) == expected


def test_several_values_after_one_dataset_flag():
    from vlmkit.commands.sft import repeat_many_values

    assert repeat_many_values(["--dataset", "a.jsonl", "b.json#2000", "--lr", "1", "--val-dataset", "c", "d"]) == [
        "--dataset", "a.jsonl", "--dataset", "b.json#2000", "--lr", "1", "--val-dataset", "c", "--val-dataset", "d",
    ]  # fmt: skip
    assert repeat_many_values(["-d", "a", "--dataset=b", "c"]) == ["-d", "a", "--dataset=b", "--dataset", "c"]
    from vlmkit.cli import app

    result = CliRunner().invoke(app, ["sft", "--model", "m", "--max-steps", "2", "stray"])
    assert result.exit_code != 0 and "stray" in result.output  # a bare value elsewhere is still an error


def test_target_modules_all_is_all_linear_and_help_says_so(small_model):
    from transformers import AutoModelForImageTextToText

    from vlmkit.families import family_for_model_dir
    from vlmkit.train.tuning import lora_targets

    model = AutoModelForImageTextToText.from_pretrained(small_model)
    groups = family_for_model_dir(small_model).module_groups
    expected = lora_targets(model, SFTConfig(model="m", dataset=["d"]), groups)
    for spelling in ("ALL", "all", "all-linear"):
        assert (
            lora_targets(model, SFTConfig(model="m", dataset=["d"], target_modules=spelling), groups)
            == expected
        )
    from vlmkit.cli import app

    help_text = " ".join(CliRunner().invoke(app, ["sft", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "ALL" in help_text and "never the output head" in help_text


def test_infer_val_works_from_another_folder_and_after_split_ratio(small_model, data, monkeypatch):
    from vlmkit.cli import app

    monkeypatch.chdir(data)
    run_dir = run(small_model, Path("."), dataset=["a.jsonl"], output_dir="out", split_ratio=0.5)
    split = [json.loads(line) for line in (run_dir / "val_split.jsonl").read_text().splitlines()]
    assert len(split) == 2 and all(
        Path(m["content"][0]["image"]).is_absolute() for m in (s["messages"][0] for s in split)
    )
    elsewhere = data / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ckpt = str(data / run_dir / "checkpoint-2")
    result = CliRunner().invoke(
        app, ["infer", "--ckpt", ckpt, "--val", "--output", "p.jsonl", "--max-new-tokens", "2"]
    )
    assert result.exit_code == 0, result.output
    predictions = [json.loads(line) for line in (elsewhere / "p.jsonl").read_text().splitlines()]
    assert [p["labels"] for p in predictions] == [s["messages"][1]["content"][0]["text"] for s in split]
    assert all("error" not in p for p in predictions)


def test_resume_with_other_training_options_is_refused_unless_allowed(small_model, data):
    run_dir = run(small_model, data, save_steps=1)
    with pytest.raises(
        VlmkitError, match=r"dataset: .*a\.jsonl.*-> .*b\.jsonl.*; max-steps: 2 -> 4; .*--allow-changed-args"
    ):
        run(small_model, data, save_steps=1, resume="latest", max_steps=4, dataset=[str(data / "b.jsonl")])
    assert json.loads((run_dir / "args.json").read_text())["max_steps"] == 2  # untouched
    # the same options (paths given another way) resume; changed ones continue only when allowed
    os.chdir(data)
    try:
        assert run(small_model, Path("."), dataset=["a.jsonl"], output_dir=str(data / "out"), save_steps=1,
                   resume="latest") == run_dir  # fmt: skip
        resumed = run(small_model, data, save_steps=1, resume="latest", max_steps=3, allow_changed_args=True)
    finally:
        os.chdir(Path(__file__).parent)
    assert resumed == run_dir and (run_dir / "checkpoint-3" / "vlmkit_complete").is_file()
    assert json.loads((run_dir / "args.json").read_text())["max_steps"] == 3
    assert json.loads((run_dir / "args.before-step-2.json").read_text())["max_steps"] == 2


def test_a_kill_between_save_and_completion_marker_keeps_the_last_complete_checkpoint(
    small_model, data, monkeypatch
):
    """transformers rotated checkpoints inside its save, before vlmkit wrote `vlmkit_complete`: with
    --save-total-limit 1 a kill in between left one unmarked checkpoint and nothing to resume from."""
    import vlmkit.train.checkpoints as checkpoints

    class Killed(Exception):
        pass

    real_write_settings = checkpoints.write_settings

    def killed_at_step_2(folder, settings):
        if settings["step"] == 2:
            raise Killed  # the process dies after the weights of checkpoint-2 are written, before its marker
        return real_write_settings(folder, settings)

    monkeypatch.setattr(checkpoints, "write_settings", killed_at_step_2)
    with pytest.raises(Killed):
        run(small_model, data, max_steps=3, save_steps=1, save_total_limit=1)
    run_dir = next((data / "out" / small_model.name).iterdir())
    assert (run_dir / "checkpoint-1" / "vlmkit_complete").is_file()
    assert not (run_dir / "checkpoint-2" / "vlmkit_complete").exists()
    monkeypatch.setattr(checkpoints, "write_settings", real_write_settings)
    assert run(small_model, data, max_steps=3, save_steps=1, save_total_limit=1, resume="latest") == run_dir
    # rotation ran after each marker: only the newest complete checkpoint is left
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-3"]


@pytest.mark.slow
def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(small_model, data):
    common = ["sft", "--model", str(small_model), "--dataset", "a.jsonl", "--output-dir", "out", "--max-pixels", "4000",
              "--max-steps", "100000", "--save-steps", "1", "--report-to", "none", "--no-progress", "--no-cache"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "vlmkit", *common],
        cwd=data,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + 120
        while not list((data / "out").glob("*/*/checkpoint-*/vlmkit_complete")):
            assert first.poll() is None and time.time() < deadline, "the first run did not save a checkpoint"
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)  # paused mid-run, lock held: the second process gets the CPU
        second = vlmkit_cli(*common, "--resume", "latest", cwd=data, timeout=120)
        assert first.poll() is None  # still there, undisturbed
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip().splitlines() == [
        f"error: run folder {next((data / 'out' / small_model.name).iterdir()).relative_to(data)} is in use by another training "
        f"process (pid {first.pid}); wait for it to end or stop it, then resume"
    ]


@pytest.mark.parametrize("packing", [False, True])
def test_a_row_whose_image_data_is_truncated_is_skipped_and_listed(small_model, data, packing, monkeypatch):
    """A row whose image fails while training (the up-front check decodes every image and lists such a row
    before training, tests/integration/test_check.py; here the file goes bad after that check, as on a changing disk,
    simulated by skipping the check's decode) is skipped and listed; the run completes."""
    from io import BytesIO

    monkeypatch.setattr("vlmkit.data.check.verify_image", lambda *args, **kwargs: None)

    buffer = BytesIO()
    random_image(64, 64, seed=7).save(buffer, format="JPEG", quality=95)
    (data / "imgs" / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # header intact
    rows = (data / "a.jsonl").read_text().splitlines()
    cut = {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "cut"}],
           "images": ["imgs/cut.jpg"]}  # fmt: skip
    (data / "mixed.jsonl").write_text("\n".join([*rows[:2], json.dumps(cut), *rows[2:]]) + "\n")
    run_dir = run(
        small_model,
        data,
        dataset=[str(data / "mixed.jsonl")],
        max_steps=3,
        batch_size=2,
        packing=packing,
        max_bad_fraction=0.0,
    )
    assert (run_dir / "checkpoint-3" / "vlmkit_complete").is_file()
    bad = [json.loads(line) for line in (run_dir / "bad_samples.jsonl").read_text().splitlines()]
    assert [(b["where"], b["kind"]) for b in bad] == [(f"{data / 'mixed.jsonl'}:3", "failed while training")]
    assert "truncated" in bad[0]["reason"] and bad[0]["row"] == cut


def test_disk_full_during_a_save_is_one_line_naming_the_last_complete_checkpoint(
    small_model, data, monkeypatch, capsys
):
    from transformers import Trainer

    from vlmkit.cli import main

    real_save = Trainer.save_model

    def save_model(self, output_dir=None, _internal_call=False):
        if self.state.global_step == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "adapter_model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir, _internal_call)

    monkeypatch.setattr(Trainer, "save_model", save_model)
    monkeypatch.setattr(sys, "argv", ["vlmkit", "sft", "--model", str(small_model), "--dataset", str(data / "a.jsonl"),
                                      "--output-dir", str(data / "out"), "--max-steps", "3", "--save-steps", "1",
                                      "--max-pixels", "4000", "--report-to", "none", "--no-progress"])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    run_dir = next((data / "out" / small_model.name).iterdir())
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: disk full while saving {run_dir / 'checkpoint-2'} (the partial folder was removed); the last "
        f"complete checkpoint is {run_dir / 'checkpoint-1'}; free space on that disk and run the same command "
        "with --resume latest"
    ]
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-1"]


@pytest.mark.slow
def test_ctrl_c_says_where_training_stands_and_a_run_folder_resumes(small_model, data):
    """Ctrl-C names the last complete checkpoint and the --resume latest command; --resume RUN_FOLDER takes the
    run's newest complete checkpoint, and every resume prints the checkpoint it resumed from."""
    common = ["sft", "--model", str(small_model), "--dataset", "a.jsonl", "--output-dir", "out", "--max-pixels", "4000",
              "--save-steps", "1", "--report-to", "none", "--no-progress", "--no-cache"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "vlmkit", *common, "--max-steps", "100000"],
        cwd=data,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.time() + 120
        while not list((data / "out").glob("*/*/checkpoint-*/vlmkit_complete")):
            assert first.poll() is None and time.time() < deadline, "the first run did not save a checkpoint"
            time.sleep(0.2)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        first.kill()
    run_dir = next((data / "out" / small_model.name).iterdir()).relative_to(data)
    last = max((p.parent for p in (data / run_dir).glob("checkpoint-*/vlmkit_complete")), key=lambda p: int(p.name[11:]))
    assert first.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (
        f"stopped; the last complete checkpoint is {run_dir / last.name}: run the same command with --resume latest "
        "to continue from it"
    )
    step = int(last.name.split("-")[1])
    from_folder = vlmkit_cli(*common, "--max-steps", str(step + 1), "--allow-changed-args", "--resume", str(run_dir),
                             cwd=data)  # fmt: skip
    assert from_folder.returncode == 0, from_folder.stdout + from_folder.stderr
    assert (f"--resume {run_dir}: a run folder; resuming from its newest complete checkpoint, {run_dir / last.name}"
            in from_folder.stdout.splitlines())  # fmt: skip
    latest = vlmkit_cli(*common, "--max-steps", str(step + 2), "--allow-changed-args", "--resume", "latest", cwd=data)
    assert latest.returncode == 0, latest.stdout + latest.stderr
    assert f"--resume latest: resuming from {run_dir / f'checkpoint-{step + 1}'}" in latest.stdout.splitlines()


def test_a_run_refused_before_training_leaves_no_run_folder(small_model, data):
    """--target-modules that match nothing, found after the run folder is made: no empty vN-<time>/ is left."""
    refused = vlmkit_cli("sft", "--model", str(small_model), "--dataset", "a.jsonl", "--output-dir", "out",
                         "--max-pixels", "4000", "--max-steps", "1", "--report-to", "none", "--no-progress",
                         "--target-modules", "no_such_layer", cwd=data)  # fmt: skip
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --target-modules no_such_layer: matches no Linear")
    assert list((data / "out" / small_model.name).iterdir()) == []
