"""`vlmkit kto`: preference tuning with images from replies labelled desirable or undesirable (KTO) on TRL's
KTOTrainer. Its options are `vlmkit dpo`'s (sft's option groups less `NOT_FOR_DPO`) with `KTOOptions` in place
of dpo's `PreferenceOptions`; merged with `--config run.yaml` as sft merges them."""

from __future__ import annotations

import typer

from vlmkit.commands.options import with_options
from vlmkit.commands.peers import target_modules_warning
from vlmkit.commands.sft import PANELS, ConfigFile, sft_config
from vlmkit.settings import EncodingSettings
from vlmkit.train.dpo_config import NOT_FOR_DPO
from vlmkit.train.kto_config import KTOConfig, KTOOptions
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
def kto_command(
    ctx: typer.Context,
    data: DataOptions,
    encoding: EncodingSettings,  # saved with the run (vlmkit.json)
    preference: KTOOptions,
    tuning: TunerOptions,
    optim: OptimOptions,
    checkpoints: CheckpointOptions,
    evaluation: EvalOptions,
    tracking: TrackingOptions,
    engine: EngineOptions,
    config: ConfigFile = None,
) -> None:
    """Preference-tune a model on replies labelled desirable or undesirable (TRL's unpaired rows, ms-swift's or
    LLaMA-Factory's KTO rows, or any pair format of vlmkit dpo, each pair one row of each label): KTO, by TRL's
    KTOTrainer on vlmkit's encoding.

    Multi-GPU: `torchrun --nproc-per-node 4 -m vlmkit kto ...` or `accelerate launch -m vlmkit kto ...`."""
    from vlmkit.train.kto import kto

    groups = [data, encoding, preference, tuning, optim, checkpoints, evaluation, tracking, engine]
    run_config = sft_config(ctx, groups, config, KTOConfig, "kto")
    if warning := target_modules_warning(run_config.target_modules):
        typer.echo(warning, err=True)
    run_dir = kto(run_config)
    typer.echo(f"done: {run_dir}")
