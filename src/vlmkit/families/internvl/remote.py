"""OpenGVLab's original (remote-code) InternVL checkpoint layout, at toy size.

InternVL-Chat-V1.5, Mini-InternVL-Chat-*-V1.5, InternVL2 and InternVL2.5 (the non `-hf` repos)
ship `config.json` with `model_type: internvl_chat`, a `vision_config` for InternViT, an
`llm_config` for the language model (InternLM2, Qwen2, Qwen3, Phi-3 or Llama) and safetensors whose
keys are the original module names (`vision_model.encoder.layers.0.attn.qkv.weight`,
`mlp1.1.weight`, `language_model.model.layers.0.attention.wqkv.weight`, ...). The model code
itself lives in the checkpoint (`modeling_internvl_chat.py`, run with trust_remote_code);
vlmkit never runs it: `convert.py` maps such a folder to transformers' native InternVL.

`build_tiny_remote(output_dir, llm="internlm2")` writes a random checkpoint in that layout,
written from the original code's module names and shapes (OpenGVLab/InternVL,
internvl_chat/internvl/model/), so that the conversion and the parity test have an input
without downloads. The vision tower is InternViT-6B-style (RMSNorm, q/k norm, no qkv bias, as in
InternVL-Chat-V1.5) for `llm="internlm2"` and InternViT-300M-style (LayerNorm, qkv bias, as in
Mini-InternVL and InternVL2) for `llm="qwen2"`. Weights come from a seeded generator, so the
same seed gives the same bytes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from vlmkit.errors import VlmkitError

TILE_SIZE, PATCH_SIZE = 448, 14
# Vision and language sizes of the toy model (the real V1.5: ViT 3200 wide x 45 layers, InternLM2-20B).
VIT_HIDDEN, VIT_MLP, VIT_HEADS, VIT_LAYERS = 32, 64, 2, 2
LLM_HIDDEN, LLM_MLP, LLM_HEADS, LLM_KV_HEADS, LLM_LAYERS = 64, 128, 4, 2, 2
# InternVL's tokens, in the order the original tokenizers add them after the language model's own.
INTERNVL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")
# The language models the toy builds: tokenizer specials, the conversation template name, vision style.
LLMS = {
    "internlm2": {
        "specials": ("<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"),
        "bos": "<s>",
        "eos": "</s>",
        "pad": "<unk>",
        "template": "internlm2-chat",
        "vision": "intern_vit_6b",
    },
    "qwen2": {
        "specials": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "template": "internvl2_5",
        "vision": "intern_vit_300m",
    },
    # InternVL3.5 (1B-8B, 38B): InternViT-300M/6B + Qwen3, the internvl2_5 prompt
    "qwen3": {
        "specials": ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "template": "internvl2_5",
        "vision": "intern_vit_300m",
    },
}
# Qwen3's attention heads are not hidden / heads wide (Qwen3-0.6B: 1024 hidden, 16 heads of 128): the toy's
# neither (4 heads of 32 on 64 hidden).
QWEN3_HEAD_DIM = 32


def _vision_config(style: str) -> dict:
    big = style == "intern_vit_6b"
    return {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",  # what every InternViT config says, 300M included
        "num_channels": 3,
        "image_size": TILE_SIZE,
        "patch_size": PATCH_SIZE,
        "hidden_size": VIT_HIDDEN,
        "intermediate_size": VIT_MLP,
        "num_attention_heads": VIT_HEADS,
        "num_hidden_layers": VIT_LAYERS,
        "qkv_bias": not big,
        "qk_normalization": big,
        "norm_type": "rms_norm" if big else "layer_norm",
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "initializer_factor": 0.1,
        "initializer_range": 1e-10,
        "dropout": 0.0,
        "attention_dropout": 0.0,
        "drop_path_rate": 0.0,
        "use_flash_attn": False,
    }


def _llm_config(llm: str, vocab_size: int, ids: dict[str, int]) -> dict:
    spec = LLMS[llm]
    common = {
        "vocab_size": vocab_size,
        "hidden_size": LLM_HIDDEN,
        "intermediate_size": LLM_MLP,
        "num_hidden_layers": LLM_LAYERS,
        "num_attention_heads": LLM_HEADS,
        "num_key_value_heads": LLM_KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
        "bos_token_id": ids.get(spec["bos"]) if spec["bos"] else ids[spec["pad"]],
        "eos_token_id": ids[spec["eos"]],
        "pad_token_id": ids[spec["pad"]],
        "torch_dtype": "float32",
    }
    if llm == "internlm2":
        return {
            "architectures": ["InternLM2ForCausalLM"],
            "model_type": "internlm2",
            "auto_map": {
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            },
            "bias": False,
            # InternLM2-chat-20b (V1.5's LLM) uses dynamic NTK scaling; it changes nothing below
            # max_position_embeddings, which the conversion must keep.
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
            "attn_implementation": "eager",
            **common,
        }
    if llm == "qwen3":
        return {
            "architectures": ["Qwen3ForCausalLM"],
            "model_type": "qwen3",
            "head_dim": QWEN3_HEAD_DIM,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "rope_scaling": None,
            **common,
        }
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": LLM_LAYERS,
        "rope_scaling": None,
        **common,
    }


def remote_config(llm: str, vocab_size: int, ids: dict[str, int]) -> dict:
    """The toy checkpoint's config.json, in the original InternVLChatConfig layout."""
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "vision_config": _vision_config(LLMS[llm]["vision"]),
        "llm_config": _llm_config(llm, vocab_size, ids),
        "template": LLMS[llm]["template"],
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": TILE_SIZE,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }


