"""Gemma 3's image preprocessing: every image (and every pan-and-scan crop of it) is resized to the SigLIP
input size (896x896 on the real checkpoints), whatever its aspect ratio, and becomes `image_seq_length`
(256) soft tokens.

Pan-and-scan (off by default, as in transformers' `Gemma3Processor`): an image whose aspect ratio is at
least `min_ratio_to_activate` is also cut into 2..`max_num_crops` crops along its long side, each at
least `min_crop_size` pixels, and the crops follow the whole image. The arithmetic is transformers'
`Gemma3ImageProcessorPil.pan_and_scan` (the slow processor: the fast one needs torchvision, which these
machines lack), pixel for pixel: crops of the decoded RGB image, a PIL resize of the uint8 pixels, then
rescale in float64 and normalise in float32, as `transformers.image_transforms` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

# Gemma3Processor.images_kwargs: the real checkpoints write null for these in preprocessor_config.json
PAN_AND_SCAN_DEFAULTS = {
    "pan_and_scan": False,
    "pan_and_scan_min_crop_size": 256,
    "pan_and_scan_max_num_crops": 4,
    "pan_and_scan_min_ratio_to_activate": 1.2,
}
# vlmkit's setting -> the image processor's kwarg (preprocessor_config.json key)
PROCESSOR_KEYS = {
    "pan_and_scan": "do_pan_and_scan",
    "pan_and_scan_min_crop_size": "pan_and_scan_min_crop_size",
    "pan_and_scan_max_num_crops": "pan_and_scan_max_num_crops",
    "pan_and_scan_min_ratio_to_activate": "pan_and_scan_min_ratio_to_activate",
}


def crop_boxes(
    height: int, width: int, min_crop_size: int, max_num_crops: int, min_ratio_to_activate: float
) -> list[tuple[int, int, int, int]]:
    """The pan-and-scan crops of a height x width image as (left, top, right, bottom) boxes, [] when the
    image is not elongated enough or the crops would be smaller than `min_crop_size`."""
    long, short = max(width, height), min(width, height)
    if long / short < min_ratio_to_activate:
        return []
    count = int(math.floor(long / short + 0.5))  # half rounds up, as transformers does
    count = min(int(math.floor(long / min_crop_size)), count)
    count = min(max_num_crops, max(2, count))
    crops_w, crops_h = (count, 1) if width >= height else (1, count)
    crop_w, crop_h = int(math.ceil(width / crops_w)), int(math.ceil(height / crops_h))
    if min(crop_w, crop_h) < min_crop_size:
        return []
    # numpy slicing (transformers') stops at the edge: the last crop may be narrower
    return [
        (x, y, min(x + crop_w, width), min(y + crop_h, height))
        for y in range(0, crop_h * crops_h, crop_h)
        for x in range(0, crop_w * crops_w, crop_w)
    ]


@dataclass(frozen=True)
class SiglipSquare:
    """Resize to `size` (h, w) bilinear, rescale, normalise; with pan-and-scan, the crops too."""

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rescale_factor: float
    resample: int
    tokens_per_image: int
    pan_and_scan: bool
    min_crop_size: int
    max_num_crops: int
    min_ratio_to_activate: float

    @classmethod
    def from_configs(cls, preprocessor: dict[str, Any], image_seq_length: int, settings: dict[str, Any]) -> SiglipSquare:
        """From the checkpoint's preprocessor_config.json, its processor's `image_seq_length`, and the
        pan-and-scan settings (`PAN_AND_SCAN_DEFAULTS` keys; given > the config's > the defaults)."""
        pas = {
            name: settings.get(name, preprocessor.get(key))
            for name, key in PROCESSOR_KEYS.items()
        }
        pas = {name: PAN_AND_SCAN_DEFAULTS[name] if value is None else value for name, value in pas.items()}
        size = preprocessor.get("size") or {"height": 896, "width": 896}
        return cls(
            size=(size["height"], size["width"]),
            mean=tuple(preprocessor.get("image_mean", (0.5, 0.5, 0.5))),
            std=tuple(preprocessor.get("image_std", (0.5, 0.5, 0.5))),
            rescale_factor=preprocessor.get("rescale_factor", 1 / 255),
            resample=preprocessor.get("resample", Image.Resampling.BILINEAR),
            tokens_per_image=image_seq_length,
            pan_and_scan=bool(pas["pan_and_scan"]),
            min_crop_size=int(pas["pan_and_scan_min_crop_size"]),
            max_num_crops=int(pas["pan_and_scan_max_num_crops"]),
            min_ratio_to_activate=float(pas["pan_and_scan_min_ratio_to_activate"]),
        )

    @property
    def settings(self) -> dict[str, Any]:
        """The pan-and-scan settings, as vlmkit.json saves them."""
        return {
            "pan_and_scan": self.pan_and_scan,
            "pan_and_scan_min_crop_size": self.min_crop_size,
            "pan_and_scan_max_num_crops": self.max_num_crops,
            "pan_and_scan_min_ratio_to_activate": self.min_ratio_to_activate,
        }

    def describe(self) -> str:
        h, w = self.size
        return f"{h}x{w} resize, {self.tokens_per_image} tokens per image (+ as many per pan-and-scan crop)"

    def crops(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        if not self.pan_and_scan:
            return []
        return crop_boxes(height, width, self.min_crop_size, self.max_num_crops, self.min_ratio_to_activate)

    def process(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (1 + crops, 3, H, W) float32: the whole image, then its pan-and-scan crops."""
        views = [image] + [image.crop(box) for box in self.crops(image.height, image.width)]
        return np.stack([self._normalize(view) for view in views])

    def _normalize(self, image: Image.Image) -> np.ndarray:
        h, w = self.size
        if image.size != (w, h):
            image = image.resize((w, h), resample=self.resample)
        pixels = np.asarray(image).transpose(2, 0, 1)  # (3, H, W) uint8
        pixels = (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return (pixels - mean) / std
