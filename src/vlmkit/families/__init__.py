"""Model families: one folder each, one line each in `FAMILIES`.

A family folder holds everything specific to it: the chat template, the special
tokens, the vision preprocessing numbers, the prompt rendering, and the recipe for a
tiny random model. Shared code asks the `Family` record; it never branches on a
family's name.

The records a folder fills in (`Family`, `OriginalLayout`) are defined in `vlmkit.families.family` and
re-exported here.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.families.family import Family, OriginalLayout, read_model_config

__all__ = [
    "FAMILIES",
    "Family",
    "OriginalLayout",
    "family_by_name",
    "family_for_checkpoint",
    "family_for_config",
    "family_for_model_dir",
    "native_model_dir",
    "original_layout",
    "read_model_config",
    "resolution_settings",
    "tiny_model_names",
]


def _families() -> dict[str, Family]:
    from vlmkit.families import (
        gemma3,
        gemma4,
        glm4v,
        glm46v,
        internvl,
        llava,
        llava_next,
        llava_onevision,
        qwen2_5_vl,
        qwen2_vl,
        qwen3_5,
        qwen3_5_moe,
        qwen3_vl,
        qwen3_vl_moe,
        qwen_vl,
    )

    return {
        f.model_type: f
        for f in (qwen2_vl.FAMILY, qwen2_5_vl.FAMILY, qwen3_vl.FAMILY, internvl.FAMILY, llava.FAMILY, llava_next.FAMILY)
        + (qwen_vl.FAMILY, qwen_vl.REMOTE_FAMILY, qwen3_vl_moe.FAMILY, qwen3_5.FAMILY, qwen3_5_moe.FAMILY, gemma3.FAMILY)
        + (gemma4.FAMILY, glm4v.FAMILY, glm46v.FAMILY, glm46v.MOE_FAMILY, llava_onevision.FAMILY)
    }


FAMILIES: dict[str, Family] = _families()


def _registered(family: Family) -> Family:
    if family.register_classes is not None:
        family.register_classes()
    return family


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(" ", "")


def family_by_name(name: str) -> Family:
    """`qwen2-vl`, `Qwen2_VL`, `qwen2_vl` ... -> the family; a clear error otherwise."""
    wanted = _norm(name)
    for family in FAMILIES.values():
        if wanted in {_norm(family.name), _norm(family.model_type), *map(_norm, family.aliases)}:
            return _registered(family)
    known = ", ".join(f.name for f in FAMILIES.values())
    raise VlmkitError(f"unknown model family {name!r}; known families: {known}")


def tiny_model_names() -> list[str]:
    """What `vlmkit tiny-model` builds, as it accepts them: every family whose tiny model vlmkit writes
    offline (not a remote-code model), then the original layouts that `vlmkit convert` reads."""
    families = [f.name for f in FAMILIES.values() if f.write_tiny_model is not None or not f.remote_code]
    return families + [layout.name for f in FAMILIES.values() for layout in f.original_layouts]


def original_layout(name_or_model_type: str) -> OriginalLayout | None:
    """The original layout named `name_or_model_type` (tiny-model name or config.json model_type), if any."""
    for family in FAMILIES.values():
        for layout in family.original_layouts:
            if name_or_model_type in (layout.name, layout.model_type):
                return layout
    return None


def native_model_dir(model_dir: Path, remote_code: bool = False) -> Path:
    """`model_dir`, or for a checkpoint in an original layout vlmkit converts, its converted copy: one rule
    for every family (OpenGVLab's InternVL, the original Qwen-VL), so that `sft`, `export`, `infer` and
    `serve` take such a folder alike. A remote-code family's folder (Qwen-VL's model_type `qwen`) is kept as
    it is only when `remote_code` is asked for (`--trust-remote-code`: run the checkpoint's own code)."""
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return model_dir  # family_for_model_dir says what is wrong with it
    if not isinstance(model_type, str):
        return model_dir
    layout = original_layout(model_type)
    if layout is not None:
        return layout.converted_copy(model_dir)
    family = FAMILIES.get(model_type)
    if family is None or family.converted_copy is None or remote_code:
        return model_dir
    try:
        return family.converted_copy(model_dir)
    except VlmkitError as e:  # a folder that is not the layout converted, or is incomplete
        raise VlmkitError(
            f"{e}; to run the checkpoint's own code instead (inference only), pass --trust-remote-code"
        ) from None


def family_for_config(config: dict[str, Any], where: str = "config.json", model_dir: str | Path | None = None) -> Family:
    """The family of a checkpoint, from its `config.json` contents; a model type with no folder takes the generic
    path (`vlmkit.families.generic`) when the checkpoint's folder `model_dir` is given."""
    model_type = config.get("model_type")
    if model_type in FAMILIES:
        return _registered(FAMILIES[model_type])
    known = ", ".join(FAMILIES)
    if model_dir is not None:
        return _generic_family(str(Path(model_dir).resolve()), (Path(model_dir) / "config.json").stat().st_mtime_ns, where)
    raise VlmkitError(f"{where}: model_type {model_type!r} is not a supported family (supported: {known})")


@functools.lru_cache(maxsize=8)
def _generic_family(model_dir: str, stamp: int, where: str) -> Family:
    """One generic record per model folder (and version of its config.json): building it reads the model class."""
    from vlmkit.families.generic import generic_family

    return generic_family(Path(model_dir), read_model_config(model_dir), where, ", ".join(FAMILIES))


def family_for_model_dir(model_dir: str | Path) -> Family:
    where = str(Path(model_dir) / "config.json")
    return family_for_config(read_model_config(model_dir), where=where, model_dir=model_dir)


def family_for_checkpoint(saved: str | None, model_dir: str | Path) -> Family:
    """The family of a vlmkit checkpoint: the one its vlmkit.json names (`saved`), or, for a model type on the
    generic path (whose name is not a folder's) or no name at all, that of its base model folder `model_dir`."""
    if saved and any(saved == f.name for f in FAMILIES.values()):
        return family_by_name(saved)
    return family_for_model_dir(model_dir)


def resolution_settings(family: Family, **given: Any) -> dict[str, Any]:
    """The options a user gave (None = not given), checked against the ones `family` takes
    (`vlmkit.settings.check_encoding`): `resolution_settings(f, min_tiles=None, max_tiles=2)` -> {"max_tiles": 2}."""
    from vlmkit.settings import check_encoding, encoding_settings

    return check_encoding(family, encoding_settings(**given))
