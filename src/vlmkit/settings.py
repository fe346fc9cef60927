"""Encoding settings: `EncodingSettings` (what every command and the Python API take), the one check of
them against a family, and `vlmkit.json` (the settings that travel with a fine-tuned model, run or export).

Peers lose these (a model trained at one resolution or system prompt is served with
another). vlmkit writes them next to every checkpoint it saves and reads them back
whenever that folder is loaded; explicit options still win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.groups import option

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


_SAVED = "Default: saved with the model or run (vlmkit.json), else the checkpoint's"


@dataclass(frozen=True)
class EncodingSettings:
    """How images, videos and the system prompt become tokens: every command and the Python API take this.

    None means "not given": the value saved with the model or run (vlmkit.json) applies, else the
    checkpoint's (its image-processor config) or the family's default. Each field is one CLI option
    (`--min-pixels`, ...) with its help here (`vlmkit.groups.option`); a family takes the fields
    named in its `encoding_options` and refuses the others (`check_encoding`).

    min_pixels / max_pixels: smallest / largest image area in pixels after resizing (Qwen families).
    min_tiles / max_tiles: fewest / most 448 px tiles an image is cut into, thumbnail not counted (InternVL).
    pan_and_scan, pan_and_scan_*: whether and how elongated images are also cut into crops (Gemma 3).
    fps: video frames sampled per second of video; nframes: exactly this many frames instead (they replace
    each other); max_frames / min_frames: most / fewest frames per video (sampling by fps);
    video_max_pixels: largest area of one video frame.
    enable_thinking: whether the prompt lets the model reason before its reply (Qwen3.5).
    system: the system prompt put before every conversation that has none.
    """

    min_pixels: int | None = option(
        None, f"Smallest image area in pixels after resizing (Qwen families). {_SAVED}. Saved with a run."
    )
    max_pixels: int | None = option(
        None,
        "Largest image area in pixels after resizing (fewer pixels = fewer image tokens; Qwen families). "
        f"{_SAVED}. Saved with a run.",
    )
    fps: float | None = option(
        None,
        "Video frames sampled per second of video (within the family's min/max frame counts). "
        f"{_SAVED}, else 2. Saved with a run.",
    )
    nframes: int | None = option(
        None,
        "Sample exactly this many frames per video instead of --fps (at most the video's; Qwen families "
        "round it to an even count). Saved with a run.",
    )
    max_frames: int | None = option(None, f"Most frames sampled from one video. {_SAVED}, else 768. Saved with a run.")
    min_frames: int | None = option(
        None, f"Fewest frames sampled from one video by --fps. {_SAVED}, else 4. Saved with a run."
    )
    video_max_pixels: int | None = option(
        None,
        "Largest area of one video frame after resizing (frames also share a total-pixel budget). "
        "Default: the family's. Saved with a run.",
    )
    min_tiles: int | None = option(
        None,
        f"Tiling families (InternVL): fewest 448 px tiles an image is cut into. {_SAVED} (1). Saved with a run.",
    )
    max_tiles: int | None = option(
        None,
        "Tiling families (InternVL): most tiles per image, not counting the thumbnail (fewer tiles = "
        f"fewer image tokens). {_SAVED} (12). Saved with a run.",
    )
    pan_and_scan: bool | None = option(
        None,
        "Pan-and-scan families (Gemma 3): also cut an elongated image into crops along its long side, each "
        f"its own 256 tokens. {_SAVED} (off). Saved with a run.",
        flags=("--pan-and-scan/--no-pan-and-scan",),
    )
    pan_and_scan_min_crop_size: int | None = option(
        None, f"Pan-and-scan families (Gemma 3): smallest crop side in pixels. {_SAVED} (256). Saved with a run."
    )
    pan_and_scan_max_num_crops: int | None = option(
        None, f"Pan-and-scan families (Gemma 3): most crops per image. {_SAVED} (4). Saved with a run."
    )
    pan_and_scan_min_ratio_to_activate: float | None = option(
        None,
        "Pan-and-scan families (Gemma 3): crop only images whose long side is at least this many times "
        f"their short side. {_SAVED} (1.2). Saved with a run.",
    )
    enable_thinking: bool | None = option(
        None,
        "Thinking families (Qwen3.5): the model reasons in a <think> block before each reply (the prompt ends "
        "with '<think>\\n'); off, an empty think block ends the prompt and replies come without reasoning. "
        f"{_SAVED} (off). Saved with a run; an export's chat template defaults to it.",
        flags=("--enable-thinking/--no-enable-thinking",),
    )
    system: str | None = option(
        None,
        "System prompt for every conversation without one. Default: the one saved with the model or run, "
        "else the family's. Saved with a run.",
    )

    def given(self) -> dict[str, Any]:
        """The fields that were set, by name: `EncodingSettings(max_tiles=2).given() == {"max_tiles": 2}`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


