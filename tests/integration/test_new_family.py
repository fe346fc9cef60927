"""docs/adding-a-family.md followed once: a non-Qwen family (VipLLaVA, transformers'
`VipLlavaForConditionalGeneration`) that lives only in its folder (tests/toy_families/vipllava/) plus one
registry line (added here by a fixture), through tiny-model building, encode, collate, a training
forward, `vlmkit.load` and generation, and the CLI's `data preview` and `infer`."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_image
from toy_families.vipllava import FAMILY
from transformers import AutoTokenizer
from typer.testing import CliRunner

import vlmkit
from vlmkit.families import FAMILIES, family_by_name
from vlmkit.families.interface import Template
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample


@pytest.fixture
def vipllava(monkeypatch):
    """The registry line: `FAMILIES[model_type] = FAMILY`, for this test only."""
    monkeypatch.setitem(FAMILIES, FAMILY.model_type, FAMILY)
    return FAMILY


@pytest.fixture
def model_dir(vipllava, tmp_path):
    return build_tiny_model(vipllava, tmp_path / "vipllava", small_vocab=True)


def _row(image, reply: str | None = "It is red.") -> dict:
    messages = [{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": "What is it?"}]}]
    if reply is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
    return {"messages": messages}


def test_a_new_family_encodes_collates_trains_and_generates(model_dir, tmp_path):
    random_image(40, 60).save(tmp_path / "a.png")
    assert family_by_name("vipllava") is FAMILY
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = FAMILY.load_template(model_dir, tokenizer)
    assert isinstance(template, Template)

    sample = to_sample(_row(tmp_path / "a.png"))
    # The family's own rendering is the checkpoint's chat template, character for character.
    assert template.render_text(sample) == tokenizer.apply_chat_template(sample.messages, tokenize=False)
    encoded = template.encode(sample)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert (ids == template.image_token_id).sum() == 4  # 28 px / 14 px patches: 2 x 2 tokens
    assert encoded["pixel_values"].shape == (1, 3, 28, 28)
    assert tokenizer.decode(labels[labels != -100]) == " It is red.</s>"  # only the reply is supervised
    assert template.count_tokens(sample) == len(ids)

    short = template.encode(to_sample(_row(tmp_path / "a.png", reply=None)), add_generation_prompt=True)
    batch = template.collate([encoded, short], padding_side="left")
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, len(ids))
    assert batch["pixel_values"].shape == (2, 3, 28, 28)
    assert batch["attention_mask"][1].tolist() == [0] * (len(ids) - len(short["input_ids"])) + [1] * len(short["input_ids"])

    vlm = vlmkit.load(str(model_dir))
    assert vlm.family is FAMILY
    train = template.collate([encoded])
    loss = vlm.model(**vlm.on_device(train)).loss
    assert torch.isfinite(loss) and loss > 0
    replies = vlm.generate([_row(tmp_path / "a.png", reply=None)] * 2, max_new_tokens=3)
    assert len(replies) == 2 and replies[0] == replies[1]  # greedy: the same prompt, the same reply


def test_a_new_family_through_the_cli(model_dir, tmp_path):
    from vlmkit.cli import app

    random_image(40, 60).save(tmp_path / "a.png")
    (tmp_path / "d.json").write_text(json.dumps([_row("a.png")]))
    runner = CliRunner()
    preview = runner.invoke(app, ["data", "preview", "--model", str(model_dir), "--dataset", str(tmp_path / "d.json")])
    assert preview.exit_code == 0, preview.output
    assert "<image>×4 [image 1: 60×40 resized to 28×28, 4 tokens]" in preview.output
    output = tmp_path / "preds.jsonl"
    infer = runner.invoke(
        app, ["infer", "--model", str(model_dir), "--input", str(tmp_path / "d.json"), "--output", str(output), "--max-new-tokens", "4"]
    )
    assert infer.exit_code == 0, infer.output
    [prediction] = [json.loads(line) for line in output.read_text().splitlines()]
    assert isinstance(prediction["response"], str)
    refused = runner.invoke(
        app, ["infer", "--model", str(model_dir), "--input", str(tmp_path / "d.json"), "--max-pixels", "50000"]
    )
    assert "--max-pixels does not apply to vipllava models" in str(refused.exception)  # exit 2 under `vlmkit`


def test_a_qwen_shaped_family_qwen3_vl_moe_trains_exports_and_answers_through_the_cli(tmp_path):
    """docs/adding-a-family.md followed for a real Qwen-shaped family: Qwen3-VL MoE is its folder
    (src/vlmkit/families/qwen3_vl_moe/: the Qwen3-VL record with its model type and toy config) plus its
    registry line. `vlmkit sft` with LoRA trains it (the experts are fused parameters, so the adapter is on
    the attention projections), and the merged export answers as the checkpoint does."""
    from safetensors.torch import load_file

    from vlmkit.cli import app

    family = family_by_name("qwen3-vl-moe")
    assert family.model_type == "qwen3_vl_moe" and family_by_name("qwen3-vl").model_type == "qwen3_vl"
    model = build_tiny_model(family, tmp_path / "moe", small_vocab=True)
    assert json.loads((model / "config.json").read_text())["text_config"]["num_local_experts"] == 4
    random_image(40, 60).save(tmp_path / "a.png")
    row = {"messages": [{"role": "user", "content": "<image>What colour?"},
                        {"role": "assistant", "content": "红色。\nA red square."}], "images": ["a.png"]}  # fmt: skip
    (tmp_path / "d.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    runner = CliRunner()
    trained = runner.invoke(app, ["sft", "--model", str(model), "--dataset", str(tmp_path / "d.jsonl"),
                                  "--output-dir", str(tmp_path / "run"), "--max-steps", "3", "--lr", "0.05",
                                  "--warmup-ratio", "0", "--save-steps", "3", "--no-progress"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    [checkpoint] = list((tmp_path / "run").glob("*/v0-*/checkpoint-3"))
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert adapter and all("self_attn" in name for name in adapter)  # attention projections, no experts
    assert max(float(v.abs().max()) for name, v in adapter.items() if "lora_B" in name) > 0  # it learned
    exported = runner.invoke(app, ["export", "--ckpt", str(checkpoint), "--output", str(tmp_path / "merged"),
                                   "--merge-lora"])  # fmt: skip
    assert exported.exit_code == 0, exported.output
    output = tmp_path / "out.jsonl"
    answered = runner.invoke(app, ["infer", "--model", str(tmp_path / "merged"), "--input",
                                   str(tmp_path / "d.jsonl"), "--output", str(output), "--max-new-tokens", "6"])  # fmt: skip
    assert answered.exit_code == 0, answered.output
    assert "response" in json.loads(output.read_text())
    # the merged export is the base model plus the adapter: the same logits on the training row
    tuned, merged = vlmkit.load(ckpt=str(checkpoint), dtype="fp32"), vlmkit.load(str(tmp_path / "merged"), dtype="fp32")
    batch = merged.template.collate([merged.encode(to_sample(row, base_dirs=(tmp_path,)))])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(merged.model(**batch).logits, tuned.model(**batch).logits, atol=1e-4, rtol=1e-4)
        base = vlmkit.load(str(model), dtype="fp32").model(**batch).logits
    assert not torch.allclose(base, merged.model(**batch).logits, atol=1e-4)  # the training changed the model
