"""How a reply is generated: `GenerationOptions` (sampling settings) -> the keyword arguments of transformers'
`generate`.

A module of its own so that the modules built on `vlmkit.backends.transformers_backend` (`vlmkit.backends.chat`, serving, batch inference)
can take the options without `vlmkit.backends.transformers_backend` and them importing each other; `vlmkit.backends.transformers_backend` imports it and
`from vlmkit.backends.transformers_backend import GenerationOptions` still works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.groups import option


@dataclass(frozen=True)
class GenerationOptions:
    """Sampling settings; temperature 0 means greedy decoding."""

    max_new_tokens: int = option(512, "Most tokens generated per reply.")
    temperature: float = option(0.0, "0 = greedy (deterministic); > 0 samples.")
    top_p: float = option(1.0, "Nucleus sampling mass (with --temperature > 0).")
    top_k: int = option(0, "Sample among the k most likely tokens; 0 = no limit.")
    repetition_penalty: float = option(1.0, "> 1 discourages repeating tokens.")
    seed: int | None = option(None, "Random seed for sampling.")

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise VlmkitError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.repetition_penalty <= 0:
            raise VlmkitError(
                "generation options out of range: need temperature >= 0, 0 < top-p <= 1, top-k >= 0, "
                "repetition-penalty > 0"
            )

    def ignored(self) -> list[str]:
        """One line per option given that does nothing (the CLI prints each as a warning): sampling options
        with --temperature 0, which decodes greedily. Not refused: API and HTTP clients send them by habit."""
        if self.temperature > 0:
            return []
        given = [name for name, value in (("--top-p", self.top_p != 1.0), ("--top-k", self.top_k != 0)) if value]
        return [f"{name} does nothing with --temperature 0 (greedy decoding); give --temperature > 0 to sample"
                for name in given]  # fmt: skip

    def kwargs(self) -> dict[str, Any]:
        """transformers' `generate` arguments (after `check`)."""
        self.check()
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs
