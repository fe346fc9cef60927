"""Every command's options, their spellings and defaults, as recorded before the option groups (issue 21):
generating the options from the groups must keep what users type working. A new option is allowed (it
is listed by the test as an addition, not a failure); a removed option or a changed default fails.

Re-record after an intended change with `python tests/unit/test_cli_options.py > tests/unit/cli_options.json`."""

from __future__ import annotations

import json
import re
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


README = Path(__file__).resolve().parents[2] / "README.md"
HIDDEN = {"--help", "-h"}


def _spellings(option: str) -> list[str]:
    """'--packing/--no-packing' -> ['--packing', '--no-packing']; '-n/--rows' -> ['-n', '--rows']."""
    return [s for s in option.split("/") if s.startswith("-")]


def _table_flags(section: str) -> set[str]:
    """The --flags written in the option table (rows starting with `|`) of README section `section`."""
    text = README.read_text()
    body = text.split(section, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    return {flag for row in rows for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", row.split(" | ")[0])}


def test_the_readme_option_tables_list_every_option_and_no_other():
    """The README's option tables (sft, infer) are checked against the commands' options, generated from
    the option groups: a new option must get a row, and a row must not name an option that is gone."""
    now = command_options()
    for command in ("sft", "infer"):
        options = [_spellings(o) for o in now[f"vlmkit {command}"] if not o.startswith("<") and o not in HIDDEN]
        written = _table_flags(f"### `vlmkit {command}`")
        lacking = [o[-1] for o in options if not written & set(o)]
        unknown = written - {s for o in options for s in o}
        assert not lacking, f"README's `vlmkit {command}` table lacks {lacking}"
        assert not unknown, f"README's `vlmkit {command}` table names unknown {sorted(unknown)}"


def test_the_readme_names_every_option_of_every_command():
    text = README.read_text()
    missing = [
        f"{command} {option}"
        for command, options in command_options().items()
        for option in options
        if not option.startswith("<") and not any(s in text for s in _spellings(option) if s not in HIDDEN)
    ]
    assert not missing, f"options the README never names: {missing}"


if __name__ == "__main__":
    json.dump(command_options(), sys.stdout, indent=1, sort_keys=True)
    print()
