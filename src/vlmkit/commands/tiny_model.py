"""`vlmkit tiny-model`: write a tiny random model of a family, for tests and trying vlmkit offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def tiny_model(
    family: Annotated[str, typer.Argument(help="Model family, as `vlmkit families` lists them: qwen2-vl, qwen2.5-vl, qwen3-vl, internvl, ...; or an original (remote-code) layout, for `vlmkit convert`: internvl-remote (OpenGVLab's InternVL-Chat-V1.5: InternLM2), internvl2-remote (InternVL2-1B: Qwen2), always with the 600-token BPE.")],
    output_dir: Annotated[Path, typer.Argument(help="New folder to write the model to.")],
    small_vocab: Annotated[
        bool,
        typer.Option(
            help="Train a 600-token BPE instead of rebuilding the real Qwen2 vocabulary (faster, but token ids differ from real checkpoints)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed for the random weights.")] = 0,
) -> None:
    """Write a tiny randomly initialised model of FAMILY (real chat template, image-processor config and
    special-token ids) to OUTPUT_DIR, for tests and trying vlmkit offline."""
    from vlmkit.errors import VlmkitError
    from vlmkit.families import family_by_name, family_for_model_dir, original_layout, tiny_model_names
    from vlmkit.families.tiny import build_tiny_model

    layout = original_layout(family)
    if layout is not None:  # a checkpoint as its authors ship it (remote code), for `vlmkit convert`
        path = layout.build_tiny(output_dir, seed=seed)
        typer.echo(f"wrote a tiny {layout.name} checkpoint (original layout, remote code not included) to {path}")
        return
    builds = f"tiny-model builds: {', '.join(tiny_model_names())}"
    try:
        wanted = family_by_name(family)
    except VlmkitError:
        raise VlmkitError(f"unknown model family {family!r}; {builds}") from None
    if wanted.name not in tiny_model_names():
        raise VlmkitError(f"{wanted.name} has no tiny model (its model is remote code shipped with the checkpoints); {builds}")
    path = build_tiny_model(wanted, output_dir, small_vocab=small_vocab, seed=seed)
    written = family_for_model_dir(path)
    if written is wanted:
        typer.echo(f"wrote a tiny {wanted.name} model to {path}")
    else:  # an original checkpoint layout, as published (Qwen-VL)
        typer.echo(f"wrote a tiny {wanted.name} model in its original layout ({written.name}) to {path}; "
                   f"`vlmkit convert --model {path} --output DIR` makes the {wanted.name} folder")  # fmt: skip
