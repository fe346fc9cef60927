"""Run folders and checkpoints on disk.

OUTPUT_DIR/<model-name>/v<N>-<YYYYMMDD-HHMMSS>/
    args.json            the resolved SFTConfig
    vlmkit.json          family, base model, tuner, pixel limits, system prompt
    train_log.jsonl      one line per logging step (loss, lr, throughput) and eval
    loss.png             the loss curve, redrawn as training runs
    bad_samples.jsonl    rows left out, with file:line and reason
    checkpoint-<step>/   adapter or full weights, tokenizer, image-processor config,
                         vlmkit.json, optimizer/scheduler/RNG state, and last of all
                         `vlmkit_complete`, so an interrupted save never looks complete
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from vlmkit.errors import VlmkitError

COMPLETE_MARKER = "vlmkit_complete"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_RUN_RE = re.compile(r"^v(\d+)-")


def model_name(model: str) -> str:
    """`Qwen/Qwen2-VL-2B-Instruct` or `/models/qwen2-vl-2b/` -> the folder name used for runs."""
    return Path(str(model).rstrip("/")).name or "model"


def new_run_dir(output_dir: str | Path, model: str) -> Path:
    """Create OUTPUT_DIR/<model-name>/v<N>-<timestamp>/ with N one more than the highest there."""
    parent = Path(output_dir) / model_name(model)
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        numbers = [int(m.group(1)) for p in parent.iterdir() if (m := _RUN_RE.match(p.name))]
        run = parent / f"v{max(numbers, default=-1) + 1}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            run.mkdir()
            return run
        except FileExistsError:  # another run started in the same second
            time.sleep(1)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    found = [
        (int(m.group(1)), p) for p in run_dir.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found) if is_complete(p)]


def resolve_resume(resume: str, output_dir: str | Path, model: str) -> Path:
    """`latest` -> the newest complete checkpoint of the newest run of this model; else a checkpoint path."""
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise VlmkitError(f"--resume {resume}: no such checkpoint folder")
        if not is_complete(path):
            raise VlmkitError(
                f"--resume {resume}: this checkpoint is incomplete (its save was interrupted); "
                "resume from an earlier one"
            )
        return path
    parent = Path(output_dir) / model_name(model)
    runs = sorted(
        (int(m.group(1)), p)
        for p in (parent.iterdir() if parent.is_dir() else [])
        if (m := _RUN_RE.match(p.name))
    )
    for _, run in reversed(runs):
        complete = checkpoints(run)
        if complete:
            return complete[-1]
    raise VlmkitError(f"--resume latest: no complete checkpoint under {parent}")


def check_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder that vlmkit wrote and finished writing; a clear error otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise VlmkitError(f"--ckpt {path}: no such folder")
    if _CHECKPOINT_RE.match(path.name) and not is_complete(path):
        raise VlmkitError(
            f"--ckpt {path}: this checkpoint is incomplete (its save was interrupted); use an earlier one"
        )
    return path
