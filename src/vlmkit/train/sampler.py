"""Batching for `vlmkit sft`: padded batches with their padding counted, length-grouped order, and
the running padding / fill fractions that the run log reports.

Length grouping uses transformers' `LengthGroupedSampler` with the token counts that validation
measured (`template.count_tokens`, from image headers), so no row is encoded to learn its length.
"""

from __future__ import annotations

from typing import Any

import torch


def collate_padded(template, encoded: list[dict[str, Any]]) -> dict[str, Any]:
    """`template.collate` (right padding) plus `batch_stats` (samples, tokens, slots) for the log."""
    batch: dict[str, Any] = template.collate(encoded, padding_side="right")
    batch["batch_stats"] = {
        "samples": len(encoded),
        "tokens": int(batch["attention_mask"].sum()),
        "slots": batch["input_ids"].numel(),
    }
    return batch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Random order in which each run of `group_size` rows has similar token lengths (the longest first).

    The order is transformers' `get_length_grouped_indices` (shuffle, sort within mega-batches of 50
    groups) drawn from `seed + epoch`, so it is the same on every process and again on resume.
    group_size: rows per optimizer step on this process (batch size x accumulation).
    """

    def __init__(self, lengths: list[int], group_size: int, seed: int):
        self.lengths = list(lengths)
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the Trainer at each epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.group_size, generator=generator))


class BatchStats:
    """Running totals of `batch_stats`: samples, real tokens, slots (tokens + padding), pack capacity."""

    def __init__(self):
        self.totals = {"samples": 0, "tokens": 0, "slots": 0, "capacity": 0}

    def add(self, stats: dict[str, int]) -> None:
        for key, value in stats.items():
            self.totals[key] += int(value)

    def log_fields(self) -> dict[str, float]:
        """padding_fraction: padding / all token slots of the batches seen; fill_fraction (packing):
        real tokens / the packs' capacity (packs x packing length)."""
        t = self.totals
        fields: dict[str, float] = {}
        if t["slots"]:
            fields["padding_fraction"] = round(1 - t["tokens"] / t["slots"], 4)
        if t["capacity"]:
            fields["fill_fraction"] = round(t["tokens"] / t["capacity"], 4)
        if t["samples"]:
            fields["samples_seen"] = t["samples"]
        return fields
