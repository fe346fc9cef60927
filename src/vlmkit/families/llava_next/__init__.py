"""LLaVA-NeXT / LLaVA-1.6 (llava-hf/llava-v1.6-mistral-7b-hf): CLIP 336 px "anyres" tiles, Mistral LM."""

from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.llava import CLIP_MEAN, CLIP_STD, PATCH_SIZE, SPECIAL_TOKENS, tiny_vision_config
from vlmkit.families.llava.template import LlavaTemplate
from vlmkit.families.llava_next.template import AnyRes, render_llava_next_mistral
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary

GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# As shipped in llava-hf/llava-v1.6-mistral-7b-hf's preprocessor_config.json.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "LlavaNextImageProcessor",
    "processor_class": "LlavaNextProcessor",
    "aspect_ratio_setting": "anyres",
    "crop_size": {"height": 336, "width": 336},
    "size": {"shortest_edge": 336},
    "image_grid_pinpoints": GRID_PINPOINTS,
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "resample": 3,
    "rescale_factor": 1 / 255,
}
PROCESSOR_CONFIG = {
    "processor_class": "LlavaNextProcessor",
    "image_token": "<image>",
    "patch_size": PATCH_SIZE,
    "num_additional_image_tokens": 1,
    "vision_feature_select_strategy": "default",
}


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """A 2-layer Mistral (hidden 64, 2 heads of 32) behind a 2-layer CLIP tower at the real 336 px input."""
    return {
        "model_type": "llava_next",
        "architectures": ["LlavaNextForConditionalGeneration"],
        "text_config": {
            "model_type": "mistral",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 8192,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": ids["<pad>"],
        },
        "vision_config": tiny_vision_config(),
        "image_token_index": ids["<image>"],
        "image_grid_pinpoints": GRID_PINPOINTS,
        "image_seq_length": 576,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "pad_token_id": ids["<pad>"],
        "tie_word_embeddings": False,
    }


def make_vision(config: dict) -> AnyRes:
    return AnyRes.from_config(config, PATCH_SIZE)


def load_template(model_dir, tokenizer, system: str | None = None) -> LlavaTemplate:
    """The template of a llava_next folder; a resolution option (`max_pixels=...`) is refused."""
    return LlavaTemplate.from_pretrained(
        model_dir, tokenizer, render_llava_next_mistral, make_vision, family="llava-next", system=system
    )


FAMILY = Family(
    name="llava-next",
    model_type="llava_next",
    description="LLaVA-NeXT / 1.6 (-hf, Mistral-7B template): CLIP 336 px anyres tiles + base image",
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
        # The row-end embedding is trained with the projector (LLaVA-NeXT's stage 1).
        "aligner": ("model.multi_modal_projector.", "model.image_newline"),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    vision=make_vision(PREPROCESSOR_CONFIG).describe(),
    tokenizer_extra={"image_token": "<image>"},
    processor_config=PROCESSOR_CONFIG,
    aliases=("llava-1.6", "llava1.6", "llava-v1.6"),
    chat_cache=True,
    tiny_vocabulary=qwen2_vocabulary,  # tiny models: the Llama tokenizer is not offline; borrow the Qwen2 vocabulary
    verified=(
        'prompts and anyres tiles = LlavaNextProcessor with the real template (tests/parity/test_llava.py, test_families.py); CLI data check'
    ),
)
