"""`vlmkit grpo`: reinforcement fine-tuning with verifiable rewards (GRPO and its variants, on TRL). Its
options are sft's groups (`vlmkit.commands.sft`) plus `GRPOOptions`, merged with `--config run.yaml` as sft's."""

from __future__ import annotations

import typer

from vlmkit.commands.options import with_options
from vlmkit.commands.sft import PANELS, ConfigFile, sft_config
from vlmkit.settings import EncodingSettings
from vlmkit.train.grpo_options import GRPOConfig, GRPOOptions
from vlmkit.train.options import (
    CheckpointOptions,
    DataOptions,
    EngineOptions,
    OptimOptions,
    TrackingOptions,
    TunerOptions,
)

# sft's options that grpo does not take: no validation pass, no packing or streaming (every prompt is
# checked up front), no truncation (a row that does not fit is refused), no encode cache (prompts are encoded
# as their rollouts start; a bad row is refused, not skipped)
NOT_GRPO = {
    "data": ("val_dataset", "split_ratio", "streaming", "packing", "group_by_length", "truncation", "max_bad_fraction"),
    "engine": ("encode_cache", "cache_dir", "encode_workers"),
}


@with_options(panels={**PANELS, "rl": "Rewards and rollouts"}, omit=NOT_GRPO, check=False)
def grpo_command(
    ctx: typer.Context,
    data: DataOptions,
    encoding: EncodingSettings,  # saved with the run (vlmkit.json)
    tuning: TunerOptions,
    rl: GRPOOptions,
    optim: OptimOptions,
    checkpoints: CheckpointOptions,
    tracking: TrackingOptions,
    engine: EngineOptions,
    config: ConfigFile = None,
) -> None:
    """Reinforcement fine-tuning with verifiable rewards (GRPO; --loss dapo / dr_grpo, GSPO with
    --importance-sampling-level sequence) on prompts with a `solution` column, on TRL's GRPOTrainer.

    Rewards: --reward iou,format:0.2 (names and weights) or your own module:function."""
    from vlmkit.train.grpo import grpo

    groups = [data, encoding, tuning, rl, optim, checkpoints, tracking, engine]
    run_dir = grpo(sft_config(ctx, groups, config, GRPOConfig, "grpo"))
    typer.echo(f"done: {run_dir}")
