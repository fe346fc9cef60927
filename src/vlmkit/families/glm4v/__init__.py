"""GLM-4.1V (zai-org/GLM-4.1V-9B-Thinking, -Base): a 24-block ViT (14 px patches, 2x2 merge) over GLM-4-9B with
3-D rotary positions; images at any aspect ratio within pixel limits; grounding as 0-1000 boxes between
`<|begin_of_box|>` and `<|end_of_box|>`. Images only in vlmkit (video: see `template.py`).

GLM-4.5V / 4.6V (`glm4v_moe`, `glm46v`) share the image preprocessing and grounding but not the chat template
(think blocks, tools): `vlmkit.families.glm46v` takes this family's pieces with its own prompt format.
"""

from __future__ import annotations

from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.glm4v.boxes import BOX_FORMAT
from vlmkit.families.glm4v.render import render_glm4v
from vlmkit.families.glm4v.template import Glm4vTemplate

# The GLM-4 tokenizer's added tokens from id 151329 (the ids of transformers' Glm4vConfig: <|begin_of_image|>
# 151339 ... <|end_of_video|> 151342, <|image|> 151343, <|video|> 151344; vLLM's GLM-4 stop ids 151329,
# 151336, 151338), then the box tokens (their ids not checked: no GLM tokenizer file is available offline).
# The box tokens are kept when a reply is decoded (grounding reads them).
SPECIAL_TOKENS = tuple(
    (token, True)
    for token in (
        "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
        "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
        "<|end_of_video|>", "<|image|>", "<|video|>",
    )
) + (("<|begin_of_box|>", False), ("<|end_of_box|>", False))  # fmt: skip
# transformers' Glm4vImageProcessor defaults (pixel limits bound 2 x height x width: see template.py);
# not checked against the checkpoint's file (no download here).
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Glm4vImageProcessor",
    "processor_class": "Glm4vProcessor",
    "size": {"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 15000},
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "resample": 3,
    "rescale_factor": 1 / 255,
}
ENCODING_OPTIONS = ("min_pixels", "max_pixels", "system")


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy GLM-4.1V: 2 text layers (head size 32; rotary on half of each head, 3-D sections [2, 3, 3]),
    2 ViT blocks; the checkpoint's three stop tokens."""
    stops = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    return {
        "model_type": "glm4v",
        "architectures": ["Glm4vForConditionalGeneration"],
        "text_config": {
            "model_type": "glm4v_text",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "mrope_section": [2, 3, 3],
            },
            "eos_token_id": stops,
            "pad_token_id": ids["<|endoftext|>"],
        },
        "vision_config": {
            "model_type": "glm4v_vision",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "image_size": 112,
        },
        "image_token_id": ids["<|image|>"],
        "video_token_id": ids["<|video|>"],
        "image_start_token_id": ids["<|begin_of_image|>"],
        "image_end_token_id": ids["<|end_of_image|>"],
        "video_start_token_id": ids["<|begin_of_video|>"],
        "video_end_token_id": ids["<|end_of_video|>"],
        "eos_token_id": stops,
        "pad_token_id": ids["<|endoftext|>"],
    }


def load_template(model_dir, tokenizer, **settings) -> Glm4vTemplate:
    return Glm4vTemplate.from_pretrained(model_dir, tokenizer, render=render_glm4v, box_format=BOX_FORMAT, **settings)


def processor_limits(name: str, config: dict, settings: dict) -> dict:
    """The run's pixel limits into preprocessor_config.json's `size`, which `Glm4vImageProcessor` reads."""
    if name != "preprocessor_config.json":
        return config
    size = dict(config.get("size") or {})
    if settings.get("max_pixels") is not None:
        size["longest_edge"] = int(settings["max_pixels"])
    if settings.get("min_pixels") is not None:
        size["shortest_edge"] = int(settings["min_pixels"])
    return {**config, "size": size}


FAMILY = Family(
    name="glm4v",
    model_type="glm4v",
    description="GLM-4.1V (9B Thinking/Base): 14px patches, 3-D rotary, 0-1000 <|begin_of_box|> grounding; images only",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=151329,
    tiny_vocabulary=None,  # tiny models: `--small-vocab` only (GLM-4's 151k vocabulary is not offline)
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    processor_limits=processor_limits,
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.visual.",),
        "aligner": ("model.visual.merger.", "model.visual.downsample."),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    encoding_options=ENCODING_OPTIONS,
    box_format=BOX_FORMAT,
    aliases=("glm-4.1v", "glm4.1v"),
    verified=(
        'ids, pixels, grids = Glm4vProcessor.apply_chat_template(tokenize=True) with the real template (sha256 of its JSON string 5232dbe7), pixel limits (tests/parity/test_glm4v.py); CLI infer = generate, LoRA sft, merged export read by plain transformers, grounding (test_glm4v_cli.py)'
    ),
)
