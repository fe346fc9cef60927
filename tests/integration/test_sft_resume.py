"""`vlmkit sft --resume latest` after what goes wrong on real disks (issue 27, items 9-13): checkpoint files cut
short or zeroed, a dataset changed in place, a run that already finished, a crash while old checkpoints are
removed, a full disk while the loss chart is redrawn, and a base model whose weights were cut short. Each is met
as the user meets it: the `vlmkit` command (in this process where a failure has to be injected, else a
subprocess), one line printed, the exit code, and which checkpoint training went on from, with the weights of
an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import random_image
from safetensors.torch import load_file

from vlmkit.errors import VlmkitError
from vlmkit.train import SFTConfig, sft

OPTIONS = dict(  # 6 rows, 2 a batch, unpacked: 3 steps an epoch, so step 4 ends a run mid-epoch
    max_steps=4, save_steps=1, save_total_limit=None, batch_size=2, packing=False, lr=1e-3, lora_dropout=0.1,
    max_pixels=4000, logging_steps=1, progress=False, report_to="none", eval_generate=0, num_workers=0,
)  # fmt: skip


def cli_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """The `vlmkit sft` command line of OPTIONS."""
    return ["vlmkit", "sft", "--model", str(model), "--dataset", str(data), "--output-dir", str(out),
            "--max-steps", "4", "--save-steps", "1", "--batch-size", "2", "--no-packing",
            "--lr", "1e-3", "--lora-dropout", "0.1", "--max-pixels", "4000", "--logging-steps", "1",
            "--no-progress", "--report-to", "none", "--eval-generate", "0", "--num-workers", "0", *extra]  # fmt: skip


def rows(images: Path, n: int, start: int = 0) -> list[str]:
    return [
        json.dumps({
            "messages": [{"role": "user", "content": f"<image>第{i}张图里是什么？\nOne line."},
                         {"role": "assistant", "content": f"形状 {i % 3}\nshape {i % 3}"}],
            "images": [f"{images.name}/{i % 3}.png"],
        }, ensure_ascii=False)
        for i in range(start, start + n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(small_model, tmp_path_factory) -> dict[str, Path]:
    """A finished LoRA run of 4 steps with checkpoints 1-4: {"data": its train.jsonl, "out": its output folder,
    "run": its run folder}. Tests train in copies of "out"; the weights there are the uninterrupted run's."""
    root = tmp_path_factory.mktemp("finished")
    images = root / "imgs"
    images.mkdir()
    for i in range(3):
        random_image(40, 50, seed=i).save(images / f"{i}.png")
    data = root / "train.jsonl"
    data.write_text("\n".join(rows(images, 6)) + "\n", encoding="utf-8")
    run = sft(SFTConfig(model=str(small_model), dataset=[str(data)], output_dir=str(root / "out"), **OPTIONS))
    return {"data": data, "out": root / "out", "run": run}


def copy_of(finished: dict[str, Path], tmp_path: Path, died_after: int | None = 3) -> Path:
    """The finished run copied into tmp_path (its run folder returned), as if it had died after step
    `died_after` (the later checkpoints removed; None: it finished)."""
    shutil.copytree(finished["out"], tmp_path / "out")
    run = tmp_path / "out" / finished["run"].parent.name / finished["run"].name
    for step in range(died_after + 1 if died_after else 5, 5):
        shutil.rmtree(run / f"checkpoint-{step}")
    return run


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "adapter_model.safetensors")


