"""Qwen-VL weights between the original remote-code layout (model_type `qwen`) and vlmkit's `qwen_vl`.

The original names come from Qwen-VL-Chat's modeling_qwen.py / visual.py (`transformer.h.N.attn.c_attn`,
`transformer.visual.transformer.resblocks.N.attn.in_proj`, ...). Two tensors change shape, not only name:

- the language model's `c_attn` is [q; k; v] stacked, split into Qwen2's q/k/v projections;
- the ViT's `in_proj` is interleaved per head ([q_h, k_h, v_h] for each head h), regrouped to [q; k; v];
  the resampler's `nn.MultiheadAttention.in_proj_weight` is [q; k; v] and is split in three.

`to_native` and `to_original` are inverses (a round trip returns the same tensors).
"""

from __future__ import annotations

import re

import torch

from vlmkit.errors import VlmkitError

ENDOFTEXT_ID = 151643  # <|endoftext|> of the Qwen vocabulary (qwen.tiktoken has 151,643 ranks)

# (original, native) name pairs for tensors that are only renamed; {i} is a layer index.
VISION_RENAMES = [
    ("transformer.visual.conv1.weight", "model.visual.patch_embed.weight"),
    ("transformer.visual.positional_embedding", "model.visual.position_embedding"),
    ("transformer.visual.ln_pre.", "model.visual.pre_norm."),
    ("transformer.visual.ln_post.", "model.visual.post_norm."),
    ("transformer.visual.proj", "model.visual.proj"),
    ("transformer.visual.transformer.resblocks.{i}.ln_1.", "model.visual.blocks.{i}.norm1."),
    ("transformer.visual.transformer.resblocks.{i}.ln_2.", "model.visual.blocks.{i}.norm2."),
    ("transformer.visual.transformer.resblocks.{i}.attn.out_proj.", "model.visual.blocks.{i}.attn.proj."),
    ("transformer.visual.transformer.resblocks.{i}.mlp.c_fc.", "model.visual.blocks.{i}.fc1."),
    ("transformer.visual.transformer.resblocks.{i}.mlp.c_proj.", "model.visual.blocks.{i}.fc2."),
    ("transformer.visual.attn_pool.query", "model.visual.resampler.query"),
    ("transformer.visual.attn_pool.pos_embed", "model.visual.resampler.pos_embed"),
    ("transformer.visual.attn_pool.kv_proj.", "model.visual.resampler.kv_proj."),
    ("transformer.visual.attn_pool.ln_q.", "model.visual.resampler.norm_q."),
    ("transformer.visual.attn_pool.ln_kv.", "model.visual.resampler.norm_kv."),
    ("transformer.visual.attn_pool.attn.out_proj.", "model.visual.resampler.out_proj."),
]
TEXT_RENAMES = [
    ("transformer.wte.", "model.language_model.embed_tokens."),
    ("transformer.ln_f.", "model.language_model.norm."),
    ("lm_head.", "lm_head."),
    ("transformer.h.{i}.ln_1.", "model.language_model.layers.{i}.input_layernorm."),
    ("transformer.h.{i}.ln_2.", "model.language_model.layers.{i}.post_attention_layernorm."),
    ("transformer.h.{i}.attn.c_proj.", "model.language_model.layers.{i}.self_attn.o_proj."),
    ("transformer.h.{i}.mlp.w1.", "model.language_model.layers.{i}.mlp.up_proj."),  # w1(x) * silu(w2(x))
    ("transformer.h.{i}.mlp.w2.", "model.language_model.layers.{i}.mlp.gate_proj."),
    ("transformer.h.{i}.mlp.c_proj.", "model.language_model.layers.{i}.mlp.down_proj."),
]
RENAMES = VISION_RENAMES + TEXT_RENAMES


def _pattern(prefix: str) -> re.Pattern:
    return re.compile("^" + re.escape(prefix).replace(r"\{i\}", r"(\d+)") + "(.*)$")


def _rename(name: str, pairs: list[tuple[str, str]]) -> str | None:
    for source, target in pairs:
        match = _pattern(source).match(name)
        if match:
            *layer, rest = match.groups()
            return target.replace("{i}", layer[0]) + rest if layer else target + rest
    return None


def _regroup_heads(t: torch.Tensor, heads: int, to_native: bool) -> torch.Tensor:
    """(3C, ...) per-head interleaved [q_h k_h v_h]_h <-> grouped [q; k; v] (to_native: the first)."""
    shape = t.shape
    if to_native:
        return t.reshape(heads, 3, -1, *shape[1:]).transpose(0, 1).reshape(shape)
    return t.reshape(3, heads, -1, *shape[1:]).transpose(0, 1).reshape(shape)


def to_native(state: dict[str, torch.Tensor], vision_heads: int) -> dict[str, torch.Tensor]:
    """Original-layout tensors -> `QwenVLForConditionalGeneration` tensors; unknown names are refused."""
    out = {}
    for name, tensor in state.items():
        if m := re.match(r"^transformer\.h\.(\d+)\.attn\.c_attn\.(weight|bias)$", name):
            prefix = f"model.language_model.layers.{m[1]}.self_attn."
            for proj, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"{prefix}{proj}_proj.{m[2]}"] = part.contiguous()
        elif m := re.match(
            r"^transformer\.visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj\.(weight|bias)$", name
        ):
            out[f"model.visual.blocks.{m[1]}.attn.qkv.{m[2]}"] = _regroup_heads(tensor, vision_heads, True)
        elif m := re.match(r"^transformer\.visual\.attn_pool\.attn\.in_proj_(weight|bias)$", name):
            for proj, part in zip("qkv", tensor.chunk(3, dim=0), strict=True):
                out[f"model.visual.resampler.{proj}_proj.{m[1]}"] = part.contiguous()
        elif (renamed := _rename(name, RENAMES)) is not None:
            out[renamed] = tensor
        else:
            raise VlmkitError(
                f"unexpected tensor {name!r} in a Qwen-VL checkpoint; is this Qwen-VL (first generation)?"
            )
    return out


