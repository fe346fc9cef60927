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
    "chat_template.json",  # the older place of a processor's chat template (the generic path reads it)
)
# transformers 5 may nest the image and video processor configs inside processor_config.json.
NESTED = {"image_processor": "preprocessor_config.json", "video_processor": "video_preprocessor_config.json"}
# What transformers reads for a config a folder lacks (`BaseVideoProcessor.get_video_processor_dict`: with no
# video_preprocessor_config.json, e.g. the Qwen2-VL and Qwen2.5-VL checkpoints, the image one).
FALLBACK = {"video_preprocessor_config.json": "preprocessor_config.json"}


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
    image/video limits of `settings` (a vlmkit.json's contents) written into the JSON ones. A config the
    sources lack is written when the family's limits change what transformers would read in its place
    (`FALLBACK`): a Qwen2-VL run's video sampling gets its own video_preprocessor_config.json. The chat template
    is the family's for `settings` (`Family.chat_template_for`), where it has one: plain transformers on the
    folder then renders the prompts the run encoded."""
    for name in PROCESSOR_FILES:
        source = _first(sources, name)
        if source is not None and name == "chat_template.jinja" and family.chat_template_for is not None:
            # the template that renders what vlmkit encoded with these settings (e.g. Qwen3.5's thinking mode)
            (dest / name).write_text(family.chat_template_for(settings) or source.read_text())
        elif source is not None and not name.endswith(".json"):
            shutil.copy(source, dest / name)
        elif source is not None:
            _write_json(dest / name, with_limits(family, name, json.loads(source.read_text()), settings))
        elif name in FALLBACK and (fallback := _first(sources, FALLBACK[name])) is not None:
            base = json.loads(fallback.read_text())
            config = with_limits(family, name, base, settings)
            if config != base:
                _write_json(dest / name, config)


def _first(folders: list[Path], name: str) -> Path | None:
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def _write_json(path: Path, config: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