ENCODING_FIELDS = tuple(f.name for f in fields(EncodingSettings))
RESOLUTION_FIELDS = (  # what `vlmkit families` lists
    "min_pixels", "max_pixels", "min_tiles", "max_tiles",
    "pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate",
)


def encoding_settings(encoding: EncodingSettings | None = None, **options: Any) -> EncodingSettings:
    """The one conversion from the keyword arguments the Python API keeps accepting (`min_pixels=...`) to
    `EncodingSettings`; `encoding` and keyword arguments may be combined (a keyword wins over the same field)."""
    unknown = sorted(set(options) - set(ENCODING_FIELDS))
    if unknown:
        raise TypeError(f"unknown encoding setting(s) {', '.join(unknown)}; known: {', '.join(ENCODING_FIELDS)}")
    base = encoding or EncodingSettings()
    return replace(base, **{k: v for k, v in options.items() if v is not None})


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def check_encoding(family: Any, encoding: EncodingSettings) -> dict[str, Any]:
    """The given settings as keyword arguments for `family`'s template, after refusing, with one line, any
    option the family does not take (`family.encoding_options`). The one place options are refused."""
    given = encoding.given()
    for name in given:
        if name not in family.encoding_options:
            takes = " ".join(option_name(n) for n in family.encoding_options) or "none"
            raise VlmkitError(
                f"{option_name(name)} does not apply to {family.name} models (its encoding options: {takes}); "
                "leave it out"
            )
    return given


# (lower, upper) limit pairs: giving only the upper limit below a saved lower one lowers that too
LIMIT_PAIRS = (("min_pixels", "max_pixels"), ("min_tiles", "max_tiles"))
# settings that replace each other: giving either drops the saved value of the other
EXCLUSIVE = ("fps", "nframes")


def resolve_encoding(family: Any, given: EncodingSettings, saved: dict[str, Any]) -> dict[str, Any]:
    """The one merge of encoding settings: `given` (options, API arguments) over `saved` (the vlmkit.json of
    the model folder or checkpoint), as keyword arguments for `family`'s template, which fills what is
    still missing from the checkpoint's own config or its defaults. Options the family does not take are
    refused (`check_encoding`); saved settings it does not take are ignored (written by another version).

    Two rules make a partial override mean what users expect: giving `fps` or `nframes` drops the saved
    value of the other (they replace each other), and giving only an upper limit (`max_pixels`) below the
    saved lower one (`min_pixels`) lowers that to it."""
    explicit = check_encoding(family, given)
    merged = {k: v for k, v in saved.items() if k in family.encoding_options and v is not None}
    if any(k in explicit for k in EXCLUSIVE):
        for k in EXCLUSIVE:
            merged.pop(k, None)
    for lower, upper in LIMIT_PAIRS:
        if upper in explicit and lower not in explicit and lower in merged:
            merged[lower] = min(merged[lower], explicit[upper])
    return {**merged, **explicit}
