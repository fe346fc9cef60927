"""What the chat tells people (on stderr, unless `--quiet`): the model and the settings in force, once at
start, and each new image's original and resized size and token count before its reply."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vlmkit.backends.transformers_backend import VLM

if TYPE_CHECKING:
    from vlmkit.families.interface import Template


def describe_model(vlm: VLM, system_option: str | None) -> list[str]:
    """What the chat runs with, for people: the model, where it runs, the resolution settings in force and
    where the system prompt comes from."""
    from vlmkit.settings import SETTINGS_FILE, read_settings

    settings = {k: v for k, v in vlm.template.settings.items() if k != "system" and v is not None}
    if system_option is not None:
        system = "--system"
    elif vlm.template.system is not None and read_settings(vlm.path).get("system") is not None:
        system = f"saved with the model ({vlm.path / SETTINGS_FILE})"
    else:
        system = "the family's default" if vlm.template.system is None else "given to load()"
    dtype = str(vlm.model.dtype).removeprefix("torch.")
    return [
        f"model: {vlm.path} (family {vlm.family.name}, device {vlm.device}, dtype {dtype})",
        "resolution: " + (", ".join(f"{k}={v}" for k, v in settings.items()) or "the family's fixed sizes"),
        f"system prompt: {system}",
    ]


def describe_images(template: Template, encoded: dict[str, Any], first: int = 0) -> list[str]:
    """One line per image of the encoded prompt from image `first` (0-based) on: its original and resized
    size and how many tokens it became."""
    token = template.image_token_id
    if token is None:  # the family expands no image tokens itself (a remote-code model does)
        return []
    runs: list[int] = []  # tokens of each image, in order
    previous = None
    for t in encoded["input_ids"].tolist():
        if t == token:
            if previous == token:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = t
    sizes, notes = encoded.get("image_sizes"), encoded.get("image_notes") or []
    lines = []
    for k in range(first, len(runs)):
        if isinstance(sizes, list) and k < len(sizes):
            (oh, ow), (rh, rw) = sizes[k]
            what = f"{ow}×{oh} resized to {rw}×{rh} (w×h), "
        elif k < len(notes):
            what = notes[k].split(": ", 1)[-1] + ", "
        else:
            what = ""
        lines.append(f"image {k + 1}: {what}{runs[k]} tokens")
    return lines
