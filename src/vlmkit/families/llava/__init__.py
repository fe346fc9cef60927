"""LLaVA-1.5 (llava-hf/llava-1.5-*-hf): CLIP ViT-L/14 at 336 px, 576 tokens per image, Llama/Vicuna LM."""

from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.llava.template import ClipCrop, LlavaTemplate, render_llava_1_5
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary

# The real tokenizer's special tokens in id order: <unk> <s> </s> are ids 0-2 of the Llama vocabulary,
# <image> and <pad> were added at 32000 and 32001. A tiny model's Qwen2 vocabulary (see vlmkit.families.tiny)
# already holds the strings <unk> <s> </s> (ids 128244, 128245, 128247; kept whole as special tokens),
# so, as in the real one, only <image> and <pad> come after it: 151643 and 151644.
SPECIAL_TOKENS = (("<unk>", True), ("<s>", True), ("</s>", True), ("<image>", True), ("<pad>", True))
PATCH_SIZE = 14  # the CLIP vision tower's patch; the processor's `patch_size`
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# As shipped in llava-hf/llava-1.5-7b-hf's preprocessor_config.json.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "CLIPImageProcessor",
    "processor_class": "LlavaProcessor",
    "crop_size": {"height": 336, "width": 336},
    "size": {"shortest_edge": 336},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "resample": 3,
    "rescale_factor": 1 / 255,
}
# As shipped in its processor_config.json (the CLS feature is dropped: 24 * 24 = 576 tokens per image).
PROCESSOR_CONFIG = {
    "processor_class": "LlavaProcessor",
    "image_token": "<image>",
    "patch_size": PATCH_SIZE,
    "num_additional_image_tokens": 1,
    "vision_feature_select_strategy": "default",
}


def tiny_vision_config() -> dict:
    """A 2-layer CLIP vision tower at the real input size (336 px, 14 px patches -> 24x24 + CLS)."""
    return {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 336,
        "patch_size": PATCH_SIZE,
        "projection_dim": 32,
    }


def tiny_text_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """A 2-layer Llama, hidden 64, 2 heads (head size 32, the least vLLM's CPU attention takes)."""
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "bos_token_id": ids["<s>"],
        "eos_token_id": ids["</s>"],
        "pad_token_id": ids["<pad>"],
    }


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    return {
        "model_type": "llava",
        "architectures": ["LlavaForConditionalGeneration"],
        "text_config": tiny_text_config(vocab_size, ids),
        "vision_config": tiny_vision_config(),
        "image_token_index": ids["<image>"],
        "image_seq_length": 576,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "pad_token_id": ids["<pad>"],
        "tie_word_embeddings": False,
    }


def make_vision(config: dict) -> ClipCrop:
    return ClipCrop.from_config(config, PATCH_SIZE)


def load_template(model_dir, tokenizer, system: str | None = None) -> LlavaTemplate:
    """The template of a llava folder; a resolution option (`min_pixels=...`) is refused: the size is fixed."""
    return LlavaTemplate.from_pretrained(
        model_dir, tokenizer, render_llava_1_5, make_vision, family="llava", system=system
    )


FAMILY = Family(
    name="llava",
    model_type="llava",
    description="LLaVA-1.5 (-hf, 7B/13B): CLIP 336 px, one crop per image, Llama/Vicuna",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=151643,  # tiny models: after the Qwen2 vocabulary (see vlmkit.families.tiny)
    eos_token="</s>",
    pad_token="<pad>",
    bos_token="<s>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.vision_tower.",),
        "aligner": ("model.multi_modal_projector.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    vision=make_vision(PREPROCESSOR_CONFIG).describe(),
    tokenizer_extra={"image_token": "<image>"},
    processor_config=PROCESSOR_CONFIG,
    aliases=("llava-1.5", "llava1.5"),
    chat_cache=True,
    tiny_vocabulary=qwen2_vocabulary,  # tiny models: the Llama tokenizer is not offline; borrow the Qwen2 vocabulary
    verified=(
        'prompts and pixels = LlavaProcessor with the real template (tests/parity/test_llava.py, test_families.py); CLI data check'
    ),
)
