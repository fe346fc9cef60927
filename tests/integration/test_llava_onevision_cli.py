"""LLaVA-OneVision through the CLI as a user runs it (subprocesses), compared with plain transformers: `vlmkit infer
--input` greedy replies (a row with one image, tiled, and a row with two, one crop each) equal `generate` on
`LlavaOnevisionProcessor`'s inputs; `vlmkit sft --tuner lora` trains an adapter whose merged export plain
transformers loads and answers with as `vlmkit infer` does, and `vlmkit serve` answers an OpenAI image request on
it as `vlmkit infer` does; a video row gets one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import random_image
from family_cli import lora_run_and_export, served_reply, transformers_replies, vlmkit_replies
from test_seeds import lora_b_max, vlmkit, write_jsonl
from test_serve import start_server, stop_server
from transformers import AutoImageProcessor, AutoTokenizer, LlavaOnevisionProcessor

from vlmkit.families import family_by_name
from vlmkit.families.llava_onevision import PROCESSOR_CONFIG
from vlmkit.families.tiny import build_tiny_model

pytestmark = pytest.mark.slow
REPLY = "红色的方块。\nA red square."


class ImagesOnly(LlavaOnevisionProcessor):
    def check_argument_for_proper_class(self, argument_name, argument):
        return None  # no video processor: transformers' needs torchvision


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny LLaVA-OneVision, rows of one and two images with a multi-line CJK reply, a LoRA run, its merged export."""
    root = tmp_path_factory.mktemp("llava_ov")
    model = build_tiny_model(family_by_name("llava-onevision"), root / "tiny-ov", small_vocab=True)
    for i, (h, w) in enumerate(((60, 90), (64, 48), (40, 40))):
        random_image(h, w, i).save(root / f"{i}.png")
    rows = [
        {"query": "<image>What colour is it?", "response": REPLY, "images": ["0.png"]},
        {"query": "<image>和<image>哪个是红色的?", "response": REPLY, "images": ["1.png", "2.png"]},
    ]
    return lora_run_and_export(root, model, rows)


def processor(folder: Path) -> LlavaOnevisionProcessor:
    """The folder's tokenizer (chat template) and image processor, with the processor settings of the family."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = {k: v for k, v in PROCESSOR_CONFIG.items() if k != "processor_class"}
    return ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
                      video_processor=None, chat_template=tokenizer.chat_template, **settings)  # fmt: skip


@pytest.fixture(scope="module")
def base_replies(work) -> list[str]:
    return vlmkit_replies(work["model"], work["root"], "base.jsonl")


def test_infer_greedy_replies_equal_transformers_generate(work, base_replies):
    assert base_replies == transformers_replies(processor(work["model"]), work["model"], work["root"])
    assert all(base_replies)


@pytest.fixture(scope="module")
def merged_replies(work) -> list[str]:
    return vlmkit_replies(work["merged"], work["root"], "merged.jsonl")


def test_lora_trains_and_the_merged_export_answers_as_in_transformers(work, base_replies, merged_replies):
    assert lora_b_max(work["checkpoint"]) > 0, "training left every lora_B at 0"
    assert merged_replies == transformers_replies(processor(work["merged"]), work["merged"], work["root"])
    assert merged_replies != base_replies  # the merged adapter changed the answers


def test_serve_answers_an_openai_image_request(work, merged_replies):
    proc, url = start_server("--model", str(work["merged"]), "--served-model-name", "ov", log=work["root"] / "serve.log")
    try:
        reply = served_reply(url, "ov", work["root"] / "0.png", "What colour is it?")  # the first row's image
    finally:
        stop_server(proc)
    assert reply == merged_replies[0]


def test_a_video_row_is_refused_in_one_line(work):
    root = work["root"]
    (root / "clip.mp4").write_bytes(b"\x00" * 64)
    write_jsonl(root / "video.jsonl", [{"query": "<video>What happens?", "response": "x", "videos": ["clip.mp4"]}])
    done = vlmkit("infer", "--model", str(work["model"]), "--input", "video.jsonl", "--output", "v.jsonl",
                  cwd=root, ok=False)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "llava-onevision takes images only; video input is not supported" in done.stderr
