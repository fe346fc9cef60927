"""Qwen2.5-VL (Qwen/Qwen2.5-VL-*-Instruct): Qwen2-VL's prompt format, windowed-attention ViT."""

import functools
from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.qwen2_5_vl.boxes import BOX_FORMAT
from vlmkit.families.qwen2_vl import ENCODING_OPTIONS as QWEN2_VL_OPTIONS
from vlmkit.families.qwen2_vl import PREPROCESSOR_CONFIG as QWEN2_VL_PREPROCESSOR
from vlmkit.families.qwen2_vl import SPECIAL_TOKENS as QWEN2_VL_TOKENS
from vlmkit.families.qwen2_vl import VIDEO_DEFAULTS as QWEN2_VL_VIDEO
from vlmkit.families.qwen2_vl.chat_positions import mrope_chat_positions
from vlmkit.families.qwen2_vl.processor import VLLM_ENCODING_OPTIONS, processor_limits, vllm_processor_kwargs
from vlmkit.families.qwen2_vl.render import render_qwen2_vl
from vlmkit.families.qwen2_vl.template import Qwen2VLTemplate
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary

SPECIAL_TOKENS = QWEN2_VL_TOKENS + (
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
PREPROCESSOR_CONFIG = {**QWEN2_VL_PREPROCESSOR, "processor_class": "Qwen2_5_VLProcessor"}

# Qwen2-VL's video rules, plus `second_per_grid_ts` (seconds per temporal patch) for its M-RoPE.
VIDEO_DEFAULTS = {**QWEN2_VL_VIDEO, "second_per_grid_ts": True}


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy Qwen2.5-VL: text as the tiny Qwen2-VL; a 2-block windowed ViT with one full-attention block."""
    return {
        "model_type": "qwen2_5_vl",
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen2_5_vl_text",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 4, 4]},
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        "vision_config": {
            "model_type": "qwen2_5_vl_vision",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
    }


def load_template(model_dir, tokenizer, **settings) -> Qwen2VLTemplate:
    return Qwen2VLTemplate.from_pretrained(
        model_dir,
        tokenizer,
        render=render_qwen2_vl,
        box_format=BOX_FORMAT,
        video_defaults=VIDEO_DEFAULTS,
        **settings,
    )


FAMILY = Family(
    name="qwen2.5-vl",
    model_type="qwen2_5_vl",
    description="Qwen2.5-VL (3B/7B/32B/72B): windowed-attention ViT, absolute-pixel grounding",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=151643,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    processor_limits=functools.partial(processor_limits, video_defaults=VIDEO_DEFAULTS),
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.visual.",),
        "aligner": ("model.visual.merger.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image", "video"),
    encoding_options=QWEN2_VL_OPTIONS,
    packing=True,
    box_format=BOX_FORMAT,
    aliases=("qwen2-5-vl", "qwen25-vl", "qwen2.5vl"),
    chat_cache=True,
    chat_positions=mrope_chat_positions,
    vllm_processor_kwargs=vllm_processor_kwargs,
    vllm_encoding_options=VLLM_ENCODING_OPTIONS,
    tiny_vocabulary=qwen2_vocabulary,
    verified=(
        'prompts and pixels = Qwen2_5_VLProcessor with the real template (test_template.py, test_families.py); CLI sft, infer, grounding, video; seed workflows; real vLLM on the CPU (tests/vllm_real)'
    ),
)
