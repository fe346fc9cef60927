"""The Qwen-VL prompt format and vision preprocessing (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

Rendering is `render.py`'s (the checkpoints' chat templates as segments); processor configs and vLLM
arguments are `processor.py`'s; videos are `video.py`'s. Images are resized with `smart_resize` to multiples of
patch_size * merge_size within [min_pixels, max_pixels], normalised, and cut into
patches laid out as the vision tower expects: `pixel_values` is (sum of h*w patches,
3 * temporal_patch_size * patch_size**2) and each image becomes
`grid_t * grid_h * grid_w / merge_size**2` `<|image_pad|>` tokens.

`count_tokens` gives the length of `encode`'s `input_ids` from the image headers alone
(no pixels decoded), and `fit_limit` finds the largest `max_pixels` at which a sample
fits a token budget; `encode(..., limit=...)` then encodes it at that size. (`limit`,
`min_limit`, `max_limit` are the template interface's names for this family's pixel limits.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vlmkit.errors import DataError, VlmkitError
from vlmkit.families.encoding import (
    collate_tokens,
    expand_tokens,
    mark_text,
    tokenize_segments,
)
from vlmkit.families.qwen2_vl.resize import smart_resize
from vlmkit.families.qwen2_vl.video import VIDEO_SETTINGS, encode_videos, video_settings, video_token_delta
from vlmkit.media.grounding import needs_boxes, write_for_family
from vlmkit.media.images import load_image_resized, read_image_size
from vlmkit.media.video import FrameSampling
from vlmkit.sample import Sample, as_sample


class Qwen2VLTemplate:
    """Encodes `Sample`s for a Qwen2-VL, Qwen2.5-VL or Qwen3-VL checkpoint (the three families differ in the
    `render`, `box_format` and `video_defaults` they pass); see the module docstring for shapes. Not the
    first-generation Qwen-VL's (`vlmkit.families.qwen_vl`)."""

    limit_option = "--max-pixels"  # the option `min_limit` / `max_limit` (pixels of area) come from
    compact_images = True  # `encode(..., patchify=False)` + `patchify_images` (the encode cache's form)
    # the tokens an image and a video expand, the tokens that end a reply, and the padding token when the
    # tokenizer has none (a family reusing this class with other token names sets its own: GLM-4.1V)
    image_token = "<|image_pad|>"
    video_token = "<|video_pad|>"
    stop_tokens = ("<|im_end|>", "<|endoftext|>")
    pad_fallback = "<|endoftext|>"

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
        jpeg_draft: bool = False,
        box_format=None,
        fps: float | None = 2.0,
        nframes: int | None = None,
        min_frames: int = 4,
        max_frames: int = 768,
        video_min_pixels: int = 128 * 28 * 28,
        video_max_pixels: int = 768 * 28 * 28,
        video_total_pixels: int = 2 * int(128000 * 28 * 28 * 0.9),
        video_timestamps: bool = False,
        second_per_grid_ts: bool = False,
    ):
        factor = patch_size * merge_size
        for option, value in (("--max-pixels", max_pixels), ("--video-max-pixels", video_max_pixels)):
            if value < factor * factor:  # 0 or negative would pass the resize rules' arithmetic silently
                raise VlmkitError(
                    f"{option} {value}: below one {factor}x{factor} patch; give at least {factor * factor}"
                )
        if min_pixels < 1:
            raise VlmkitError(f"--min-pixels {min_pixels}: must be at least 1")
        if min_pixels > max_pixels:
            raise DataError(f"--min-pixels {min_pixels} is larger than --max-pixels {max_pixels}")
        self.tokenizer = tokenizer
        self.render = render
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.temporal_patch_size = temporal_patch_size
        self.mean = np.asarray(image_mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(image_std, dtype=np.float32).reshape(3, 1, 1)
        # Normalised value of every uint8 level per channel, computed with the same float32 steps as
        # transformers (rescale, then (x - mean) / std), so a table lookup gives identical values.
        levels = np.arange(256, dtype=np.float32).reshape(1, 256, 1) / 255.0
        self._normalised = ((levels - self.mean) / self.std).reshape(3, 256)  # (channel, level)
        self.jpeg_draft = jpeg_draft
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self.system = system
        # Video (see vlmkit.families.qwen2_vl.video): frame sampling and the per-frame pixel budget;
        # Qwen3-VL writes timestamps per temporal group, Qwen2.5-VL passes second_per_grid_ts.
        if fps is not None and fps <= 0:
            raise DataError(f"--fps {fps}: must be above 0")
        if nframes is not None and nframes < 1:
            raise DataError(f"--nframes {nframes}: must be at least 1")
        if max_frames < 1:
            raise DataError(f"--max-frames {max_frames}: must be at least 1")
        if min_frames < 1:
            raise DataError(f"--min-frames {min_frames}: must be at least 1")
        if video_max_pixels < video_min_pixels:
            raise DataError(
                f"--video-max-pixels {video_max_pixels} is below the video minimum of {video_min_pixels} pixels"
            )
        self.fps, self.nframes = fps, nframes
        self.min_frames, self.max_frames = int(min_frames), int(max_frames)
        self.video_min_pixels = int(video_min_pixels)
        self.video_max_pixels = int(video_max_pixels)
        self.video_total_pixels = int(video_total_pixels)
        self.video_timestamps = video_timestamps
        self.second_per_grid_ts = second_per_grid_ts
        self.box_format = box_format  # vlmkit.media.grounding.BoxFormat: how boxes are written; None: left as text
        vocab = tokenizer.get_vocab()
        self.image_token_id = vocab[self.image_token]
        self.video_token_id = vocab[self.video_token]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else vocab[self.pad_fallback]
        self.stop_token_ids = [vocab[token] for token in self.stop_tokens]

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        tokenizer,
        render,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        system: str | None = None,
        box_format=None,
        fps: float | None = None,
        nframes: int | None = None,
        max_frames: int | None = None,
        min_frames: int | None = None,
        video_max_pixels: int | None = None,
        video_defaults: dict[str, Any] | None = None,
    ) -> Qwen2VLTemplate:
        """Numbers from the checkpoint's preprocessor_config.json; pixel limits and system prompt from the
        arguments (given options over the saved vlmkit.json: `Family.load_template`), else the
        preprocessor config."""
        config = json.loads((Path(model_dir) / "preprocessor_config.json").read_text())
        size = config.get("size") or {}
        default_min = size.get("shortest_edge") or config["min_pixels"]
        default_max = size.get("longest_edge") or config["max_pixels"]
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
            max_pixels=max_pixels if max_pixels is not None else default_max,
            system=system,
            **video_settings(model_dir, video_defaults, fps, nframes, max_frames, min_frames, video_max_pixels),
            box_format=box_format,
        )

    @property
    def settings(self) -> dict[str, Any]:
        """What must travel with a model or run so that inference encodes as training did."""
        return {
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "system": self.system,
            **{key: getattr(self, key) for key in VIDEO_SETTINGS},
        }

    @property
    def min_limit(self) -> int:
        """The interface's lower bound of the per-call limit: `min_pixels`."""
        return self.min_pixels

    @property
    def max_limit(self) -> int:
        """The interface's upper bound of the per-call limit: `max_pixels`."""
        return self.max_pixels

    @property
    def video_sampling(self) -> FrameSampling:
        """How `vlmkit.media.video` samples a video's frames for this template (qwen-vl-utils' rule)."""
        return FrameSampling(self.fps, self.nframes, self.min_frames, self.max_frames, self.temporal_patch_size)

    # -- text --------------------------------------------------------------------------------------

    def _messages(self, sample: Sample) -> list[dict]:
        messages = sample.messages
        if self.system is not None and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}, *messages]
        return messages

    @property
    def _live_tokens(self) -> tuple[str, ...]:
        """Special tokens that stay live in user text: the grounding tokens the box writer puts there."""
        return self.box_format.keep_tokens if self.box_format is not None else ()

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text with one placeholder token per image, as the chat template writes it."""
        sample = as_sample(sample)
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
        return self.patchify(np.asarray(image.convert("RGB")))

    def target_size(
        self, height: int, width: int, max_pixels: int | None = None, requested: tuple[int, int] | None = None
    ) -> tuple[int, int]:
        """The size an image of height x width is resized to; an image part's `requested` size
        (qwen-vl-utils' resized_height/resized_width) replaces its own, rounded to the factor within the
        limits as the image processor then does (aspect ratio not kept, as in qwen-vl-utils)."""
        return self.resized_size(*(requested or (height, width)), max_pixels)

    def load_resized(
        self, source: Any, where: str, max_pixels: int | None = None, requested: tuple[int, int] | None = None
    ):
        """Decode an image source once, resized to the model's size -> ((H, W, 3) uint8, (orig_h, orig_w))."""
        limit = self._max_pixels(max_pixels)
        try:
            return load_image_resized(
                source, lambda h, w: self.target_size(h, w, limit, requested), where, jpeg_draft=self.jpeg_draft
            )
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None

    def patchify(self, pixels: np.ndarray, out: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Resized RGB (H, W, 3) uint8 -> (patches (gh*gw, 3*tps*ps*ps) float32, grid (1, gh, gw)).

        Normalises by table lookup and writes each value straight into its patch slot (written into
        `out` when given, e.g. a slice of a batch buffer): two passes over the output instead of the
        six of float arithmetic followed by reshape copies, with identical values.
        """
        ps, ms, tps = self.patch_size, self.merge_size, self.temporal_patch_size
        height, width = pixels.shape[:2]
        gh, gw = height // ps, width // ps
        blocks = pixels.reshape(gh // ms, ms, ps, gw // ms, ms, ps, 3)
        blocks = blocks.transpose(0, 3, 1, 4, 6, 2, 5)  # (gh/ms, gw/ms, ms, ms, 3, ps, ps)
        blocks = np.ascontiguousarray(blocks).reshape(gh * gw, 3, ps * ps)
        if out is None:
            out = np.empty((gh * gw, 3 * tps * ps * ps), dtype=np.float32)
        slots = out.reshape(gh * gw, 3, tps, ps * ps)
        for channel in range(3):
            values = self._normalised[channel][blocks[:, channel]]  # (gh*gw, ps*ps)
            for t in range(tps):  # a still image fills every temporal slot
                slots[:, channel, t] = values
        return out, (1, gh, gw)

    def patchify_images(self, encoded: dict[str, Any]) -> dict[str, Any]:
        """An `encode(..., patchify=False)` output -> the `encode` output: its `resized_images` list of
        (H, W, 3) uint8 arrays becomes `pixel_values` (one buffer, no concatenation copy)."""
        encoded = dict(encoded)
        images = encoded.pop("resized_images", None)
        if not images:
            return encoded
        ps, tps = self.patch_size, self.temporal_patch_size
        counts = [(p.shape[0] // ps) * (p.shape[1] // ps) for p in images]
        buffer = torch.empty(sum(counts), 3 * tps * ps * ps, dtype=torch.float32)
        start = 0
        for pixels, count in zip(images, counts, strict=True):
            self.patchify(pixels, buffer[start : start + count].numpy())
            start += count
        encoded["pixel_values"] = buffer
        return encoded

    # -- whole samples -----------------------------------------------------------------------------

    def image_sizes(
        self, sample: Sample, limit: int | None = None
    ) -> list[tuple[tuple[int, int], tuple[int, int]]]:
        """((orig_h, orig_w), (resized_h, resized_w)) per image of `sample`, from the headers, as `encode`
        resizes them; `limit` is this call's max_pixels (None: the template's)."""
        sizes = []
        for k, (source, requested) in enumerate(zip(sample.media("image"), sample.requested_sizes(), strict=True)):
            where = f"{sample.where}: image {k + 1}"
            height, width = read_image_size(source, where=where)
            try:
                sizes.append(((height, width), self.target_size(height, width, limit, requested)))
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
        return sizes

    def _with_objects(self, sample: Sample, max_pixels: int | None) -> Sample:
        """`sample` with its grounding placeholders and box text written in this family's format, for
        images at the size this call resizes them to (`vlmkit.media.grounding`)."""
        if self.box_format is None or not needs_boxes(sample):
            return sample
        return write_for_family(sample, self.box_format, self.image_sizes(sample, max_pixels))

    def encode(
        self,
        sample: Sample,
        add_generation_prompt: bool = False,
        limit: int | None = None,
        patchify: bool = True,
    ) -> dict[str, Any]:
        """Sample -> model inputs for one sequence.

        Returns input_ids, labels, mm_token_type_ids (T,), and when the sample has images
        pixel_values (N_patches, D) and image_grid_thw (n_images, 3); `image_sizes` lists
        ((orig_h, orig_w), (resized_h, resized_w)) per image for mapping boxes.
        `limit` is this call's max_pixels, overriding the template's (e.g. from `fit_limit`).
        With `patchify=False` the images come as `resized_images`, a list of (H, W, 3) uint8 arrays
        (8x smaller than pixel_values; what the encode cache stores) instead of `pixel_values`;
        `patchify_images` finishes them.
        """
        sample = as_sample(sample)
        max_pixels = self._max_pixels(limit)
        sample = self._with_objects(sample, max_pixels)
        segments = self.render(mark_text(self._messages(sample)), add_generation_prompt, sample.where)
        ids, labels = tokenize_segments(self.tokenizer, segments, self._live_tokens)
        out: dict[str, Any] = {}
        images = sample.media("image")
        if images:
            resized, grids, sizes = [], [], []
            for k, (source, requested) in enumerate(zip(images, sample.requested_sizes(), strict=True)):
                pixels, original = self.load_resized(source, f"{sample.where}: image {k + 1}", max_pixels, requested)
                resized.append(pixels)
                grids.append((1, pixels.shape[0] // self.patch_size, pixels.shape[1] // self.patch_size))
                sizes.append((original, pixels.shape[:2]))
            counts = [t * h * w // self.merge_size**2 for t, h, w in grids]
            ids, labels = expand_tokens(ids, labels, self.image_token_id, counts)
            out["resized_images"] = resized
            out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
            out["image_sizes"] = sizes
        if sample.media("video"):
            ids, labels = encode_videos(self, sample.media("video"), sample.where, ids, labels, out)
        input_ids = torch.tensor(ids, dtype=torch.long)
        mm_types = torch.zeros_like(input_ids, dtype=torch.int)
        mm_types[input_ids == self.image_token_id] = 1
        mm_types[input_ids == self.video_token_id] = 2
        out.update(
            input_ids=input_ids, labels=torch.tensor(labels, dtype=torch.long), mm_token_type_ids=mm_types
        )
        return self.patchify_images(out) if patchify else out

    def _measure(
        self, sample: Sample, add_generation_prompt: bool, max_pixels: int | None = None
    ) -> tuple[int, list[tuple[str, int, int]]]:
        """(tokens other than image pads, [(where, height, width) per image]) without decoding pixels.
        Box text is written at `max_pixels` (None: the template's; resized-pixel boxes then have at
        least as many digits as at any lower limit, so the count is an upper bound for those)."""
        sample = self._with_objects(sample, max_pixels)
        segments = self.render(mark_text(self._messages(sample)), add_generation_prompt, sample.where)
        ids, _ = tokenize_segments(self.tokenizer, segments, self._live_tokens)
        images = sample.media("image")
        placeholders = ids.count(self.image_token_id)
        if placeholders != len(images):
            raise DataError(
                f"{sample.where}: {placeholders} {self.image_token} tokens in the text for {len(images)} images"
            )
        sizes = []
        for k, (source, requested) in enumerate(zip(images, sample.requested_sizes(), strict=True)):
            where = f"{sample.where}: image {k + 1}"
            size = read_image_size(source, where=where)
            sizes.append((where, *(requested or size)))  # a requested size stands for the image's own
        videos = sample.media("video")
        extra = video_token_delta(self, videos, sample.where, ids) if videos else 0
        return len(ids) - placeholders + extra, sizes

    def _image_tokens(self, sizes: list[tuple[str, int, int]], max_pixels: int | None) -> int:
        total = 0
        for where, height, width in sizes:
            try:
                total += self.image_token_count(height, width, max_pixels)
            except ValueError as e:
                raise DataError(f"{where}: {e}") from None
        return total

    def count_tokens(
        self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False
    ) -> int:
        """`len(encode(sample, add_generation_prompt, limit)["input_ids"])`, reading only image headers;
        `limit` is this call's max_pixels (None: the template's).

        Raises what `encode` raises for a bad sample, a missing or unreadable image (a file whose
        pixels are corrupt past a valid header is only caught by `encode`).
        """
        sample = as_sample(sample)
        text_tokens, sizes = self._measure(sample, add_generation_prompt, limit)
        return text_tokens + self._image_tokens(sizes, self._max_pixels(limit))

    def fit_limit(
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

    def rope_positions(self, encoded: dict[str, Any]) -> torch.Tensor:
        """M-RoPE positions (3, T) of one `encode` output on its own, as the model's `get_rope_index` computes
        them (the rule is the same for images in Qwen2-VL, Qwen2.5-VL and Qwen3-VL): text advances all three
        rows by 1; an image of llm grid (t, h, w) = grid_thw / (1, merge, merge) takes (t, h, w) positions
        offset by the current position, which then advances by max(h, w). Used to pack samples."""
        types = encoded["mm_token_type_ids"].tolist()
        grids = iter(encoded.get("image_grid_thw", torch.empty(0, 3, dtype=torch.long)).tolist())
        pieces: list[torch.Tensor] = []
        current, start = 0, 0
        while start < len(types):
            end = start
            while end < len(types) and types[end] == types[start]:
                end += 1
            if types[start] == 0:
                pieces.append(torch.arange(current, current + end - start).expand(3, -1))
                current += end - start
            elif types[start] == 1:
                t, h, w = next(grids)
                h, w = h // self.merge_size, w // self.merge_size
                grid = torch.stack(
                    torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
                )  # (3, t, h, w)
                pieces.append(grid.reshape(3, -1) + current)
                current += max(h, w)
            else:
                raise DataError("video positions are not supported by this version of vlmkit yet")
            start = end
        return torch.cat(pieces, dim=1) if pieces else torch.zeros(3, 0, dtype=torch.long)  # (3, T)

    def packing_position_ids(self, encoded: dict[str, Any]) -> torch.Tensor:
        """Position ids (4, T) of one sample in a packed sequence, as transformers' Qwen-VL models take
        them: row 0 the text positions 0..T-1 (their restarts mark the sample boundaries for the
        attention mask and flash-attention's varlen path), rows 1-3 `rope_positions`."""
        text = torch.arange(encoded["input_ids"].shape[0]).unsqueeze(0)  # (1, T)
        return torch.cat([text, self.rope_positions(encoded)])  # (4, T)

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a list of `encode` outputs into one batch (left padding for generation)."""
        batch = collate_tokens(encoded, self.pad_token_id, padding_side, {"mm_token_type_ids": 0})
        with_images = [e for e in encoded if "pixel_values" in e]
        if with_images:
            batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
            batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
        with_videos = [e for e in encoded if "pixel_values_videos" in e]
        if with_videos:
            batch["pixel_values_videos"] = torch.cat([e["pixel_values_videos"] for e in with_videos])
            batch["video_grid_thw"] = torch.cat([e["video_grid_thw"] for e in with_videos])
            if self.second_per_grid_ts:
                batch["second_per_grid_ts"] = torch.cat([e["second_per_grid_ts"] for e in with_videos])
        return batch

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        """Image `k` of an `encode` output for people: its patch grid and its model and original size."""
        (oh, ow), (rh, rw) = encoded["image_sizes"][k]
        t, h, w = encoded["image_grid_thw"][k].tolist()
        return f"image {k + 1}: grid (t, h, w) = ({t}, {h}, {w}), resized to {rh}×{rw} from {oh}×{ow} (h×w)"

    def split_media(self, encoded: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
        """Per image, (its image tokens, its own pixel entries in `encode` form), and the entries of all
        videos together: what a chat turn that reuses the cached start of its conversation passes for the
        media after that start (`vlmkit.backends.chat_cache`)."""
        images, start = [], 0
        for grid in encoded.get("image_grid_thw", torch.empty(0, 3, dtype=torch.long)):
            rows = int(grid.prod())
            entries = {"pixel_values": encoded["pixel_values"][start : start + rows], "image_grid_thw": grid[None]}
            images.append((rows // self.merge_size**2, entries))
            start += rows
        video_keys = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
        return images, {key: encoded[key] for key in video_keys if key in encoded}
