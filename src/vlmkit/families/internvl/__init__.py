"""InternVL2.5 / InternVL3 (OpenGVLab/InternVL3-*-hf): 448 px tiles + thumbnail, pixel shuffle 0.5, Qwen2.5 LLM."""

from pathlib import Path

from vlmkit.families import Family
from vlmkit.families.internvl.boxes import BOX_FORMAT
from vlmkit.families.internvl.template import InternVLTemplate, processor_limits
from vlmkit.families.qwen2_5_vl import SPECIAL_TOKENS as QWEN2_5_VL_TOKENS
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary

# The -hf checkpoints' tokenizer is Qwen2.5-VL's (added tokens 151643..151664) with
# InternVL's tokens added after it: <img> = 151665, </img> = 151666, <IMG_CONTEXT> = 151667.
SPECIAL_TOKENS = QWEN2_5_VL_TOKENS + (
    ("<img>", True),
    ("</img>", True),
    ("<IMG_CONTEXT>", True),
    ("<quad>", True),
    ("</quad>", True),
    ("<ref>", True),
    ("</ref>", True),
    ("<box>", True),
    ("</box>", True),
)
# The tokenizer attributes InternVLProcessor reads (tokenizer_config.json's extra_special_tokens).
TOKENIZER_EXTRA = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
}
# As shipped in the -hf checkpoints' preprocessor_config.json (InternVLProcessor turns tiling on).
PREPROCESSOR_CONFIG = {
    "image_processor_type": "GotOcr2ImageProcessorFast",
    "processor_class": "InternVLProcessor",
    "size": {"height": 448, "width": 448},
    "crop_to_patches": False,
    "min_patches": 1,
    "max_patches": 12,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
}
TILE_SIZE, PATCH_SIZE, DOWNSAMPLE_RATIO = 448, 14, 0.5
# processor_config.json: tokens per tile, (448 / 14)**2 * 0.5**2 = 256.
PROCESSOR_CONFIG = {
    "processor_class": "InternVLProcessor",
    "image_seq_length": round((TILE_SIZE // PATCH_SIZE) ** 2 * DOWNSAMPLE_RATIO**2),
}


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy InternVL: a 2-block ViT (hidden 32) on 448 px tiles, pixel shuffle 0.5, a 2-layer Qwen2 (hidden 64)."""
    return {
        "model_type": "internvl",
        "architectures": ["InternVLForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen2",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        "vision_config": {
            "model_type": "internvl_vision",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": [TILE_SIZE, TILE_SIZE],
            "patch_size": [PATCH_SIZE, PATCH_SIZE],
            "attention_bias": True,
            "use_qk_norm": False,
            "norm_type": "layer_norm",
            "use_mean_pooling": True,
        },
        "image_token_id": ids["<IMG_CONTEXT>"],
        "image_seq_length": PROCESSOR_CONFIG["image_seq_length"],
        "downsample_ratio": DOWNSAMPLE_RATIO,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


def load_template(model_dir, tokenizer, **settings) -> InternVLTemplate:
    return InternVLTemplate.from_pretrained(model_dir, tokenizer, **settings)


FAMILY = Family(
    name="internvl",
    model_type="internvl",
    description="InternVL2.5 / InternVL3 -hf: dynamic 448 px tiles + thumbnail, 256 tokens per tile",
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
        "vit": ("model.vision_tower.",),
        "aligner": ("model.multi_modal_projector.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image", "video"),
    aliases=("internvl3", "internvl2.5", "internvl-hf"),
    box_format=BOX_FORMAT,
    encoding_options=("min_tiles", "max_tiles", "fps", "nframes", "max_frames", "system"),
    vision=(
        f"{TILE_SIZE}px tiles, {PREPROCESSOR_CONFIG['min_patches']}..{PREPROCESSOR_CONFIG['max_patches']} "
        f"tiles + thumbnail, {PROCESSOR_CONFIG['image_seq_length']} tokens/tile"
    ),
    tokenizer_extra=TOKENIZER_EXTRA,
    processor_config=PROCESSOR_CONFIG,
    chat_cache=True,
    tiny_vocabulary=qwen2_vocabulary,  # InternVL's language model here is Qwen2.5's
)
