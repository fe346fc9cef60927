"""`vlmkit.json`: the encoding settings that travel with a fine-tuned model, run or export.

Peers lose these (a model trained at one resolution or system prompt is served with
another). vlmkit writes them next to every checkpoint it saves and reads them back
whenever that folder is loaded; explicit options still win.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError

SETTINGS_FILE = "vlmkit.json"


def read_settings(folder: str | Path) -> dict[str, Any]:
    """The saved settings of `folder`, or {} when it has none."""
    path = Path(folder) / SETTINGS_FILE
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VlmkitError(f"{path}: not valid JSON ({e}); fix or delete it") from None
    if not isinstance(settings, dict):
        raise VlmkitError(f"{path}: expected a JSON object; fix or delete it")
    return settings


def write_settings(folder: str | Path, settings: dict[str, Any]) -> Path:
    """Write `settings` to folder/vlmkit.json atomically (a crash never leaves half a file)."""
    path = Path(folder) / SETTINGS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path
