"""Every `--report-to` value, offline: a few `vlmkit sft` steps through the CLI, then the tracker's own local
files are read back and must hold the logged training loss (the values of train_log.jsonl)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import random_image


def train_with_tracker(
    model: Path, folder: Path, report_to: str, env: dict[str, str]
) -> tuple[Path, list[float]]:
    """Run 2 logged sft steps with `--report-to report_to`; returns (run folder, losses in train_log.jsonl)."""
    random_image(40, 50).save(folder / "0.png")
    row = {"messages": [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "a square"}],
           "images": ["0.png"]}  # fmt: skip
    (folder / "d.jsonl").write_text((json.dumps(row) + "\n") * 4)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlmkit",
            "sft",
            "--model",
            str(model),
            "--dataset",
            "d.jsonl",
            "--output-dir",
            "out",
            "--max-steps",
            "2",
            "--logging-steps",
            "1",
            "--max-pixels",
            "4000",
            "--no-progress",
            "--no-cache",
            "--report-to",
            report_to,
        ],  # fmt: skip
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    run_dir = next((folder / "out" / model.name).iterdir())
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in log if "loss" in line]
    assert len(losses) == 2
    return run_dir, losses


def leveldb_log_records(path: Path, header: int) -> list[bytes]:
    """The records of a file in LevelDB's log format (what W&B and SwanLab write): `header` bytes of file
    header, then 32 KiB blocks of chunks, each crc32 (4), length (2), type (1: full, 2: first, 3: middle,
    4: last) and data."""
    data, block = path.read_bytes(), 32768
    records, pending, pos = [], b"", header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += (block - pos % block) % block
            continue
        pending += data[pos : pos + length]
        pos += length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


@pytest.mark.slow
def test_tensorboard(small_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, losses = train_with_tracker(small_model, tmp_path, "tensorboard", {})
    events = EventAccumulator(str(next((run_dir / "runs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses)


@pytest.mark.slow
def test_wandb_offline(small_model, tmp_path):
    pytest.importorskip("wandb")
    from wandb.proto import wandb_internal_pb2

    run_dir, losses = train_with_tracker(
        small_model,
        tmp_path,
        "wandb",
        {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"},
    )
    (log_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    logged = []
    for data in leveldb_log_records(log_file, header=7):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            if "train/loss" in items:
                logged.append(json.loads(items["train/loss"]))
    assert logged == pytest.approx(losses)


@pytest.mark.slow
def test_swanlab_offline(small_model, tmp_path):
    """swanlab >= 0.10 crashed at the first step: `No active Run. Call swanlab.init() first.`"""
    pytest.importorskip("swanlab")
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record

    run_dir, losses = train_with_tracker(
        small_model,
        tmp_path,
        "swanlab",
        {"SWANLAB_MODE": "offline", "SWANLAB_LOG_DIR": str(tmp_path / "swanlog")},
    )
    (log_file,) = (tmp_path / "swanlog").glob("run-*/run-*.swanlab")
    logged = []
    for data in leveldb_log_records(log_file, header=7):
        record = Record()
        record.ParseFromString(data)
        if record.HasField("scalar") and record.scalar.key == "train/loss":
            logged.append(record.scalar.value.number)
    assert logged == pytest.approx(losses)


@pytest.mark.slow
def test_mlflow_file_store(small_model, tmp_path):
    """MLflow 3 keeps the file store behind MLFLOW_ALLOW_FILE_STORE (its default is sqlite:///mlflow.db in the
    working folder, which works the same way through transformers' callback)."""
    pytest.importorskip("mlflow")
    env = {"MLFLOW_TRACKING_URI": f"file:{tmp_path / 'mlruns'}", "MLFLOW_ALLOW_FILE_STORE": "true"}
    run_dir, losses = train_with_tracker(small_model, tmp_path, "mlflow", env)
    (metric_file,) = (tmp_path / "mlruns").glob("*/*/metrics/loss")
    logged = [float(line.split()[1]) for line in metric_file.read_text().splitlines()]  # "time value step"
    assert logged == pytest.approx(losses)
