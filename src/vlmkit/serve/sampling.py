"""Per-row sampling for `vlmkit serve`: every row of a decode batch picks its next token with its own settings
and its own random generator, so requests with any settings share a batch.

transformers' `generate` applies one set of logits processors, and one global RNG, to a whole batch; vLLM
keeps sampling parameters and a generator per request. `RowSampler` does the latter with transformers' own
processors, in the order and under the conditions `generate` uses them (`GenerationMixin._get_logits_processor`:
repetition penalty, then temperature, top-k, top-p, and whatever the checkpoint's generation config adds),
on float32 logits, drawing with `torch.multinomial` as
`generate` does. So a seeded row draws exactly what `generate` with `torch.manual_seed(seed)` draws for that
prompt alone, whatever it is batched with; an unseeded row's generator starts from the OS's randomness, so one
client's seed never makes another client's reply predictable.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

import torch
from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from vlmkit.backends.generation import GenerationOptions

_READ_SCORES_ONLY = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)


class RowSampler:
    """The next-token rule of one request (all of its `n` rows draw from its one generator, in row order).

    Its logits processors are the ones `generate` would build for the request (`model._get_logits_processor`
    on the model's own generation config updated with the request's options), so whatever else the checkpoint's
    `generation_config.json` asks for (a `sequence_bias`, `suppress_tokens`, `bad_words_ids`, a minimum
    length ...) applies in serve exactly as in `vlmkit infer`."""

    def __init__(self, options: GenerationOptions, model: Any, prompt_length: int):
        options.check()
        self.greedy = options.temperature == 0
        config = copy.deepcopy(model.generation_config)
        config.update(**options.kwargs())
        device = model.device
        model._prepare_special_tokens(config, kwargs_has_attention_mask=True, device=device)
        self.processors = model._get_logits_processor(
            generation_config=config, input_ids_seq_length=prompt_length, device=device
        )
        # the tokens so far are made into a tensor each step only for a processor that reads them (repetition,
        # biases, minimum lengths): the sampling warpers look at the scores alone
        self.uses_ids = any(not isinstance(p, _READ_SCORES_ONLY) for p in self.processors)
        # the argmax of the bare logits: the engine takes it for all such rows of a step at once
        self.plain_greedy = self.greedy and not self.processors
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
