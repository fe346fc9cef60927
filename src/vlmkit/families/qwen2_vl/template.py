"""The Qwen-VL prompt format and vision preprocessing (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

Rendering follows the checkpoints' chat templates (`chat_template.jinja` in each family
folder; tests compare the two). Images are resized with `smart_resize` to multiples of
patch_size * merge_size within [min_pixels, max_pixels], normalised, and cut into
patches laid out as the vision tower expects: `pixel_values` is (sum of h*w patches,
3 * temporal_patch_size * patch_size**2) and each image becomes
`grid_t * grid_h * grid_w / merge_size**2` `<|image_pad|>` tokens.

`count_tokens` gives the length of `encode`'s `input_ids` from the image headers alone
(no pixels decoded), and `fit_max_pixels` finds the largest `max_pixels` at which a
sample fits a token budget; `encode(..., max_pixels=...)` then encodes it at that size.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmkit.encoding import IGNORE_INDEX, Segment, expand_tokens, pad_sequences, tokenize_segments
from vlmkit.errors import DataError
from vlmkit.media import load_image, read_image_size
from vlmkit.sample import Sample
from vlmkit.settings import read_settings

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."


def _content_text(content: list[dict], where: str, media: bool = True) -> str:
    out = []
    for part in content:
        if part["type"] == "text":
            out.append(part["text"])
        elif not media:
            raise DataError(f"{where}: this family's template cannot place an {part['type']} in this message")
        else:
            out.append(IMAGE if part["type"] == "image" else VIDEO)
    return "".join(out)


def _turn(role: str, body: str) -> list[Segment]:
    """One `<|im_start|>role\\n...<|im_end|>\\n` block; assistant text and its end token are supervised."""
    supervised = role == "assistant"
    return [
        Segment(f"<|im_start|>{role}\n"),
        Segment(body + "<|im_end|>", supervised),
        Segment("\n"),
    ]


def render_qwen2_vl(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample"
) -> list[Segment]:
    """Qwen2-VL / Qwen2.5-VL: a default system prompt when the first message is not a system one."""
    segments: list[Segment] = []
    if messages and messages[0]["role"] != "system":
        segments += _turn("system", DEFAULT_SYSTEM)
    for message in messages:
        segments += _turn(message["role"], _content_text(message["content"], where))
    if add_generation_prompt:
        segments.append(Segment("<|im_start|>assistant\n"))
    return segments


def render_qwen3_vl(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample"
) -> list[Segment]:
    """Qwen3-VL Instruct: no default system prompt; assistant turns carry text only; tool results as user turns."""
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if i != 0:
                raise DataError(f"{where}: Qwen3-VL accepts a system message only as the first message")
            segments += _turn("system", _content_text(message["content"], where, media=False))
        elif role == "tool":
            first = i == 0 or messages[i - 1]["role"] != "tool"
            last = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
            body = "\n<tool_response>\n" + _content_text(message["content"], where) + "\n</tool_response>"
            segments.append(
                Segment(("<|im_start|>user" if first else "") + body + ("<|im_end|>\n" if last else ""))
            )
        else:
            segments += _turn(role, _content_text(message["content"], where, media=role != "assistant"))
    if add_generation_prompt:
        segments.append(Segment("<|im_start|>assistant\n"))
    return segments


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The size the model sees: sides multiples of `factor`, area in [min_pixels, max_pixels], aspect kept."""
    if max(height, width) > 200 * min(height, width):
        raise ValueError(
            f"aspect ratio {max(height, width) / min(height, width):.0f}:1 is over the 200:1 limit"
        )
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    return h, w


class QwenVLTemplate:
    """Encodes `Sample`s for a Qwen-VL family checkpoint; see the module docstring for shapes."""

    def __init__(
        self,
        tokenizer,
        render,
        *,
        patch_size: int,
        merge_size: int,
        temporal_patch_size: int,
        image_mean: list[float],
        image_std: list[float],
        min_pixels: int,
        max_pixels: int,
        system: str | None = None,
    ):
        if min_pixels > max_pixels:
            raise DataError(f"--min-pixels {min_pixels} is larger than --max-pixels {max_pixels}")
        self.tokenizer = tokenizer
        self.render = render
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.system = system
        vocab = tokenizer.get_vocab()
        self.image_token_id = vocab["<|image_pad|>"]
        self.video_token_id = vocab["<|video_pad|>"]
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab["<|endoftext|>"]
        )
        self.stop_token_ids = [vocab["<|im_end|>"], vocab["<|endoftext|>"]]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        tokenizer,
        render,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        system: str | None = None,
    ) -> QwenVLTemplate:
        """Numbers from the checkpoint's preprocessor_config.json; pixel limits and system prompt from, in
        order: the arguments, the vlmkit.json saved with a fine-tuned model, the preprocessor config."""
        config = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        saved = read_settings(model_dir)
        size = config.get("size") or {}
        default_min = saved.get("min_pixels") or size.get("shortest_edge") or config["min_pixels"]
        default_max = saved.get("max_pixels") or size.get("longest_edge") or config["max_pixels"]
        if min_pixels is None:
            # Lowering only the maximum below the default minimum lowers the minimum with it.
            min_pixels = min(default_min, max_pixels) if max_pixels is not None else default_min
        return cls(
            tokenizer,
            render,
            patch_size=config.get("patch_size", 14),
            merge_size=config.get("merge_size", 2),
            temporal_patch_size=config.get("temporal_patch_size", 2),
            image_mean=config["image_mean"],
            image_std=config["image_std"],
            min_pixels=min_pixels,
            max_pixels=max_pixels or default_max,
            system=system if system is not None else saved.get("system"),
        )

    @property
    def settings(self) -> dict[str, Any]:
        """What must travel with a model or run so that inference encodes as training did."""
        return {"min_pixels": self.min_pixels, "max_pixels": self.max_pixels, "system": self.system}

    # -- text --------------------------------------------------------------------------------------

    def _messages(self, sample: Sample) -> list[dict]:
        messages = sample.messages
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *messages]
        return messages

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text with one placeholder token per image, as the chat template writes it."""
        return "".join(
            s.text for s in self.render(self._messages(sample), add_generation_prompt, sample.where)
        )

    # -- images ------------------------------------------------------------------------------------

    def _max_pixels(self, max_pixels: int | None) -> int:
        """A per-call `max_pixels` (None: the template's), checked against `min_pixels`."""
        if max_pixels is None:
            return self.max_pixels
        if max_pixels < self.min_pixels:
            raise DataError(f"max_pixels {max_pixels} is below min_pixels {self.min_pixels}")
        return int(max_pixels)

    def resized_size(self, height: int, width: int, max_pixels: int | None = None) -> tuple[int, int]:
        return smart_resize(
            height, width, self.patch_size * self.merge_size, self.min_pixels, self._max_pixels(max_pixels)
        )

    def image_token_count(self, height: int, width: int, max_pixels: int | None = None) -> int:
        """`<|image_pad|>` tokens for an upright image of height x width (ValueError past 200:1)."""
        resized_h, resized_w = self.resized_size(height, width, max_pixels)
        return (resized_h // self.patch_size) * (resized_w // self.patch_size) // self.merge_size**2

    def process_image(
        self, image: Image.Image, max_pixels: int | None = None
    ) -> tuple[np.ndarray, tuple[int, int, int]]:
        """RGB image -> (patches (gh*gw, 3*tps*ps*ps) float32, grid (1, gh, gw))."""
        height, width = self.resized_size(image.height, image.width, max_pixels)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, H, W)
        pixels = (pixels - self.mean) / self.std
        ps, ms, tps = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = height // ps, width // ps
        patches = pixels.reshape(3, gh // ms, ms, ps, gw // ms, ms, ps)
        patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/ms, gw/ms, ms, ms, 3, ps, ps)
        patches = np.repeat(
            patches[:, :, :, :, :, None], tps, axis=5
        )  # a still image fills every temporal slot
        return patches.reshape(gh * gw, 3 * tps * ps * ps), (1, gh, gw)

    # -- whole samples -----------------------------------------------------------------------------

    def encode(
        self, sample: Sample, add_generation_prompt: bool = False, max_pixels: int | None = None
    ) -> dict[str, Any]:
        """Sample -> model inputs for one sequence.

        Returns input_ids, labels, mm_token_type_ids (T,), and when the sample has images
        pixel_values (N_patches, D) and image_grid_thw (n_images, 3); `image_sizes` lists
        ((orig_h, orig_w), (resized_h, resized_w)) per image for mapping boxes.
        `max_pixels` overrides the template's for this call (e.g. from `fit_max_pixels`).
        """
        max_pixels = self._max_pixels(max_pixels)
        if sample.media("video"):
            raise DataError(f"{sample.where}: video input is not supported by this version of vlmkit yet")
        segments = self.render(self._messages(sample), add_generation_prompt, sample.where)
        ids, labels = tokenize_segments(self.tokenizer, segments)
        out: dict[str, Any] = {}
        images = sample.media("image")
        if images:
            all_patches, grids, sizes = [], [], []
            for k, source in enumerate(images):
                where = f"{sample.where}: image {k + 1}"
                image = load_image(source, where=where)
                try:
                    patches, grid = self.process_image(image, max_pixels)
                except ValueError as e:
                    raise DataError(f"{where}: {e}") from None
                all_patches.append(patches)
                grids.append(grid)
                sizes.append(
                    ((image.height, image.width), (grid[1] * self.patch_size, grid[2] * self.patch_size))
                )
            counts = [t * h * w // self.merge_size**2 for t, h, w in grids]
            ids, labels = expand_tokens(ids, labels, self.image_token_id, counts)
            out["pixel_values"] = torch.from_numpy(np.concatenate(all_patches))
            out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
            out["image_sizes"] = sizes
        input_ids = torch.tensor(ids, dtype=torch.long)
        mm_types = torch.zeros_like(input_ids, dtype=torch.int)
        mm_types[input_ids == self.image_token_id] = 1
        mm_types[input_ids == self.video_token_id] = 2
        out.update(
            input_ids=input_ids, labels=torch.tensor(labels, dtype=torch.long), mm_token_type_ids=mm_types
        )
        return out

    def _measure(self, sample: Sample, add_generation_prompt: bool) -> tuple[int, list[tuple[str, int, int]]]:
        """(tokens other than image pads, [(where, height, width) per image]) without decoding pixels."""
        if sample.media("video"):
            raise DataError(f"{sample.where}: video input is not supported by this version of vlmkit yet")
        segments = self.render(self._messages(sample), add_generation_prompt, sample.where)
        ids, _ = tokenize_segments(self.tokenizer, segments)
        images = sample.media("image")
        placeholders = ids.count(self.image_token_id)
        if placeholders != len(images):
            raise DataError(
                f"{sample.where}: {placeholders} <|image_pad|> tokens in the text for {len(images)} images"
            )
        sizes = []
        for k, source in enumerate(images):
            where = f"{sample.where}: image {k + 1}"
            sizes.append((where, *read_image_size(source, where=where)))
        return len(ids) - placeholders, sizes

    def _image_tokens(self, sizes: list[tuple[str, int, int]], max_pixels: int | None) -> int:
        total = 0
        for where, height, width in sizes:
            try:
                total += self.image_token_count(height, width, max_pixels)
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
        return total

    def count_tokens(
        self, sample: Sample, max_pixels: int | None = None, add_generation_prompt: bool = False
    ) -> int:
        """`len(encode(sample, add_generation_prompt, max_pixels)["input_ids"])`, reading only image headers.

        Raises what `encode` raises for a bad sample, a missing or unreadable image (a file whose
        pixels are corrupt past a valid header is only caught by `encode`).
        """
        text_tokens, sizes = self._measure(sample, add_generation_prompt)
        return text_tokens + self._image_tokens(sizes, self._max_pixels(max_pixels))

    def fit_max_pixels(
        self, sample: Sample, max_length: int, add_generation_prompt: bool = False
    ) -> int | None:
        """The largest max_pixels in [min_pixels, the template's max_pixels] at which `sample` has at
        most `max_length` tokens; None when it does not fit even at min_pixels.

        Bisection between min_pixels (fits) and the template's max_pixels (does not), on image sizes
        read once from the headers. The returned value always fits; it is the largest that fits
        because the token count never falls as max_pixels grows, except for images under two
        patches thin, where smart_resize's side clamp can make a smaller limit cost more tokens.
        """
        text_tokens, sizes = self._measure(sample, add_generation_prompt)

        def fits(max_pixels: int) -> bool:
            return text_tokens + self._image_tokens(sizes, max_pixels) <= max_length

        if fits(self.max_pixels):
            return self.max_pixels
        if not sizes or not fits(self.min_pixels):
            return None
        low, high = self.min_pixels, self.max_pixels  # fits(low), not fits(high)
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of `encode` outputs into one batch (left padding for generation)."""
        batch = {
            "input_ids": pad_sequences([e["input_ids"] for e in encoded], self.pad_token_id, padding_side),
            "attention_mask": pad_sequences(
                [torch.ones_like(e["input_ids"]) for e in encoded], 0, padding_side
            ),
            "labels": pad_sequences([e["labels"] for e in encoded], IGNORE_INDEX, padding_side),
            "mm_token_type_ids": pad_sequences([e["mm_token_type_ids"] for e in encoded], 0, padding_side),
        }
        with_images = [e for e in encoded if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        return batch
