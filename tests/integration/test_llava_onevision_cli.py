"""LLaVA-OneVision through the CLI as a user runs it (subprocesses), compared with plain transformers: `vlmkit infer
--input` greedy replies (a row with one image, tiled, and a row with two, one crop each) equal `generate` on
`LlavaOnevisionProcessor`'s inputs; `vlmkit sft --tuner lora` trains an adapter whose merged export plain
transformers loads and answers with as `vlmkit infer` does, and `vlmkit serve` answers an OpenAI image request on
it as `vlmkit infer` does; a video row gets one line."""

from __future__ import annotations

import base64
from pathlib import Path

import openai
import pytest
import torch
from conftest import random_image
from test_seeds import checkpoints, lora_b_max, read_jsonl, vlmkit, write_jsonl
from test_serve import start_server, stop_server
from transformers import (
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoTokenizer,
    LlavaOnevisionProcessor,
)

from vlmkit.families import family_by_name
from vlmkit.families.llava_onevision import PROCESSOR_CONFIG
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample

pytestmark = pytest.mark.slow
REPLY = "红色的方块。\nA red square."
NEW_TOKENS = 8


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
    write_jsonl(root / "train.jsonl", rows)
    vlmkit("sft", "--model", str(model), "--dataset", "train.jsonl", "--tuner", "lora", "--max-steps", "6",
           "--lr", "0.05", "--warmup-ratio", "0", "--output-dir", "run", cwd=root)  # fmt: skip
    checkpoint = checkpoints(root / "run")[-1]
    vlmkit("export", "--ckpt", str(checkpoint), "--merge-lora", "--output", "merged", cwd=root)
    return {"root": root, "model": model, "checkpoint": checkpoint, "merged": root / "merged"}


def vlmkit_replies(model: Path, root: Path, name: str) -> list[str]:
    vlmkit("infer", "--model", str(model), "--input", "train.jsonl", "--output", name,
           "--max-new-tokens", str(NEW_TOKENS), cwd=root)  # fmt: skip
    return [row["response"] for row in read_jsonl(root / name)]


def transformers_replies(model: Path, root: Path) -> list[str]:
    """Plain transformers: the folder's tokenizer (chat template), image processor and model, greedy."""
    tokenizer = AutoTokenizer.from_pretrained(model)
    settings = {k: v for k, v in PROCESSOR_CONFIG.items() if k != "processor_class"}
    processor = ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(model), tokenizer=tokenizer,
                           video_processor=None, chat_template=tokenizer.chat_template, **settings)  # fmt: skip
    net = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    replies = []
    for row in read_jsonl(root / "train.jsonl"):
        prompt = {"messages": [{"role": "user", "content": row["query"]}], "images": row["images"]}
        messages = to_sample(prompt, base_dirs=(root,)).messages
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            out = net.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        replies.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return replies


@pytest.fixture(scope="module")
def base_replies(work) -> list[str]:
    return vlmkit_replies(work["model"], work["root"], "base.jsonl")


def test_infer_greedy_replies_equal_transformers_generate(work, base_replies):
    assert base_replies == transformers_replies(work["model"], work["root"])
    assert all(base_replies)


@pytest.fixture(scope="module")
def merged_replies(work) -> list[str]:
    return vlmkit_replies(work["merged"], work["root"], "merged.jsonl")


def test_lora_trains_and_the_merged_export_answers_as_in_transformers(work, base_replies, merged_replies):
    assert lora_b_max(work["checkpoint"]) > 0, "training left every lora_B at 0"
    assert merged_replies == transformers_replies(work["merged"], work["root"])
    assert merged_replies != base_replies  # the merged adapter changed the answers


def test_serve_answers_an_openai_image_request(work, merged_replies):
    proc, url = start_server("--model", str(work["merged"]), "--served-model-name", "ov", log=work["root"] / "serve.log")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        png = base64.b64encode((work["root"] / "0.png").read_bytes()).decode()  # the first row's image
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}}
        reply = client.chat.completions.create(
            model="ov", max_tokens=NEW_TOKENS, temperature=0,
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "What colour is it?"}]}],
        )  # fmt: skip
    finally:
        stop_server(proc)
    assert reply.choices[0].message.content == merged_replies[0]


def test_a_video_row_is_refused_in_one_line(work):
    root = work["root"]
    (root / "clip.mp4").write_bytes(b"\x00" * 64)
    write_jsonl(root / "video.jsonl", [{"query": "<video>What happens?", "response": "x", "videos": ["clip.mp4"]}])
    done = vlmkit("infer", "--model", str(work["model"]), "--input", "video.jsonl", "--output", "v.jsonl",
                  cwd=root, ok=False)  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "llava-onevision takes images only; video input is not supported" in done.stderr
