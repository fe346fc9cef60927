"""Gemma 3 (google/gemma-3-{4b,12b,27b}-it): SigLIP at 896x896, 256 soft tokens per image, optional
pan-and-scan crops, Gemma 3 LM with bidirectional attention within an image; no video, no box format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkit.families.family import Family
from vlmkit.families.gemma3.template import Gemma3Template
from vlmkit.families.gemma3.vision import PAN_AND_SCAN_DEFAULTS, PROCESSOR_KEYS, SiglipSquare

# The real tokenizer's special tokens (ids there: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <start_of_turn> 105,
# <end_of_turn> 106, <start_of_image> 255999, <end_of_image> 256000, <image_soft_token> 262144). Gemma's
# 262k SentencePiece vocabulary is not available offline: tiny models put these after a small BPE.
SPECIAL_TOKENS = tuple(
    (token, True)
    for token in (
        "<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
        "<start_of_image>", "<end_of_image>", "<image_soft_token>",
    )
)
IMAGE_SEQ_LENGTH = 256
# As shipped in google/gemma-3-4b-it's preprocessor_config.json (null pan-and-scan values: the processor's
# defaults apply, pan-and-scan off).
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Gemma3ImageProcessor",
    "processor_class": "Gemma3Processor",
    "do_convert_rgb": None,
    "do_normalize": True,
    "do_pan_and_scan": None,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "image_seq_length": IMAGE_SEQ_LENGTH,
    "pan_and_scan_max_num_crops": None,
    "pan_and_scan_min_crop_size": None,
    "pan_and_scan_min_ratio_to_activate": None,
    "resample": 2,
    "rescale_factor": 1 / 255,
    "size": {"height": 896, "width": 896},
}
PROCESSOR_CONFIG = {"processor_class": "Gemma3Processor", "image_seq_length": IMAGE_SEQ_LENGTH}
ENCODING_OPTIONS = (*PAN_AND_SCAN_DEFAULTS, "system")


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """A 2-layer Gemma 3 (hidden 64, head size 32: vLLM's CPU attention takes >= 32), one sliding and one
    full attention layer, and a 2-layer SigLIP at the real 896 px input with 28 px patches (32x32 patches
    pooled 2x2 into the real 256 tokens per image)."""
    return {
        "model_type": "gemma3",
        "architectures": ["Gemma3ForConditionalGeneration"],
        "text_config": {
            "model_type": "gemma3_text",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 512,
            "layer_types": ["sliding_attention", "full_attention"],
            "max_position_embeddings": 8192,
            "bos_token_id": ids["<bos>"],
            "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
            "pad_token_id": ids["<pad>"],
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 896,
            "patch_size": 28,
            "vision_use_head": False,
        },
        "mm_tokens_per_image": IMAGE_SEQ_LENGTH,
        "boi_token_index": ids["<start_of_image>"],
        "eoi_token_index": ids["<end_of_image>"],
        "image_token_index": ids["<image_soft_token>"],
        "eos_token_id": [ids["<eos>"], ids["<end_of_turn>"]],
            "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
    }


def processor_limits(name: str, config: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The run's pan-and-scan settings into preprocessor_config.json under the image processor's names, which
    transformers' `Gemma3ImageProcessor` reads (its `Gemma3Processor` does not: its own defaults win unless
    the call passes them)."""
    if name != "preprocessor_config.json":
        return config
    return {**config, **{key: settings[name] for name, key in PROCESSOR_KEYS.items() if name in settings}}


def load_template(model_dir, tokenizer, **settings) -> Gemma3Template:
    return Gemma3Template.from_pretrained(model_dir, tokenizer, **settings)


FAMILY = Family(
    name="gemma3",
    model_type="gemma3",
    description="Gemma 3 (4B/12B/27B -it): SigLIP 896 px, 256 tokens per image, pan-and-scan; no video",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    # Gemma's special ids are not one run (see SPECIAL_TOKENS): the real <start_of_image>, the first of the
    # image tokens; tiny models put all of them after their small BPE
    first_special_id=255999,
    tiny_vocabulary=None,  # tiny models: `--small-vocab` only (Gemma's 262k vocabulary is not offline)
    eos_token="<eos>",
    pad_token="<pad>",
    bos_token="<bos>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.vision_tower.",),
        "aligner": ("model.multi_modal_projector.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    encoding_options=ENCODING_OPTIONS,
    vision=SiglipSquare.from_configs(PREPROCESSOR_CONFIG, IMAGE_SEQ_LENGTH, {}).describe(),
    tokenizer_extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
    processor_config=PROCESSOR_CONFIG,
    processor_limits=processor_limits,
    aliases=("gemma-3", "gemma3-it"),
    verified=(
        'ids, pixels, token types = Gemma3Processor.apply_chat_template(tokenize=True) with the real template, pan-and-scan (tests/parity/test_gemma3.py); CLI infer = generate, LoRA sft, merged export, serve (test_gemma3_cli.py)'
    ),
)
