"""GLM-4.6V (`glm46v`: zai-org/GLM-4.6V-Flash, 9B) and GLM-4.5V (`glm4v_moe`: zai-org/GLM-4.5V, 106B-A12B MoE; the
106B GLM-4.6V ships in the same layout): GLM-4.1V's vision tower, image preprocessing, resize rule and 0-1000
`<|begin_of_box|>` grounding (`vlmkit.families.glm4v`) over GLM-4.5's tokenizer, with a chat template that opens
each reply with a think block (`render.py`). Images only, as GLM-4.1V (video: see `glm4v/template.py`).

Two records, one folder: the model types differ in their language model (dense GLM-4 / GLM-4.5-Air MoE) and
their processor classes, not in how a conversation is encoded.

chat_template.jinja is GLM-OCR's (zai-org, a `Glm46VProcessor` checkpoint released after GLM-4.6V), as quoted
whole in a public test of a chat-template engine (sha256 of its JSON string 371c91c8...): its user turns,
think blocks and multimodal tool responses are the GLM-4.5V/4.6V template's. GLM-4.5V's and GLM-4.6V's own files
could not be read here (no download), so they are taken to share it, not checked byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from vlmkit.families.family import Family
from vlmkit.families.glm4v import ENCODING_OPTIONS, processor_limits
from vlmkit.families.glm4v import PREPROCESSOR_CONFIG as GLM4V_PREPROCESSOR_CONFIG
from vlmkit.families.glm4v import tiny_config as glm4v_tiny_config
from vlmkit.families.glm4v.boxes import BOX_FORMAT
from vlmkit.families.glm4v.template import Glm4vTemplate
from vlmkit.families.glm46v.render import render_glm46v

# GLM-4.5's added tokens from id 151329, in the order of GLM-OCR's tokenizer_config.json (its `<|image|>` at
# 151363 and `<|begin_of_video|>` at 151341 are transformers' Glm4vMoeConfig ids). The think and box tokens
# are kept when a reply is decoded (users read the reasoning; grounding reads the boxes).
_CONTROL = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|begin_of_audio|>",
    "<|end_of_audio|>",
    "<|begin_of_transcription|>",
    "<|end_of_transcription|>",
    "<|code_prefix|>",
    "<|code_middle|>",
    "<|code_suffix|>",
)
_TOOLS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<arg_key>", "</arg_key>",
          "<arg_value>", "</arg_value>")  # fmt: skip
SPECIAL_TOKENS = (
    tuple((token, True) for token in _CONTROL)
    + (("<think>", False), ("</think>", False))
    + tuple((token, True) for token in (*_TOOLS, "/nothink"))
    + (("<|begin_of_box|>", False), ("<|end_of_box|>", False), ("<|image|>", True), ("<|video|>", True))
)
FIRST_SPECIAL_ID = 151329


def _preprocessor_config(processor: str) -> dict:
    """GLM-4.1V's image processor settings under the model type's own class names (not checked against the
    checkpoints' files: no download here)."""
    return {**GLM4V_PREPROCESSOR_CONFIG, "image_processor_type": f"{processor}ImageProcessor",
            "processor_class": f"{processor}Processor"}  # fmt: skip


def load_template(model_dir, tokenizer, **settings) -> Glm4vTemplate:
    return Glm4vTemplate.from_pretrained(
        model_dir, tokenizer, render=render_glm46v, box_format=BOX_FORMAT, **settings
    )


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy GLM-4.6V-Flash: GLM-4.1V's toy (2 text layers, 2 ViT blocks) under the glm46v model type."""
    return {
        **glm4v_tiny_config(vocab_size, ids),
        "model_type": "glm46v",
        "architectures": ["Glm46VForConditionalGeneration"],
    }


def tiny_moe_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy GLM-4.5V: GLM-4.1V's toy whose second text layer is a mixture of 4 routed experts (2 active) and
    one shared expert (the first stays dense, as `first_k_dense_replace` keeps GLM-4.5-Air's first)."""
    config = glm4v_tiny_config(vocab_size, ids)
    config["model_type"] = "glm4v_moe"
    config["architectures"] = ["Glm4vMoeForConditionalGeneration"]
    config["text_config"] |= {
        "model_type": "glm4v_moe_text",
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "n_shared_experts": 1,
        "moe_intermediate_size": 32,
        "first_k_dense_replace": 1,
    }
    config["vision_config"]["model_type"] = "glm4v_moe_vision"
    return config


MODULE_GROUPS = {
    "vit": ("model.visual.",),
    "aligner": ("model.visual.merger.", "model.visual.downsample."),
    "llm": ("model.language_model.", "lm_head."),
}
VERIFIED = (
    "ids, pixels, grids = {processor}.apply_chat_template(tokenize=True) with GLM-OCR's template (taken as the "
    "checkpoints'), reply labels with think blocks, grounding (tests/parity/test_glm46v.py){cli}"
)

FAMILY = Family(
    name="glm46v",
    model_type="glm46v",
    description="GLM-4.6V-Flash (9B): GLM-4.1V's vision, think-block replies, 0-1000 <|begin_of_box|> grounding; images only",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=FIRST_SPECIAL_ID,
    tiny_vocabulary=None,  # tiny models: `--small-vocab` only (GLM-4.5's 151k vocabulary is not offline)
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    preprocessor_config=_preprocessor_config("Glm46V"),
    make_template=load_template,
    processor_limits=processor_limits,
    tiny_config=tiny_config,
    module_groups=MODULE_GROUPS,
    supports=("image",),
    encoding_options=ENCODING_OPTIONS,
    box_format=BOX_FORMAT,
    aliases=("glm-4.6v", "glm4.6v"),
    verified=VERIFIED.format(
        processor="Glm46VProcessor",
        cli="; CLI infer = generate, LoRA sft, merged export (test_glm46v_cli.py)",
    ),
)

MOE_FAMILY = Family(
    name="glm4v-moe",
    model_type="glm4v_moe",
    description="GLM-4.5V (106B-A12B MoE) and GLM-4.6V (106B): GLM-4.6V-Flash's encoding over a GLM-4.5-Air MoE; images only",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=FIRST_SPECIAL_ID,
    tiny_vocabulary=None,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    preprocessor_config=_preprocessor_config("Glm4v"),
    make_template=load_template,
    processor_limits=processor_limits,
    tiny_config=tiny_moe_config,
    module_groups=MODULE_GROUPS,
    supports=("image",),
    encoding_options=ENCODING_OPTIONS,
    box_format=BOX_FORMAT,
    aliases=("glm-4.5v", "glm4.5v"),
    verified=VERIFIED.format(
        processor="Glm4vProcessor", cli="; the family checks on a tiny MoE (tests/parity/test_families.py)"
    ),
)
