"""`vlmkit sft`: fine-tune a model. Its options are the fields of the run's option groups
(`vlmkit.train.options`, plus `EncodingSettings`); the command merges them with `--config run.yaml`
(flags given on the command line win over the file, which wins over the defaults) into one `SFTConfig`,
checks it and trains."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from vlmkit.commands.options import with_options
from vlmkit.commands.peers import target_modules_warning
from vlmkit.settings import EncodingSettings
from vlmkit.train.config import SFTConfig, read_yaml_config
from vlmkit.train.options import (
    CheckpointOptions,
    DataOptions,
    EngineOptions,
    EvalOptions,
    OptimOptions,
    TrackingOptions,
    TunerOptions,
)

# the `--help` section of each group
PANELS = {
    "data": "Data",
    "encoding": "Data",
    "tuning": "Tuning",
    "optim": "Optimisation",
    "checkpoints": "Saving and logging",
    "evaluation": "Saving and logging",
    "tracking": "Saving and logging",
    "engine": "Engine",
}
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML file of options (keys as the flags); flags given here override it.", rich_help_panel="Data"
    ),
]

# Options that take several values after one flag, as `vlmkit data check` does: --dataset a.jsonl b.json#2000.
MANY_VALUES = ("--dataset", "-d", "--val-dataset")


def repeat_many_values(args: list[str]) -> list[str]:
    """`--dataset a b --val-dataset c` -> `--dataset a --dataset b --val-dataset c`: every bare value after
    one of MANY_VALUES repeats that flag (sft has no positional arguments, so a bare value has no other
    meaning)."""
    out: list[str] = []
    flag = None
    for arg in args:
        if arg == "--":
            flag = None
            out.append(arg)
        elif arg.startswith("-") and len(arg) > 1:
            name = arg.split("=", 1)[0]
            flag = name if name in MANY_VALUES else None
            out.append(arg)
        elif flag is not None and out and out[-1] != flag:
            out += [flag, arg]
        else:
            out.append(arg)
    return out


class ManyValuesCommand(TyperCommand):
    """The sft command, with several values accepted after --dataset and --val-dataset."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, repeat_many_values(args))


def sft_config(
    ctx: typer.Context, groups: list[Any], config_file: Path | None, config_class: type[SFTConfig] = SFTConfig
) -> SFTConfig:
    """The run's config (a `config_class`: `vlmkit grpo` makes its GRPOConfig): the groups' values, overridden
    by `config_file`'s, overridden by the flags given on the command line; checked (`validate`)."""
    values = {name: value for group in groups for name, value in vars(group).items()}
    given = {
        name: value
        for name, value in values.items()
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    from_file = read_yaml_config(config_file, config_class) if config_file is not None else {}
    return config_class(**{**values, **from_file, **given}).validate()


@with_options(panels=PANELS, check=False)  # checked once merged with --config (sft_config)
def sft_command(
    ctx: typer.Context,
    data: DataOptions,
    encoding: EncodingSettings,  # saved with the run (vlmkit.json)
    tuning: TunerOptions,
    optim: OptimOptions,
    checkpoints: CheckpointOptions,
    evaluation: EvalOptions,
    tracking: TrackingOptions,
    engine: EngineOptions,
    config: ConfigFile = None,
) -> None:
    """Fine-tune a model on your data (LoRA, QLoRA or full; vision tower frozen by default).

    Multi-GPU: `torchrun --nproc-per-node 4 -m vlmkit sft ...` or `accelerate launch -m vlmkit sft ...`."""
    from vlmkit.train.finetune import sft

    groups = [data, encoding, tuning, optim, checkpoints, evaluation, tracking, engine]
    run_config = sft_config(ctx, groups, config)
    if warning := target_modules_warning(run_config.target_modules):
        typer.echo(warning, err=True)
    run_dir = sft(run_config)
    typer.echo(f"done: {run_dir}")
