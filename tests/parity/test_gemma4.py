"""Gemma 4 against transformers' own `Gemma4Processor` (its PIL image processor and audio feature extractor; no
video processor: it needs torchvision) with the family's chat template, as users call it:
`processor.apply_chat_template(..., tokenize=True)`. Ids, pixels, image position ids and token types are
bit-exact for a system prompt, several images over turns (an earlier reply's thought removed), CJK text and a
tiny image; a training row is its prompt, then the reply and `<turn|>` (supervised)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from test_glm4v import ROWS, processor_inputs
from transformers import AutoTokenizer, Gemma4ImageProcessorPil, Gemma4Processor
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

import vlmkit
from vlmkit.errors import DataError
from vlmkit.families import family_by_name
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample


class ImagesOnly(Gemma4Processor):
    def check_argument_for_proper_class(self, argument_name, argument):
        return None  # no video processor: transformers' needs torchvision


def images_only_processor(folder) -> Gemma4Processor:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ImagesOnly(
        feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=Gemma4ImageProcessorPil.from_pretrained(folder),
        tokenizer=tokenizer, video_processor=None, chat_template=tokenizer.chat_template,
    )  # fmt: skip


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(tiny Gemma 4 folder, transformers' processor of it, `vlmkit.load` of it)."""
    folder = build_tiny_model(family_by_name("gemma4"), tmp_path_factory.mktemp("gemma4") / "m", small_vocab=True)
    return folder, images_only_processor(folder), vlmkit.load(str(folder))


def assert_same(ours: dict, theirs: dict) -> None:
    assert set(theirs) <= set(ours), set(theirs) - set(ours)
    for key, expected in theirs.items():
        if expected.is_floating_point():
            assert torch.equal(ours[key], expected), key
        else:
            assert ours[key].tolist() == expected.tolist(), key


def test_chat_template_is_llama_cpps_copy_of_gemma4s():
    text = (family_by_name("gemma4").folder / "chat_template.jinja").read_text()
    assert len(text) == 12133  # the size of ggml-org/llama.cpp models/templates/gemma4.jinja at 75f1ba73
    assert hashlib.sha256(json.dumps(text).encode()).hexdigest().startswith("5890afad4007db0d")


@pytest.mark.parametrize("name", ROWS)
def test_prompt_encodes_as_the_processor(gemma, name):
    _, processor, vlm = gemma
    batch = vlm.template.collate([vlm.encode(to_sample(ROWS[name]), add_generation_prompt=True)], padding_side="left")
    assert_same(batch, processor_inputs(processor, ROWS[name]))


def test_training_row_is_the_prompt_then_the_reply_and_end_of_turn(gemma):
    _, processor, vlm = gemma
    row = {**ROWS["several images"], "messages": [*ROWS["several images"]["messages"], {"role": "assistant", "content": " 多行\n回答。 "}]}
    encoded = vlm.template.encode(to_sample(row))
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    prompt = processor_inputs(processor, ROWS["several images"])["input_ids"][0].tolist()
    assert ids[: len(prompt)] == prompt  # the processor's prompt, token for token, then the reply
    assert vlm.tokenizer.decode(ids[len(prompt) :]) == "多行\n回答。<turn|>\n"
    spans = [vlm.tokenizer.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])]
    # the earlier reply as the template writes it (`<think>` is plain text to Gemma: its thoughts are channels), then
    # the last one, trimmed
    assert spans == ["<think>Sizes.</think><answer>The first is larger.</answer><turn|>多行\n回答。<turn|>"]
    thought = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<|channel>thought\nx<channel|> Hello "}]}
    encoded = vlm.template.encode(to_sample(thought))
    supervised = [i for i, label in zip(encoded["input_ids"].tolist(), encoded["labels"].tolist(), strict=True) if label != -100]
    assert vlm.tokenizer.decode(supervised) == "Hello<turn|>"  # a reply's thought is dropped, as the template drops it


def test_video_and_boxes_are_refused_in_one_line(gemma):
    _, _, vlm = gemma
    with pytest.raises(DataError, match="Gemma 4 in vlmkit takes images only"):
        vlm.template.encode(to_sample({"messages": [{"role": "user", "content": "<video>Hi"}], "videos": ["a.mp4"]}))
    row = {"messages": [{"role": "user", "content": "Find <ref-object>"}, {"role": "assistant", "content": "<bbox>"}],
           "objects": {"ref": ["a"], "bbox": [[1, 2, 3, 4]]}}  # fmt: skip
    with pytest.raises(DataError, match="Gemma 4 has no box format"):
        vlm.template.encode(to_sample(row))
