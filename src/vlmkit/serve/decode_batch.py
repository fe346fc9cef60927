"""Iteration-level batching for `vlmkit serve`: prompts are prefilled one by one, then decode together in a
batch that rows join and leave between any two tokens.

transformers' continuous batching (`generate_batch`) does not take image inputs, and its paged cache needs the
attention kernels it ships; vLLM is the engine for scale. This is the small version on the model's own
`forward` and transformers' `DynamicCache`:

- `prefill` runs the prompts that arrived since the last step as one left-padded batch (vision encoder
  included), with the position ids `generate` would give them (the model's own
  `_prepare_position_ids_for_generation`: 1-D from the attention mask, or the Qwen-VL M-RoPE rows); it returns
  the logits of their next tokens, their cache and their last positions; `ChunkedPrefill` does the same for a
  long prompt a chunk at a time, so that the running rows decode between its chunks;
- `DecodeBatch.join` left-pads that cache (or the batch's) to a common length and stacks it under the batch,
  as `generate` left-pads a batch; the attention mask hides the padding and each row keeps its own positions,
  so a row decodes as in a batch of its own;
- `DecodeBatch.step` runs one token of every row; `DecodeBatch.leave` drops finished rows at once and cuts
  the padding no row needs any more.

Only caches made of plain `DynamicLayer`s can be padded and stacked; with other layers (sliding windows,
linear attention: `mergeable` False) the prompts prefilled together decode together, as one `generate` call
would, and later prompts start a batch of their own; all are still scheduled per token.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from vlmkit.backends.chat_cache import CACHE


@dataclass
class Prefilled:
    """K prompts run through the model together (left-padded): `logits` (K, V) of their next tokens, their
    `cache` (K rows), its attention `mask` (K, L), and the `positions` of their last tokens ((K, 1), or
    (P, K, 1) for models with P position rows)."""

    logits: torch.Tensor
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor


def _base(model: Any) -> Any:
    """The transformers model under a peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prefill(model: Any, batch: dict[str, Any]) -> Prefilled:
    """Run collated prompts (`batch`: input_ids (K, T) left-padded, attention_mask, pixel inputs, ...) through
    `model`, as `generate` runs its first step."""
    chunks = ChunkedPrefill(model, batch, chunk=batch["input_ids"].shape[1])
    return chunks.advance(model)


class ChunkedPrefill:
    """A prompt prefilled `chunk` tokens at a time, each chunk one forward that extends the cache, so that the
    rows decoding meanwhile get a token between two chunks (vLLM's chunked prefill; transformers' `generate`
    does the same with `prefill_chunk_size`, for text). The media go whole into the first chunk, which runs up
    to the last media token (`media_ids`): the vision encoder runs once, and each image's features fill its
    placeholders in one piece. Position ids are computed once for the whole prompt, as `generate` computes
    them, and sliced per chunk; so are the attention mask and the token-type ids (up to the chunk's end, as
    `generate`'s chunking slices them)."""

    def __init__(self, model: Any, batch: dict[str, Any], chunk: int, media_ids: tuple[int, ...] = ()):
        ids = batch["input_ids"]  # (K, T)
        # (K, T), or (P, K, T) for models with P position rows (Qwen-VL: text + 3 M-RoPE rows)
        self.positions = _base(model)._prepare_position_ids_for_generation(ids, dict(batch))
        self.batch, self.length, self.done, self.cache = batch, ids.shape[1], 0, None
        is_media = torch.isin(ids, torch.tensor(media_ids, device=ids.device)).any(dim=0) if media_ids else None
        media_end = int(is_media.nonzero().max()) + 1 if is_media is not None and is_media.any() else 0
        self.first = max(chunk, media_end)
        self.chunk = chunk

    @property
    def left(self) -> int:
        """Prompt tokens not yet run."""
        return self.length - self.done

    def advance(self, model: Any) -> Prefilled | None:
        """Run the next chunk; the prompt's `Prefilled` once its last chunk has run, else None."""
        start = self.done
        end = min(self.length, start + (self.first if start == 0 else self.chunk))
        ids = self.batch["input_ids"]
        inputs = {"input_ids": ids[:, start:end], "position_ids": self.positions[..., start:end]}
        for key, value in self.batch.items():
            if key == "input_ids":
                continue
            if torch.is_tensor(value) and value.shape == ids.shape:  # per token: the mask, token types
                inputs[key] = value[:, :end]
            elif start == 0:  # the media (pixel values, grid sizes, ...), whole in the first chunk
                inputs[key] = value
        if self.cache is not None:
            inputs[CACHE] = self.cache
        base = _base(model)
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
        with torch.inference_mode():
            out = model(**inputs, use_cache=True, **keep)
        self.cache, self.done = getattr(out, CACHE), end
        if end < self.length:
            return None
        return Prefilled(
            logits=out.logits[:, -1],
            cache=self.cache,
            mask=self.batch["attention_mask"],
            positions=self.positions[..., -1:],
        )


