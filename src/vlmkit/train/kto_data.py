"""The batches `vlmkit kto` gives TRL's KTOTrainer, encoded by vlmkit's family template as `vlmkit dpo`'s are
(`vlmkit.train.dpo_data.scored_batch`: the conversation as sft trains it, its prompt as infer encodes it,
nothing cut).

A batch is TRL's layout: B labelled conversations (input_ids, attention_mask, completion_mask (B, T), the
family's model inputs, `label` (B,)) and the B mismatched conversations KTO estimates its KL term from
(`KL_input_ids`, `KL_attention_mask`, `KL_completion_mask` (B, T') and the per-token type ids): row i's prompt
(its images too) answered by row i-1's reply, the rotation TRL's collators make.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vlmkit.errors import VlmkitError
from vlmkit.sample import Sample
from vlmkit.train.dpo_data import prompt_of, scored_batch

if TYPE_CHECKING:
    from vlmkit.families.interface import Template

# the per-token inputs TRL's KL forward takes from the KL batch, under the names TRL reads (it reuses the images
# of the batch's own rows); any other per-token input would reach the KL forward at the labelled rows' width
KL_KEYS = ("input_ids", "attention_mask", "completion_mask", "token_type_ids", "mm_token_type_ids")


def mismatched(samples: list[Sample]) -> list[Sample]:
    """Row i's prompt with row i-1's reply (row 0 takes the last row's): KTO's KL conversations."""
    return [
        Sample(
            [*prompt_of(sample).messages, samples[i - 1].messages[-1]],
            sample.objects,
            sample.where,
            dict(sample.extra),
        )  # fmt: skip
        for i, sample in enumerate(samples)
    ]


def collate_unpaired(template: Template, rows: list[tuple[Sample, bool]]) -> dict[str, torch.Tensor]:
    """Labelled conversations -> one KTOTrainer batch (module docstring)."""
    samples = [sample for sample, _ in rows]
    sides = ["desirable" if desirable else "undesirable" for _, desirable in rows]
    batch = scored_batch(template, list(zip(samples, sides, strict=True)))
    kl = scored_batch(template, [(sample, "KL") for sample in mismatched(samples)])
    width = kl["input_ids"].shape
    unread = [k for k, v in kl.items() if k not in KL_KEYS and isinstance(v, torch.Tensor) and v.shape == width]
    if unread:  # TRL would score the KL conversations with the labelled rows' per-token inputs: refuse, never guess
        raise VlmkitError(f"vlmkit kto: this model's per-token inputs {unread} have no KL counterpart in TRL's "
                          "KTOTrainer; use vlmkit dpo for this model")
    batch.update({f"KL_{key}": kl[key] for key in KL_KEYS if key in kl})
    batch["label"] = torch.tensor([desirable for _, desirable in rows])
    return batch
