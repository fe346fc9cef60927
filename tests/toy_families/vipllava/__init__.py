"""VipLLaVA (llava-hf/vip-llava-*-hf): a test-only family, added by following docs/adding-a-family.md.

Not registered in `vlmkit.families.FAMILIES`: tests add it (`monkeypatch.setitem(FAMILIES, "vipllava",
FAMILY)`, the one registry line) to show that a non-Qwen family needs only its folder and that line.
"""

from pathlib import Path

from vlmkit.families.family import Family

from .template import VipLlavaTemplate

SPECIAL_TOKENS = (("<image>", True), ("</s>", True), ("<pad>", True))
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TINY_IMAGE_SIZE, PATCH_SIZE = 28, 14  # a tiny tower: 2 x 2 patches, 4 tokens per image
PREPROCESSOR_CONFIG = {
    "image_processor_type": "CLIPImageProcessor",
    "crop_size": {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
    "size": {"shortest_edge": TINY_IMAGE_SIZE},
    "patch_size": PATCH_SIZE,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
}


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """A 2-layer Llama (hidden 64) on a 2-layer CLIP tower; the projector reads its last two layers."""
    return {
        "model_type": "vipllava",
        "architectures": ["VipLlavaForConditionalGeneration"],
        "text_config": {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "tie_word_embeddings": False,
            "bos_token_id": ids["</s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["<pad>"],
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "projection_dim": 32,
        },
        "image_token_index": ids["<image>"],
        "image_seq_length": (TINY_IMAGE_SIZE // PATCH_SIZE) ** 2,
        "vision_feature_layer": [-1, -2],
        "pad_token_id": ids["<pad>"],
        "tie_word_embeddings": False,
    }


def make_template(model_dir, tokenizer, system: str | None = None) -> VipLlavaTemplate:
    """Its only encoding option is the system prompt (`encoding_options`' default); `Family.load_template`
    refuses the others (resolution limits, video sampling) before calling this."""
    return VipLlavaTemplate.from_pretrained(model_dir, tokenizer, system=system)


FAMILY = Family(
    name="vipllava",
    model_type="vipllava",
    description="VipLLaVA (test-only family): CLIP, one square image, Llama",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=32000,
    eos_token="</s>",
    pad_token="<pad>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=make_template,
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.vision_tower.",),
        "aligner": ("model.multi_modal_projector.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    vision=f"{TINY_IMAGE_SIZE} px square, {(TINY_IMAGE_SIZE // PATCH_SIZE) ** 2} tokens per image",
)
