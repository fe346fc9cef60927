"""What InternVL's -hf checkpoints ship, in their own numbers: the special tokens in the tokenizer's order,
the tokenizer attributes, preprocessor_config.json and processor_config.json.

A module of its own because both the family record (`__init__.py`) and the converter (`convert.py`, which
writes these files into converted folders) read it; the converter cannot import `__init__.py`, which
loads it.
"""

from vlmkit.families.qwen2_5_vl import SPECIAL_TOKENS as QWEN2_5_VL_TOKENS

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
