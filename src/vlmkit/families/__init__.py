"""Model families: one folder each, one line each in `FAMILIES`.

A family folder holds everything specific to it: the chat template, the special
tokens, the vision preprocessing numbers, the prompt rendering, and the recipe for a
tiny random model. Shared code asks the `Family` record; it never branches on a
family's name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError


@dataclass(frozen=True)
class Family:
    """What shared code needs to know about a model family.

    name: how users write it (`qwen2-vl`); model_type: `config.json`'s `model_type`.
    special_tokens: (token, special) pairs in the real tokenizer's order, starting at
    `first_special_id`; `special=False` tokens are kept when decoding.
    load_template(model_dir, tokenizer, **settings) -> a template object (see
    `vlmkit.families.qwen2_vl.template.QwenVLTemplate` for the interface).
    tiny_config(vocab_size, special_ids) -> the model's `config.json` dict at toy size.
    module_groups: parameter-name prefixes of the parts users freeze or tune separately:
    "vit" (vision tower), "aligner" (vision-to-text projector), "llm" (language model and
    head). The longest matching prefix decides a parameter's group.
    """

    name: str
    model_type: str
    description: str
    folder: Path
    special_tokens: tuple[tuple[str, bool], ...]
    first_special_id: int
    eos_token: str
    pad_token: str
    preprocessor_config: dict[str, Any]
    load_template: Callable[..., Any]
    tiny_config: Callable[[int, dict[str, int]], dict[str, Any]]
    module_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    supports: tuple[str, ...] = ("image",)
    aliases: tuple[str, ...] = field(default=())

    @property
    def chat_template(self) -> str:
        return (self.folder / "chat_template.jinja").read_text()


def _families() -> dict[str, Family]:
    from vlmkit.families import qwen2_5_vl, qwen2_vl, qwen3_vl

    return {f.model_type: f for f in (qwen2_vl.FAMILY, qwen2_5_vl.FAMILY, qwen3_vl.FAMILY)}


FAMILIES: dict[str, Family] = _families()


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "")


def family_by_name(name: str) -> Family:
    """`qwen2-vl`, `Qwen2_VL`, `qwen2_vl` ... -> the family; a clear error otherwise."""
    wanted = _norm(name)
    for family in FAMILIES.values():
        if wanted in {_norm(family.name), _norm(family.model_type), *map(_norm, family.aliases)}:
            return family
    known = ", ".join(f.name for f in FAMILIES.values())
    raise VlmkitError(f"unknown model family {name!r}; known families: {known}")


def family_for_config(config: dict[str, Any], where: str = "config.json") -> Family:
    """The family of a checkpoint, from its `config.json` contents."""
    model_type = config.get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    known = ", ".join(FAMILIES)
    raise VlmkitError(f"{where}: model_type {model_type!r} is not a supported family (supported: {known})")


def family_for_model_dir(model_dir: str | Path) -> Family:
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise VlmkitError(f"{model_dir}: no config.json; is this a model folder?") from None
    except json.JSONDecodeError as e:
        raise VlmkitError(f"{path}: not valid JSON ({e})") from None
    return family_for_config(config, where=str(path))
