"""Option types shared by the commands (each documented once, so `--help` reads the same everywhere)."""

from __future__ import annotations

from typing import Annotated

import typer

DType = Annotated[
    str, typer.Option(help="Weights dtype: auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.")
]
Device = Annotated[str, typer.Option(help="auto (cuda when available), cpu, cuda or cuda:N.")]
AttnImpl = Annotated[
    str, typer.Option(help="Attention kernel: sdpa, eager, or flash_attention_2 (needs flash-attn).")
]
MinPixels = Annotated[
    int | None,
    typer.Option(
        help="Smallest image area in pixels after resizing. Default: saved with the model, else the checkpoint's image-processor value."
    ),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        help="Largest image area in pixels after resizing (fewer pixels = fewer image tokens). Default as --min-pixels."
    ),
]
System = Annotated[
    str | None, typer.Option(help="System prompt. Default: the one saved with the model, else the family's.")
]
