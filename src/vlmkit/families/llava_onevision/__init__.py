"""LLaVA-OneVision (-hf: llava-hf/llava-onevision-qwen2-0.5b-ov-hf, -7b-ov-hf, -72b-ov-hf and the -si ones): SigLIP
at 384 px (27x27 features per crop) over Qwen2; one image tiled `anyres_max_9`, several images one padded crop
each (see `template.py`). Images only in vlmkit: transformers' LLaVA-OneVision video processor needs torchvision.

Resolution: the tile grid (`image_grid_pinpoints`) and the pooling limit (`vision_aspect_ratio`) are read by the
model from config.json as well as by the processor, so they are the checkpoint's: vlmkit takes them from the
folder and has no option that changes them (a grid changed in one file only would feed the model tiles it
does not expect).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlmkit.errors import VlmkitError
from vlmkit.families.family import Family
from vlmkit.families.llava.template import ClipCrop
from vlmkit.families.llava_next.template import AnyRes
from vlmkit.families.llava_onevision.template import AnyResMax, LlavaOnevisionTemplate, render_llava_onevision
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary

# Qwen2's special tokens from id 151643, then <image> 151646 and <video> 151647 (LlavaOnevisionConfig's ids).
SPECIAL_TOKENS = tuple((t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"))
PATCH_SIZE = 14
CROP = 384
GRID_PINPOINTS = [[CROP * h, CROP * w] for h in range(1, 7) for w in range(1, 7)]  # 1x1 ... 6x6 tiles
# As transformers' LlavaOnevisionImageProcessor and the -hf checkpoints' preprocessor_config.json write it.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "LlavaOnevisionImageProcessor",
    "processor_class": "LlavaOnevisionProcessor",
    "size": {"height": CROP, "width": CROP},
    "image_grid_pinpoints": GRID_PINPOINTS,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_pad": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 3,
    "rescale_factor": 1 / 255,
}
PROCESSOR_CONFIG = {
    "processor_class": "LlavaOnevisionProcessor",
    "image_token": "<image>",
    "video_token": "<video>",
    "num_image_tokens": (CROP // PATCH_SIZE) ** 2,
    "vision_feature_select_strategy": "full",
    "vision_aspect_ratio": "anyres_max_9",
}


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """A 2-layer Qwen2 (hidden 64, 2 heads of 32) behind a 2-layer SigLIP tower at the real 384 px input."""
    return {
        "model_type": "llava_onevision",
        "architectures": ["LlavaOnevisionForConditionalGeneration"],
        "text_config": {
            "model_type": "qwen2",
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 32768,
            "tie_word_embeddings": False,
            "eos_token_id": ids["<|im_end|>"],
        },
        "vision_config": {
            "model_type": "siglip_vision_model",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": CROP,
            "patch_size": PATCH_SIZE,
            "vision_use_head": False,
        },
        "image_token_index": ids["<image>"],
        "video_token_index": ids["<video>"],
        "image_grid_pinpoints": GRID_PINPOINTS,
        "vision_aspect_ratio": "anyres_max_9",
        "vision_feature_select_strategy": "full",
        "vision_feature_layer": -1,
        "projector_hidden_act": "gelu",
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": False,
    }


def _max_tiles(aspect_ratio: str, where: str) -> int:
    if not aspect_ratio.startswith("anyres_max_") or not aspect_ratio[len("anyres_max_") :].isdigit():
        raise VlmkitError(f"{where}: vision_aspect_ratio {aspect_ratio!r} is not anyres_max_N; vlmkit encodes only those")
    return int(aspect_ratio[len("anyres_max_") :])


def make_vision(config: dict, aspect_ratio: str = "anyres_max_9", where: str = "processor_config.json") -> AnyResMax:
    size = config["size"]
    if size.get("height") != size.get("width"):
        raise VlmkitError(f"preprocessor_config.json: size {size} is not square; LLaVA-OneVision's crops are")
    clip = ClipCrop(size["height"], (size["height"], size["width"]), tuple(config["image_mean"]),
                    tuple(config["image_std"]), PATCH_SIZE)  # fmt: skip
    anyres = AnyRes(clip=clip, pinpoints=tuple(tuple(p) for p in config["image_grid_pinpoints"]))
    return AnyResMax(anyres, _max_tiles(aspect_ratio, where))


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_template(model_dir, tokenizer, system: str | None = None) -> LlavaOnevisionTemplate:
    """The template of a llava_onevision folder: the grid from preprocessor_config.json, the pooling limit from
    processor_config.json (the processor counts tokens with it). Where the folder has the model's config.json
    too (not an adapter's folder), a grid or limit that differs from the model's is refused: the model would
    get tiles or pooled features the prompt does not count."""
    model_dir = Path(model_dir)
    preprocessor = json.loads((model_dir / "preprocessor_config.json").read_text())
    aspect_ratio = _read(model_dir / "processor_config.json").get("vision_aspect_ratio", "anyres_max_9")
    config = _read(model_dir / "config.json")
    if config:
        if [list(p) for p in config.get("image_grid_pinpoints", [])] != [list(p) for p in preprocessor["image_grid_pinpoints"]]:
            raise VlmkitError(
                f"{model_dir}: image_grid_pinpoints differ between config.json (the model's) and "
                "preprocessor_config.json (the processor's); make them the same"
            )
        if config.get("vision_aspect_ratio", "anyres_max_9") != aspect_ratio:
            raise VlmkitError(
                f"{model_dir}: vision_aspect_ratio differs between config.json (the model's) and processor_config.json "
                "(the processor's); make them the same"
            )
    vision = make_vision(preprocessor, aspect_ratio, str(model_dir / "processor_config.json"))
    return LlavaOnevisionTemplate(tokenizer, render_llava_onevision, vision, family="llava-onevision", system=system)


FAMILY = Family(
    name="llava-onevision",
    model_type="llava_onevision",
    description="LLaVA-OneVision (-hf, Qwen2 0.5B/7B/72B): SigLIP 384 px anyres_max_9 tiles; several images one crop each",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=151643,  # Qwen2's: the real ids (<image> 151646, <video> 151647)
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    tiny_config=tiny_config,
    module_groups={
        "vit": ("model.vision_tower.",),
        "aligner": ("model.multi_modal_projector.", "model.image_newline"),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    vision=make_vision(PREPROCESSOR_CONFIG).describe(),
    tokenizer_extra={"image_token": "<image>", "video_token": "<video>"},
    processor_config=PROCESSOR_CONFIG,
    aliases=("llava-ov", "llava_onevision", "llava-onevision-qwen2"),
    tiny_vocabulary=qwen2_vocabulary,
    verified=(
        "ids, pixels, image_sizes, batch_num_images = LlavaOnevisionProcessor.apply_chat_template(tokenize=True) with "
        "the template of transformers' tests (sha256 of its JSON string 4df3f04c), one image tiled and pooled, several "
        "images, a tiny image, CJK (tests/parity/test_llava_onevision.py); CLI infer = generate, LoRA sft, merged "
        "export read by plain transformers, serve (test_llava_onevision_cli.py); no grounding (no box format); video refused"
    ),
)
