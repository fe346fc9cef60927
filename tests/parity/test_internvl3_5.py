"""InternVL3.5 through the existing `internvl` family (issue 22's check), in both layouts it ships in:

- `-HF` (OpenGVLab/InternVL3_5-*-HF: model_type internvl, a Qwen3 text model whose heads are not hidden / heads
  wide): the checks every family gets (`test_families.py`) on a tiny model of that shape: prompts encode as
  transformers' `InternVLProcessor`, training rows supervise the reply, greedy replies equal `generate`;
- the original layout (OpenGVLab/InternVL3_5-*: InternVLChatModel with a Qwen3ForCausalLM, template
  internvl2_5): `vlmkit convert` turns it into the -HF layout, and the converted language model computes what
  the original's (a plain transformers Qwen3ForCausalLM with its weights) computes.

Not checked (nothing downloadable here): the -HF chat template's bytes (the family's InternVL3 one is used) and
Qwen3's real token ids."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from test_families import PROMPTS, REPLY, assert_same_inputs, processor_inputs
from transformers import AutoConfig, Qwen3ForCausalLM

import vlmkit
from vlmkit.families import family_by_name
from vlmkit.families.internvl import tiny_config as internvl3_tiny_config
from vlmkit.families.internvl.convert import convert_checkpoint
from vlmkit.families.internvl.remote import build_tiny_remote
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample


def qwen3_tiny_config(vocab_size: int, ids: dict[str, int]) -> dict:
    """InternVL3's toy with InternVL3.5's text model: Qwen3, 4 heads of 32 on hidden 64, q/k norms."""
    config = internvl3_tiny_config(vocab_size, ids)
    text = {k: v for k, v in config["text_config"].items() if k not in ("sliding_window", "use_sliding_window")}
    config["text_config"] = text | {"model_type": "qwen3", "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}
    return config


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    family = dataclasses.replace(family_by_name("internvl"), tiny_config=qwen3_tiny_config)
    folder = build_tiny_model(family, tmp_path_factory.mktemp("internvl3_5") / "InternVL3_5-HF", small_vocab=True)
    assert AutoConfig.from_pretrained(folder).text_config.model_type == "qwen3"
    return folder, vlmkit.load(str(folder))


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
def test_hf_layout_prompts_encode_as_the_processor(hf, prompt):
    folder, vlm = hf
    batch = vlm.template.collate([vlm.encode(to_sample(PROMPTS[prompt]))], padding_side="left")
    batch.pop("labels")
    assert_same_inputs(batch, processor_inputs("internvl", folder, PROMPTS[prompt]))


@pytest.mark.slow
def test_hf_layout_trains_on_the_reply_and_generates_as_transformers(hf):
    folder, vlm = hf
    row = to_sample({**PROMPTS[0], "messages": [*PROMPTS[0]["messages"], {"role": "assistant", "content": REPLY}]})
    encoded = vlm.template.encode(row)
    supervised = [i for i, label in zip(encoded["input_ids"].tolist(), encoded["labels"].tolist(), strict=True) if label != -100]
    assert vlm.tokenizer.decode(supervised[:-1]) == REPLY and supervised[-1] in vlm.template.stop_token_ids
    loss = vlm.model(**vlm.on_device(vlm.template.collate([encoded]))).loss
    assert torch.isfinite(loss)
    replies = vlm.generate(PROMPTS, max_new_tokens=5)
    for row, reply in zip(PROMPTS, replies, strict=True):
        inputs = processor_inputs("internvl", folder, row)
        with torch.no_grad():
            out = vlm.model.generate(**inputs, max_new_tokens=5, do_sample=False)
        assert reply == vlm.decode(out[0, inputs["input_ids"].shape[1] :].tolist())


def test_original_layout_with_qwen3_converts_to_the_same_language_model(tmp_path):
    original = build_tiny_remote(tmp_path / "InternVL3_5-1B", llm="qwen3")
    converted = convert_checkpoint(original, tmp_path / "converted")
    vlm = vlmkit.load(str(converted))
    assert vlm.model.config.text_config.model_type == "qwen3" and vlm.model.config.text_config.head_dim == 32
    # the original's language model as its remote code builds it: a transformers Qwen3ForCausalLM
    import json

    llm_config = json.loads((original / "config.json").read_text())["llm_config"]
    reference = Qwen3ForCausalLM(AutoConfig.for_model(**{**llm_config, "architectures": None}))
    weights = {k.removeprefix("language_model."): v for k, v in load_file(original / "model.safetensors").items()
               if k.startswith("language_model.")}  # fmt: skip
    missing, unexpected = reference.load_state_dict(weights, strict=False)
    assert not missing and not unexpected
    ids = vlm.encode(to_sample({"messages": [{"role": "user", "content": "What is in the picture?"}]}))["input_ids"][None]
    with torch.no_grad():
        ours = vlm.model(input_ids=ids).logits
        theirs = reference.eval()(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert vlm.generate([PROMPTS[0]], max_new_tokens=3)[0]  # the converted folder encodes images and generates
