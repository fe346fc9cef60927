"""LLaVA-OneVision's prompt format and image encoding (transformers' `LlavaOnevisionProcessor`).

A sample with one image is tiled as LLaVA-NeXT tiles it (`AnyRes`: a 384x384 squash of the whole image, then
384x384 tiles of the best grid of `image_grid_pinpoints`, 1x1 ... 6x6), with two differences in the token
count: the base image keeps all its SigLIP features (no CLS to drop), and a tile grid larger than `anyres_max_N`
tiles' worth of features is pooled down (bilinear, in the model) by `ratio = sqrt(h * w / (N * 27^2))` when
that ratio is over 1.1. A sample with several images does not tile at all: each image is padded to a square
with the mean colour and resized to 384x384, one crop, 729 features and one `image_newline`. So an image's
tokens depend on how many images its sample has (the processor's `batch_num_images`), which the model is told
in the batch (`batch_num_images`).
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
from vlmkit.families.llava.template import ClipCrop, LlavaTemplate
from vlmkit.families.llava_next.template import AnyRes

IMAGE = "<image>"
END_OF_TURN = "<|im_end|>"
GENERATION_PROMPT = "<|im_start|>assistant\n"


def _texts(message: dict, where: str) -> list[str]:
    kinds = {part["type"] for part in message["content"]} - {"text"}
    if message["role"] != "user" and kinds:
        raise DataError(f"{where}: LLaVA-OneVision's template puts no {sorted(kinds)[0]} in a {message['role']} message")
    return [part["text"] for part in message["content"] if part["type"] == "text"]


def render_llava_onevision(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample", end_of_reply: str = ""
) -> list[Segment]:
    """The checkpoints' chat template as segments: `<|im_start|>ROLE ` then the role's images, then `\n` + each
    text, then `<|im_end|>`; the generation prompt is `<|im_start|>assistant\n`.

    One deviation: the template writes a reply's header as `<|im_start|>assistant ` (the space of every role
    header, then the reply's `\n`), but its generation prompt as `<|im_start|>assistant\n`, so a model trained on
    the template's replies would be prompted at inference with a token it never saw there. vlmkit writes every
    reply after the generation prompt (`<|im_start|>assistant\n` + text; the text of the same characters but
    the space), in training rows and in the history of a prompt alike. A reply's text (the template's `{%
    generation %}` span after its newline) is supervised with the `<|im_end|>` that ends it (the eos)."""
    segments: list[Segment] = []
    for message in messages:
        role, texts = message["role"], _texts(message, where)
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: LLaVA-OneVision's template has no {role!r} role (system, user, assistant)")
        if role == "assistant":
            segments += [Segment(GENERATION_PROMPT), Segment("\n".join(texts) + END_OF_TURN, supervised=True)]
            continue
        if any(part["type"] == "video" for part in message["content"]):
            raise DataError(
                f"{where}: LLaVA-OneVision in vlmkit takes images only (transformers' video processor for it "
                "needs torchvision); video input is not supported"
            )
        images = sum(part["type"] == "image" for part in message["content"])
        segments.append(Segment(f"<|im_start|>{role} " + IMAGE * images + "".join("\n" + t for t in texts) + END_OF_TURN))
    if add_generation_prompt:
        segments.append(Segment(GENERATION_PROMPT))
    return segments


@dataclass(frozen=True)
class AnyResMax:
    """One image alone in its sample: LLaVA-NeXT's tiling (`anyres`) with all base features and the model's
    pooling of a large tile grid down to about `max_tiles` tiles' worth (`anyres_max_9`)."""

    anyres: AnyRes
    max_tiles: int

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        return self.anyres.model_size(height, width)

    def note(self, height: int, width: int) -> str:
        return self.anyres.note(height, width)

    def describe(self) -> str:
        (tile_h, tile_w), patch = self.anyres.clip.crop, self.anyres.clip.patch_size
        grids = sorted((h // tile_h, w // tile_w) for h, w in self.anyres.pinpoints)
        return (
            f"one image: base {tile_h}x{tile_w} + {tile_h}x{tile_w} tiles of the best grid ({grids[0][0]}x{grids[0][1]} "
            f"to {grids[-1][0]}x{grids[-1][1]}), pooled to about {self.max_tiles} tiles; several images: each padded "
            f"square, {(tile_h // patch) * (tile_w // patch) + 1} tokens"
        )

    def process(self, image: Image.Image) -> np.ndarray:
        return self.anyres.process(image)  # (1 + n_tiles, 3, 384, 384)

    def collate(self, pixel_values: list[torch.Tensor], sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """Per-sample (n_i, P_i, 3, H, W) -> (sum n_i, max P, 3, H, W) zero-padded crops and image_sizes (h, w)."""
        return self.anyres.collate(pixel_values, sizes)

    def token_count(self, height: int, width: int) -> int:
        """Base features + the unpadded (and maybe pooled) tile grid + one newline per grid row, as
        `LlavaOnevisionProcessor._get_number_of_features` counts them."""
        clip = self.anyres.clip
        side = clip.crop[0] // clip.patch_size  # 27 features a side per crop
        best_h, best_w = self.model_size(height, width)
        grid_h, grid_w = side * (best_h // clip.crop[0]), side * (best_w // clip.crop[1])
        if width / height > grid_w / grid_h:  # wider than the grid: padding rows top and bottom
            grid_h -= (grid_h - int(round(height * (grid_w / width), 7))) // 2 * 2
        else:
            grid_w -= (grid_w - int(round(width * (grid_h / height), 7))) // 2 * 2
        ratio = math.sqrt(grid_h * grid_w / (self.max_tiles * side**2))
        if ratio > 1.1:  # the model pools the grid down (bilinear) to these sides
            grid_h, grid_w = int(grid_h // ratio), int(grid_w // ratio)
        return side * side + grid_h * grid_w + grid_h


@dataclass(frozen=True)
class PaddedSquare:
    """One of several images in a sample: padded to a square with the mean colour, resized to one crop; its
    features and one `image_newline`."""

    clip: ClipCrop

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        return self.clip.crop

    def note(self, height: int, width: int) -> str:
        side = max(height, width)
        return f"{self.clip.crop[0]}×{self.clip.crop[1]} of {height}×{width} padded to {side}×{side} (h×w)"

    def token_count(self, height: int, width: int) -> int:
        return (self.clip.crop[0] // self.clip.patch_size) * (self.clip.crop[1] // self.clip.patch_size) + 1

    def process(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (1, 3, H, W) float32: `pad_to_square` with int(mean * 255), bicubic resize, normalise."""
        side = max(image.height, image.width)
        canvas = Image.new("RGB", (side, side), tuple(int(m * 255) for m in self.clip.mean))
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        crop_h, crop_w = self.clip.crop
        return self.clip.normalize(canvas.resize((crop_w, crop_h), Image.Resampling.BICUBIC))[None]


class LlavaOnevisionTemplate(LlavaTemplate):
    """`LlavaTemplate` whose image encoding depends on the sample's image count (see the module docstring);
    the batch also says how many images each sample has (`batch_num_images`). No chat cache: a second image
    in a conversation changes how the first one is encoded."""

    split_media = None

    def __init__(self, tokenizer, render, vision: AnyResMax, *, family: str, system: str | None = None):
        super().__init__(tokenizer, render, vision, family=family, system=system)
        self.several = PaddedSquare(vision.anyres.clip)

    def vision_for(self, images: int) -> AnyResMax | PaddedSquare:
        return self.vision if images == 1 else self.several

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        batch = super().collate(encoded, padding_side)
        counts = [len(e["original_sizes"]) for e in encoded if "original_sizes" in e]
        if counts:
            batch["batch_num_images"] = torch.tensor(counts, dtype=torch.long)
        return batch
