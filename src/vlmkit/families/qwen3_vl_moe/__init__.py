"""Qwen3-VL MoE (Qwen/Qwen3-VL-30B-A3B-Instruct, Qwen3-VL-235B-A22B-Instruct): Qwen3-VL's vision tower,
prompt format, preprocessing and grounding over a mixture-of-experts language model.

Everything but the language model is Qwen3-VL's, so this family is the Qwen3-VL record with its own
model type and toy config (docs/adding-a-family.md, "a Qwen-shaped family"). The experts are fused
parameters, not Linear layers: `--target-modules all-linear` adapts the attention projections (and any
dense MLP layers); `--tuner full` trains the experts too. chat_template.jinja is Qwen3-VL Instruct's,
which the MoE Instruct checkpoints are taken to share (not checked against their own files: no download
here).
"""

from dataclasses import replace
from pathlib import Path

from vlmkit.families.qwen3_vl import FAMILY as QWEN3_VL
from vlmkit.families.qwen3_vl import tiny_config as qwen3_vl_tiny_config


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy Qwen3-VL MoE: Qwen3-VL's toy with 4 experts of which 2 are active in every text layer."""
    config = qwen3_vl_tiny_config(vocab_size, ids)
    config["model_type"] = "qwen3_vl_moe"
    config["architectures"] = ["Qwen3VLMoeForConditionalGeneration"]
    config["text_config"] |= {
        "model_type": "qwen3_vl_moe_text",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "decoder_sparse_step": 1,
    }
    config["vision_config"]["model_type"] = "qwen3_vl_moe_vision"
    return config


FAMILY = replace(
    QWEN3_VL,
    name="qwen3-vl-moe",
    model_type="qwen3_vl_moe",
    description="Qwen3-VL MoE (30B-A3B, 235B-A22B): Qwen3-VL's vision and prompt over a mixture-of-experts LLM",
    folder=Path(__file__).parent,
    tiny_config=tiny_config,
    aliases=("qwen3vl-moe",),
)
