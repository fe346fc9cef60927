"""The batches `vlmkit dpo` gives TRL's DPOTrainer, encoded by vlmkit's family template.

TRL's own vision collator tokenizes the prompt and the replies with the checkpoint's processor and cuts
sequences at `max_length` (through image tokens, trl#5285). Here each side of a pair is encoded as
`vlmkit sft` encodes a training row (`template.encode`) and its prompt as `vlmkit infer` encodes it
(`template.encode(..., add_generation_prompt=True)`); the one must start with the other, so the policy and
the reference model score the replies after exactly the prompt they will answer at inference. Nothing is
truncated: pairs over --max-length are refused before training (`vlmkit.data.preference.check_pairs`).

A batch is TRL's layout: the B chosen conversations, then the B rejected ones (2B rows), with the family's
model inputs (pixel values, grids, token types) of those 2B rows in that order, and `completion_mask`
(2B, T) marking the reply tokens whose log-probabilities DPO compares (the reply and its end token, as
sft supervises them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from vlmkit.errors import DataError
from vlmkit.families.encoding import IGNORE_INDEX
from vlmkit.sample import Sample

if TYPE_CHECKING:
    from vlmkit.data.preference import Pair, PreferenceData
    from vlmkit.families.interface import Template


def prompt_of(sample: Sample) -> Sample:
    """The conversation before its last (assistant) reply: what `vlmkit infer` is asked."""
    return Sample(sample.messages[:-1], sample.objects, sample.where, dict(sample.extra))


def encode_side(template: Template, sample: Sample, side: str) -> tuple[dict[str, Any], int]:
    """(the sample encoded as sft trains it, the length of its prompt as infer encodes it)."""
    prompt_ids = template.encode(prompt_of(sample), add_generation_prompt=True)["input_ids"]
    encoded = template.encode(sample)
    encoded.pop("image_sizes", None)
    n = len(prompt_ids)
    if not torch.equal(encoded["input_ids"][:n], prompt_ids):
        raise DataError(
            f"{sample.where}: the {side} conversation does not start with its prompt as inference encodes it "
            "(the chat template writes the prompt differently once a reply follows); this model's template "
            "cannot be used for preference tuning"
        )
    if not (encoded["labels"][n:] != IGNORE_INDEX).any():
        raise DataError(f"{sample.where}: the {side} reply has no tokens to score")
    return encoded, n


def collate_pairs(template: Template, pairs: list[Pair]) -> dict[str, torch.Tensor]:
    """Pairs -> one DPOTrainer batch: input_ids, attention_mask, completion_mask (2B, T) and the family's
    model inputs, chosen rows first (module docstring)."""
    return scored_batch(
        template, [(p.chosen, "chosen") for p in pairs] + [(p.rejected, "rejected") for p in pairs]
    )


def scored_batch(template: Template, conversations: list[tuple[Sample, str]]) -> dict[str, torch.Tensor]:
    """(sample, side name) conversations -> the collated batch (N, T) with `completion_mask` marking the reply
    tokens after the prompt infer encodes (`encode_side`), and no labels."""
    sides = [encode_side(template, sample, side) for sample, side in conversations]
    batch = template.collate([encoded for encoded, _ in sides])
    labels = batch.pop("labels")  # (N, T); TRL scores the tokens of completion_mask
    prompt_lengths = torch.tensor([n for _, n in sides])  # (N,)
    after_prompt = torch.arange(labels.shape[1])[None, :] >= prompt_lengths[:, None]  # (N, T)
    batch["completion_mask"] = ((labels != IGNORE_INDEX) & after_prompt).long()
    return batch


class PairCollator:
    """DataLoader collator: rows `{"row": index}` of the trainer's index dataset -> `collate` (`collate_pairs`,
    or `vlmkit.train.kto_data.collate_unpaired`) of those rows of `data`, encoded here, in the DataLoader's
    workers."""

    def __init__(self, data: PreferenceData, template: Template, collate: Callable = collate_pairs):
        self.data = data
        self.template = template
        self.collate = collate

    def __call__(self, rows: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        return self.collate(self.template, [self.data[row["row"]] for row in rows])
