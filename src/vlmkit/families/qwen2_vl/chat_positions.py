"""M-RoPE positions of a chat turn that continues a cached conversation (`Family.chat_positions`).

The Qwen-VL models compute their 3-D positions (`get_rope_index`) from the whole prompt, and `generate`
adds `rope_deltas` to the text positions it makes. A turn that runs only the part of the prompt after
its cached start gets those positions from the full prompt, and leaves the deltas on the model for the
reply (`vlmkit.backends.chat_cache.prefill`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vlmkit.families.interface import Template

# The `collate` outputs `get_rope_index` takes besides input_ids.
_ROPE_INPUTS = ("mm_token_type_ids", "image_grid_thw", "video_grid_thw", "second_per_grid_ts", "attention_mask")


class MropePositions:
    """The positions of one whole chat prompt: (3, 1, T) from the model's `get_rope_index`."""

    def __init__(self, rope_model: Any, positions: torch.Tensor, rope_deltas: torch.Tensor):
        self.rope_model = rope_model
        self.positions = positions  # (3, 1, T)
        self.rope_deltas = rope_deltas

    def place(self, batch: dict[str, Any], start: int, end: int) -> None:
        """Give `batch`, the prompt's tokens start..end-1 on their own, their positions in the whole
        prompt: (4, 1, end - start), the text row first (the token types are then not needed)."""
        batch.pop("mm_token_type_ids", None)
        text = torch.arange(start, end).view(1, 1, -1)
        batch["position_ids"] = torch.cat([text, self.positions[:, :, start:end].cpu()])

    def before_generate(self, device: Any) -> None:
        """What `generate` adds to text positions from here on."""
        self.rope_model.rope_deltas = self.rope_deltas.to(device)


def mrope_chat_positions(model: Any, template: Template, encoded: dict[str, Any]) -> MropePositions:
    """`Family.chat_positions` of the Qwen-VL families: `model` (a transformers Qwen-VL model, or peft's
    wrapper of one), `encoded` a whole chat prompt from `template.encode`."""
    from peft import PeftModel  # imported on use: loading the family registry stays light

    hf_model = model.get_base_model() if isinstance(model, PeftModel) else model
    rope_model = hf_model.model  # the inner model owns get_rope_index and rope_deltas
    full = template.collate([encoded])
    positions, rope_deltas = rope_model.get_rope_index(
        full["input_ids"], **{k: full[k] for k in _ROPE_INPUTS if k in full}
    )
    return MropePositions(rope_model, positions, rope_deltas)
