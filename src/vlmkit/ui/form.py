"""The page's training form, generated from `vlmkit sft`'s option groups (`vlmkit.train.options.SFT_GROUPS` and
`EncodingSettings`), and the `vlmkit sft` command line of a filled-in form.

The form is the groups' fields, so it never falls behind the CLI: a new option of a group is a new field of
the form. Each field carries its flag, type, default and help as `--help` shows them.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.groups import field_default, group_options
from vlmkit.settings import EncodingSettings
from vlmkit.train.options import SFT_GROUPS

# Set by the app, not the form: runs go to its --runs folder; a bar is no use in a log file.
FIXED = {"output_dir", "progress"}
GROUPS = (*SFT_GROUPS[:1], EncodingSettings, *SFT_GROUPS[1:])


def _kind(annotation: Any) -> tuple[str, bool]:
    """(the field's kind: bool, int, float, list or str; whether None is allowed)."""
    args = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), annotation) if optional else annotation
    if typing.get_origin(base) is list:
        return "list", optional
    for kind in (bool, int, float):
        if base is kind:
            return kind.__name__, optional
    return "str", optional


def _flag(name: str, info) -> str:
    spelled = [f for flags in info.flags for f in flags.split("/") if f.startswith("--") and not f.startswith("--no-")]
    return spelled[0] if spelled else "--" + name.replace("_", "-")


def form_fields() -> list[dict[str, Any]]:
    """One entry per option of sft's groups: {group, name, flag, kind, optional, default, help}."""
    out = []
    for group in GROUPS:
        for f, info, annotation in group_options(group):
            if f.name in FIXED:
                continue
            kind, optional = _kind(annotation)
            default = field_default(f)
            out.append(
                {
                    "group": group.__name__.removesuffix("Options").removesuffix("Settings"),
                    "name": f.name,
                    "flag": _flag(f.name, info),
                    "kind": kind,
                    "optional": optional,
                    "default": default if isinstance(default, (bool, int, float, str, list, type(None))) else str(default),
                    "help": info.help,
                }
            )
    return out


def sft_arguments(values: dict[str, Any]) -> list[str]:
    """The `vlmkit sft` arguments of the form's `values` ({field name: value}; fields left at their default
    may be left out). Unknown names are refused in one line; the values themselves are checked by sft."""
    fields = {f["name"]: f for f in form_fields()}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise VlmkitError(f"training form: unknown option(s) {', '.join(unknown)}; reload the page")
    args: list[str] = []
    for name, value in values.items():
        f = fields[name]
        if value is None or value == "" or value == f["default"]:
            continue
        if f["kind"] == "bool":
            flag = f["flag"]
            args.append(flag if value else "--no-" + flag.removeprefix("--"))
        elif f["kind"] == "list":
            for item in value if isinstance(value, list) else str(value).split():
                args += [f["flag"], str(item)]
        else:
            args += [f["flag"], str(value)]
    return args
