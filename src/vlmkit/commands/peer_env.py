"""Environment variables that ms-swift and qwen-vl-utils read to size images and videos, which vlmkit does not.

People coming from ms-swift export `MAX_PIXELS=...` and expect it to apply; vlmkit takes every setting as a
flag (no hidden switches), so a variable left set would silently do nothing. `ignored_variable_warnings`
names each one that is set and the flag that does its job; the CLI prints them once at the start of every
command that encodes images or videos.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

# variable -> the vlmkit flag that does its job, or None when vlmkit has no such setting
PEER_VARIABLES: dict[str, str | None] = {
    "MAX_PIXELS": "--max-pixels",
    "MIN_PIXELS": "--min-pixels",
    "VIDEO_MAX_PIXELS": "--video-max-pixels",
    "VIDEO_MIN_PIXELS": None,
    "VIDEO_TOTAL_PIXELS": None,
    "FPS": "--fps",
    "NFRAMES": "--nframes",
    "FPS_MAX_FRAMES": "--max-frames",
    "FPS_MIN_FRAMES": None,
    "SIZE_FACTOR": None,
    "IMAGE_FACTOR": None,
    "MAX_RATIO": None,
    "RESIZED_HEIGHT": None,
    "RESIZED_WIDTH": None,
    "MAX_NUM": "--max-tiles",  # InternVL: most tiles per image
    "INPUT_SIZE": None,  # InternVL tile size: fixed by the checkpoint
    "VIDEO_SEGMENTS": "--nframes",  # InternVL: frames per video
}

# what applies instead, for a variable vlmkit has no flag for
NO_FLAG = {
    "VIDEO_MIN_PIXELS": "the family's minimum frame size applies",
    "VIDEO_TOTAL_PIXELS": "the family's total-pixel budget for a video applies",
    "FPS_MIN_FRAMES": "the family's minimum frame count applies",
    "SIZE_FACTOR": "the checkpoint's patch and merge sizes apply",
    "IMAGE_FACTOR": "the checkpoint's patch and merge sizes apply",
    "MAX_RATIO": "the image processor's aspect-ratio limit applies",
    "RESIZED_HEIGHT": "use --max-pixels / --min-pixels to bound image sizes",
    "RESIZED_WIDTH": "use --max-pixels / --min-pixels to bound image sizes",
    "INPUT_SIZE": "the checkpoint's tile size applies",
}

# commands that encode images or videos (a `data` subcommand is named by its group)
ENCODING_COMMANDS = {"infer", "sft", "data", "serve", "eval", "demo"}


def ignored_variable_warnings(environ: Mapping[str, str] | None = None) -> list[str]:
    """One `warning: ...` line per ms-swift variable set (non-empty) in `environ` (default: os.environ)."""
    environ = os.environ if environ is None else environ
    lines = []
    for name, flag in PEER_VARIABLES.items():
        value = environ.get(name, "").strip()
        if not value:
            continue
        instead = f"use {flag} {value}" if flag else NO_FLAG[name]
        lines.append(f"warning: {name}={value} is set in the environment; vlmkit does not read it: {instead}")
    return lines


def command_encodes(argv: list[str]) -> bool:
    """Whether the command line `argv` (without the program name) runs a command that encodes media."""
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    return command in ENCODING_COMMANDS and not {"--help", "-h"} & set(argv)
