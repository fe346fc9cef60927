"""How a reply is generated: `GenerationOptions` (sampling settings) -> the keyword arguments of transformers'
`generate`.

A module of its own so that the modules built on `vlmkit.model` (`vlmkit.chat`, serving, batch inference)
can take the options without `vlmkit.model` and them importing each other; `vlmkit.model` imports it and
`from vlmkit.model import GenerationOptions` still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmkit.errors import VlmkitError


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings; temperature 0 means greedy decoding."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def kwargs(self) -> dict[str, Any]:
        if self.max_new_tokens < 1:
            raise VlmkitError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise VlmkitError(
                "generation options out of range: need temperature >= 0, 0 < top-p <= 1, top-k >= 0, "
                "repetition-penalty > 0"
            )
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs
