"""The LLaVA prompt formats and the template that encodes samples for LLaVA-1.5 and LLaVA-NeXT.

Rendering follows the checkpoints' chat templates (`chat_template.jinja` in each family folder;
tests compare the two). Every `<image>` becomes a run of image tokens whose length comes from the
image's size; the vision part (`vision`, see `ClipCrop` here and `AnyRes` in llava_next) says how
many tokens an image of a given size takes and turns a PIL image into `pixel_values`.

Unlike Qwen, the image size seen by the model is fixed by the checkpoint (336x336 crops), so there
are no pixel limits: the families refuse `--min-pixels/--max-pixels` (their `resolution_options` are
empty) and `fit_limit` never shrinks a sample.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmkit.errors import DataError, VlmkitError
from vlmkit.families.encoding import (
    IGNORE_INDEX,
    Segment,
    collate_tokens,
    expand_tokens,
    mark_text,
    tokenize_segments,
)
from vlmkit.media.images import load_image, read_image_size
from vlmkit.sample import Sample, as_sample, refuse_requested_sizes

IMAGE_TOKEN = "<image>"


def _parts(message: dict, kind: str) -> list[dict]:
    return [part for part in message["content"] if part["type"] == kind]


def render_llava_1_5(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample", end_of_reply: str = ""
) -> list[Segment]:
    """llava-1.5-hf: `USER: <image>\\ntext ASSISTANT: reply ` (images of a message first, then its texts,
    each text followed by a space; a system message is its text with no role prefix).

    The checkpoint's template writes no end token after a reply, but the model was trained with one and
    stops on it; `end_of_reply` (the tokenizer's eos, as `encode` passes it) is put right after each
    reply's text, supervised with it, so training teaches the model to stop.
    """
    segments: list[Segment] = []
    for message in messages:
        role = message["role"]
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: the LLaVA-1.5 template has no {role!r} role (system, user, assistant)")
        texts = [part["text"] for part in _parts(message, "text")]
        if role == "assistant":
            if len(texts) != len(message["content"]) or not texts:
                raise DataError(f"{where}: a LLaVA assistant message must be text only")
            # "ASSISTANT: t1 t2 " as the template writes it. The generation prompt ends at "ASSISTANT:", so
            # the space after it is the reply's first character; the end token goes before the last space.
            segments.append(Segment("ASSISTANT:"))
            segments.append(Segment(" " + " ".join(texts) + end_of_reply, supervised=True))
            segments.append(Segment(" "))
            continue
        if role == "user":
            segments.append(Segment("USER: "))
        segments += [Segment(IMAGE_TOKEN + "\n") for _ in _parts(message, "image")]
        segments += [Segment(text + " ") for text in texts]
    if add_generation_prompt:
        segments.append(Segment("ASSISTANT:"))
    return segments


@dataclass(frozen=True)
class ClipCrop:
    """LLaVA-1.5's CLIP preprocessing: resize the shortest edge to `shortest_edge` (bicubic), center-crop to
    `crop` (h, w), rescale to [0, 1], normalise. Each image is (crop_h / patch) * (crop_w / patch) tokens
    (the CLS feature is dropped: vision_feature_select_strategy "default")."""

    shortest_edge: int
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    patch_size: int

    @classmethod
    def from_config(cls, config: dict[str, Any], patch_size: int) -> ClipCrop:
        crop = config["crop_size"]
        if isinstance(crop, int):  # older configs write one number
            crop = {"height": crop, "width": crop}
        if config["size"]["shortest_edge"] < max(crop["height"], crop["width"]):
            raise VlmkitError("preprocessor_config.json: size.shortest_edge is smaller than crop_size")
        return cls(
            shortest_edge=config["size"]["shortest_edge"],
            crop=(crop["height"], crop["width"]),
            mean=tuple(config["image_mean"]),
            std=tuple(config["image_std"]),
            patch_size=patch_size,
        )

    def describe(self) -> str:
        h, w = self.crop
        return f"{h}x{w} center crop, {self.token_count(h, w)} tokens per image"

    def token_count(self, height: int, width: int) -> int:
        return (self.crop[0] // self.patch_size) * (self.crop[1] // self.patch_size)

    def model_size(self, height: int, width: int) -> tuple[int, int]:
        return self.crop

    def note(self, height: int, width: int) -> str:
        """How an image of height x width is seen, for `vlmkit data preview`."""
        return f"{self.crop[0]}×{self.crop[1]} center crop of {height}×{width} (h×w)"

    def normalize(self, image: Image.Image) -> np.ndarray:
        """RGB image -> (3, H, W) float32, rescaled and normalised."""
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, H, W)
        mean = np.asarray(self.mean, dtype=np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(3, 1, 1)
        return (pixels - mean) / std

    def resize_shortest_edge(self, image: Image.Image) -> Image.Image:
        short, long = sorted((image.width, image.height))
        new_long = int(self.shortest_edge * long / short)
        if image.width <= image.height:
            size = (self.shortest_edge, new_long)
        else:
            size = (new_long, self.shortest_edge)
        return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)

    def center_crop(self, image: Image.Image) -> Image.Image:
        crop_h, crop_w = self.crop
        top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
        return image.crop((left, top, left + crop_w, top + crop_h))

    def process(self, image: Image.Image) -> np.ndarray:
        """RGB image -> pixel_values of one image, (3, crop_h, crop_w) float32."""
        return self.normalize(self.center_crop(self.resize_shortest_edge(image)))

    def collate(
        self, pixel_values: list[torch.Tensor], sizes: list[tuple[int, int]]
    ) -> dict[str, torch.Tensor]:
        """Per-sample (n_i, 3, H, W) -> the model's pixel_values (sum n_i, 3, H, W)."""
        return {"pixel_values": torch.cat(pixel_values)}


class LlavaTemplate:
    """Encodes `Sample`s for a LLaVA checkpoint: `render` writes the prompt, `vision` sizes the images.

    `encode` returns input_ids and labels (T,), and with images pixel_values (as `vision` makes them),
    original_sizes (n_images, 2) as (h, w), and for people image_sizes [((orig_h, orig_w), (model_h,
    model_w))] and image_notes (one line per image, shown by `vlmkit data preview`).
    """

    min_limit = None  # the image size is fixed by the checkpoint (see the module docstring)
    max_limit = None
    limit_option = None  # no resolution option to name in messages
    video_token_id = None  # images only
    video_sampling = None
    box_format = None  # no grounding format of its own: boxes stay text
    compact_images = False  # the encode cache stores `encode`'s own output

    def __init__(self, tokenizer, render, vision, *, family: str, system: str | None = None):
        self.tokenizer = tokenizer
        self.render = render
        self.vision = vision
        self.family = family
        self.system = system
        vocab = tokenizer.get_vocab()
        if IMAGE_TOKEN not in vocab:
            raise VlmkitError(f"the tokenizer has no {IMAGE_TOKEN} token; is this a {family} checkpoint?")
        self.image_token_id = vocab[IMAGE_TOKEN]
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        self.stop_token_ids = [tokenizer.eos_token_id]
        # What the tokenizer puts in front of a text (the bos token), as transformers' processor adds it.
        self.prefix_ids = list(tokenizer("", add_special_tokens=True)["input_ids"])

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        tokenizer,
        render,
        make_vision,
        family: str,
        system: str | None = None,
    ) -> LlavaTemplate:
        """Numbers from the checkpoint's preprocessor_config.json (`make_vision(config)`); the system prompt
        from the argument (given over the saved vlmkit.json: `Family.load_template`)."""
        config = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        return cls(tokenizer, render, make_vision(config), family=family, system=system)

    @property
    def settings(self) -> dict[str, Any]:
        """What must travel with a model or run so that inference encodes as training did."""
        return {"system": self.system}

    # -- text --------------------------------------------------------------------------------------

    def _messages(self, sample: Sample) -> list[dict]:
        messages = sample.messages
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *messages]
        return messages

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text with one `<image>` per image, exactly as the chat template writes it."""
        sample = as_sample(sample)
        segments = self.render(self._messages(sample), add_generation_prompt, sample.where)
        return "".join(s.text for s in segments)

    def _tokens(self, sample: Sample, add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        if sample.media("video"):
            raise DataError(f"{sample.where}: {self.family} takes images only; video input is not supported")
        refuse_requested_sizes(sample, self.family)
        segments = self.render(
            mark_text(self._messages(sample)), add_generation_prompt, sample.where, self.tokenizer.eos_token
        )
        ids, labels = tokenize_segments(self.tokenizer, segments)
        if ids.count(self.image_token_id) != len(sample.media("image")):
            raise DataError(
                f"{sample.where}: {ids.count(self.image_token_id)} {IMAGE_TOKEN} tokens in the text for "
                f"{len(sample.media('image'))} images"
            )
        return self.prefix_ids + ids, [IGNORE_INDEX] * len(self.prefix_ids) + labels

    # -- whole samples -----------------------------------------------------------------------------

    def vision_for(self, images: int):
        """How the images of a sample with `images` images are encoded (`vision`; LLaVA-OneVision's depends
        on the count)."""
        return self.vision

    def _no_limit(self, limit: int | None) -> None:
        if limit is not None:
            raise DataError(f"a resolution limit does not apply to {self.family} (its image size is fixed)")

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
            vision = self.vision_for(len(images))
            pixels, counts, sizes = [], [], []
            for k, source in enumerate(images):
                image = load_image(source, where=f"{sample.where}: image {k + 1}")
                pixels.append(torch.from_numpy(vision.process(image)))
                counts.append(vision.token_count(image.height, image.width))
                sizes.append(((image.height, image.width), vision.model_size(image.height, image.width)))
            ids, labels = expand_tokens(ids, labels, self.image_token_id, counts)
            out["pixel_values"] = self.vision.collate([p[None] for p in pixels], [s[0] for s in sizes])[
                "pixel_values"
            ]
            out["image_sizes"] = sizes  # for people (preview); training drops it
            out["image_notes"] = [f"image {k + 1}: {vision.note(*size)}" for k, (size, _) in enumerate(sizes)]
            out["original_sizes"] = torch.tensor([original for original, _ in sizes], dtype=torch.long)
        out.update(
            input_ids=torch.tensor(ids, dtype=torch.long), labels=torch.tensor(labels, dtype=torch.long)
        )
        return out

    def count_tokens(
        self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False
    ) -> int:
        """`len(encode(sample, add_generation_prompt)["input_ids"])`, reading only image headers."""
        sample = as_sample(sample)
        self._no_limit(limit)
        ids, _ = self._tokens(sample, add_generation_prompt)
        total = len(ids) - ids.count(self.image_token_id)
        vision = self.vision_for(len(sample.media("image")))
        for k, source in enumerate(sample.media("image")):
            height, width = read_image_size(source, where=f"{sample.where}: image {k + 1}")
            total += vision.token_count(height, width)
        return total

    def fit_limit(
        self, sample: Sample, max_length: int, add_generation_prompt: bool = False
    ) -> int | None:
        """None: a sample over `max_length` cannot be shrunk to fit, the image size being fixed."""
        return None

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of `encode` outputs into one batch (left padding for generation)."""
        batch = collate_tokens(encoded, self.pad_token_id, padding_side)
        with_images = [e for e in encoded if "pixel_values" in e]
        if with_images:
            sizes = torch.cat([e["original_sizes"] for e in with_images]).tolist()
            batch.update(self.vision.collate([e["pixel_values"] for e in with_images], sizes))
        return batch

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        """Image `k` of an `encode` output for people: its sizes (`encode`'s image_notes)."""
        return encoded["image_notes"][k]

    def split_media(self, encoded: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
        """Per image, (its image tokens, its own pixel entries in `encode` form), and the entries of all
        videos together (none: images only): what a chat turn that reuses the cached start of its conversation passes for the
        media after that start (`vlmkit.backends.chat_cache`)."""
        sizes = encoded.get("original_sizes", torch.empty(0, 2, dtype=torch.long))
        return [
            (
                self.vision.token_count(height, width),
                {"pixel_values": encoded["pixel_values"][k : k + 1], "original_sizes": sizes[k : k + 1]},
            )
            for k, (height, width) in enumerate(sizes.tolist())
        ], {}
