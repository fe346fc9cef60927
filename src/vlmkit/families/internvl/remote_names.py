"""Names and configs of OpenGVLab's remote-code InternVL checkpoints -> transformers' native InternVL (`-hf`).

`convert.py` writes the converted folder; this module says what each original tensor and setting becomes.

Input: a folder in the original layout (`model_type: internvl_chat`; see `remote.py`):
InternVL-Chat-V1.5, Mini-InternVL-Chat-*-V1.5, InternVL2, InternVL2.5, InternVL3.5 with an InternLM2, Qwen2, Qwen3 or
Llama language model. Output: a folder `InternVLForConditionalGeneration` loads with plain
transformers (no remote code), with the tokenizer, image-processor and processor configs, a chat
template and vlmkit.json, so every vlmkit command (and vLLM) runs on it.

The weights are renamed tensor by tensor, shard by shard (no model is built, so a 26B checkpoint
converts in its own dtype within a shard's memory):
- InternViT: `attn.qkv` is split into q/k/v (rows are [q; k; v]), `attn.proj` -> `projection_layer`,
  `norm1/norm2` -> `layernorm_before/after`, `ls1/ls2` -> `lambda_1/2`.
- the projector `mlp1.{0,1,3}` -> `multi_modal_projector.{layer_norm,linear_1,linear_2}`.
- InternLM2 -> Llama: `wqkv` holds, per key/value head, its query heads then its key and its value
  ((kv, groups + 2, head_dim, hidden)); it is cut into q/k/v; `w1/w3/w2` -> gate/up/down.
- Qwen2, Qwen3 and Llama language models keep their names under `model.language_model.`.
The head is never tied: InternVLChatConfig unties it for every size, and InternVLConfig's default
(tie_word_embeddings=True in transformers 5) would silently overwrite the head with the embeddings.

The prompt format comes from the checkpoint's conversation template name (config.json `template`):
chatml turns that end in `<|im_end|>` (internlm2-chat, Hermes-2) or `<|im_end|>\\n` (internvl2_5),
the template's default system message, and `<s>` first where the tokenizer adds it (InternLM2).
These travel in vlmkit.json (`turn_end`, `bos`, `system`) and in the written chat template.
Refused with one line: Phi-3 (`phi3-chat` turns), pixel shuffle `ps_version: v1` (its tokens are
transposed; transformers' InternVL has only v2), and a `force_image_size` other than the ViT's.
"""

from __future__ import annotations

import json
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.families.internvl.template import IMAGE_CONTEXT

REMOTE_MODEL_TYPE = "internvl_chat"
# Conversation templates of internvl_chat/internvl/conversation.py that vlmkit renders: how a turn
# ends, and the default system message (`system_message`) of each.
_INTERNVL_SYSTEM = "你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, 是一个有用无害的人工智能助手。"
_INTERNVL2_5_SYSTEM = "你是书生·万象，英文名是InternVL，是由上海人工智能实验室、清华大学及多家合作单位联合开发的多模态大语言模型。"
CONVERSATIONS = {
    "internlm2-chat": {"turn_end": "<|im_end|>", "system": _INTERNVL_SYSTEM},
    "Hermes-2": {"turn_end": "<|im_end|>", "system": _INTERNVL_SYSTEM},
    "internvl2_5": {"turn_end": "<|im_end|>\n", "system": _INTERNVL2_5_SYSTEM},
}
LLM_ARCHITECTURES = ("InternLM2ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "LlamaForCausalLM")
# the transformers model type of each (InternLM2 is converted to Llama: the same computation)
_TEXT_MODEL_TYPES = {"Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama"}

_VISION_NAMES = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.position_embedding": "embeddings.position_embeddings",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
}
_VISION_LAYER_NAMES = {
    "attn.proj": "attention.projection_layer",
    "attn.q_norm": "attention.q_norm",
    "attn.k_norm": "attention.k_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
}
_PROJECTOR_NAMES = {"mlp1.0": "layer_norm", "mlp1.1": "linear_1", "mlp1.3": "linear_2"}
_INTERNLM2_LAYER_NAMES = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def is_remote_checkpoint(config: dict[str, Any]) -> bool:
    return config.get("model_type") == REMOTE_MODEL_TYPE


