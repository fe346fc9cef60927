"""`vlmkit sft --streaming` as users run it: a LaTeX_OCR-schema Parquet streamed with packing, killed and resumed
(the rows trained equal an uninterrupted run's), and split across two DDP processes (torchrun, gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ocr_parquet import write_ocr_parquet
from safetensors.torch import load_file
from typer.testing import CliRunner

from vlmkit.cli import app
from vlmkit.errors import VlmkitError


def sft(small_model: Path, data: Path, out: Path, *extra: str) -> str:
    args = [
        "sft",
        "--model",
        str(small_model),
        "--dataset",
        str(data),
        "--streaming",
        "--output-dir",
        str(out),
    ]
    args += ["--max-pixels", "4000", "--no-progress", "--report-to", "none", "--eval-generate", "0", *extra]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow  # two short sft runs: 24 s on the shared 2-core machine
def test_streaming_resume_trains_the_rows_of_an_uninterrupted_run(small_model, tmp_path):
    data = write_ocr_parquet(tmp_path / "latex_ocr.parquet", 12)
    options = ["--max-steps", "6", "--save-steps", "3", "--save-total-limit", "5", "--batch-size", "2"]
    options += ["--max-length", "200", "--lr", "1e-3", "--lora-dropout", "0.1", "--logging-steps", "1"]
    output = sft(small_model, data, tmp_path / "out", *options)
    assert f"streaming {data}: ocr; 1 reader(s)" in output and "train rows streamed" in output
    run_dir = next((tmp_path / "out" / small_model.name).iterdir())
    last = run_dir / "checkpoint-6"
    uninterrupted = load_file(last / "adapter_model.safetensors")
    position = json.loads((last / "stream_position.json").read_text())
    assert position["positions"]["0"][0] == 2  # 12 rows in ~4 packs: 6 steps of 2 packs end in the third pass

    shutil.rmtree(last)  # as if killed after step 3
    output = sft(small_model, data, tmp_path / "out", *options, "--resume", "latest")
    assert "at the rows after the checkpoint's" in output
    assert json.loads((last / "stream_position.json").read_text()) == position
    resumed = load_file(last / "adapter_model.safetensors")
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=0, atol=1e-6, msg=name)
    steps = [line["step"] for line in map(json.loads, (run_dir / "train_log.jsonl").open()) if "loss" in line]
    assert steps == [1, 2, 3, 4, 5, 6]

    with pytest.raises(VlmkitError, match="--streaming needs --max-steps"):
        CliRunner().invoke(app, ["sft", "--model", str(small_model), "--dataset", str(data), "--streaming"],
                           catch_exceptions=False)  # fmt: skip


@pytest.mark.slow  # two torchrun processes and one plain run: 60-106 s on the shared machine
def test_streaming_two_processes_train_as_one_with_both_batches(small_model, tmp_path):
    """torchrun with 2 gloo processes of batch 1: process r reads rows i % 2 == r, so each step trains rows
    2s and 2s+1, as one process of batch 2 does; the losses are equal (a row read twice or skipped would not be)."""
    data = write_ocr_parquet(tmp_path / "latex_ocr.parquet", 16)
    common = ["sft", "--model", str(small_model), "--dataset", str(data), "--streaming", "--no-packing"]
    common += [
        "--max-steps",
        "4",
        "--logging-steps",
        "1",
        "--tuner",
        "full",
        "--lr",
        "1e-3",
        "--max-pixels",
        "4000",
    ]
    common += ["--no-progress", "--report-to", "none", "--eval-generate", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "vlmkit"]
    runs = {
        "two": launch + common + ["--batch-size", "1", "--output-dir", str(tmp_path / "two")],
        "one": [
            sys.executable,
            "-m",
            "vlmkit",
            *common,
            "--batch-size",
            "2",
            "--output-dir",
            str(tmp_path / "one"),
        ],
    }
    losses = {}
    for name, command in runs.items():
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        (run_dir,) = (tmp_path / name / small_model.name).iterdir()
        losses[name] = [
            line["loss"] for line in map(json.loads, (run_dir / "train_log.jsonl").open()) if "loss" in line
        ]
        saved = json.loads((run_dir / "checkpoint-4" / "stream_position.json").read_text())
        # (pass, window start, rows of the window done): 4 rows each of 2 readers, or 8 of one
        expected = {"0": [0, 0, 4], "1": [0, 0, 4]} if name == "two" else {"0": [0, 0, 8]}
        assert saved == {"readers": len(expected), "numbering": "share", "positions": expected}
    assert len(losses["two"]) == 4
    assert losses["two"] == pytest.approx(losses["one"], abs=1e-4)
