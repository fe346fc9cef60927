"""Option groups: a frozen dataclass whose fields are options, each declared once with its help text.

    @dataclass(frozen=True)
    class GenerationOptions:
        max_new_tokens: int = option(512, "Most tokens generated per reply.")
        seed: int | None = option(None, "Random seed for sampling.")

A group is what the library takes (`vlmkit.load(..., loading=LoadOptions(dtype="bf16"))`) and what the
CLI generates its options from (`vlmkit.commands.options.with_options`): field `max_new_tokens` is the
option `--max-new-tokens`, with the field's default and help. Adding an option to a group is one field;
every command that takes the group gets it. A group checks its own values (`check`), so range checks live
on the group, not in the commands or a family's template. This module imports nothing heavy (no typer,
no torch): library modules declare their groups with it.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

GROUP_FIELD = "vlmkit_option"  # the metadata key that marks a field as an option


@dataclass(frozen=True)
class OptionInfo:
    """How a field appears on the command line.

    help: its `--help` text. flags: the spellings when not just `--field-name` (e.g. ("--quiet", "-q"), or
    ("--packing/--no-packing",) for a boolean pair with a None default). panel: the `--help` section, when
    not the group's. metavar: what `--help` shows for the value."""

    help: str
    flags: tuple[str, ...] = ()
    panel: str | None = None
    metavar: str | None = None


def option(
    default: Any = MISSING,
    help: str = "",
    *,
    flags: tuple[str, ...] = (),
    panel: str | None = None,
    metavar: str | None = None,
    default_factory: Any = MISSING,
) -> Any:
    """A documented field of an option group (a `dataclasses.field` with its CLI declaration)."""
    info = OptionInfo(help=help, flags=flags, panel=panel, metavar=metavar)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={GROUP_FIELD: info})
    return field(default=default, metadata={GROUP_FIELD: info})


def same_option(cls: type, name: str) -> Any:
    """A field declared as field `name` of group `cls` is (default and CLI declaration), for another group
    that takes the same option: `trust_remote_code: bool = same_option(LoadOptions, "trust_remote_code")`."""
    f = cls.__dataclass_fields__[name]
    return field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)


def is_group(cls: Any) -> bool:
    """Whether `cls` is an option group: a dataclass type with at least one `option` field."""
    return (
        isinstance(cls, type)
        and dataclasses.is_dataclass(cls)
        and any(GROUP_FIELD in f.metadata for f in fields(cls))
    )


def group_options(cls: type) -> list[tuple[dataclasses.Field, OptionInfo, Any]]:
    """(field, its OptionInfo, its resolved type) for every option field of group `cls`, in order."""
    hints = typing.get_type_hints(cls)
    return [(f, f.metadata[GROUP_FIELD], hints[f.name]) for f in fields(cls) if GROUP_FIELD in f.metadata]


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one for a default_factory)."""
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def from_keywords(cls: type, keywords: dict[str, Any], given: Any = None) -> tuple[Any, dict[str, Any]]:
    """(`given` (or `cls()`) with the keywords that name its fields over it, the other keywords): the one
    converter from the flat keyword arguments the Python API keeps accepting (`vlmkit.load(path, dtype="fp32")`)
    to a group."""
    names = {f.name for f in fields(cls)}
    mine = {k: v for k, v in keywords.items() if k in names}
    group = dataclasses.replace(given, **mine) if given is not None else cls(**mine)
    return group, {k: v for k, v in keywords.items() if k not in names}
