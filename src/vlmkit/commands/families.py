"""`vlmkit families`: the supported model families and what each supports."""

from __future__ import annotations

import typer


def families() -> None:
    """List the supported model families and what each supports."""
    from vlmkit.families import FAMILIES

    for f in FAMILIES.values():
        pre = f.preprocessor_config
        size = pre.get("size", {})
        vision = f.vision or (
            f"patch={pre.get('patch_size')} merge={pre.get('merge_size')} "
            f"pixels={size.get('shortest_edge')}..{size.get('longest_edge')}"
        )
        options = " ".join("--" + o.replace("_", "-") for o in f.resolution_options) or "none"
        grounding = f.box_format.space if f.box_format is not None else "none"
        typer.echo(
            f"{f.name:<14} model_type={f.model_type:<11} inputs={'+'.join(f.supports):<12} "
            f"grounding={grounding:<14} {vision}  (resolution options: {options})  {f.description}"
        )
        for layout in f.original_layouts:  # checkpoints vlmkit converts to this family (vlmkit convert)
            typer.echo(
                f"  {layout.name:<10} model_type={layout.model_type}: {layout.checkpoints}; converted to {f.name} "
                f"by `vlmkit convert` or on load; every command works on them; verified: {layout.verified}"
            )
