"""`vlmkit export`: a checkpoint as a complete Hugging Face model folder."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from vlmkit.commands.options import with_options
from vlmkit.models.loader import LoadOptions

# export takes the placement options of loading only (it has its own --dtype: the export's)
PLACEMENT = ("device_map", "max_memory", "offload_folder")


@with_options(omit={"loading": tuple(f.name for f in fields(LoadOptions) if f.name not in PLACEMENT)})
def export_command(
    ckpt: Annotated[Path, typer.Option(help="The checkpoint to export (RUN/checkpoint-N).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="New folder to write. Default: beside the checkpoint, CKPT-merged (with --merge-lora) or CKPT-export.",
        ),
    ] = None,
    merge_lora: Annotated[
        bool,
        typer.Option(
            help="Fold the LoRA adapter into the base weights (a plain model folder). Without it, an adapter checkpoint is exported as an adapter."
        ),
    ] = False,
    dtype: Annotated[
        str, typer.Option(help="Weights dtype of the export: auto (the base model's), bf16, fp16, fp32.")
    ] = "auto",
    force: Annotated[
        bool, typer.Option(help="Replace the output folder if it exists and is not empty.")
    ] = False,
    loading: LoadOptions = LoadOptions(),
) -> None:
    """Export a checkpoint as a complete Hugging Face folder (safetensors weights, config, tokenizer,
    image-processor config with the trained resolution limits, chat template, vlmkit.json with the
    resolution settings)."""
    from vlmkit.models.export import export

    path = export(
        ckpt, output, merge_lora=merge_lora, dtype=dtype, force=force, device_map=loading.device_map,
        max_memory=loading.max_memory, offload_folder=loading.offload_folder,
    )
    typer.echo(f"exported {ckpt} to {path}")
