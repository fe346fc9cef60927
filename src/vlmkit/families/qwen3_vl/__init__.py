"""Qwen3-VL (Qwen/Qwen3-VL-*-Instruct): 16px patches, DeepStack, interleaved M-RoPE, no default system prompt."""

import functools
from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.qwen2_5_vl import SPECIAL_TOKENS as QWEN2_5_VL_TOKENS
from vlmkit.families.qwen2_vl import ENCODING_OPTIONS as QWEN_OPTIONS
from vlmkit.families.qwen2_vl.chat_positions import mrope_chat_positions
from vlmkit.families.qwen2_vl.processor import VLLM_ENCODING_OPTIONS, vllm_processor_kwargs
from vlmkit.families.qwen2_vl.processor import processor_limits as qwen_processor_limits
from vlmkit.families.qwen2_vl.render import render_qwen3_vl
from vlmkit.families.qwen2_vl.template import Qwen2VLTemplate
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary
from vlmkit.families.qwen3_vl.boxes import BOX_FORMAT

SPECIAL_TOKENS = QWEN2_5_VL_TOKENS + (
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
# As shipped with Qwen3-VL-8B-Instruct.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "processor_class": "Qwen3VLProcessor",
    "size": {"shortest_edge": 65536, "longest_edge": 16777216},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
}

# Qwen3-VL-8B-Instruct's video_preprocessor_config.json: size {shortest_edge: 4096, longest_edge:
# 25165824} over all frames, fps 2, 4..768 frames; with transformers' per-frame cap of 768 tokens
# (32x32 pixels each). Each temporal group is preceded by its time, "<1.2 seconds>".
VIDEO_DEFAULTS = {
    "fps": 2.0,
    "min_frames": 4,
    "max_frames": 768,
    "video_min_pixels": 4096,
    "video_max_pixels": 768 * 32 * 32,
    "video_total_pixels": 25165824,
    "video_timestamps": True,
}

# Qwen3-VL's video processor limits the pixels of all frames together (video_total_pixels), not of each
# frame, so exports write no per-frame pixel limit into video_preprocessor_config.json.
processor_limits = functools.partial(qwen_processor_limits, video_defaults=VIDEO_DEFAULTS, video_pixels_per_frame=False)


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy Qwen3-VL: 2 text layers (head_dim 32, interleaved mrope [8, 4, 4]), 2 ViT blocks, DeepStack at block 1."""
    return {
        "model_type": "qwen3_vl",
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen3_vl_text",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [8, 4, 4],
                "mrope_interleaved": True,
            },
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        "vision_config": {
            "model_type": "qwen3_vl_vision",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 144,
            "deepstack_visual_indexes": [1],
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
        render=render_qwen3_vl,
        box_format=BOX_FORMAT,
        video_defaults=VIDEO_DEFAULTS,
        **settings,
    )


FAMILY = Family(
    name="qwen3-vl",
    model_type="qwen3_vl",
    description="Qwen3-VL (2B-32B dense): 16px patches, DeepStack, 0-1000 grounding",
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
    aliases=("qwen3vl",),
    chat_cache=True,
    chat_positions=mrope_chat_positions,
    vllm_processor_kwargs=vllm_processor_kwargs,
    vllm_encoding_options=VLLM_ENCODING_OPTIONS,
    tiny_vocabulary=qwen2_vocabulary,
    verified=(
        'prompts and pixels = Qwen3VLProcessor with the real template (test_template.py, test_families.py); CLI sft, infer, grounding, video, chat cache; real vLLM on the CPU (tests/vllm_real)'
    ),
)
