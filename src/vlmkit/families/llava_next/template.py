"""LLaVA-NeXT (1.6) prompt format and "anyres" image tiling.

An image is resized, keeping its aspect ratio, into the grid resolution of `image_grid_pinpoints`
that keeps the most of its pixels (then wastes the fewest), padded with black to that resolution and
cut into 336x336 tiles; a 336x336 squash of the whole image (the base image) goes first. The model
keeps the base image's 24x24 features, lays the tiles' features out as one big grid, removes the rows
or columns that only saw padding, and ends every grid row with the learned `image_newline`. So the
number of `<image>` tokens depends on the original size (`AnyRes.token_count`, the same arithmetic as
transformers' `LlavaNextProcessor._get_number_of_features`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmkit.errors import DataError
from vlmkit.families.encoding import Segment
from vlmkit.families.llava.template import IMAGE_TOKEN, ClipCrop


def _parts(message: dict, kind: str) -> list[dict]:
    return [part for part in message["content"] if part["type"] == kind]


def _only_text(message: dict, where: str) -> str:
    """The template prints `content[0]['text']` of system and assistant messages: one text part only."""
    if len(message["content"]) != 1 or message["content"][0]["type"] != "text":
        raise DataError(f"{where}: a LLaVA-NeXT {message['role']} message must be one text (no images)")
    return message["content"][0]["text"]


def render_llava_next_mistral(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample", end_of_reply: str = ""
) -> list[Segment]:
    """llava-v1.6-mistral-7b-hf: `[INST] <image>\\ntext [/INST] reply</s> ` with an optional
    `<<SYS>>\\n...\\n<</SYS>>\\n\\n` first. The user turn's ` [/INST]` is the generation prompt, so
    `add_generation_prompt` adds nothing; the template's own `</s>` ends each (supervised) reply."""
    segments: list[Segment] = []
    for message in messages:
        role = message["role"]
        if role == "system":
            segments.append(Segment("<<SYS>>\n" + _only_text(message, where) + "\n<</SYS>>\n\n"))
        elif role == "user":
            segments.append(Segment("[INST] "))
            segments += [Segment(IMAGE_TOKEN + "\n") for _ in _parts(message, "image")]
            segments.append(Segment("".join(part["text"] for part in _parts(message, "text")) + " [/INST]"))
        elif role == "assistant":
            # The generation prompt ends at " [/INST]": the reply starts with the template's space.
            segments.append(Segment(" " + _only_text(message, where) + "</s>", supervised=True))
            segments.append(Segment(" "))
        else:
            raise DataError(
                f"{where}: the LLaVA-NeXT template has no {role!r} role (system, user, assistant)"
            )
    return segments


def select_best_resolution(height: int, width: int, pinpoints: list[list[int]]) -> tuple[int, int]:
    """The (h, w) of `pinpoints` that keeps most of the image's pixels when it is scaled to fit, ties going to
    the one that wastes the least area (LLaVA-NeXT's rule)."""
    best, best_kept, best_wasted = None, 0, math.inf
    for pin_h, pin_w in pinpoints:
        scale = min(pin_w / width, pin_h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = pin_h * pin_w - kept
        if kept > best_kept or (kept == best_kept and wasted < best_wasted):
            best, best_kept, best_wasted = (pin_h, pin_w), kept, wasted
    return best


def fit_inside(height: int, width: int, target_h: int, target_w: int) -> tuple[int, int]:
    """The size of the image scaled to fit (target_h, target_w), aspect kept (ceil, as transformers rounds)."""
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


@dataclass(frozen=True)
class AnyRes:
    """LLaVA-NeXT's tiling (see the module docstring); `clip` is the per-tile CLIP preprocessing."""

    clip: ClipCrop
    pinpoints: tuple[tuple[int, int], ...]

    @classmethod
    def from_config(cls, config: dict[str, Any], patch_size: int) -> AnyRes:
        return cls(
            clip=ClipCrop.from_config(config, patch_size),
            pinpoints=tuple(tuple(p) for p in config["image_grid_pinpoints"]),
        )

    def describe(self) -> str:
        grids = ", ".join(f"{h}x{w}" for h, w in self.pinpoints)
        tile_h, tile_w = self.clip.crop
        most = max(self.token_count(h, w) for h, w in self.pinpoints)
        return (
            f"anyres: base {tile_h}x{tile_w} image + {tile_h}x{tile_w} tiles of the best of {grids}; "
            f"up to {most} tokens per image"
        )

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        """The tiled resolution chosen for an image of height x width."""
        return select_best_resolution(height, width, self.pinpoints)

    def note(self, height: int, width: int) -> str:
        """How an image of height x width is seen, for `vlmkit data preview`."""
        (tile_h, tile_w), (best_h, best_w) = self.clip.crop, self.model_size(height, width)
        return (
            f"base {tile_h}×{tile_w} + {best_h // tile_h}×{best_w // tile_w} tiles ({best_h}×{best_w}) "
            f"from {height}×{width} (h×w)"
        )

    def token_count(self, height: int, width: int) -> int:
        """`<image>` tokens for an image of height x width: base features + the unpadded tile grid with one
        newline per row (transformers' `_get_number_of_features` minus the CLS feature)."""
        tile_h, tile_w = self.clip.crop
        best_h, best_w = self.model_size(height, width)
        patches_h, patches_w = tile_h // self.clip.patch_size, tile_w // self.clip.patch_size
        grid_h, grid_w = patches_h * (best_h // tile_h), patches_w * (best_w // tile_w)
        if width / height > grid_w / grid_h:  # wider than the grid: padding rows top and bottom
            unpadded_h = int(round(height * (grid_w / width), 7))
            grid_h -= (grid_h - unpadded_h) // 2 * 2
        else:
            unpadded_w = int(round(width * (grid_h / height), 7))
            grid_w -= (grid_w - unpadded_w) // 2 * 2
        return patches_h * patches_w + grid_h * grid_w + grid_h

    def process(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (1 + n_tiles, 3, tile_h, tile_w) float32: the base image, then the tiles row by row."""
        tile_h, tile_w = self.clip.crop
        best_h, best_w = self.model_size(image.height, image.width)
        new_h, new_w = fit_inside(image.height, image.width, best_h, best_w)
        resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        canvas = Image.new("RGB", (best_w, best_h))  # black padding, centred (extra pixel right/bottom)
        canvas.paste(resized, ((best_w - new_w) // 2, (best_h - new_h) // 2))
        tiles = [
            canvas.crop((left, top, left + tile_w, top + tile_h))
            for top in range(0, best_h, tile_h)
            for left in range(0, best_w, tile_w)
        ]
        base = image.resize((tile_w, tile_h), Image.Resampling.BICUBIC)
        crops = [self.clip.process(crop) for crop in [base, *tiles]]
        return np.stack(crops)  # (1 + n_tiles, 3, tile_h, tile_w)

    def collate(
        self, pixel_values: list[torch.Tensor], sizes: list[tuple[int, int]]
    ) -> dict[str, torch.Tensor]:
        """Per-sample (n_i, P_i, 3, H, W) -> pixel_values (sum n_i, max P, 3, H, W), zero-padded tiles, and
        image_sizes (sum n_i, 2) original (h, w), from which the model knows each image's real tile count."""
        most = max(p.shape[1] for p in pixel_values)
        padded = [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, most - p.shape[1])) for p in pixel_values]
        return {"pixel_values": torch.cat(padded), "image_sizes": torch.tensor(sizes, dtype=torch.long)}