def check_convertible(config: dict[str, Any], where: str) -> None:
    """Refuse, with one line naming the setting, what the native model cannot reproduce."""
    arch = (config.get("llm_config", {}).get("architectures") or ["?"])[0]
    if arch not in LLM_ARCHITECTURES:
        raise VlmkitError(
            f"{where}: llm_config architecture {arch} is not converted (vlmkit converts InternLM2, Qwen2, Qwen3 and Llama "
            "language models; Phi-3 InternVL checkpoints use the phi3-chat prompt, which vlmkit does not render)"
        )
    template = config.get("template")
    if template not in CONVERSATIONS:
        raise VlmkitError(
            f"{where}: conversation template {template!r} is not supported (vlmkit renders {', '.join(CONVERSATIONS)})"
        )
    if config.get("ps_version", "v1") != "v2":
        raise VlmkitError(
            f"{where}: ps_version {config.get('ps_version', 'v1')!r}: this pixel shuffle orders image tokens "
            "transposed, which transformers' InternVL (ps_version v2 only) cannot reproduce; not converted"
        )
    vision = config["vision_config"]
    if config.get("force_image_size") not in (None, vision["image_size"]):
        raise VlmkitError(
            f"{where}: force_image_size {config['force_image_size']} differs from the ViT's image_size "
            f"{vision['image_size']}; not converted"
        )
    if config.get("dynamic_image_size", False) and not config.get("use_thumbnail", False):
        raise VlmkitError(f"{where}: dynamic tiles without a thumbnail (use_thumbnail false) are not supported")


def _text_config(llm: dict[str, Any]) -> dict[str, Any]:
    """llm_config -> the native text_config (InternLM2 becomes Llama: the same computation)."""
    arch = llm["architectures"][0]
    heads = llm["num_attention_heads"]
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(llm.get("rope_theta", 10000.0))}
    scaling = llm.get("rope_scaling")
    if scaling:
        rope_type = scaling.get("rope_type", scaling.get("type"))
        rope |= {k: v for k, v in scaling.items() if k not in ("type", "rope_type")} | {"rope_type": rope_type}
    keep = (
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "hidden_act",
        "max_position_embeddings",
        "head_dim",
        "rms_norm_eps",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sliding_window",
        "use_sliding_window",
        "max_window_layers",
        "attention_dropout",
        "attention_bias",
        "mlp_bias",
    )
    text = {k: llm[k] for k in keep if k in llm}
    text.setdefault("num_key_value_heads", heads)
    text |= {"rope_parameters": rope, "tie_word_embeddings": False}
    if arch == "InternLM2ForCausalLM":
        text |= {"model_type": "llama", "attention_bias": bool(llm.get("bias", True)), "mlp_bias": False}
        text["head_dim"] = llm["hidden_size"] // heads
    else:
        text["model_type"] = _TEXT_MODEL_TYPES[arch]
    return text


