"""GLM-4.1V's encoding: Qwen2-VL's patch layout (14 px patches, 2x2 merge, 2 temporal slots; transformers'
`Glm4vImageProcessor` patchifies as Qwen2-VL's does) with GLM's own resize rule, tokens and prompt format."""

from __future__ import annotations

import math

from vlmkit.families.qwen2_vl.template import Qwen2VLTemplate


def glm_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int, frames: int = 2):
    """transformers' `glm4v.image_processing_glm4v.smart_resize` for a still image (num_frames = temporal
    factor = 2): sides multiples of `factor`; the pixel limits bound frames x height x width, so an image's
    area is held to half of them; a side under `factor` first scales the image up. ValueError past 200:1."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is over the 200:1 limit")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if frames * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif frames * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


class Glm4vTemplate(Qwen2VLTemplate):
    """Qwen2-VL's template with GLM-4.1V's tokens and resize rule; images only (transformers' GLM video
    processor needs torchvision, so vlmkit's frames could not be checked against it), no chat cache and no
    packing (not checked against GLM's position rule)."""

    image_token = "<|image|>"
    video_token = "<|video|>"
    stop_tokens = ("<|user|>", "<|observation|>", "<|endoftext|>")
    pad_fallback = "<|endoftext|>"
    split_media = None
    packing_position_ids = None
    video_sampling = None  # images only

    def resized_size(self, height: int, width: int, max_pixels: int | None = None) -> tuple[int, int]:
        factor = self.patch_size * self.merge_size
        return glm_smart_resize(height, width, factor, self.min_pixels, self._max_pixels(max_pixels))
