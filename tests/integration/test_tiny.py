"""`vlmkit tiny-model`: folders that plain transformers loads, with the real special-token ids."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import FAMILY_NAMES
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

from vlmkit.errors import VlmkitError
from vlmkit.families import family_by_name, original_layout, tiny_model_names
from vlmkit.families.tiny import build_tiny_model

# Ids of the real checkpoints' tokenizers (Qwen2-VL-7B-Instruct, Qwen2.5-VL-7B-Instruct, Qwen3-VL-8B-Instruct).
REAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|box_start|>": 151648,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}
LATER_IDS = {
    "qwen2.5-vl": {"<tool_call>": 151657, "<|file_sep|>": 151664},
    "qwen3-vl": {"<tool_call>": 151657, "<tool_response>": 151665, "<think>": 151667, "</think>": 151668},
}


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_tiny_model_loads_with_plain_transformers(tiny_models, name):
    path = tiny_models[name]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoImageProcessor.from_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == family_by_name(name).model_type
    for token, token_id in {**REAL_IDS, **LATER_IDS.get(name, {})}.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
    assert tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]  # Qwen2's real ids
    assert tokenizer.decode([151644, 9707, 151645]) == "<|im_start|>Hello<|im_end|>"
    assert model.config.image_token_id == 151655
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert processor.patch_size == family_by_name(name).preprocessor_config["patch_size"]
    assert sum(p.numel() for p in model.parameters()) < 25_000_000  # embeddings dominate; the rest is tiny


def test_small_vocab_model_is_small_and_keeps_special_tokens(small_model):
    tokenizer = AutoTokenizer.from_pretrained(small_model)
    model = AutoModelForImageTextToText.from_pretrained(small_model)
    assert len(tokenizer) < 700
    assert sum(p.numel() for p in model.parameters()) < 400_000
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.image_token_id == image_pad
    assert (
        tokenizer.decode(tokenizer("What color is the square?")["input_ids"]) == "What color is the square?"
    )


def test_tiny_model_cli_and_refusals(tmp_path):
    out = tmp_path / "m"
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", "tiny-model", "qwen2.5-vl", str(out), "--small-vocab"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "vlmkit", "tiny-model", "qwen2.5-vl", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: {out} exists and is not empty; choose a new folder"
    with pytest.raises(
        VlmkitError, match="unknown model family 'gpt-4v'; known families: qwen2-vl, qwen2.5-vl, qwen3-vl"
    ):
        build_tiny_model(family_by_name("gpt-4v"), tmp_path / "x")


def test_family_names_as_users_write_them():
    for written in ("qwen2-vl", "Qwen2-VL", "qwen2_vl"):
        assert family_by_name(written).model_type == "qwen2_vl"
    for written in ("qwen2.5-vl", "Qwen2.5-VL", "qwen2_5_vl"):
        assert family_by_name(written).model_type == "qwen2_5_vl"
    assert family_by_name("qwen3-vl").model_type == "qwen3_vl"


def test_tiny_model_refusals_list_exactly_what_it_builds(tmp_path):
    """The list comes from the registry: families vlmkit builds offline and the original layouts; never a
    remote-code family it refuses."""
    builds = ("tiny-model builds: qwen2-vl, qwen2.5-vl, qwen3-vl, internvl, llava, llava-next, qwen-vl, "
              "qwen3-vl-moe, qwen3.5, qwen3.5-moe, gemma3, gemma4, glm4v, glm46v, glm4v-moe, llava-onevision, internvl-remote, internvl2-remote")  # fmt: skip
    expected = {
        "gpt-4v": f"error: unknown model family 'gpt-4v'; {builds}",
        "qwen-vl-remote": "error: qwen-vl-remote has no tiny model (its model is remote code shipped with the "
        f"checkpoints); {builds}",
    }
    for family, line in expected.items():
        done = subprocess.run(
            [sys.executable, "-m", "vlmkit", "tiny-model", family, str(tmp_path / family)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2 and done.stderr.strip() == line, done.stderr
        assert not (tmp_path / family).exists()


def _text_head_size(config: dict) -> int:
    """The language model's attention head size, as vLLM computes it (head_dim, else hidden / heads)."""
    text = config.get("text_config", config)
    return text.get("head_dim") or text.get("kv_channels") or text["hidden_size"] // text["num_attention_heads"]


@pytest.mark.parametrize("name", [n for n in tiny_model_names() if original_layout(n) is None])
def test_every_tiny_model_has_a_head_size_vllm_runs(tmp_path, name):
    """vLLM's CPU attention refuses head sizes under 32 (issue 25 #6), so a tiny model of every family keeps
    hidden 64 but with 2 heads of 32 (1 KV head, mRoPE [8, 4, 4]); tests/vllm_real runs them on real vLLM."""
    family = family_by_name(name)
    small = family.write_tiny_model is None  # the families that build from a config take the fast vocabulary
    path = build_tiny_model(family, tmp_path / "m", small_vocab=small)
    config = json.loads((path / "config.json").read_text())
    assert _text_head_size(config) >= 32
    text = config.get("text_config", config)
    rope = text.get("rope_parameters") or {}
    if rope.get("mrope_section") is not None:  # the sections cover the rotated half of each head
        rotated = int(_text_head_size(config) * rope.get("partial_rotary_factor", 1.0))
        assert sum(rope["mrope_section"]) == rotated // 2
