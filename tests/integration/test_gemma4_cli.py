"""Gemma 4 through the CLI as a user runs it (subprocesses), compared with plain transformers: `vlmkit infer
--input` greedy replies equal `generate` on `Gemma4Processor`'s inputs; `vlmkit sft --tuner lora` on image rows
with multi-line CJK replies trains an adapter, and the merged export answers in plain transformers as in
`vlmkit infer`; `vlmkit serve` answers an OpenAI image request with `vlmkit infer`'s reply."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import random_image
from family_cli import lora_run_and_export, served_reply, transformers_replies, vlmkit_replies
from test_seeds import lora_b_max
from test_serve import start_server, stop_server
from transformers import AutoTokenizer, Gemma4ImageProcessorPil, Gemma4Processor
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

from vlmkit.families import family_by_name
from vlmkit.families.tiny import build_tiny_model

pytestmark = pytest.mark.slow
REPLY = "红色的方块。\nA red square."


class ImagesOnly(Gemma4Processor):
    def check_argument_for_proper_class(self, argument_name, argument):
        return None  # no video processor: transformers' needs torchvision


def images_only_processor(folder: Path) -> Gemma4Processor:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ImagesOnly(
        feature_extractor=Gemma4AudioFeatureExtractor(), image_processor=Gemma4ImageProcessorPil.from_pretrained(folder),
        tokenizer=tokenizer, video_processor=None, chat_template=tokenizer.chat_template,
    )  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny Gemma 4, image rows, a LoRA run, its merged export."""
    root = tmp_path_factory.mktemp("gemma4")
    model = build_tiny_model(family_by_name("gemma4"), root / "tiny-gemma4", small_vocab=True)
    for i, (h, w) in enumerate(((300, 500), (64, 48))):
        random_image(h, w, i).save(root / f"{i}.png")
    rows = [{"query": "<image>What colour is it?", "response": REPLY, "images": [f"{i}.png"]} for i in range(2)]
    return lora_run_and_export(root, model, rows)


@pytest.fixture(scope="module")
def merged_replies(work) -> list[str]:
    return vlmkit_replies(work["merged"], work["root"], "merged.jsonl")


def test_infer_equals_generate_and_the_lora_export_answers_as_trained(work, merged_replies):
    base = vlmkit_replies(work["model"], work["root"], "base.jsonl")
    assert base == transformers_replies(images_only_processor(work["model"]), work["model"], work["root"]) and all(base)
    assert lora_b_max(work["checkpoint"]) > 0, "training left every lora_B at 0"
    assert merged_replies == transformers_replies(images_only_processor(work["merged"]), work["merged"], work["root"])
    assert merged_replies != base  # the merged adapter changed the answers


def test_serve_answers_an_openai_image_request(work, merged_replies):
    proc, url = start_server("--model", str(work["merged"]), "--served-model-name", "gemma", log=work["root"] / "serve.log")
    try:
        reply = served_reply(url, "gemma", work["root"] / "0.png", "What colour is it?")
    finally:
        stop_server(proc)
    assert reply == merged_replies[0]
