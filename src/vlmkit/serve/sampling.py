"""Per-row sampling for `vlmkit serve`: every row of a decode batch picks its next token with its own settings
and its own random generator, so requests with any settings share a batch.

transformers' `generate` applies one set of logits processors, and one global RNG, to a whole batch; vLLM
keeps sampling parameters and a generator per request. `RowSampler` does the latter with transformers' own
processors, in the order and under the conditions `generate` uses them (`GenerationMixin._get_logits_processor`:
repetition penalty, then temperature, top-k, top-p), on float32 logits, drawing with `torch.multinomial` as
`generate` does. So a seeded row draws exactly what `generate` with `torch.manual_seed(seed)` draws for that
prompt alone, whatever it is batched with; an unseeded row's generator starts from the OS's randomness, so one
client's seed never makes another client's reply predictable.
"""

from __future__ import annotations

import secrets

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from vlmkit.backends.generation import GenerationOptions


class RowSampler:
    """The next-token rule of one request (all of its `n` rows draw from its one generator, in row order)."""

    def __init__(self, options: GenerationOptions):
        options.check()
        self.greedy = options.temperature == 0
        self.processors = LogitsProcessorList()
        self.uses_ids = options.repetition_penalty != 1.0  # the only processor that reads earlier tokens
        if self.uses_ids:
            self.processors.append(RepetitionPenaltyLogitsProcessor(options.repetition_penalty))
        if not self.greedy:
            if options.temperature != 1.0:
                self.processors.append(TemperatureLogitsWarper(options.temperature))
            if options.top_k != 0:
                self.processors.append(TopKLogitsWarper(top_k=options.top_k))
            if options.top_p < 1.0:
                self.processors.append(TopPLogitsWarper(top_p=options.top_p))
        self.seed = options.seed if options.seed is not None else secrets.randbits(63)
        self.generator: torch.Generator | None = None  # made on the logits' device at the first draw

    def __call__(self, ids: list[int], logits: torch.Tensor) -> int:
        """The next token after `ids` (prompt and reply so far) given the model's `logits` (V,) for it."""
        scores = logits[None].float()  # (1, V), as generate takes them
        if self.processors:
            ids_tensor = torch.tensor([ids], device=logits.device) if self.uses_ids else None
            scores = self.processors(ids_tensor, scores)
        if self.greedy:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1)
        if self.generator is None:
            self.generator = torch.Generator(device=probs.device).manual_seed(self.seed)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator))