def native_config(config: dict[str, Any], image_token_id: int) -> dict[str, Any]:
    """config.json of the converted model (InternVLConfig)."""
    vision = config["vision_config"]
    size, patch = vision["image_size"], vision["patch_size"]
    ratio = config.get("downsample_ratio", 0.5)
    return {
        "model_type": "internvl",
        "architectures": ["InternVLForConditionalGeneration"],
        "vision_config": {
            "model_type": "internvl_vision",
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_hidden_layers": vision["num_hidden_layers"],
            "num_attention_heads": vision["num_attention_heads"],
            "num_channels": vision.get("num_channels", 3),
            "image_size": [size, size],
            "patch_size": [patch, patch],
            "attention_bias": bool(vision.get("qkv_bias", False)),
            "use_qk_norm": bool(vision.get("qk_normalization", False)),
            "norm_type": vision.get("norm_type", "rms_norm"),
            "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
            "hidden_act": vision.get("hidden_act", "gelu"),
            "use_mean_pooling": True,  # no final norm: InternViT's last_hidden_state is the last block's
            "use_absolute_position_embeddings": True,
            "layer_scale_init_value": vision.get("initializer_factor", 0.1),
        },
        "text_config": _text_config(config["llm_config"]),
        "image_token_id": image_token_id,
        "image_seq_length": round((size // patch) ** 2 * ratio**2),
        "downsample_ratio": ratio,
        "projector_hidden_act": "gelu",
        "vision_feature_layer": config.get("select_layer", -1),
        "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False,
    }


def convert_tensor(name: str, tensor, config: dict[str, Any]) -> dict[str, Any]:
    """One original tensor -> {native name: tensor} (a fused q/k/v gives three)."""
    if name.startswith("vision_model."):
        return _vision_tensor(name.removeprefix("vision_model."), tensor)
    if name.startswith("mlp1."):
        module, _, leaf = name.rpartition(".")
        return {f"model.multi_modal_projector.{_PROJECTOR_NAMES[module]}.{leaf}": tensor}
    if name.startswith("language_model."):
        return _llm_tensor(name.removeprefix("language_model."), tensor, config["llm_config"])
    raise VlmkitError(f"unexpected tensor {name} in an InternVL checkpoint; not converted")


def _vision_tensor(name: str, tensor) -> dict[str, Any]:
    prefix = "model.vision_tower."
    if name in _VISION_NAMES:
        return {prefix + _VISION_NAMES[name]: tensor}
    _, _, index, rest = name.split(".", 3)  # encoder.layers.{i}.{rest}
    layer = f"{prefix}encoder.layer.{index}."
    if rest.startswith("attn.qkv."):
        q, k, v = tensor.chunk(3, dim=0)  # rows [q; k; v], as qkv(x).reshape(B, N, 3, heads, d) reads them
        leaf = rest.rsplit(".", 1)[1]
        return {f"{layer}attention.{p}_proj.{leaf}": t for p, t in zip("qkv", (q, k, v), strict=True)}
    if rest in ("ls1", "ls2"):
        return {layer + ("lambda_1" if rest == "ls1" else "lambda_2"): tensor}
    module, _, leaf = rest.rpartition(".")
    return {f"{layer}{_VISION_LAYER_NAMES[module]}.{leaf}": tensor}


def _llm_tensor(name: str, tensor, llm: dict[str, Any]) -> dict[str, Any]:
    if name in ("output.weight", "lm_head.weight"):
        return {"lm_head.weight": tensor}
    name = name.removeprefix("model.")
    if llm["architectures"][0] != "InternLM2ForCausalLM":
        return {f"model.language_model.{name}": tensor}
    if name == "tok_embeddings.weight":
        return {"model.language_model.embed_tokens.weight": tensor}
    if not name.startswith("layers."):
        return {f"model.language_model.{name}": tensor}  # norm.weight
    _, index, rest = name.split(".", 2)
    layer = f"model.language_model.layers.{index}."
    if rest.startswith("attention.wqkv."):
        heads, kv = llm["num_attention_heads"], llm.get("num_key_value_heads") or llm["num_attention_heads"]
        groups, head_dim = heads // kv, llm["hidden_size"] // heads
        grouped = tensor.reshape(kv, groups + 2, head_dim, *tensor.shape[1:])  # per kv head: its q heads, k, v
        q = grouped[:, :groups].reshape(heads * head_dim, *tensor.shape[1:])  # query head h*groups+g
        k = grouped[:, -2].reshape(kv * head_dim, *tensor.shape[1:])
        v = grouped[:, -1].reshape(kv * head_dim, *tensor.shape[1:])
        leaf = rest.rsplit(".", 1)[1]
        return {f"{layer}self_attn.{p}_proj.{leaf}": t.contiguous() for p, t in zip("qkv", (q, k, v), strict=True)}
    module, _, leaf = rest.rpartition(".")
    return {f"{layer}{_INTERNLM2_LAYER_NAMES[module]}.{leaf}": tensor}


def chat_template(turn_end: str, system: str | None, bos: str | None = None) -> str:
    """A Jinja chat template for the converted folder (transformers / vLLM users): `bos` (InternLM2's `<s>`,
    first in the text as chat templates write it: `apply_chat_template` and vLLM add no special tokens), the
    original conversation's chatml turns, `system` when the conversation has no system message (none at
    all when None), one `<IMG_CONTEXT>` + newline per image (InternVLProcessor expands it to the tile tokens)."""
    end = json.dumps(turn_end)
    default = json.dumps(system) if system is not None else "none"
    return (
        (json.dumps(bos).join(["{{ ", " }}"]) if bos else "")
        +
        "{%- macro text(content) -%}{%- if content is string -%}{{ content }}{%- else -%}"
        "{%- for part in content -%}{%- if part['type'] == 'image' -%}{{ '" + IMAGE_CONTEXT + "\\n' }}"
        "{%- elif part['type'] == 'video' -%}{{ '<video>\\n' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set system = text(messages[0]['content']) -%}"
        "{%- set messages = messages[1:] -%}{%- else -%}{%- set system = " + default + " -%}{%- endif -%}"
        "{%- if system is not none -%}{{ '<|im_start|>system\\n' + system + " + end + " }}{%- endif -%}"
        "{%- for message in messages -%}{{ '<|im_start|>' + message['role'] + '\\n' + text(message['content']) + "
        + end + " }}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )
