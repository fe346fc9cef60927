"""The template of vlmkit's own Qwen-VL (`qwen_vl` folders, see `modeling.py`): prompts, training labels, pixels.

The text is Qwen-VL-Chat's (`make_context`, chat format "chatml", see `template.py`): a system message
always (default "You are a helpful assistant."), turns joined by "\\n", each image written
`Picture N: <img>..</img>\\n` with N counted over the conversation. Where the remote tokenizer fills
`<img>..</img>` with the image path's bytes padded by `<imgpad>` to 256 tokens, this template writes 256
`<imgpad>` and passes the pixels: the model overwrites those 256 positions in both cases, so the logits
are the same (tests/parity/test_qwen_vl_native.py).

Training supervises each reply and its `<|im_end|>`, as Qwen-VL's finetune.py does (it also supervises
the `<|im_start|>` before the role and the "\\n" after `<|im_end|>`, which are fixed text).
Images: RGB, resized to 448x448 (bicubic, aspect not kept), scaled to [0, 1], normalised with CLIP's mean
and std, as visual.py's transform does; every image is 256 tokens.
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
from vlmkit.families.qwen_vl.template import original_image_sizes, qwen_vl_messages
from vlmkit.media.images import load_image
from vlmkit.sample import Sample, as_sample, refuse_requested_sizes

IMAGE_PAD = "<imgpad>"
TOKENS_PER_IMAGE = 256


def render_segments(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample"
) -> list[Segment]:
    """Qwen-VL-Chat's chatml text as segments, one `<imgpad>` per image (expanded to 256 by `encode`).

    An image part followed by a text that starts with a newline (data written `Picture 1: <img>X</img>\\nQ`)
    gets no second newline, so such data renders exactly as written."""
    segments: list[Segment] = []
    n_images = 0
    for i, message in enumerate(messages):
        role = message["role"]
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: Qwen-VL has no {role!r} role (system, user, assistant)")
        if role == "system" and i > 0:
            raise DataError(f"{where}: a system message may only come first")
        segments.append(Segment(("\n" if i > 0 else "") + f"<|im_start|>{role}\n"))
        parts = message["content"]
        if role == "assistant":
            if not parts or any(p["type"] != "text" for p in parts):
                raise DataError(f"{where}: a Qwen-VL assistant message must be text only")
            segments.append(Segment("".join(p["text"] for p in parts) + "<|im_end|>", supervised=True))
            continue
        for k, part in enumerate(parts):
            if part["type"] == "text":
                segments.append(Segment(part["text"]))
            elif part["type"] == "image":
                n_images += 1
                following = parts[k + 1] if k + 1 < len(parts) else None
                joins = following is not None and following["type"] == "text"
                newline = "" if joins and following["text"].lstrip("\ufdd0").startswith("\n") else "\n"
                segments.append(Segment(f"Picture {n_images}: <img>{IMAGE_PAD}</img>{newline}"))
            else:
                raise DataError(f"{where}: Qwen-VL takes images only; {part['type']} input is not supported")
        segments.append(Segment("<|im_end|>"))
    if add_generation_prompt:
        segments.append(Segment("\n<|im_start|>assistant\n"))
    return segments


def image_pixels(image: Image.Image, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """RGB PIL image -> (3, size, size) float32, as visual.py's torchvision transform makes it."""
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    pixels = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, H, W)
    mean_ = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std_ = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return torch.from_numpy((pixels - mean_) / std_)


