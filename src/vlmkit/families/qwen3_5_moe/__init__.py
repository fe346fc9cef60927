"""Qwen3.5 MoE (Qwen/Qwen3.5-35B-A3B, 122B-A10B, 397B-A17B): Qwen3.5's vision tower, prompt format,
preprocessing and grounding over a mixture-of-experts hybrid language model.

Everything but the language model is Qwen3.5's (`vlmkit.families.qwen3_5`: no packing, no chat cache, for
the same reasons), with its own model type and toy config. chat_template.jinja is the checkpoints' own:
Qwen3.5-35B-A3B's file is byte-identical to the dense Qwen3.5-9B's (sha256 a4aee8af...). The experts are
fused parameters, not Linear layers: `--target-modules all-linear` adapts the attention projections, the
linear-attention projections and the shared expert; `--tuner full` trains the experts too.
"""

from pathlib import Path

from vlmkit.families import qwen3_5
from vlmkit.families.family import Family

QWEN3_5 = qwen3_5.FAMILY


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy Qwen3.5 MoE: Qwen3.5's toy with 4 experts (2 active) and a shared expert in every text layer."""
    config = qwen3_5.tiny_config(vocab_size, ids)
    config["model_type"] = "qwen3_5_moe"
    config["architectures"] = ["Qwen3_5MoeForConditionalGeneration"]
    config["text_config"] |= {
        "model_type": "qwen3_5_moe_text",
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 32,
    }
    del config["text_config"]["intermediate_size"]
    config["vision_config"]["model_type"] = "qwen3_5_moe_vision"
    return config


FAMILY = Family(
    name="qwen3.5-moe",
    model_type="qwen3_5_moe",
    description=(
        "Qwen3.5 MoE (35B-A3B, 122B-A10B, 397B-A17B): Qwen3.5's vision and prompt over a mixture-of-experts LLM; "
        "non-thinking mode, no packing or chat cache (linear attention)"
    ),
    folder=Path(__file__).parent,
    special_tokens=QWEN3_5.special_tokens,
    first_special_id=QWEN3_5.first_special_id,
    eos_token=QWEN3_5.eos_token,
    pad_token=QWEN3_5.pad_token,
    preprocessor_config=QWEN3_5.preprocessor_config,
    make_template=QWEN3_5.make_template,
    processor_limits=QWEN3_5.processor_limits,
    tiny_config=tiny_config,
    module_groups=QWEN3_5.module_groups,
    supports=QWEN3_5.supports,
    encoding_options=QWEN3_5.encoding_options,
    packing=False,
    no_packing_reason=QWEN3_5.no_packing_reason,
    box_format=QWEN3_5.box_format,
    aliases=("qwen3_5_moe", "qwen35-moe"),
    chat_cache=False,
    chat_template_for=QWEN3_5.chat_template_for,
    vllm_processor_kwargs=QWEN3_5.vllm_processor_kwargs,
    vllm_encoding_options=QWEN3_5.vllm_encoding_options,
    tiny_vocabulary=QWEN3_5.tiny_vocabulary,
    verified=(
        'as qwen3.5 (test_qwen3_5.py, test_families.py); CLI LoRA sft on the tiny MoE (test_qwen3_5_cli.py)'
    ),
)