def weight_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Original parameter name -> shape for an `internvl_chat` config (vision, projector, language model)."""
    vision, llm = config["vision_config"], config["llm_config"]
    c, m = vision["hidden_size"], vision["intermediate_size"]
    patches = (vision["image_size"] // vision["patch_size"]) ** 2
    shapes: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (1, 1, c),
        "vision_model.embeddings.position_embedding": (1, patches + 1, c),
        "vision_model.embeddings.patch_embedding.weight": (c, 3, vision["patch_size"], vision["patch_size"]),
        "vision_model.embeddings.patch_embedding.bias": (c,),
    }
    layer_norm = vision["norm_type"] == "layer_norm"
    for i in range(vision["num_hidden_layers"]):
        p = f"vision_model.encoder.layers.{i}."
        shapes[p + "attn.qkv.weight"] = (3 * c, c)
        if vision["qkv_bias"]:
            shapes[p + "attn.qkv.bias"] = (3 * c,)
        if vision["qk_normalization"]:
            shapes[p + "attn.q_norm.weight"] = (c,)
            shapes[p + "attn.k_norm.weight"] = (c,)
        shapes |= {p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,)}
        shapes |= {p + "mlp.fc1.weight": (m, c), p + "mlp.fc1.bias": (m,)}
        shapes |= {p + "mlp.fc2.weight": (c, m), p + "mlp.fc2.bias": (c,)}
        for norm in ("norm1", "norm2"):
            shapes[p + norm + ".weight"] = (c,)
            if layer_norm:
                shapes[p + norm + ".bias"] = (c,)
        shapes |= {p + "ls1": (c,), p + "ls2": (c,)}
    shuffled = c * int(1 / config["downsample_ratio"]) ** 2
    h = llm["hidden_size"]
    shapes |= {
        "mlp1.0.weight": (shuffled,),
        "mlp1.0.bias": (shuffled,),
        "mlp1.1.weight": (h, shuffled),
        "mlp1.1.bias": (h,),
        "mlp1.3.weight": (h, h),
        "mlp1.3.bias": (h,),
    }
    return shapes | _llm_shapes(llm)


def _llm_shapes(llm: dict) -> dict[str, tuple[int, ...]]:
    h, f, v = llm["hidden_size"], llm["intermediate_size"], llm["vocab_size"]
    heads, kv = llm["num_attention_heads"], llm["num_key_value_heads"]
    d = llm.get("head_dim") or h // heads
    internlm2 = llm["architectures"][0] == "InternLM2ForCausalLM"
    qwen3 = llm["architectures"][0] == "Qwen3ForCausalLM"
    embed = "tok_embeddings" if internlm2 else "embed_tokens"
    shapes: dict[str, tuple[int, ...]] = {f"language_model.model.{embed}.weight": (v, h)}
    for i in range(llm["num_hidden_layers"]):
        p = f"language_model.model.layers.{i}."
        if internlm2:
            shapes |= {
                p + "attention.wqkv.weight": ((heads + 2 * kv) * d, h),
                p + "attention.wo.weight": (h, heads * d),
                p + "feed_forward.w1.weight": (f, h),
                p + "feed_forward.w3.weight": (f, h),
                p + "feed_forward.w2.weight": (h, f),
                p + "attention_norm.weight": (h,),
                p + "ffn_norm.weight": (h,),
            }
        else:  # Qwen2: biases on q/k/v; Qwen3: none, a norm on each query and key head instead
            for x, n in (("q", heads), ("k", kv), ("v", kv)):  # in this order: the seeded weights follow it
                shapes[f"{p}self_attn.{x}_proj.weight"] = (n * d, h)
                if not qwen3:
                    shapes[f"{p}self_attn.{x}_proj.bias"] = (n * d,)
            if qwen3:
                shapes |= {p + "self_attn.q_norm.weight": (d,), p + "self_attn.k_norm.weight": (d,)}
            shapes |= {
                p + "self_attn.o_proj.weight": (h, heads * d),
                p + "mlp.gate_proj.weight": (f, h),
                p + "mlp.up_proj.weight": (f, h),
                p + "mlp.down_proj.weight": (h, f),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
    head = "language_model.output.weight" if internlm2 else "language_model.lm_head.weight"
    return shapes | {"language_model.model.norm.weight": (h,), head: (v, h)}


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict:
    """Seeded random tensors: norm and layer-scale weights near 1 (so no signal dies), biases and
    matrices small, embeddings at unit scale (they carry the text)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "mlp1.0.weight", "ls1", "ls2")):
            weights[name] = 1.0 + 0.1 * noise
        elif name.endswith(("embedding", "tok_embeddings.weight", "embed_tokens.weight")):
            weights[name] = noise
        else:
            fan_in = shape[-1] if len(shape) > 1 else 64
            if len(shape) == 4:  # the patch convolution
                fan_in = shape[1] * shape[2] * shape[3]
            weights[name] = noise / fan_in**0.5
    return weights


