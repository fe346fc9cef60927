"""The template interface: what every family's template gives shared code.

`Family.load_template(model_dir, tokenizer, encoding)` (the family's `make_template`) returns an object of
this shape. Training, batch
inference, chat, serving and the data commands use only what is written here; anything else on a
template is the family's own business. Optional capabilities are not discovered on the template
(`hasattr`): they are declared here with a "none" value (a family without grounding has
`box_format = None`) or as fields of the `Family` record (`vlmkit.families.Family`: `packing`,
`chat_cache`, `chat_positions`, ...).

Shared code names this Protocol in its type hints (`template: Template`), imported under `TYPE_CHECKING`:
at run time nothing imports this module but the tests. `tests/unit/test_family_boundaries.py` checks every
registered family's template against it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from vlmkit.media.video import FrameSampling
from vlmkit.sample import Sample

if TYPE_CHECKING:
    from vlmkit.media.grounding import BoxFormat


@runtime_checkable
class Template(Protocol):
    """Encodes `Sample`s for one checkpoint and batches them.

    Attributes every template sets (shared code reads them; "none" values are declared, not left out):
    tokenizer: the checkpoint's tokenizer. system: the system prompt put first when a sample has none
    (None: the family's own default). pad_token_id: what `collate` pads input_ids with.
    stop_token_ids: generation stops at any of them. image_token_id: the token that stands for image
    content in `encode`'s input_ids (None: the family expands no image tokens itself).
    video_token_id: the same for video (None: no video tokens of their own; e.g. InternVL writes
    frames as images). box_format: how boxes are written and read (`vlmkit.media.grounding.BoxFormat`; None:
    no grounding, `objects` are refused or left as text). limit_option: the CLI option that sets the
    per-row image resolution limit (`limit` of `encode` / `count_tokens`, found by `fit_limit`), for
    messages ("--max-pixels", "--max-tiles"); None: the image size is fixed by the checkpoint, nothing
    to shrink. min_limit / max_limit: the lower and upper bound of that limit in the unit of
    `limit_option` (pixels of area, tiles per image, ...; None when `limit_option` is None); a family
    keeps its own names for them (e.g. `min_pixels`, `max_tiles`). video_sampling: how a video's frames
    are sampled as `encode` does (`vlmkit.media.video.FrameSampling`, for `load_video`/`probe_video`); None for
    a template that takes no video.
    compact_images: `encode(..., patchify=False)` returns resized uint8 images (`resized_images`) that
    `patchify_images` turns into the `encode` output; the encode cache stores that compact form.
    False: the cache stores `encode`'s own output.
    """

    tokenizer: Any
    system: str | None
    pad_token_id: int
    stop_token_ids: list[int]
    image_token_id: int | None
    video_token_id: int | None
    box_format: BoxFormat | None
    limit_option: str | None
    min_limit: int | None
    max_limit: int | None
    video_sampling: FrameSampling | None
    compact_images: bool

    @property
    def settings(self) -> dict[str, Any]:
        """The encoding settings that must travel with a model or run (saved to vlmkit.json) so that
        inference encodes as training did: e.g. {"min_pixels", "max_pixels", "system", "fps", ...}."""
        ...

    def render_text(self, sample: Sample, add_generation_prompt: bool = False) -> str:
        """The prompt text as the checkpoint's chat template writes it, one placeholder per image/video."""
        ...

    def encode(self, sample: Sample, add_generation_prompt: bool = False, limit: int | None = None) -> dict:
        """Sample -> the model inputs of one sequence, unbatched. `sample` may be a row dict, read by
        `vlmkit.sample.as_sample` (every template's encode, count_tokens and render_text begin with it).

        Always: input_ids (T,) long; labels (T,) long, the input id on supervised tokens (the assistant
        replies and their end token) and -100 (`vlmkit.families.encoding.IGNORE_INDEX`) elsewhere.
        With images: the family's pixel inputs (e.g. pixel_values and its grid or size tensors) and
        image_sizes [((orig_h, orig_w), (model_h, model_w))] per image, for mapping boxes; per-token
        inputs of the family (e.g. token type ids) are (T,) tensors too.
        add_generation_prompt: end with the assistant header (inference). limit: this call's
        resolution limit in the unit of `limit_option` (from `fit_limit`); None: the template's
        `max_limit`. A template without a limit (`limit_option` None) refuses any other value.
        Raises DataError / MediaError (one line naming `sample.where`) for a sample it cannot encode.
        """
        ...

    def collate(self, encoded: list[dict[str, Any]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """`encode` outputs -> one model batch: input_ids, attention_mask, labels (B, T_max) padded on
        `padding_side` ("left" for generation) through `vlmkit.families.encoding.collate_tokens`, the family's
        per-token inputs padded alike, and the pixel inputs of all samples concatenated in order.
        The result goes to the model's `forward` / `generate` as keyword arguments."""
        ...

    def count_tokens(self, sample: Sample, limit: int | None = None, add_generation_prompt: bool = False) -> int:
        """`len(encode(sample, add_generation_prompt, limit)["input_ids"])`, from image and video
        headers only (no pixels decoded); raises what `encode` raises for a bad sample."""
        ...

    def fit_limit(self, sample: Sample, max_length: int, add_generation_prompt: bool = False) -> int | None:
        """The largest resolution limit in [min_limit, max_limit] (unit of `limit_option`) at which `sample`
        has at most `max_length` tokens; None when it does not fit even at `min_limit` or the image size
        is fixed."""
        ...

    def describe_image(self, encoded: dict[str, Any], k: int) -> str:
        """One line on image `k` (0-based) of an `encode` output for people (`vlmkit data preview`):
        e.g. its grid or tiles and its original and model size."""
        ...


@runtime_checkable
class Grounds(Protocol):
    """What a template whose `box_format` is not None also has (`vlmkit.media.grounding`)."""

    def image_sizes(self, sample: Sample, limit: int | None = None) -> list[tuple[tuple[int, int], ...]]:
        """((orig_h, orig_w), (model_h, model_w)) per image of `sample`, from the headers, as `encode`
        resizes them at `limit` (as in `encode`; what grounding boxes are mapped between)."""
        ...


@runtime_checkable
class SplitsMedia(Protocol):
    """What a template of a family with `Family.chat_cache` also has (`vlmkit.backends.chat_cache`)."""

    def split_media(self, encoded: dict[str, Any]) -> tuple[list[tuple[int, dict[str, Any]]], dict[str, Any]]:
        """Per image, (its image tokens, its own pixel entries in `encode` form), and the entries of all
        videos together ({} when none): what a chat turn that reuses the cached start of its conversation
        passes for the media after that start. `collate([...])` must accept those entries joined."""
        ...


@runtime_checkable
class Packs(Protocol):
    """What a template of a family with `Family.packing` also has (`vlmkit.train.packing`)."""

    def packing_position_ids(self, encoded: dict[str, Any]) -> torch.Tensor:
        """Position ids (R, T) of one `encode` output on its own in a packed sequence: row 0 the text
        positions 0..T-1 (their restarts mark sample boundaries), further rows the family's own (R = 1
        for plain 1-D positions). Packing concatenates the samples' tensors key by key and pads rows
        with `collate`, so every tensor of `encode`'s output must be per token or per image."""
        ...
