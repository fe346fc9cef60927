"""Experiment trackers (`--report-to`): which transformers integration logs the run, and what vlmkit
must start before it.

transformers' callbacks log every train/eval line to the tracker. Each tracker reads its own
settings from its usual environment variables (WANDB_MODE=offline, SWANLAB_MODE=local or offline,
MLFLOW_TRACKING_URI=file:..., TensorBoard writes RUN/runs/); vlmkit sets none of them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab", "mlflow": "mlflow"}


def check_tracker(report_to: str) -> None:
    """A one-line error when the tracker's package is missing."""
    package = PACKAGES.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise VlmkitError(f"--report-to {report_to} needs {package}: pip install {package}")


def trainer_report_to(report_to: str) -> list[str]:
    """The `report_to` list for TrainingArguments: auto is TensorBoard when installed, else nothing."""
    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return [] if report_to == "none" else [report_to]


def start_tracker(report_to: str, run_dir: Path, project: str, options: dict[str, Any]):
    """Start the tracker run where transformers' callback cannot: SwanLab >= 0.10 raises from
    `swanlab.get_run()` before `swanlab.init()`, which crashed its callback at the first step. Returns a
    function that finishes the tracker run (or None): W&B's callback starts its run but never finishes it,
    leaving the flush of an offline run's history to interpreter exit (a test once read it empty)."""
    if report_to == "wandb":
        import wandb

        return wandb.finish
    if report_to != "swanlab":
        return None
    import swanlab

    try:
        running = swanlab.get_run() is not None
    except RuntimeError:  # 0.10: "No active Run. Call swanlab.init() first."
        running = False
    if not running:
        swanlab.init(project=project, config=options, description=f"vlmkit sft run {run_dir}")
    return swanlab.finish