def to_original(state: dict[str, torch.Tensor], vision_heads: int) -> dict[str, torch.Tensor]:
    """The inverse of `to_native` (for `vlmkit tiny-model qwen-vl`, which writes the original layout)."""
    back = [(native, original) for original, native in RENAMES]
    out, qkv = {}, {}
    for name, tensor in state.items():
        if m := re.match(
            r"^model\.language_model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", name
        ):
            qkv.setdefault(f"transformer.h.{m[1]}.attn.c_attn.{m[3]}", {})[m[2]] = tensor
        elif m := re.match(r"^model\.visual\.resampler\.([qkv])_proj\.(weight|bias)$", name):
            qkv.setdefault(f"transformer.visual.attn_pool.attn.in_proj_{m[2]}", {})[m[1]] = tensor
        elif m := re.match(r"^model\.visual\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", name):
            key = f"transformer.visual.transformer.resblocks.{m[1]}.attn.in_proj.{m[2]}"
            out[key] = _regroup_heads(tensor, vision_heads, False).contiguous()
        elif (renamed := _rename(name, back)) is not None:
            out[renamed] = tensor
        else:
            raise VlmkitError(f"no original Qwen-VL name for {name!r}")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def native_config(original: dict, where: str = "config.json") -> dict:
    """The original `config.json` (model_type `qwen`) -> `QwenVLConfig` keyword arguments; what the native
    model cannot reproduce is refused."""
    problems = []
    if original.get("rotary_pct", 1.0) != 1.0:
        problems.append(f"rotary_pct {original['rotary_pct']} (only 1.0)")
    if original.get("kv_channels", 0) * original["num_attention_heads"] != original["hidden_size"]:
        problems.append("kv_channels x num_attention_heads != hidden_size")
    if not original.get("no_bias", True):
        problems.append("no_bias false (biased output projections)")
    if "visual" not in original:
        problems.append("no `visual` section (a text-only Qwen checkpoint, not Qwen-VL)")
    if problems:
        raise VlmkitError(f"{where}: cannot convert this Qwen checkpoint: " + "; ".join(problems))
    visual = dict(original["visual"])
    start = visual.pop("image_start_id")
    return {
        "text_config": {
            "vocab_size": original["vocab_size"],
            "hidden_size": original["hidden_size"],
            "intermediate_size": original["intermediate_size"] // 2,  # Qwen counts w1 and w2 together
            "num_hidden_layers": original["num_hidden_layers"],
            "num_attention_heads": original["num_attention_heads"],
            "num_key_value_heads": original["num_attention_heads"],
            "max_position_embeddings": original.get("max_position_embeddings", 8192),
            "rms_norm_eps": original.get("layer_norm_epsilon", 1e-6),
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": float(original.get("rotary_emb_base", 10000)),
            },
            "initializer_range": original.get("initializer_range", 0.02),
            "tie_word_embeddings": False,
            # <|endoftext|>, as the tokenizer says (transformers' Trainer otherwise rewrites the configs)
            "eos_token_id": ENDOFTEXT_ID,
            "pad_token_id": ENDOFTEXT_ID,
        },
        "vision_config": visual,
        "image_start_token_id": start,
        "image_end_token_id": start + 1,
        "image_token_id": start + 2,
        "seq_length": original.get("seq_length", 2048),
        "tie_word_embeddings": False,
    }


def original_config(native: dict) -> dict:
    """`QwenVLConfig` keyword arguments -> the original `config.json` (inverse of `native_config`)."""
    text, vision = native["text_config"], dict(native["vision_config"])
    vision.pop("n_queries", None)  # the remote code's default (256) and the only value it supports
    heads = text["num_attention_heads"]
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "model_type": "qwen",
        "attn_dropout_prob": 0.0, "emb_dropout_prob": 0.0, "bf16": False, "fp16": False, "fp32": False,
        "hidden_size": text["hidden_size"],
        "initializer_range": text.get("initializer_range", 0.02),
        "intermediate_size": text["intermediate_size"] * 2,
        "kv_channels": text["hidden_size"] // heads,
        "layer_norm_epsilon": text["rms_norm_eps"],
        "max_position_embeddings": text["max_position_embeddings"],
        "no_bias": True, "num_attention_heads": heads, "num_hidden_layers": text["num_hidden_layers"],
        "onnx_safe": None, "rotary_emb_base": text["rope_parameters"]["rope_theta"], "rotary_pct": 1.0,
        "scale_attn_weights": True, "seq_length": native.get("seq_length", 2048), "tie_word_embeddings": False,
        "tokenizer_type": "QWenTokenizer", "use_cache": True, "use_dynamic_ntk": True, "use_flash_attn": False,
        "use_logn_attn": True,
        "visual": {**vision, "image_start_id": native["image_start_token_id"]},
        "vocab_size": text["vocab_size"],
    }  # fmt: skip
