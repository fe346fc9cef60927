"""`vlmkit dpo`: preference tuning with images (DPO, IPO, hinge) on TRL's DPOTrainer. Its options are sft's
option groups (less the few that preference pairs do not have: `vlmkit.train.dpo_config.NOT_FOR_DPO`) and
`PreferenceOptions`; merged with `--config run.yaml` as sft merges them."""

from __future__ import annotations

import typer

from vlmkit.commands.options import with_options
from vlmkit.commands.peers import target_modules_warning
from vlmkit.commands.sft import PANELS, ConfigFile, sft_config
from vlmkit.settings import EncodingSettings
from vlmkit.train.dpo_config import NOT_FOR_DPO, DPOConfig, PreferenceOptions
from vlmkit.train.options import (
    CheckpointOptions,
    DataOptions,
    EngineOptions,
    EvalOptions,
    OptimOptions,
    TrackingOptions,
    TunerOptions,
)


@with_options(panels={**PANELS, "preference": "Preference"}, omit=NOT_FOR_DPO, check=False)
def dpo_command(
    ctx: typer.Context,
    data: DataOptions,
    encoding: EncodingSettings,  # saved with the run (vlmkit.json)
    preference: PreferenceOptions,
    tuning: TunerOptions,
    optim: OptimOptions,
    checkpoints: CheckpointOptions,
    evaluation: EvalOptions,
    tracking: TrackingOptions,
    engine: EngineOptions,
    config: ConfigFile = None,
) -> None:
    """Preference-tune a model on pairs of a chosen and a rejected reply (RLAIF-V, RLHF-V, TRL, ms-swift or
    LLaMA-Factory rows): DPO and its IPO / hinge losses, by TRL's DPOTrainer on vlmkit's encoding.

    Multi-GPU: `torchrun --nproc-per-node 4 -m vlmkit dpo ...` or `accelerate launch -m vlmkit dpo ...`."""
    from vlmkit.train.dpo import dpo

    groups = [data, encoding, preference, tuning, optim, checkpoints, evaluation, tracking, engine]
    run_config = sft_config(ctx, groups, config, DPOConfig, "dpo")
    if warning := target_modules_warning(run_config.target_modules):
        typer.echo(warning, err=True)
    run_dir = dpo(run_config)
    typer.echo(f"done: {run_dir}")
