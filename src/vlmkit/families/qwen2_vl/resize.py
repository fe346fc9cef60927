"""Qwen-VL's resize rule, shared by its images (`template.py`) and video frames (`video.py`)."""

from __future__ import annotations

import math


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int, thin_side_floor: bool = False
) -> tuple[int, int]:
    """The size the model sees: sides multiples of `factor`, area in [min_pixels, max_pixels], aspect kept.

    Images follow transformers' Qwen2-VL image processor (5.24, both backends): a side under half a
    `factor` rounds to 0 and the min_pixels branch scales it up. `thin_side_floor=True` first raises
    each rounded side to at least `factor`, as qwen-vl-utils does (vlmkit's video frames follow it).
    ValueError over 200:1 (the processor raises there too).
    """
    if max(height, width) > 200 * min(height, width):
        raise ValueError(
            f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is over the 200:1 limit"
        )
    floor = factor if thin_side_floor else 0
    h = max(floor, round(height / factor) * factor)
    w = max(floor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w
