"""The processor files a checkpoint or export carries, rewritten with the limits the run trained with.

Plain transformers and vLLM never read vlmkit.json: they resize images by the folder's
`preprocessor_config.json` (and videos by `video_preprocessor_config.json`). A folder that kept the
base checkpoint's limits (e.g. Qwen2-VL's max_pixels 12845056, InternVL's max_patches 12) would be
served at another resolution than it was trained at. So every file copied here gets the run's limits
written in by the family's `processor_limits(file name, config, settings) -> config`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

PROCESSOR_FILES = (
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
)
# transformers 5 may nest the image and video processor configs inside processor_config.json.
NESTED = {"image_processor": "preprocessor_config.json", "video_processor": "video_preprocessor_config.json"}


def with_limits(family, name: str, config: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """`config` (the contents of file `name`) with the limits of `settings` written in by `family`."""
    if family.processor_limits is None:
        return config
    if name == "processor_config.json":
        return {
            key: family.processor_limits(NESTED[key], value, settings)
            if key in NESTED and isinstance(value, dict)
            else value
            for key, value in config.items()
        }
    return family.processor_limits(name, config, settings)


def write_processor_files(family, sources: list[Path], dest: Path, settings: dict[str, Any]) -> None:
    """Copy each processor file from the first folder of `sources` that has it into `dest`, with the
    image/video limits of `settings` (a vlmkit.json's contents) written into the JSON ones."""
    for name in PROCESSOR_FILES:
        source = next((folder / name for folder in sources if (folder / name).is_file()), None)
        if source is None:
            continue
        if not name.endswith(".json"):
            shutil.copy(source, dest / name)
            continue
        config = with_limits(family, name, json.loads(source.read_text()), settings)
        tmp = dest / f"{name}.tmp"
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        tmp.replace(dest / name)
