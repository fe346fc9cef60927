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
from vlmkit.sample import to_sample
from vlmkit.tiny import build_tiny_model


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
