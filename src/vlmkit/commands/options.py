"""Option groups (`vlmkit.groups`: `EncodingSettings`, `LoadOptions`, ...) become a command's options through
`with_options`: the command declares one parameter per group (`loading: LoadOptions`) and receives the
options it stands for as that one value, checked. Each option is documented once, on its group's field, so
`--help` reads the same in every command.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any

import typer

from vlmkit.groups import OptionInfo, field_default, group_options, is_group

# -- option groups: one CLI option per field --------------------------------------------------------------


def _typer_option(f: dataclasses.Field, info: OptionInfo, hint: Any, panel: str | None) -> tuple[Any, Any]:
    """(annotation, default) of the typer parameter for group field `f`."""
    default = f.default
    if f.default_factory is not dataclasses.MISSING:  # a list: typer's "not given" is None
        hint, default = hint | None, None
    declared = typer.Option(*info.flags, help=info.help, rich_help_panel=info.panel or panel, metavar=info.metavar)
    return Annotated[hint, declared], default


def with_options(
    panels: dict[str, str] | None = None, omit: dict[str, tuple[str, ...]] | None = None, check: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a typer command whose parameters annotated with an option group (`vlmkit.groups`), e.g.
    `loading: LoadOptions`, stand for that group's options: typer sees one option per field in their place
    (`--field-name`, the field's default and help, in `--help` section `panels[parameter]` when given;
    fields in `omit[parameter]` are not options of this command and keep their defaults), and the command
    gets each group as one value, checked (`group.check()`, where it has one) before it runs, unless `check`
    is False (a command that merges the groups with a file first, as sft's `--config`, checks the result).
    Other parameters are typer's as usual."""
    panels, omit = panels or {}, omit or {}

    def add(command: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(command, eval_str=True)
        params, groups = [], {}
        for param in signature.parameters.values():
            if is_group(param.annotation):
                groups[param.name] = param.annotation
                for f, info, hint in group_options(param.annotation):
                    if f.name in omit.get(param.name, ()):
                        continue
                    annotation, default = _typer_option(f, info, hint, panels.get(param.name))
                    params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                                    annotation=annotation))  # fmt: skip
            else:  # typer passes every option by name
                params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
        names = [p.name for p in params]
        assert len(names) == len(set(names)), f"{command.__name__}: two options named alike in {names}"

        @functools.wraps(command)
        def run(**options: Any) -> Any:
            for name, cls in groups.items():
                values = {}
                for f, _, _ in group_options(cls):
                    if f.name in omit.get(name, ()):
                        continue
                    value = options.pop(f.name)
                    if value is None and f.default_factory is not dataclasses.MISSING:  # a list not given
                        value = field_default(f)
                    values[f.name] = value
                group = cls(**values)
                if check and hasattr(group, "check"):
                    group.check()
                for line in group.ignored() if check and hasattr(group, "ignored") else []:
                    typer.echo(f"warning: {line}", err=True)
                options[name] = group
            return command(**options)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return add


def with_encoding_options(panel: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`with_options` for a command whose one group is `encoding: EncodingSettings`."""
    return with_options(panels={"encoding": panel} if panel else None)


def field_option(cls: type, name: str) -> Any:
    """The typer annotation of group `cls`'s field `name` alone (its help and spellings), for a command that
    takes that one option and not the group."""
    for f, info, hint in group_options(cls):
        if f.name == name:
            return _typer_option(f, info, hint, None)[0]
    raise KeyError(f"{cls.__name__} has no option {name}")
