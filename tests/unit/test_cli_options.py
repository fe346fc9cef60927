"""Every command's options, their spellings and defaults, as recorded before the option groups (issue 21):
generating the options from the groups must keep what users type working. A new option is allowed (it
is listed by the test as an addition, not a failure); a removed option or a changed default fails.

Re-record after an intended change with `python tests/unit/test_cli_options.py > tests/unit/cli_options.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).with_name("cli_options.json")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def command_options() -> dict[str, dict[str, Any]]:
    """{"vlmkit infer": {"--max-new-tokens": {"default": 512, ...}, ...}, ...} for every command."""
    from typer.main import get_command

    from vlmkit.cli import app

    out: dict[str, dict[str, Any]] = {}

    def walk(command: Any, path: str) -> None:
        out[path] = {
            "/".join(param.opts + param.secondary_opts): {
                "default": _plain(param.default),
                "multiple": bool(getattr(param, "multiple", False)),
                "flag": bool(getattr(param, "is_flag", False)),
            }
            for param in command.params
            if param.param_type_name == "option"
        } | {
            f"<{param.name}>": {"default": _plain(param.default)}
            for param in command.params
            if param.param_type_name == "argument"
        }
        if hasattr(command, "commands"):  # a group (typer carries its own click)
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(get_command(app), "vlmkit")
    return out


def test_every_command_keeps_its_recorded_options_and_defaults():
    recorded = json.loads(RECORDED.read_text())
    now = command_options()
    missing = [f"{cmd} {opt}" for cmd, opts in recorded.items() for opt in opts if opt not in now.get(cmd, {})]
    changed = [
        f"{cmd} {opt}: {was} -> {now[cmd][opt]}"
        for cmd, opts in recorded.items()
        for opt, was in opts.items()
        if opt in now.get(cmd, {}) and now[cmd][opt] != was
    ]
    assert not missing, f"options gone: {missing}"
    assert not changed, f"options changed: {changed}"


if __name__ == "__main__":
    json.dump(command_options(), sys.stdout, indent=1, sort_keys=True)
    print()
