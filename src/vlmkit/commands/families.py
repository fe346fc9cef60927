"""`vlmkit families`: the supported model families and what each supports."""

from __future__ import annotations

import re

import typer


def families() -> None:
    """List the supported model families and what each supports: the curated ones (a folder each), then the
    generic path that takes any other transformers VLM with a chat template, its limits and the model types it takes."""
    from vlmkit.families import FAMILIES
    from vlmkit.families.generic import LIMITS, image_text_model_types
    from vlmkit.families.generic_checked import TESTED, generic_status, processor_needs_torchvision

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
        if f.verified:
            typer.echo(f"  verified: {f.verified}")
    generic = [t for t in image_text_model_types() if t not in FAMILIES]
    typer.echo(
        f"{'generic':<14} any other model type transformers loads with AutoModelForImageTextToText, when its folder has a "
        "chat template: encoded by the checkpoint's own processor and chat template (chat, infer, eval, serve, sft, "
        f"export); {LIMITS}"
    )
    typer.echo(f"  model types that take the generic path ({len(generic)}): {', '.join(generic)}")
    for model_type in (t for t in generic if t in TESTED):
        typer.echo(f"  {model_type}: {generic_status(model_type)}")
    groups = {
        False: "not tested, processor loads without torchvision",
        True: "not tested, processor needs torchvision",
        None: "not tested, no processor class in transformers' registry",
    }
    for needs, line in groups.items():
        types = [t for t in generic if t not in TESTED and processor_needs_torchvision(t) is needs]
        typer.echo(f"  {line} ({len(types)}): {', '.join(types)}")


def family_titles() -> list[str]:
    """The families' names for `vlmkit --help` ("Qwen2-VL", "InternVL2.5 / InternVL3 -hf", ...): the start of
    each `Family(description=...)` in the family folders, read from their source, since importing the
    registry imports torch (seconds) and `--help` must answer at once. A description that starts in lower
    case is a variant of a family already named (the remote-code Qwen-VL) and is left out."""
    import ast
    from pathlib import Path

    titles = []
    for init in sorted((Path(__file__).parents[1] / "families").glob("*/__init__.py")):
        for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Family":
                description = next((k.value for k in node.keywords if k.arg == "description"), None)
                if isinstance(description, ast.Constant) and description.value[:1].isupper():
                    titles.append(re.split(r" \(|:|,", description.value, maxsplit=1)[0].strip())
    return titles
