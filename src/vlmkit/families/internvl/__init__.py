"""InternVL2.5 / InternVL3 (OpenGVLab/InternVL3-*-hf): 448 px tiles + thumbnail, pixel shuffle 0.5, Qwen2.5 LLM.
InternVL3.5 (OpenGVLab/InternVL3_5-*-HF: the same layout with a Qwen3 LLM) is this family too
(tests/parity/test_internvl3_5.py); its -HF chat template's bytes are not checked against this one."""

from pathlib import Path

from vlmkit.families.family import Family, OriginalLayout
from vlmkit.families.internvl.boxes import BOX_FORMAT
from vlmkit.families.internvl.checkpoint import (
    DOWNSAMPLE_RATIO,
    PATCH_SIZE,
    PREPROCESSOR_CONFIG,
    PROCESSOR_CONFIG,
    SPECIAL_TOKENS,
    TILE_SIZE,
    TOKENIZER_EXTRA,
)
from vlmkit.families.internvl.template import InternVLTemplate, processor_limits
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy InternVL: a 2-block ViT (hidden 32) on 448 px tiles, pixel shuffle 0.5, a 2-layer Qwen2 (hidden 64,
    2 heads: head size 32, the least vLLM's CPU attention takes)."""
    return {
        "model_type": "internvl",
        "architectures": ["InternVLForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen2",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
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


def _convert(source, output, force: bool = False) -> Path:
    from vlmkit.families.internvl.convert import convert_checkpoint

    return convert_checkpoint(source, output, force=force)


def _converted_copy(source: Path) -> Path:
    from vlmkit.families.internvl.convert import converted_copy

    return converted_copy(source)


def _build_tiny_remote(output_dir, seed: int = 0, llm: str = "internlm2") -> Path:
    from vlmkit.families.internvl.remote import build_tiny_remote

    return build_tiny_remote(output_dir, llm=llm, seed=seed)


def _build_tiny_remote_qwen2(output_dir, seed: int = 0) -> Path:
    return _build_tiny_remote(output_dir, seed=seed, llm="qwen2")


# OpenGVLab's own (remote-code) checkpoints, converted to this family's -hf layout. Two toy builds of
# the one layout: V1.5's (InternViT-6B style + InternLM2) and InternVL2-1B's (InternViT-300M + Qwen2).
_VECTORS = "tests/parity/vectors/internvl_remote_{}.json"
_CHECKPOINTS = (
    "InternVL-Chat-V1.5, Mini-InternVL-Chat-2B-V1.5, InternVL2, InternVL2.5 and InternVL3.5 (dense) with InternLM2, Qwen2, "
    "Qwen3 or Llama "
    "language models (non -hf repos; not the Phi-3 ones: Mini-InternVL-Chat-4B-V1.5, InternVL2-4B)"
)
REMOTE_LAYOUTS = (
    OriginalLayout(
        name="internvl-remote",
        model_type="internvl_chat",
        convert=_convert,
        converted_copy=_converted_copy,
        build_tiny=_build_tiny_remote,
        checkpoints=_CHECKPOINTS,
        verified=(
            "logits (1e-4, fp32) and greedy ids equal OpenGVLab's InternVLChatModel (transformers 4.45.2) on a tiny "
            "InternVL-Chat-V1.5-layout checkpoint (InternViT-6B style, InternLM2; " + _VECTORS.format("internlm2") + ")"
        ),
    ),
    OriginalLayout(
        name="internvl2-remote",
        model_type="internvl_chat",
        convert=_convert,
        converted_copy=_converted_copy,
        build_tiny=_build_tiny_remote_qwen2,
        checkpoints="the 1B layout of InternVL2 / InternVL2.5 (InternViT-300M style, Qwen2; toy with the internvl2_5 prompt)",
        verified="as internvl-remote, on a tiny checkpoint of that layout (" + _VECTORS.format("qwen2") + ")",
    ),
)


def _chat_template_for(settings: dict) -> str | None:
    """A converted OpenGVLab checkpoint's prompt format (turns ending in `<|im_end|>` alone, `<s>` left to the
    tokenizer) as a chat template; None (the -hf template) for the -hf format."""
    if "turn_end" not in settings:
        return None
    from vlmkit.families.internvl.remote_names import chat_template

    return chat_template(settings["turn_end"], settings.get("system"), settings.get("bos"))


def load_template(model_dir, tokenizer, **settings) -> InternVLTemplate:
    return InternVLTemplate.from_pretrained(model_dir, tokenizer, **settings)


FAMILY = Family(
    name="internvl",
    model_type="internvl",
    description="InternVL2.5 / InternVL3 -hf (and InternVL3.5 -HF, Qwen3): dynamic 448 px tiles + thumbnail, 256 tokens per tile",
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
    original_layouts=REMOTE_LAYOUTS,
    chat_template_for=_chat_template_for,
    chat_cache=True,
    tiny_vocabulary=qwen2_vocabulary,  # InternVL's language model here is Qwen2.5's
    verified=(
        'prompts, tiles and pixels = InternVLProcessor with the real template and ids (tests/parity/test_internvl.py); CLI sft, infer, export, grounding, video, seed 004; InternVL3.5 -HF and original layouts (test_internvl3_5.py); real vLLM skipped (the tiny tokenizer has no video token)'
    ),
)
