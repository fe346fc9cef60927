"""LLaVA-OneVision against transformers' own `LlavaOnevisionProcessor` (its PIL image processor; no video processor:
it needs torchvision) with the checkpoints' chat template, as users call it: `processor.apply_chat_template(...,
tokenize=True)`. Ids, pixels, image sizes and `batch_num_images` are bit-exact for one image with a system prompt,
one image large enough that the model pools its tile grid (anyres_max_9), a tall one, a tiny one, several images
(one padded crop each) and CJK text; a prompt with past replies differs only where vlmkit writes a reply's header as
the template's generation prompt. Labels are each reply and its `<|im_end|>`. (`test_families.py` runs the checks
every family gets: collate, batched generation.)"""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from conftest import random_image
from transformers import AutoImageProcessor, AutoTokenizer, LlavaOnevisionProcessor

import vlmkit
from vlmkit.errors import DataError, VlmkitError
from vlmkit.families import family_by_name
from vlmkit.families.llava_onevision import PROCESSOR_CONFIG
from vlmkit.sample import to_sample

ROWS = {
    "one image": {
        "messages": [{"role": "system", "content": "Answer in one line."}, {"role": "user", "content": "<image>  What is it? "}],
        "images": [random_image(300, 500, 1)],
    },
    "pooled grid": {"messages": [{"role": "user", "content": "<image>Read it."}], "images": [random_image(1100, 1500, 2)]},
    "tall": {"messages": [{"role": "user", "content": "What is this?<image>"}], "images": [random_image(1900, 300, 3)]},
    "tiny image": {"messages": [{"role": "user", "content": "<image>小吗?"}], "images": [random_image(12, 50, 4)]},
    "several images": {
        "messages": [{"role": "user", "content": "Compare <image> and <image>.\nBriefly."}],
        "images": [random_image(40, 90, 5), random_image(300, 100, 6)],
    },
    "text only": {"messages": [{"role": "system", "content": " Keep spaces. "}, {"role": "user", "content": "你好,\n世界?"}]},
}
HISTORY = {
    "messages": [
        {"role": "user", "content": "Compare <image> and <image>."},
        {"role": "assistant", "content": "多行\n回答。"},
        {"role": "user", "content": "And this one?<image>"},
    ],
    "images": [random_image(40, 40, 7), random_image(90, 60, 8), random_image(64, 64, 9)],
}


class ImagesOnly(LlavaOnevisionProcessor):
    def check_argument_for_proper_class(self, argument_name, argument):
        return None  # no video processor: transformers' needs torchvision


