"""VipLLaVA's prompt and images, for a test-only family (docs/adding-a-family.md, followed once).

`###Human: <image>\ntext\n###Assistant: reply</s>\n`; every image is resized to the vision tower's square
input and becomes (size / patch)**2 `<image>` tokens (the CLS feature is dropped). `encode` returns
input_ids and labels (T,), and with images pixel_values (n_images, 3, S, S) and image_sizes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmkit.errors import DataError
from vlmkit.families.encoding import Segment, collate_tokens, expand_tokens, mark_text, tokenize_segments
from vlmkit.media.images import load_image
from vlmkit.sample import Sample

IMAGE_TOKEN = "<image>"


def render_vipllava(messages: list[dict], add_generation_prompt: bool, where: str, eos: str) -> list[Segment]:
    """The chat template's text as segments; the reply and its end token are supervised."""
    segments = []
    for message in messages:
        texts = "".join(p["text"] if p["type"] == "text" else IMAGE_TOKEN + "\n" for p in message["content"])
        if message["role"] == "system":
            segments.append(Segment(texts + "\n"))
        elif message["role"] == "user":
            segments.append(Segment("###Human: " + texts + "\n"))
        elif message["role"] == "assistant":
            segments += [Segment("###Assistant:"), Segment(" " + texts + eos, supervised=True), Segment("\n")]
        else:
            raise DataError(f"{where}: VipLLaVA has no {message['role']!r} role")
    if add_generation_prompt:
        segments.append(Segment("###Assistant:"))
    return segments


class VipLlavaTemplate:
    """`vlmkit.families.interface.Template` for VipLLaVA checkpoints (no grounding, video, packing or chat cache)."""

    video_token_id = None
    box_format = None
    limit_option = None  # the image size is fixed by the checkpoint
    min_limit = max_limit = None
    video_sampling = None
    compact_images = False

    def __init__(self, tokenizer, *, size: int, patch_size: int, mean: list[float], std: list[float], system=None):
        self.tokenizer, self.system = tokenizer, system
        self.size, self.tokens_per_image = size, (size // patch_size) ** 2
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.pad_token_id = tokenizer.pad_token_id
        self.stop_token_ids = [tokenizer.eos_token_id]

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, tokenizer, system: str | None = None) -> VipLlavaTemplate:
        config = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        return cls(
            tokenizer,
            size=config["crop_size"]["height"],
            patch_size=config["patch_size"],
            mean=config["image_mean"],
            std=config["image_std"],
            system=system,  # given over the saved vlmkit.json (`Family.load_template`)
        )

    @property
    def settings(self) -> dict[str, Any]:
        return {"system": self.system}

    def _messages(self, sample: Sample) -> list[dict]:
        if self.system is None or (sample.messages and sample.messages[0]["role"] == "system"):
            return sample.messages
        return [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *sample.messages]

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        segments = render_vipllava(self._messages(sample), add_generation_prompt, sample.where, self.tokenizer.eos_token)
        return "".join(s.text for s in segments)

    def _tokens(self, sample: Sample, add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        if sample.media("video"):
            raise DataError(f"{sample.where}: VipLLaVA takes images only")
        messages = mark_text(self._messages(sample))
        segments = render_vipllava(messages, add_generation_prompt, sample.where, self.tokenizer.eos_token)
        ids, labels = tokenize_segments(self.tokenizer, segments)
        counts = [self.tokens_per_image] * len(sample.media("image"))
        return expand_tokens(ids, labels, self.image_token_id, counts)

    def encode(self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None) -> dict:
        if limit is not None:
            raise DataError("a resolution limit does not apply to VipLLaVA (its image size is fixed)")
        ids, labels = self._tokens(sample, add_generation_prompt)
        out: dict[str, Any] = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        images = [load_image(s, f"{sample.where}: image {k + 1}") for k, s in enumerate(sample.media("image"))]
        if images:
            pixels = [self._pixels(image) for image in images]
            out["pixel_values"] = torch.from_numpy(np.stack(pixels))  # (n_images, 3, S, S)
            out["image_sizes"] = [((i.height, i.width), (self.size, self.size)) for i in images]
        return out

    def _pixels(self, image: Image.Image) -> np.ndarray:
        resized = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
        values = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, S, S)
        return (values - self.mean) / self.std

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        batch = collate_tokens(encoded, self.pad_token_id, padding_side)
        with_images = [e["pixel_values"] for e in encoded if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat(with_images)
        return batch

    def count_tokens(self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False) -> int:
        return len(self._tokens(sample, add_generation_prompt)[0])

    def fit_limit(self, sample: Sample, max_length: int, add_generation_prompt: bool = False) -> None:
        return None  # nothing to shrink

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        (height, width), (size, _) = encoded["image_sizes"][k]
        return f"image {k + 1}: {width}×{height} resized to {size}×{size}, {self.tokens_per_image} tokens"
