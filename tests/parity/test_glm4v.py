"""GLM-4.1V against transformers' own `Glm4vProcessor` (its PIL image processor; no video processor: it needs
torchvision) with the checkpoint's chat template, as users call it: `processor.apply_chat_template(...,
tokenize=True)`. Ids, pixels, grids and modality ids are bit-exact for one image with a system prompt, several
images over turns, CJK text only, wide and tall images, and at a run's pixel limits; the training labels are
each reply and the `<|user|>` that ends it. Grounding writes GLM's 0-1000 box text. (`test_families.py` runs
the checks every family gets: collate, batched generation.)"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from conftest import random_image
from transformers import AutoImageProcessor, AutoTokenizer, Glm4vProcessor

import vlmkit
from vlmkit.errors import DataError
from vlmkit.families import family_by_name
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample

WIDE, TALL = random_image(300, 1000, 1), random_image(700, 200, 2)
ROWS = {
    "one image": {
        "messages": [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "<image>  What is it? "}],
        "images": [random_image(60, 90, 3)],
    },
    "several images": {
        "messages": [
            {"role": "user", "content": "Compare <image> and <image>."},
            {"role": "assistant", "content": "<think>Sizes.</think><answer>The first is larger.</answer>"},
            {"role": "user", "content": "And this one?<image>"},
        ],
        "images": [random_image(40, 40, 4), WIDE, TALL],
    },
    "text only": {
        "messages": [
            {"role": "system", "content": " Keep spaces. "},
            {"role": "user", "content": "你好,\n世界?"},
            {"role": "assistant", "content": "多行\n回答。"},
            {"role": "user", "content": "Again."},
        ]
    },
    "tiny image": {"messages": [{"role": "user", "content": "<image>Read it."}], "images": [random_image(12, 50, 5)]},
}


class ImagesOnly(Glm4vProcessor):
    def check_argument_for_proper_class(self, argument_name, argument):
        return None  # no video processor: transformers' needs torchvision


@pytest.fixture(scope="module")
def glm(tmp_path_factory):
    """(tiny GLM-4.1V folder, transformers' processor of it, `vlmkit.load` of it)."""
    folder = build_tiny_model(family_by_name("glm4v"), tmp_path_factory.mktemp("glm4v") / "m", small_vocab=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    processor = ImagesOnly(
        image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
        video_processor=None, chat_template=tokenizer.chat_template,
    )  # fmt: skip
    return folder, processor, vlmkit.load(str(folder))


def template_messages(row: dict) -> list[dict]:
    """The row as the checkpoint's template takes it: system and assistant content as strings (the template
    prints them whole; a list would be written as its Python repr)."""
    messages = to_sample(row).messages
    for m in messages:
        if m["role"] != "user":
            m["content"] = "".join(part["text"] for part in m["content"])
    return messages


def processor_inputs(processor, row: dict, add_generation_prompt: bool = True, **images_kwargs) -> dict:
    out = processor.apply_chat_template(
        template_messages(row), add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True,
        return_tensors="pt", processor_kwargs=images_kwargs,
    )  # fmt: skip
    return dict(out)


def assert_same(ours: dict, theirs: dict) -> None:
    assert set(theirs) == {"input_ids", "attention_mask", "mm_token_type_ids"} | (
        {"pixel_values", "image_grid_thw"} & set(theirs)
    )
    for key, expected in theirs.items():
        if expected.is_floating_point():
            assert torch.equal(ours[key], expected), key
        else:
            assert ours[key].tolist() == expected.tolist(), key


def test_chat_template_is_the_checkpoints_own():
    """GLM-4.1V-9B-Thinking's template (revision 3c1471e5), recorded by its sha256 as a JSON string."""
    text = (family_by_name("glm4v").folder / "chat_template.jinja").read_text()
    assert hashlib.sha256(json.dumps(text).encode()).hexdigest().startswith("5232dbe7ee947df4")


@pytest.mark.parametrize("name", ROWS)
def test_prompt_encodes_as_the_processor(glm, name):
    _, processor, vlm = glm
    batch = vlm.template.collate([vlm.encode(to_sample(ROWS[name]))], padding_side="left")
    assert_same(batch, processor_inputs(processor, ROWS[name]))


def test_pixel_limits_encode_as_the_processor_size(glm, tmp_path):
    """`--min-pixels/--max-pixels` are the image processor's size (which bounds 2 x height x width)."""
    folder, processor, _ = glm
    limits = {"min_pixels": 28 * 28 * 2, "max_pixels": 28 * 28 * 2 * 6}
    vlm = vlmkit.load(str(folder), **limits)
    row = ROWS["several images"]
    ours = vlm.template.collate([vlm.encode(to_sample(row))], padding_side="left")
    size = {"shortest_edge": limits["min_pixels"], "longest_edge": limits["max_pixels"]}
    theirs = processor_inputs(processor, row, size=size)
    assert_same(ours, theirs)
    assert (theirs["image_grid_thw"].prod(dim=1) * 14 * 14 * 2 <= limits["max_pixels"]).all()


def test_labels_are_each_reply_and_the_user_token_that_ends_it(glm):
    _, processor, vlm = glm
    row = ROWS["text only"]
    encoded = vlm.template.encode(to_sample(row))
    text = processor.apply_chat_template(template_messages(row), tokenize=False)
    ids = encoded["input_ids"].tolist()
    # the template's text, token for token, then the last turn's <|user|>... (a row ending in a user turn:
    # its reply is the one before it)
    assert ids == processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    supervised = [i for i, label in zip(ids, encoded["labels"].tolist(), strict=True) if label != -100]
    assert vlm.tokenizer.decode(supervised) == "多行\n回答。<|user|>"
    reply_row = {"messages": [*row["messages"][:2], {"role": "assistant", "content": "好。"}]}
    encoded = vlm.template.encode(to_sample(reply_row))
    text = processor.apply_chat_template(template_messages(reply_row), tokenize=False)
    assert vlm.tokenizer.decode(encoded["input_ids"]) == text + "<|user|>"  # the stop the model learns


def test_grounding_writes_glm_boxes_on_the_1000_grid(glm):
    _, _, vlm = glm
    row = {
        "messages": [{"role": "user", "content": "<image>Find <ref-object>"}, {"role": "assistant", "content": "<bbox>"}],
        "images": [random_image(480, 640, 4)],
        "objects": {"ref": ["guy in red"], "bbox": [[138, 136, 235, 359]]},
    }
    text = vlm.tokenizer.decode(vlm.template.encode(to_sample(row))["input_ids"])
    assert "Find guy in red<|assistant|>\n<|begin_of_box|>[216,283,367,748]<|end_of_box|><|user|>" in text
    assert vlm.template.box_format.parse("It is <|begin_of_box|>[[216, 283, 367, 748]]<|end_of_box|>.") == [
        (None, [216.0, 283.0, 367.0, 748.0])
    ]


def test_video_is_refused_in_one_line(glm, tmp_path):
    _, _, vlm = glm
    with pytest.raises(DataError, match="GLM-4.1V in vlmkit takes images only"):
        vlm.template.encode(to_sample({"messages": [{"role": "user", "content": "<video>Hi"}], "videos": ["a.mp4"]}))