def mergeable(cache: Any) -> bool:
    """Whether `cache` can be left-padded and stacked with others (every layer a plain `DynamicLayer`)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    if width == 0:
        return x
    shape = list(x.shape)
    shape[dim] = width
    return torch.cat([x.new_zeros(shape), x], dim=dim)


class DecodeBatch:
    """Rows decoding together: one left-padded cache (B rows of L positions), its attention mask (B, L) and the
    positions of each row's last token ((B, 1) or (K, B, 1)). `rows` are the caller's objects, in batch order."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def _batch_dim(self) -> int:
        return 1 if self.positions.ndim == 3 else 0

    def join(self, rows: list[Any], prompt: Prefilled) -> None:
        """Add `rows`, whose prompts `prompt` holds in the same order, at the end of the batch."""
        if not self.rows:
            self.cache, self.mask, self.positions, self.rows = prompt.cache, prompt.mask, prompt.positions, rows
            return
        length = max(self.mask.shape[1], prompt.mask.shape[1])
        grow, pad = length - self.mask.shape[1], length - prompt.mask.shape[1]
        for mine, theirs in zip(self.cache.layers, prompt.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, grow, 2), _pad_left(theirs.keys, pad, 2)])
            mine.values = torch.cat([_pad_left(mine.values, grow, 2), _pad_left(theirs.values, pad, 2)])
        self.mask = torch.cat([_pad_left(self.mask, grow, 1), _pad_left(prompt.mask, pad, 1)])
        self.positions = torch.cat([self.positions, prompt.positions], dim=self._batch_dim)
        self.rows += rows

    def leave(self, done: set[int]) -> None:
        """Drop the rows at batch indices `done`, and the leading padding that no row left needs."""
        keep = [i for i in range(len(self.rows)) if i not in done]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = self.positions = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        if mergeable(self.cache):
            first = int(self.mask[index].any(dim=0).int().argmax())  # first position a remaining row uses
            for layer in self.cache.layers:
                layer.keys = layer.keys[index, :, first:]
                layer.values = layer.values[index, :, first:]
        else:  # other layers keep their own lengths (a sliding window) or none (linear attention)
            first = 0
            for layer in self.cache.layers:
                layer.batch_select_indices(index)
        self.mask = self.mask[index, first:]
        self.positions = self.positions.index_select(self._batch_dim, index)

    def step(self, model: Any, tokens: list[int]) -> torch.Tensor:
        """Run each row's newest token (`tokens`, in batch order) through `model`; the logits (B, V) of the next."""
        device = self.mask.device
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        self.positions = self.positions + 1
        input_ids = torch.tensor(tokens, device=device)[:, None]  # (B, 1)
        with torch.inference_mode():
            out = model(
                input_ids=input_ids,
                attention_mask=self.mask,
                position_ids=self.positions,
                use_cache=True,
                **{CACHE: self.cache},
            )
        return out.logits[:, -1]
