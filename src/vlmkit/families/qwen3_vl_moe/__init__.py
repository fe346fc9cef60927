"""Qwen3-VL MoE (Qwen/Qwen3-VL-30B-A3B-Instruct, Qwen3-VL-235B-A22B-Instruct): Qwen3-VL's vision tower,
prompt format, preprocessing and grounding over a mixture-of-experts language model.

Everything but the language model is Qwen3-VL's, so this family's record takes Qwen3-VL's pieces (special
tokens, template, processor configs, grounding, positions) with its own model type and toy config
(docs/adding-a-family.md, "a Qwen-shaped family"). The experts are fused parameters, not Linear layers:
`--target-modules all-linear` adapts the attention projections (and any dense MLP layers); `--tuner full`
trains the experts too. chat_template.jinja is Qwen3-VL Instruct's, which the MoE Instruct checkpoints
are taken to share (not checked against their own files: no download here).
"""

from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.qwen2_vl import ENCODING_OPTIONS as QWEN_OPTIONS
from vlmkit.families.qwen2_vl.chat_positions import mrope_chat_positions
from vlmkit.families.qwen2_vl.processor import VLLM_ENCODING_OPTIONS, vllm_processor_kwargs
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary
from vlmkit.families.qwen3_vl import PREPROCESSOR_CONFIG, SPECIAL_TOKENS, load_template, processor_limits
from vlmkit.families.qwen3_vl import tiny_config as qwen3_vl_tiny_config
from vlmkit.families.qwen3_vl.boxes import BOX_FORMAT


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


FAMILY = Family(
    name="qwen3-vl-moe",
    model_type="qwen3_vl_moe",
    description="Qwen3-VL MoE (30B-A3B, 235B-A22B): Qwen3-VL's vision and prompt over a mixture-of-experts LLM",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=151643,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    processor_limits=processor_limits,
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.visual.",),
        "aligner": ("model.visual.merger.", "model.visual.deepstack_merger_list."),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image", "video"),
    encoding_options=QWEN_OPTIONS,
    packing=True,
    box_format=BOX_FORMAT,
    aliases=("qwen3vl-moe",),
    chat_cache=True,
    chat_positions=mrope_chat_positions,
    vllm_processor_kwargs=vllm_processor_kwargs,
    vllm_encoding_options=VLLM_ENCODING_OPTIONS,
    tiny_vocabulary=qwen2_vocabulary,
    verified=(
        'the family checks on a tiny MoE model: prompts = Qwen3VLProcessor, reply labels, padding, greedy = generate (tests/parity/test_families.py)'
    ),
)
