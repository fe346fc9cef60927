"""GLM-4.6V (`glm46v`) and GLM-4.5V (`glm4v_moe`, a tiny MoE) against transformers' own `Glm46VProcessor` /
`Glm4vProcessor` (PIL image processors; no video processor: it needs torchvision) with the family's chat template,
as users call it: `processor.apply_chat_template(..., tokenize=True)`. Ids, pixels, grids and modality ids are
bit-exact for GLM-4.1V's rows (a system prompt, several images over turns with an earlier reply's reasoning
dropped, CJK text, a tiny image); the training labels are each reply with its think block and the `<|user|>` that
ends it; grounding writes GLM's 0-1000 boxes."""

from __future__ import annotations

import hashlib
import json

import pytest
from conftest import random_image
from test_glm4v import ROWS, assert_same, processor_inputs
from transformers import AutoImageProcessor, AutoTokenizer, Glm4vProcessor, Glm46VProcessor

import vlmkit
from vlmkit.errors import DataError
from vlmkit.families import family_by_name, family_for_model_dir
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample

PROCESSORS = {"glm46v": Glm46VProcessor, "glm4v-moe": Glm4vProcessor}


@pytest.fixture(scope="module", params=list(PROCESSORS))
def glm(request, tmp_path_factory):
    """(tiny model folder, transformers' processor of it, `vlmkit.load` of it) for each model type."""
    folder = build_tiny_model(
        family_by_name(request.param), tmp_path_factory.mktemp("glm") / "m", small_vocab=True
    )

    class ImagesOnly(PROCESSORS[request.param]):
        def check_argument_for_proper_class(self, argument_name, argument):
            return None  # no video processor: transformers' needs torchvision

    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = ImagesOnly(
        image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
        video_processor=None, chat_template=tokenizer.chat_template,
    )  # fmt: skip
    return folder, processor, vlmkit.load(str(folder))


def test_chat_template_is_glm_ocrs_as_published():
    """GLM-OCR's template (the GLM-4.5V/4.6V format), recorded by the sha256 of its JSON string."""
    text = (family_by_name("glm46v").folder / "chat_template.jinja").read_text()
    assert hashlib.sha256(json.dumps(text).encode()).hexdigest().startswith("371c91c8ce94d20e")


def test_both_model_types_are_curated(glm):
    folder, _, vlm = glm
    family = family_for_model_dir(folder)
    assert family.box_format is not None and family.verified
    if family.model_type == "glm4v_moe":  # the tiny MoE is one: routed and shared experts
        assert any("mlp.experts" in name for name, _ in vlm.model.named_parameters())


@pytest.mark.parametrize("name", ROWS)
def test_prompt_encodes_as_the_processor(glm, name):
    _, processor, vlm = glm
    batch = vlm.template.collate([vlm.encode(to_sample(ROWS[name]))], padding_side="left")
    assert_same(batch, processor_inputs(processor, ROWS[name]))


def test_labels_are_the_think_block_reply_and_the_user_token(glm):
    _, processor, vlm = glm
    row = {
        "messages": [
            {"role": "system", "content": "多行\n系统。"},
            {"role": "user", "content": "<image>第一?"},
            {"role": "assistant", "content": "<think>旧的推理</think>一。"},
            {"role": "user", "content": "第二?"},
            {"role": "assistant", "content": "<think>\n想一想\n</think>\n\n 二,\n三。 "},
        ],
        "images": [random_image(56, 84, 7)],
    }
    ours = vlm.template.encode(to_sample(row))
    ids, labels = ours["input_ids"].tolist(), ours["labels"].tolist()
    theirs = processor_inputs(processor, row, add_generation_prompt=False)["input_ids"][0].tolist()
    assert ids == theirs + vlm.tokenizer.convert_tokens_to_ids(["<|user|>"])  # the stop the model learns
    spans, span = [], []
    for token, label in zip(ids, labels, strict=True):
        if label != -100:
            span.append(token)
        elif span:
            spans, span = [*spans, span], []
    spans.append(span)
    # the earlier reply loses its reasoning (as the template writes it); the last keeps it, stripped
    assert [vlm.tokenizer.decode(s) for s in spans] == [
        "<think></think>\n一。<|user|>",
        "<think>想一想</think>\n二,\n三。<|user|>",
    ]
    prompt = vlm.template.encode(
        to_sample({"messages": row["messages"][:4], "images": row["images"]}), add_generation_prompt=True
    )
    assert vlm.tokenizer.decode(prompt["input_ids"]).endswith(
        "第二?<|assistant|>\n"
    )  # where the model writes its think block


def test_grounding_writes_glm_boxes_on_the_1000_grid(glm):
    _, _, vlm = glm
    row = {
        "messages": [
            {"role": "user", "content": "<image>Find <ref-object>"},
            {"role": "assistant", "content": "<bbox>"},
        ],
        "images": [random_image(480, 640, 4)],
        "objects": {"ref": ["guy in red"], "bbox": [[138, 136, 235, 359]]},
    }
    text = vlm.tokenizer.decode(vlm.template.encode(to_sample(row))["input_ids"])
    assert (
        "Find guy in red<|assistant|>\n<think></think>\n<|begin_of_box|>[216,283,367,748]<|end_of_box|><|user|>"
        in text
    )


def test_video_and_tools_are_refused_in_one_line(glm):
    _, _, vlm = glm
    with pytest.raises(DataError, match=r"GLM-4.5V/4.6V in vlmkit takes images only"):
        vlm.template.encode(
            to_sample({"messages": [{"role": "user", "content": "<video>Hi"}], "videos": ["a.mp4"]})
        )
    tool_row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}]}
    with pytest.raises(DataError, match="has no 'tool' role"):
        vlm.template.encode(to_sample(tool_row))
