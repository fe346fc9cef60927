"""`vlmkit convert`: a remote-code checkpoint into the transformers-native layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlmkit.errors import VlmkitError


def convert_command(
    model: Annotated[Path, typer.Option(help="The checkpoint folder in its original layout (e.g. OpenGVLab's InternVL-Chat-V1-5).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New folder for the converted model.")],
    force: Annotated[bool, typer.Option(help="Replace the output folder if it exists and is not empty.")] = False,
) -> None:
    """Convert a remote-code checkpoint (OpenGVLab's InternVL: model_type internvl_chat) into the
    transformers-native layout (InternVLForConditionalGeneration, as the -hf repos), with tokenizer, chat
    template, image-processor config and vlmkit.json, so every vlmkit command, plain transformers and vLLM
    load it without --trust-remote-code. (vlmkit infer/sft/serve --model also convert on load, once, into
    MODEL-vlmkit-hf beside it; an original Qwen-VL into MODEL-vlmkit unless --trust-remote-code.)"""
    from vlmkit.families import family_for_model_dir, original_layout, read_model_config

    model_type = read_model_config(model).get("model_type")
    layout = original_layout(model_type) if isinstance(model_type, str) else None
    if layout is not None:
        path = layout.convert(model, output, force=force)
        typer.echo(f"converted {model} to {path}")
        return
    source = family_for_model_dir(model)  # a family whose original layout converts by itself (Qwen-VL)
    if source.convert_checkpoint is None:
        raise VlmkitError(
            f"{model}/config.json: model_type {model_type!r} has no conversion; vlmkit converts OpenGVLab's "
            "remote-code InternVL checkpoints (internvl_chat) and Qwen-VL's (qwen)"
        )
    path = source.convert_checkpoint(model, output, force=force)
    typer.echo(f"wrote a {family_for_model_dir(path).name} model converted from {source.name} to {path}")