class NativeQwenVLTemplate:
    """Encodes `Sample`s for a `qwen_vl` folder (vlmkit's own Qwen-VL implementation, family `qwen-vl`; an
    original remote-code checkpoint's prompts are `template.QwenVLChatTemplate`'s); the interface of the
    other family templates (see `vlmkit.families.llava.template.LlavaTemplate`): `encode` -> input_ids,
    labels (T,), and with images pixel_values (n, 3, 448, 448), original_sizes (n, 2) as (h, w),
    image_sizes and image_notes."""

    min_limit = None  # every image is resized to 448x448 (the checkpoint's image_size)
    max_limit = None
    limit_option = None
    video_token_id = None
    video_sampling = None  # images only
    compact_images = False  # the encode cache stores `encode`'s own output

    def __init__(self, tokenizer, box_format, image_config: dict[str, Any], system: str | None = None):
        self.tokenizer = tokenizer
        self.box_format = box_format
        self.image_config = image_config
        self.system = system
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.stop_token_ids = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[1]
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, tokenizer, box_format, system: str | None = None):
        config = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        return cls(tokenizer, box_format, config, system=system)  # `system`: given over saved (`Family.load_template`)

    @property
    def settings(self) -> dict[str, Any]:
        return {"system": self.system}

    def _messages(self, sample: Sample) -> list[dict]:
        return qwen_vl_messages(self, sample)

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text with one `<imgpad>` per image."""
        sample = as_sample(sample)
        return "".join(
            s.text for s in render_segments(self._messages(sample), add_generation_prompt, sample.where)
        )

    def _tokens(self, sample: Sample, add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        if sample.media("video"):
            raise DataError(f"{sample.where}: Qwen-VL takes images only; video input is not supported")
        refuse_requested_sizes(sample, "Qwen-VL")
        segments = render_segments(mark_text(self._messages(sample)), add_generation_prompt, sample.where)
        ids, labels = tokenize_segments(self.tokenizer, segments, self.box_format.keep_tokens)
        if ids.count(self.image_token_id) != len(sample.media("image")):
            raise DataError(f"{sample.where}: {ids.count(self.image_token_id)} image slots for "
                            f"{len(sample.media('image'))} images")  # fmt: skip
        return ids, labels

    def _no_limit(self, limit: int | None) -> None:
        if limit is not None:
            raise DataError("a resolution limit does not apply to Qwen-VL (every image is 448x448)")

    def encode(
        self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None
    ) -> dict[str, Any]:
        """Sample -> model inputs for one sequence (see the class docstring)."""
        sample = as_sample(sample)
        self._no_limit(limit)
        ids, labels = self._tokens(sample, add_generation_prompt)
        out: dict[str, Any] = {}
        images = sample.media("image")
        if images:
            size = self.image_config["image_size"]
            pixels, originals = [], []
            for k, source in enumerate(images):
                image = load_image(source, where=f"{sample.where}: image {k + 1}")
                pixels.append(
                    image_pixels(image, size, self.image_config["image_mean"], self.image_config["image_std"])
                )
                originals.append((image.height, image.width))
            ids, labels = expand_tokens(ids, labels, self.image_token_id, [TOKENS_PER_IMAGE] * len(images))
            out["pixel_values"] = torch.stack(pixels)
            out["original_sizes"] = torch.tensor(originals, dtype=torch.long)
            out["image_sizes"] = [((h, w), (size, size)) for h, w in originals]
            out["image_notes"] = [
                f"image {k + 1}: {size}×{size} resize of {h}×{w} (h×w), {TOKENS_PER_IMAGE} tokens"
                for k, (h, w) in enumerate(originals)
            ]
        out.update(
            input_ids=torch.tensor(ids, dtype=torch.long), labels=torch.tensor(labels, dtype=torch.long)
        )
        return out

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        """Image `k` of an `encode` output for people (`vlmkit data preview`): its sizes and tokens."""
        return encoded["image_notes"][k]

    def count_tokens(
        self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False
    ) -> int:
        sample = as_sample(sample)
        self._no_limit(limit)
        ids, _ = self._tokens(sample, add_generation_prompt)
        return len(ids) + (TOKENS_PER_IMAGE - 1) * ids.count(self.image_token_id)

    def fit_limit(self, sample: Sample, max_length: int, add_generation_prompt: bool = False) -> None:
        return None  # the image size is fixed by the model

    def image_sizes(self, sample: Sample, limit: int | None = None) -> list[tuple[tuple[int, int], ...]]:
        return original_image_sizes(sample)

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of `encode` outputs into one batch (left padding for generation)."""
        batch = collate_tokens(encoded, self.pad_token_id, padding_side)
        with_images = [e["pixel_values"] for e in encoded if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat(with_images)
        return batch

    def split_media(self, encoded: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
        """Per image, (its 256 tokens, its own entries in `encode` form), and no video entries: for a chat
        turn that reuses the cached start of its conversation (`vlmkit.backends.chat_cache`)."""
        sizes = encoded.get("original_sizes", torch.empty(0, 2, dtype=torch.long))
        return [
            (
                TOKENS_PER_IMAGE,
                {"pixel_values": encoded["pixel_values"][k : k + 1], "original_sizes": sizes[k : k + 1]},
            )
            for k in range(sizes.shape[0])
        ], {}
