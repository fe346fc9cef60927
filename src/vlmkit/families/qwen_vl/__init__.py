"""Qwen-VL (first generation: Qwen/Qwen-VL, Qwen/Qwen-VL-Chat): two registry entries.

- `qwen-vl` (model_type `qwen_vl`): vlmkit's own transformers implementation (`modeling.py`: ViT,
  256-query cross-attention resampler, Qwen2 language model), loaded with no remote code. Every command
  works on it: infer, chat, sft (LoRA, full, frozen ViT), export, serve. `vlmkit convert` makes such a
  folder from an original checkpoint (`checkpoint.py`, `convert.py`); logits equal the original remote
  code's to 1e-4 (tests/parity/test_qwen_vl_native.py, vectors recorded with transformers 4.40.2).
- `qwen-vl-remote` (model_type `qwen`): an original checkpoint folder as published, run through its own
  remote code (`--trust-remote-code`, prompt rendering in `template.py`), inference only.

The data side is shared: `Picture N: <img>PATH</img>` in conversations (`vlmkit.sample.inline`) and the
grounding text of `boxes.py`.
"""

import dataclasses
from pathlib import Path

from vlmkit.errors import VlmkitError
from vlmkit.families.family import Family
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary
from vlmkit.families.qwen_vl.boxes import BOX_FORMAT
from vlmkit.families.qwen_vl.checkpoint import (
    FIRST_SPECIAL_ID,
    SPECIAL_TOKENS,
    convert_checkpoint,
    converted_copy,
    write_tiny_original,
)

# The remote tokenizer makes the grounding tags special; a reply keeps them so boxes can be read.
REPLY_BOX_FORMAT = dataclasses.replace(BOX_FORMAT, keep_tokens=("<ref>", "</ref>", "<box>", "</box>"))


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    raise VlmkitError("qwen-vl's tiny model is written by `write_tiny_model` (the original layout)")


def register_classes() -> None:
    from vlmkit.families.qwen_vl.modeling import register

    register()


def load_native_template(model_dir, tokenizer, system: str | None = None):
    """The template of a `qwen_vl` folder (images are 448x448: no resolution options)."""
    from vlmkit.families.qwen_vl.native_template import NativeQwenVLTemplate

    return NativeQwenVLTemplate.from_pretrained(model_dir, tokenizer, REPLY_BOX_FORMAT, system=system)


def load_remote_template(model_dir, tokenizer, system: str | None = None):
    """The prompt template of an original Qwen-VL-Chat folder run through its remote code."""
    from vlmkit.families.qwen_vl.template import QwenVLChatTemplate

    return QwenVLChatTemplate.from_pretrained(model_dir, tokenizer, REPLY_BOX_FORMAT, system=system)


FAMILY = Family(
    name="qwen-vl",
    model_type="qwen_vl",
    description="Qwen-VL / Qwen-VL-Chat (first generation), vlmkit's implementation; `vlmkit convert` an "
    "original checkpoint; logits match the original remote code (transformers 4.40.2) to 1e-4",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=FIRST_SPECIAL_ID,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    preprocessor_config={},
    make_template=load_native_template,
    tiny_config=tiny_config,
    # Qwen-VL's own fine-tuning (--fix_vit) freezes the ViT but trains the resampler (attn_pool).
    module_groups={
        "vit": ("model.visual.",),
        "aligner": ("model.visual.resampler.",),
        "llm": ("model.language_model.", "lm_head."),
    },
    supports=("image",),
    chat_cache=True,
    aliases=("qwen-vl-chat", "qwenvl"),
    box_format=REPLY_BOX_FORMAT,
    vision="448x448 (resized, aspect not kept), 256 tokens per image (resampler)",
    register_classes=register_classes,
    write_tiny_model=lambda output_dir, seed: write_tiny_original(output_dir, seed=seed),
    verified=(
        "converted from the original layout: logits and greedy ids equal Qwen's remote code (reference vectors, "
        "tests/parity/test_qwen_vl_native.py); CLI infer, sft, grounding, convert"
    ),
)

REMOTE_FAMILY = Family(
    name="qwen-vl-remote",
    model_type="qwen",
    description="original Qwen-VL-Chat folders run by their remote code: inference only, untested; "
    "`vlmkit convert` them to qwen-vl",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=FIRST_SPECIAL_ID,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    preprocessor_config={},
    make_template=load_remote_template,
    tiny_config=tiny_config,
    module_groups={"vit": ("transformer.visual.",), "llm": ("transformer.", "lm_head.")},
    supports=("image",),
    aliases=("qwen-vl-original",),
    box_format=REPLY_BOX_FORMAT,
    vision="448x448 (the remote code resizes), 256 tokens per image",
    auto_class="AutoModelForCausalLM",
    remote_code=True,
    convert_checkpoint=convert_checkpoint,
    converted_copy=converted_copy,  # every command but a --trust-remote-code one converts on load
    train_refusal=(
        "an original Qwen-VL checkpoint runs remote code, which vlmkit does not train; convert it first "
        "(vlmkit convert --model PATH --output DIR) and train the converted folder"
    ),
    tiny_vocabulary=qwen2_vocabulary,
    verified="the remote-code path on a stand-in model only (tests/parity/test_qwen_vl.py); no real checkpoint",
)
