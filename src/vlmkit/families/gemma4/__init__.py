"""Gemma 4 (google/gemma-4-*-it): a ViT of 16 px patches pooled 3x3 into a variable number of soft tokens per image
(the image keeps its aspect ratio, at most `max_soft_tokens`), Gemma 4 LM; `<|turn>` prompt format with a thought
channel. Images only in vlmkit: transformers' `Gemma4VideoProcessor` needs torchvision, and audio is not wired.

chat_template.jinja is the one llama.cpp keeps as Gemma 4's (ggml-org/llama.cpp models/templates/gemma4.jinja,
commit 75f1ba73, 12,133 characters; sha256 of its JSON string 5890afad...); the checkpoints' own file could not
be read here (no download), so it is taken to be theirs, not checked byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.gemma4.template import Gemma4Template

# The tokenizer's named tokens (transformers' Gemma4Config ids: <|image> 255999, <|image|> 258880, <image|> 258882,
# <|video|> 258884, <|audio> 256000, <|audio|> 258881, <audio|> 258883); the names of the turn, channel and tool
# tokens are the chat template's. Gemma's 262k vocabulary is not available offline: tiny models put these after
# a small BPE.
SPECIAL_TOKENS = tuple(
    (token, True)
    for token in (
        "<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>",
        "<|image>", "<image|>", "<|image|>", "<|video|>", "<|audio>", "<audio|>", "<|audio|>", "<|tool>", "<tool|>",
        "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>", '<|"|>',
    )
)  # fmt: skip
MAX_SOFT_TOKENS = 70  # the smallest of transformers' supported budgets (70 ... 1120): tiny models stay fast
# transformers' Gemma4ImageProcessor defaults, at the tiny models' budget (not checked against a checkpoint's file)
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Gemma4ImageProcessor",
    "processor_class": "Gemma4Processor",
    "do_convert_rgb": True,
    "do_normalize": False,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.0, 0.0, 0.0],
    "image_std": [1.0, 1.0, 1.0],
    "max_soft_tokens": MAX_SOFT_TOKENS,
    "patch_size": 16,
    "pooling_kernel_size": 3,
    "resample": 3,
    "rescale_factor": 1 / 255,
}
PROCESSOR_CONFIG = {"processor_class": "Gemma4Processor", "image_seq_length": MAX_SOFT_TOKENS}


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """A 2-layer Gemma 4 (hidden 64, head size 32), one sliding and one full attention layer, no per-layer input
    embeddings, no audio tower, and a 2-layer vision tower of 16 px patches pooled 3x3."""
    stops = [ids["<eos>"], ids["<turn|>"]]
    return {
        "model_type": "gemma4",
        "architectures": ["Gemma4ForConditionalGeneration"],
        "text_config": {
            "model_type": "gemma4_text",
            "vocab_size": vocab_size,
            "vocab_size_per_layer_input": vocab_size,
            "hidden_size_per_layer_input": 0,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "layer_types": ["sliding_attention", "full_attention"],
            "sliding_window": 512,
            "max_position_embeddings": 4096,
            "bos_token_id": ids["<bos>"],
            "eos_token_id": stops,
            "pad_token_id": ids["<pad>"],
        },
        "vision_config": {
            "model_type": "gemma4_vision",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "patch_size": 16,
            "pooling_kernel_size": 3,
            "position_embedding_size": 1024,
        },
        "audio_config": None,
        "boi_token_id": ids["<|image>"],
        "eoi_token_id": ids["<image|>"],
        "image_token_id": ids["<|image|>"],
        "video_token_id": ids["<|video|>"],
        "boa_token_id": ids["<|audio>"],
        "eoa_token_index": ids["<audio|>"],
        "audio_token_id": ids["<|audio|>"],
        "eos_token_id": stops,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
    }


def load_template(model_dir, tokenizer, **settings) -> Gemma4Template:
    return Gemma4Template.from_pretrained(model_dir, tokenizer, **settings)


FAMILY = Family(
    name="gemma4",
    model_type="gemma4",
    description="Gemma 4 (-it): 16 px patches pooled 3x3, a variable number of soft tokens per image; images only",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=255999,  # the real <|image>; tiny models put all of SPECIAL_TOKENS after their small BPE
    tiny_vocabulary=None,  # tiny models: `--small-vocab` only (Gemma's 262k vocabulary is not offline)
    eos_token="<eos>",
    pad_token="<pad>",
    bos_token="<bos>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.vision_tower.",),
        "aligner": ("model.embed_vision.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    encoding_options=("system",),
    vision="16 px patches pooled 3x3; aspect ratio kept; at most max_soft_tokens soft tokens per image (the checkpoint's)",
    tokenizer_extra={
        "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
        "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>",
    },  # fmt: skip
    processor_config=PROCESSOR_CONFIG,
    aliases=("gemma-4", "gemma4-it"),
    verified=(
        "ids, pixels, position ids, token types = Gemma4Processor.apply_chat_template(tokenize=True) with llama.cpp's copy of the template (tests/parity/test_gemma4.py); CLI infer = generate, LoRA sft, merged export, serve (test_gemma4_cli.py)"
    ),
)