@pytest.fixture(scope="module")
def ov(tiny_models):
    """(tiny LLaVA-OneVision folder with the real Qwen2 vocabulary, transformers' processor of it, `vlmkit.load`)."""
    folder = tiny_models["llava-onevision"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = {k: v for k, v in PROCESSOR_CONFIG.items() if k != "processor_class"}
    processor = ImagesOnly(
        image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer, video_processor=None,
        chat_template=tokenizer.chat_template, **settings,
    )  # fmt: skip
    return folder, processor, vlmkit.load(str(folder))


def assert_same(ours: dict, theirs: dict) -> None:
    assert set(theirs) == {"input_ids", "attention_mask"} | ({"pixel_values", "image_sizes", "batch_num_images"} & set(theirs))
    for key, expected in theirs.items():
        if expected.is_floating_point():
            assert torch.equal(ours[key], expected), key
        else:
            assert ours[key].tolist() == expected.tolist(), key


def test_chat_template_is_the_checkpoints_own():
    """The llava-hf checkpoints' template as transformers' processor tests carry it (its prompt is the model card's
    `<|im_start|>user <image>\\n...<|im_end|><|im_start|>assistant\\n`), recorded by its sha256 as a JSON string."""
    text = (family_by_name("llava-onevision").folder / "chat_template.jinja").read_text()
    assert hashlib.sha256(json.dumps(text).encode()).hexdigest().startswith("4df3f04cff10f292")


@pytest.mark.parametrize("name", ROWS)
def test_prompt_encodes_as_the_processor(ov, name):
    _, processor, vlm = ov
    sample = to_sample(ROWS[name])
    ours = vlm.template.collate([vlm.encode(sample)], padding_side="left")
    theirs = processor.apply_chat_template(
        sample.messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert_same(ours, dict(theirs))


def test_the_ids_are_the_real_checkpoints(ov):
    _, _, vlm = ov
    ids = vlm.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<image>", "<video>"])
    assert ids == [151645, 151646, 151647] and vlm.template.stop_token_ids == [151645]
    assert vlm.tokenizer("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]


def test_a_large_image_is_pooled_and_several_images_are_one_crop_each(ov):
    _, _, vlm = ov
    image_token = vlm.template.image_token_id
    pooled = vlm.encode(to_sample(ROWS["pooled grid"]))
    assert pooled["pixel_values"].shape[1] == 1 + 3 * 4  # base + a 3x4 grid of 384 px tiles
    # 27x27 base features + the 81x108 tile grid unpadded to 79x108, pooled by sqrt(79*108 / (9*27^2)) = 1.14 to
    # 69x94, + a newline per row
    assert (pooled["input_ids"] == image_token).sum() == 729 + 69 * 94 + 69
    several = vlm.encode(to_sample(ROWS["several images"]))
    assert several["pixel_values"].shape[:2] == (2, 1)
    assert (several["input_ids"] == image_token).sum() == 2 * (729 + 1)


def test_past_replies_follow_the_generation_prompt(ov):
    """The template writes a past reply after `<|im_start|>assistant ` but prompts with `<|im_start|>assistant\\n`:
    vlmkit writes it after the generation prompt; everything else is the processor's."""
    _, processor, vlm = ov
    sample = to_sample(HISTORY)
    ours = vlm.template.collate([vlm.encode(sample)], padding_side="left")
    text = processor.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|im_start|>assistant \n") == 1
    images = [part["image"] for m in sample.messages for part in m["content"] if part["type"] == "image"]
    # one conversation's images as one list: the processor encodes several images of a sample as such
    theirs = processor(text=text.replace("<|im_start|>assistant \n", "<|im_start|>assistant\n"), images=[images], return_tensors="pt")
    assert_same(ours, dict(theirs))


def test_labels_are_each_reply_and_its_end(ov):
    _, processor, vlm = ov
    row = {"messages": [*HISTORY["messages"][:2]], "images": HISTORY["images"][:2]}
    encoded = vlm.template.encode(to_sample(row))
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    supervised = [i for i, label in zip(ids, labels, strict=True) if label != -100]
    assert vlm.tokenizer.decode(supervised) == "多行\n回答。<|im_end|>"
    # the reply's span in the template ({% generation %}: "\n" + reply), as transformers marks it
    text_row = {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "多行\n回答。"}]}
    marked = processor.apply_chat_template(
        to_sample(text_row).messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    span = [i for i, m in zip(marked["input_ids"][0], marked["assistant_masks"][0], strict=True) if m]
    assert vlm.tokenizer.decode(span).lstrip() == "多行\n回答。"
    encoded = vlm.template.encode(to_sample(text_row))
    supervised = [i for i, label in zip(encoded["input_ids"].tolist(), encoded["labels"].tolist(), strict=True) if label != -100]
    assert vlm.tokenizer.decode(supervised) == "多行\n回答。<|im_end|>"


def test_video_and_resolution_options_are_refused_in_one_line(ov):
    folder, _, vlm = ov
    with pytest.raises(DataError, match="llava-onevision takes images only; video input is not supported"):
        vlm.template.encode(to_sample({"messages": [{"role": "user", "content": "<video>Hi"}], "videos": ["a.mp4"]}))
    with pytest.raises(VlmkitError, match="max_pixels|max-pixels"):
        vlmkit.load(str(folder), max_pixels=200_000)


def test_a_grid_or_pooling_changed_in_one_file_only_is_refused(ov, tmp_path):
    """The model reads the grid and the pooling limit from config.json, the processor from its own files."""
    folder, _, vlm = ov
    family, tokenizer = family_by_name("llava-onevision"), vlm.tokenizer
    copy = shutil.copytree(folder, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors", "tokenizer*"))
    for name, key, value, line in (
        ("preprocessor_config.json", "image_grid_pinpoints", [[384, 384]], "image_grid_pinpoints differ between config.json"),
        ("processor_config.json", "vision_aspect_ratio", "anyres_max_4", "vision_aspect_ratio differs between config.json"),
    ):
        original = (copy / name).read_text()
        (copy / name).write_text(json.dumps({**json.loads(original), key: value}))
        with pytest.raises(VlmkitError, match=line):
            family.load_template(copy, tokenizer)
        (copy / name).write_text(original)
    (copy / "config.json").unlink()  # an adapter's folder: the processor files alone
    assert family.load_template(copy, tokenizer).vision.max_tiles == 9