def build_tokenizer(llm: str):
    """A fast tokenizer for the toy: the 600-token BPE, then the LLM's specials and InternVL's tokens;
    InternLM2's puts `<s>` before every text, as the original InternLM2Tokenizer does."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    from vlmkit.families.tiny import small_vocab_backend

    spec = LLMS[llm]
    backend = small_vocab_backend()
    backend.add_tokens([AddedToken(t, special=True, normalized=False) for t in spec["specials"] + INTERNVL_TOKENS])
    if spec["bos"]:
        bos = spec["bos"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        unk_token="<unk>" if "<unk>" in spec["specials"] else None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_remote(output_dir: str | Path, llm: str = "internlm2", seed: int = 0) -> Path:
    """Write a tiny random checkpoint in OpenGVLab's original layout to `output_dir`; returns it."""
    from safetensors.torch import save_file

    if llm not in LLMS:
        raise VlmkitError(f"--llm {llm}: the toy InternVL original layout has {', '.join(LLMS)}")
    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise VlmkitError(f"{output_dir} exists and is not empty; choose a new folder")
    tokenizer = build_tokenizer(llm)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLMS[llm]["specials"] + INTERNVL_TOKENS}
    config = remote_config(llm, len(tokenizer), ids)
    weights = random_weights(weight_shapes(config), seed)

    # Write into a sibling temp folder and rename, so an interrupted build never leaves a half model.
    tmp = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}-{time.time_ns()}")
    tmp.mkdir(parents=True)
    save_file(weights, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"eos_token_id": config["llm_config"]["eos_token_id"], "do_sample": False}
    (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    tokenizer.save_pretrained(tmp)
    # transformers 4.x (what the remote code runs on) knows the fast tokenizer by this class name only.
    tokenizer_config = json.loads((tmp / "tokenizer_config.json").read_text())
    tokenizer_config.pop("backend", None)
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    if output_dir.exists():
        output_dir.rmdir()
    tmp.rename(output_dir)
    return output_dir


def use_bpe_files(folder: str | Path) -> None:
    """Replace a toy Qwen2 checkpoint's tokenizer.json with the files InternVL2-1B / InternVL2.5-1B ship instead:
    vocab.json and merges.txt (the BPE), tokenizer_config.json naming `Qwen2Tokenizer` with the added tokens."""
    folder = Path(folder)
    saved = json.loads((folder / "tokenizer.json").read_text())
    (folder / "vocab.json").write_text(json.dumps(saved["model"]["vocab"], ensure_ascii=False) + "\n")
    merges = [m if isinstance(m, str) else " ".join(m) for m in saved["model"]["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config = {
        "added_tokens_decoder": {str(t["id"]): {"content": t["content"]} | flags for t in saved["added_tokens"]},
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": config["eos_token"],
        "errors": "replace",
        "model_max_length": config["model_max_length"],
        "pad_token": config["pad_token"],
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "tokenizer.json").unlink()