def assert_same_weights(checkpoint: Path, uninterrupted: Path) -> None:
    expected, got = weights(uninterrupted), weights(checkpoint)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def vlmkit_main(argv: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """`vlmkit ...` run in this process (so a test can inject a failure): (exit code, stdout, stderr)."""
    from vlmkit.cli import main

    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def damage(file: Path, how: str) -> None:
    size = file.stat().st_size
    if how == "truncated":
        with file.open("r+b") as f:
            f.truncate(size // 2)
    else:  # zeroed: the same size, all zero bytes (a disk that lost the blocks)
        file.write_bytes(bytes(size))


# -- item 9: checkpoint files cut short or zeroed ---------------------------------------------------------------

KINDS = [
    (name, how)
    for name in (
        "adapter_model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "trainer_state.json",
        "rng_state.pth",
    )
    for how in ("truncated", "zeroed")
] + [("adapter_config.json", "truncated")]


@pytest.mark.parametrize("name, how", KINDS, ids=[f"{name}-{how}" for name, how in KINDS])
def test_a_damaged_checkpoint_file_resumes_from_the_newest_checkpoint_that_loads(
    small_model, finished, tmp_path, monkeypatch, capsys, name, how
):
    run = copy_of(finished, tmp_path, died_after=3)
    damage(run / "checkpoint-3" / name, how)
    code, out, err = vlmkit_main(cli_args(small_model, finished["data"], tmp_path / "out", "--resume", "latest"),
                                 monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    said = [line for line in out.splitlines() if line.startswith("--resume latest:")]
    assert len(said) == 1 and said[0].startswith(f"--resume latest: {run / 'checkpoint-3' / name} is ")
    assert said[0].endswith(f"; resuming from {run / 'checkpoint-2'}, the newest checkpoint that loads")
    # training went on from step 2: steps 3 and 4 again, as the uninterrupted run trained them
    assert_same_weights(run / "checkpoint-3", finished["run"] / "checkpoint-3")
    assert_same_weights(run / "checkpoint-4", finished["run"] / "checkpoint-4")
    assert (run / "checkpoint-4" / "vlmkit_complete").is_file()


def test_no_checkpoint_that_loads_is_one_line(small_model, finished, tmp_path, monkeypatch, capsys):
    run = copy_of(finished, tmp_path, died_after=3)
    for step in (1, 2, 3):
        damage(run / f"checkpoint-{step}" / "optimizer.pt", "truncated")
    before = sorted(p.name for p in run.iterdir())
    code, out, err = vlmkit_main(cli_args(small_model, finished["data"], tmp_path / "out", "--resume", "latest"),
                                 monkeypatch, capsys)  # fmt: skip
    assert code == 2
    damaged = "; ".join(
        f"{run / f'checkpoint-{step}' / 'optimizer.pt'} is truncated or corrupt (not a whole torch archive)"
        for step in (3, 2, 1)
    )
    assert err.strip().splitlines() == [
        f"error: --resume latest: {damaged}; no checkpoint of this run loads; start a new run"
    ]
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written, nothing removed
    # a checkpoint named by path is not replaced by another: refused, naming one that loads
    run = copy_of(finished, tmp_path / "named", died_after=3)
    damage(run / "checkpoint-3" / "scheduler.pt", "zeroed")
    ckpt = run / "checkpoint-3"
    code, out, err = vlmkit_main(cli_args(small_model, finished["data"], tmp_path / "named" / "out",
                                          "--resume", str(ckpt)), monkeypatch, capsys)  # fmt: skip
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: --resume {ckpt}: {ckpt / 'scheduler.pt'} is truncated or corrupt (not a whole torch archive); "
        f"resume from {run / 'checkpoint-2'}, the newest checkpoint of this run that loads"
    ]


def test_a_checkpoint_without_its_random_state_resumes_and_says_it_is_not_reproducible(
    small_model, finished, tmp_path, monkeypatch, capsys
):
    run = copy_of(finished, tmp_path, died_after=3)
    (run / "checkpoint-3" / "rng_state.pth").unlink()
    code, out, err = vlmkit_main(cli_args(small_model, finished["data"], tmp_path / "out", "--resume", "latest"),
                                 monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert (
        f"warning: {run / 'checkpoint-3'} has no rng_state.pth: resuming without the saved random state"
        in err
    )
    assert [line for line in out.splitlines() if "resuming from" in line] == [
        f"--resume latest: resuming from {run / 'checkpoint-3'}"  # from checkpoint-3 itself
    ]
    assert (run / "checkpoint-4" / "vlmkit_complete").is_file()
    assert not (run / "checkpoint-3" / "rng_state.pth").exists()  # checkpoint-3 was not saved again


# -- item 10: a dataset changed in place -------------------------------------------------------------------------


def edit_row(lines: list[str]) -> list[str]:
    return [lines[0].replace("形状 0", "形状 9"), *lines[1:]]


EDITS = {
    "a row edited": edit_row,
    "rows appended": lambda lines: lines + lines[:2],
    "a row deleted": lambda lines: lines[:-1],
    "rows shuffled": lambda lines: lines[1:] + lines[:1],
}


@pytest.fixture
def restored_data(finished):
    """The finished run's train.jsonl, put back as it was after the test changes it."""
    data = finished["data"]
    text = data.read_text(encoding="utf-8")
    yield data
    data.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_dataset_changed_in_place_is_refused_unless_allowed(
    small_model, finished, tmp_path, monkeypatch, capsys, restored_data, edit
):
    run = copy_of(finished, tmp_path, died_after=3)
    data = restored_data
    os.utime(data)  # touched, not changed: no objection
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join(EDITS[edit](lines)) + "\n", encoding="utf-8")
    argv = cli_args(small_model, data, tmp_path / "out", "--resume", "latest")
    code, out, err = vlmkit_main(argv, monkeypatch, capsys)
    assert code == 2, out
    recorded = json.loads((run / "data_fingerprint.json").read_text())["dataset"][str(data)]
    assert recorded.startswith("6 rows, sha256 ")
    [line] = err.strip().splitlines()
    now = len(EDITS[edit](lines))
    assert line.startswith(f"error: --resume latest: the data changed since the run started ({data}: {recorded} -> "
                           f"{now} rows, sha256 ")  # fmt: skip
    assert line.endswith("); resume with the run's options and data, start a new run, or pass --allow-changed-args "
                         "to continue anyway")  # fmt: skip
    assert not (run / "checkpoint-4").exists()
    if edit != "rows appended":
        return
    code, out, err = vlmkit_main(argv + ["--allow-changed-args"], monkeypatch, capsys)
    assert code == 0, err
    assert f"resuming with changed data (--allow-changed-args): {data}: {recorded} -> {now} rows" in out
    assert (run / "checkpoint-4" / "vlmkit_complete").is_file()
    kept = json.loads((run / "data_fingerprint.before-step-3.json").read_text())
    assert kept["dataset"][str(data)] == recorded
    assert json.loads((run / "data_fingerprint.json").read_text())["dataset"][str(data)].startswith(
        f"{now} rows"
    )


def test_the_same_data_resumes_with_the_weights_of_an_uninterrupted_run(
    small_model, finished, tmp_path, monkeypatch, capsys
):
    """The data given by another path to the same file, touched since: resumed, as the uninterrupted run."""
    run = copy_of(finished, tmp_path, died_after=2)
    os.utime(finished["data"])
    monkeypatch.chdir(finished["data"].parent)
    code, out, err = vlmkit_main(cli_args(small_model, Path("train.jsonl"), tmp_path / "out", "--resume",
                                          "latest"), monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert_same_weights(run / "checkpoint-4", finished["run"] / "checkpoint-4")


def test_a_streamed_dataset_changed_in_place_is_refused(small_model, tmp_path, monkeypatch, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        random_image(40, 50, seed=i).save(images / f"{i}.png")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows(images, 6)) + "\n", encoding="utf-8")
    argv = cli_args(small_model, data, tmp_path / "out", "--streaming")
    argv[argv.index("--max-steps") + 1] = "2"
    assert vlmkit_main(argv, monkeypatch, capsys)[0] == 0
    shutil.rmtree(next((tmp_path / "out" / small_model.name).iterdir()) / "checkpoint-2")
    with data.open("a", encoding="utf-8") as f:
        f.write(rows(images, 1, start=6)[0] + "\n")
    code, out, err = vlmkit_main(argv + ["--resume", "latest"], monkeypatch, capsys)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(
        f"error: --resume latest: the data changed since the run started ({data.resolve()}: "
    )
    assert f" -> {data.stat().st_size:,} bytes, modified " in line


# -- item 11: resuming a run that already finished -----------------------------------------------------------------


def test_resuming_a_finished_run_says_it_is_complete_and_trains_nothing(
    small_model, finished, tmp_path, monkeypatch, capsys
):
    run = copy_of(finished, tmp_path, died_after=None)
    log = (run / "train_log.jsonl").read_text()
    last = (run / "checkpoint-4" / "adapter_model.safetensors").read_bytes()
    code, out, err = vlmkit_main(cli_args(small_model, finished["data"], tmp_path / "out", "--resume", "latest"),
                                 monkeypatch, capsys)  # fmt: skip
    assert code == 0, err
    assert (
        f"the run is complete: {run / 'checkpoint-4'} is at step 4 of 4; nothing left to train (to train longer, "
        "start a new run, or raise --max-steps with --allow-changed-args)"
    ) in out.splitlines()
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [f"checkpoint-{step}" for step in (1, 2, 3, 4)]
    assert (run / "train_log.jsonl").read_text() == log
    assert (run / "checkpoint-4" / "adapter_model.safetensors").read_bytes() == last


# -- item 12: a crash while old checkpoints are removed; a full disk while loss.png is redrawn ---------------------


def test_a_crash_while_an_old_checkpoint_is_removed_leaves_it_incomplete(
    small_model, finished, tmp_path, monkeypatch
):
    import vlmkit
    import vlmkit.train.checkpoints as checkpoints

    class Killed(BaseException):
        pass

    real_rmtree = shutil.rmtree

    def killed_halfway(path, *args, **kwargs):
        if Path(path).name.startswith("checkpoint-"):
            (Path(path) / "adapter_model.safetensors").unlink()
            raise Killed  # the process dies with the folder half deleted
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_halfway)
    options = {**OPTIONS, "max_steps": 2, "save_total_limit": 1}
    with pytest.raises(Killed):
        sft(
            SFTConfig(
                model=str(small_model), dataset=[str(finished["data"])], output_dir=str(tmp_path), **options
            )
        )
    monkeypatch.setattr(checkpoints.shutil, "rmtree", real_rmtree)
    run = next((tmp_path / small_model.name).iterdir())
    assert (run / "checkpoint-1").is_dir()  # half deleted ...
    assert not (run / "checkpoint-1" / "vlmkit_complete").exists()  # ... and no longer said to be complete
    with pytest.raises(VlmkitError, match="checkpoint-1: this checkpoint is incomplete"):
        vlmkit.load(ckpt=run / "checkpoint-1")
    assert vlmkit.load(ckpt=run).model is not None  # the run's newest complete checkpoint: checkpoint-2


@pytest.mark.parametrize("saved_before", [False, True])
def test_a_full_disk_while_the_loss_chart_is_redrawn_is_one_line(
    small_model, finished, tmp_path, monkeypatch, capsys, saved_before
):
    """Before any checkpoint is complete there is nothing to resume from, and the line does not say to."""
    from PIL import Image

    real_save = Image.Image.save
    full_at = 2 if saved_before else 1

    def save(self, fp, *args, **kwargs):
        if (
            str(fp).endswith(".loss.png.tmp")
            and len(list(Path(fp).parent.glob("checkpoint-*"))) >= full_at - 1
        ):
            Path(fp).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    code, out, err = vlmkit_main(
        cli_args(small_model, finished["data"], tmp_path / "out"), monkeypatch, capsys
    )
    assert code == 2
    run = next((tmp_path / "out" / small_model.name).iterdir())
    if saved_before:
        expected = (f"the last complete checkpoint is {run / 'checkpoint-1'}; free space on that disk and run the "
                    "same command with --resume latest")  # fmt: skip
    else:
        expected = ("no checkpoint of this run is complete yet; free space on that disk and run the same command "
                    "again (without --resume: there is nothing to resume from)")  # fmt: skip
    assert err.strip().splitlines() == [f"error: disk full while writing to {run}; {expected}"]
    assert not (run / ".loss.png.tmp").exists()
    if saved_before:  # and what it says works
        monkeypatch.setattr(Image.Image, "save", real_save)
        argv = cli_args(small_model, finished["data"], tmp_path / "out", "--resume", "latest")
        assert vlmkit_main(argv, monkeypatch, capsys)[0] == 0
        assert (run / "checkpoint-4" / "vlmkit_complete").is_file()


# -- item 13: the base model's weights cut short --------------------------------------------------------------------


@pytest.mark.slow
def test_a_truncated_base_model_is_one_line_in_sft_and_export(small_model, finished, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(small_model, model)
    options = {**OPTIONS, "max_steps": 1}
    run = sft(
        SFTConfig(
            model=str(model), dataset=[str(finished["data"])], output_dir=str(tmp_path / "out"), **options
        )
    )
    weights_file = model / "model.safetensors"
    size = weights_file.stat().st_size
    damage(weights_file, "truncated")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    expected = (f"error: {weights_file}: truncated or corrupt safetensors file ({size // 2:,} bytes, its header says "
                f"{size:,}); download or copy it again")  # fmt: skip
    for command in (
        cli_args(model, finished["data"], tmp_path / "out2")[1:],
        ["export", "--ckpt", str(run / "checkpoint-1"), "--merge-lora", "--output", str(tmp_path / "merged")],
    ):
        done = subprocess.run([sys.executable, "-m", "vlmkit", *command], capture_output=True, text=True, env=env,
                              timeout=300)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [expected], command[0]
    assert not (tmp_path / "out2").exists() and not (tmp_path / "merged").exists()
