"""Packing: several encoded samples in one sequence, each attending only to itself.

    packs = pack_lengths(lengths, capacity=2048)       # [[row, row, ...], ...] by token length
    dataset = PackedDataset(encoded_dataset, packs)    # item i: the encoded samples of pack i
    batch = collate_packed(template, [dataset[0], dataset[1]])

Per-sample correctness comes from the position ids, which the family's template gives for each
sample on its own (`template.packing_position_ids`, families with `Family.packing`): row 0 the
text positions 0..T_i-1, further rows the family's own (e.g. M-RoPE's temporal, height and width
rows), each sample starting at 0.
With no `attention_mask`, transformers reads the restarts of row 0 as sample boundaries: SDPA
and eager get a block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`),
flash-attention its variable-length path (cu_seqlens), so with `padding_free=True` the whole
batch is one row with no padding. The first token of each sample gets no label, so nothing is
predicted across a boundary; the model's mean over supervised tokens is then the per-token
mean of the samples run separately.
"""

from __future__ import annotations

import bisect
import random
from typing import Any

import torch

from vlmkit.errors import VlmkitError
from vlmkit.families.encoding import IGNORE_INDEX

# Attention implementations whose transformers path honours packed position ids without a mask.
PACKING_ATTN = ("sdpa", "eager", "flash_attention_2")


def pack_lengths(lengths: list[int], capacity: int, seed: int | None = None) -> list[list[int]]:
    """Best fit: indices into `lengths`, grouped so each group's total is <= capacity.

    Each row goes into the fullest pack that still has room (a new pack when none has); packs come
    out in creation order and each lists its indices in placement order. Without `seed` the rows
    come longest first (best-fit decreasing, the fullest packs); with a seed in a shuffled order, so
    that rows of one length, which in some datasets share an answer, do not end up in the same
    packs (what training uses: about 1% emptier on mixed lengths).
    """
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise VlmkitError(
            f"row {too_long[0]} has {lengths[too_long[0]]} tokens, more than the packing length {capacity}"
        )
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, pack index), sorted
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if seed is not None:
        random.Random(seed).shuffle(order)
    for i in order:
        k = bisect.bisect_left(free, (lengths[i], -1))
        if k == len(free):
            packs.append([i])
            bisect.insort(free, (capacity - lengths[i], len(packs) - 1))
        else:
            room, p = free.pop(k)
            packs[p].append(i)
            bisect.insort(free, (room - lengths[i], p))
    return packs


class PackedDataset(torch.utils.data.Dataset):
    """Item i: the list of `dataset` items in pack i (encoded on access, as `dataset` does)."""

    def __init__(self, dataset, packs: list[list[int]]):
        self.dataset = dataset
        self.packs = packs

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> list[dict[str, Any]]:
        """The pack's rows; a row that fails to encode is left out (`dataset.encode_row` lists it), and a
        pack left empty is replaced by the next pack that is not."""
        encode = getattr(self.dataset, "encode_row", self.dataset.__getitem__)
        for k in range(len(self.packs)):
            rows = [row for j in self.packs[(i + k) % len(self.packs)] if (row := encode(j)) is not None]
            if rows:
                return rows
        return [self.dataset[self.packs[i][0]]]  # raises the dataset's own error


def pack_row(template, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """One packed row, in `encode` form: each tensor of the samples concatenated in sample order (the
    per-token ones (T,), the family's pixel inputs), position_ids (R, T) from the template's
    `packing_position_ids`. Each sample's first label is ignored."""
    positions = [template.packing_position_ids(s) for s in samples]  # (R, T_i) each, text row first
    row: dict[str, torch.Tensor] = {}
    for key in dict.fromkeys(k for s in samples for k, v in s.items() if isinstance(v, torch.Tensor)):
        row[key] = torch.cat([s[key] for s in samples if key in s])
    starts = torch.tensor([0] + [s["input_ids"].shape[0] for s in samples[:-1]]).cumsum(0)
    row["labels"] = row["labels"].clone()
    row["labels"][starts] = IGNORE_INDEX  # never predicted from the previous sample's last token
    row["position_ids"] = torch.cat(positions, dim=1)
    return row


def collate_packed(
    template, packs: list[list[dict[str, Any]]], padding_free: bool = False, capacity: int | None = None
) -> dict[str, Any]:
    """Packs (lists of `encode` outputs) -> one model batch with no `attention_mask`.

    padding_free: all packs in one row (1, sum T) for flash-attention's varlen path; otherwise one
    row per pack (B, T_max), right-padded by the template's `collate`, with pad tokens whose positions
    restart at 0 so they form a sequence of their own that no real token attends to. position_ids is
    (R, B, T), R the rows of the template's `packing_position_ids`, or (B, T) when R is 1.
    `batch_stats` (popped by the trainer before the forward) counts samples, tokens and slots;
    `capacity` (the packing length) adds the packs' capacity, for the fill fraction.
    """
    n_packs, n_samples = len(packs), sum(len(p) for p in packs)
    if padding_free:
        packs = [[s for pack in packs for s in pack]]
    rows = [pack_row(template, pack) for pack in packs]
    length = max(r["input_ids"].shape[0] for r in rows)
    positions = torch.zeros(rows[0]["position_ids"].shape[0], len(rows), length, dtype=torch.long)
    for b, r in enumerate(rows):
        n = r["input_ids"].shape[0]
        positions[:, b, :n] = r["position_ids"]
        positions[:, b, n:] = torch.arange(length - n)  # padding: a sequence of its own
    batch: dict[str, Any] = template.collate([{k: v for k, v in r.items() if k != "position_ids"} for r in rows])
    del batch["attention_mask"]  # the restarts of the positions mark the samples instead
    batch["position_ids"] = positions if positions.shape[0] > 1 else positions[0]  # (R, B, T) or (B, T)
    batch["use_cache"] = False  # a cache makes transformers skip the packed-sequence mask (it assumes generation)
    tokens = sum(r["input_ids"].shape[0] for r in rows)
    stats = {"samples": n_samples, "tokens": tokens, "slots": batch["input_ids"].numel()}
    if capacity is not None:
        stats["capacity"] = capacity * n_packs
    batch["batch_stats"] = stats
    return batch


def resolve_packing(requested: bool | None, family, attn_impl: str) -> tuple[bool, str]:
    """(pack?, why not) for `--packing` (True), `--no-packing` (False) or the default (None).

    The default packs where it is correct: the family has `Family.packing` (its template gives
    per-sample position ids the model honours) and the attention implementation is one whose
    transformers path reads sample boundaries from them. Asking for packing where it is not
    correct raises; the default then turns it off and says why.
    """
    reasons = []
    if not family.packing:
        why = f" ({family.no_packing_reason})" if family.no_packing_reason else ""
        reasons.append(f"the {family.name} family does not support packing{why}")
    if attn_impl not in PACKING_ATTN:
        reasons.append(f"--attn-impl {attn_impl} cannot mask packed rows (use {', '.join(PACKING_ATTN)})")
    if requested and reasons:
        raise VlmkitError(f"--packing: {'; '.join(reasons)}; use --no-packing")
    if requested is False:
        return False, ""
    return not reasons, "; ".join(reasons)
