"""Qwen-VL (first generation, Qwen/Qwen-VL-Chat): chat through its remote code, and its data conventions.

Its checkpoints (`config.json` model_type `qwen`) ship their own Python code, which transformers runs
only with `trust_remote_code=True` and loads with `AutoModelForCausalLM`. vlmkit renders the prompt
(`template.py`) and lets that code do the rest; none of it can be tested here against the real
checkpoint, and training it is out of scope. The data side is supported in full:
`Picture N: <img>PATH</img>` in conversations (`vlmkit.data.inline`) and the grounding text of
`boxes.py`, so Qwen-VL datasets can train the families vlmkit does support.
"""

import dataclasses
from pathlib import Path

from vlmkit.errors import VlmkitError
from vlmkit.families import Family
from vlmkit.families.qwen2_vl.vocab import qwen2_vocabulary
from vlmkit.families.qwen_vl.boxes import BOX_FORMAT
from vlmkit.families.qwen_vl.template import QwenVLChatTemplate

# Qwen's 151,643 BPE ranks, then the special tokens in the real tokenizer's order (tokenization_qwen.py:
# <|endoftext|>, <|im_start|>, <|im_end|>, 205 <|extra_N|>, then <ref> </ref> <box> </box> <quad> </quad>
# <img> </img> <imgpad>). Only the ones vlmkit names are listed.
SPECIAL_TOKENS = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True))
# The remote tokenizer marks the grounding tags special; a reply keeps them so boxes can be read.
REPLY_BOX_FORMAT = dataclasses.replace(BOX_FORMAT, keep_tokens=("<ref>", "</ref>", "<box>", "</box>"))


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    raise VlmkitError(
        "qwen-vl has no tiny model: its model is remote code that vlmkit cannot build offline; "
        "use qwen2-vl or qwen2.5-vl"
    )


def load_template(model_dir, tokenizer, system: str | None = None) -> QwenVLChatTemplate:
    """The prompt template of a Qwen-VL-Chat folder; resolution options are refused (images are 448x448)."""
    return QwenVLChatTemplate.from_pretrained(model_dir, tokenizer, REPLY_BOX_FORMAT, system=system)


FAMILY = Family(
    name="qwen-vl",
    model_type="qwen",
    description="Qwen-VL-Chat (first generation): remote code, inference only, untested",
    folder=Path(__file__).parent,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=151643,
    eos_token="<|endoftext|>",
    pad_token="<|endoftext|>",
    preprocessor_config={},
    make_template=load_template,
    tiny_config=tiny_config,
    module_groups={"vit": ("transformer.visual.",), "llm": ("transformer.", "lm_head.")},
    supports=("image",),
    aliases=("qwen-vl-chat", "qwenvl"),
    box_format=REPLY_BOX_FORMAT,
    vision="448x448 (the remote code resizes), 256 tokens per image",
    auto_class="AutoModelForCausalLM",
    remote_code=True,
    train_refusal=(
        "Qwen-VL (first generation) is inference only in vlmkit (its model is untested remote code); "
        "train Qwen2-VL or Qwen2.5-VL on the same data instead (Picture N: <img>..</img> and <ref>/<box> "
        "data are read as they are)"
    ),
    tiny_vocabulary=qwen2_vocabulary,
)
