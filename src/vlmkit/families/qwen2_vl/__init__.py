"""Qwen2-VL (Qwen/Qwen2-VL-*-Instruct): native-resolution ViT, 14px patches, 2x2 merge, M-RoPE."""

import functools
from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.qwen2_vl.boxes import BOX_FORMAT
from vlmkit.families.qwen2_vl.chat_positions import mrope_chat_positions
from vlmkit.families.qwen2_vl.processor import VLLM_ENCODING_OPTIONS, processor_limits, vllm_processor_kwargs
from vlmkit.families.qwen2_vl.render import render_qwen2_vl
from vlmkit.families.qwen2_vl.template import Qwen2VLTemplate
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary

# The real tokenizer's added tokens, in id order from 151643.
SPECIAL_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# As shipped in the checkpoints' preprocessor_config.json.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
    "min_pixels": 3136,
    "max_pixels": 12845056,
    "size": {"shortest_edge": 3136, "longest_edge": 12845056},
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
}

# transformers' Qwen2VLVideoProcessor defaults with qwen-vl-utils' total-pixel cap (the checkpoints ship
# no video_preprocessor_config.json): 128..768 tokens of 28x28 pixels per frame, and at most 90% of a
# 128k context over the whole video (x2: two frames share a temporal patch).
# The encoding options of the Qwen2/2.5/3-VL templates (`Family.encoding_options`).
ENCODING_OPTIONS = (
    "min_pixels", "max_pixels", "fps", "nframes", "max_frames", "min_frames", "video_max_pixels", "system"
)
VIDEO_DEFAULTS = {
    "fps": 2.0,
    "min_frames": 4,
    "max_frames": 768,
    "video_min_pixels": 128 * 28 * 28,
    "video_max_pixels": 768 * 28 * 28,
    "video_total_pixels": 2 * int(128000 * 28 * 28 * 0.9),
}


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """A ~0.2M-parameter (plus embeddings) Qwen2-VL: hidden 64, 2 heads -> head_dim 32 -> mrope [8, 4, 4].

    Head size 32, not 16: vLLM's CPU attention refuses head sizes under 32, and tiny models run on every backend."""
    return {
        "model_type": "qwen2_vl",
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen2_vl_text",
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
            "model_type": "qwen2_vl_vision",
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
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
    name="qwen2-vl",
    model_type="qwen2_vl",
    description="Qwen2-VL (2B/7B/72B): native-resolution images and video, M-RoPE",
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
    encoding_options=ENCODING_OPTIONS,
    packing=True,
    box_format=BOX_FORMAT,
    aliases=("qwen2vl",),
    chat_cache=True,
    chat_positions=mrope_chat_positions,
    vllm_processor_kwargs=vllm_processor_kwargs,
    vllm_encoding_options=VLLM_ENCODING_OPTIONS,
    tiny_vocabulary=qwen2_vocabulary,
    verified=(
        'prompts and pixels = Qwen2VLProcessor with the real template and the real Qwen2 vocabulary (tests/parity/test_template.py, test_families.py); CLI sft, infer, chat, eval, export, serve, grounding, video, packing (tests/integration); seed workflows; real vLLM on the CPU (tests/vllm_real)'
    ),
)
