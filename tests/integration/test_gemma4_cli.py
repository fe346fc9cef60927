"""Gemma 4 through the CLI as a user runs it (subprocesses), compared with plain transformers: `vlmkit infer
--input` greedy replies equal `generate` on `Gemma4Processor`'s inputs; `vlmkit sft --tuner lora` on image rows
with multi-line CJK replies trains an adapter, and the merged export answers in plain transformers as in
`vlmkit infer`; `vlmkit serve` answers an OpenAI image request with `vlmkit infer`'s reply."""

from __future__ import annotations

import base64
from pathlib import Path

import openai
import pytest
import torch
from conftest import random_image
from test_seeds import checkpoints, lora_b_max, read_jsonl, vlmkit, write_jsonl
from test_serve import start_server, stop_server
from transformers import AutoModelForImageTextToText, AutoTokenizer, Gemma4ImageProcessorPil, Gemma4Processor
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

from vlmkit.families import family_by_name
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample

pytestmark = pytest.mark.slow
REPLY = "红色的方块。\nA red square."
NEW_TOKENS = 8


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
    processor = images_only_processor(model)
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
def merged_replies(work) -> list[str]:
    return vlmkit_replies(work["merged"], work["root"], "merged.jsonl")


def test_infer_equals_generate_and_the_lora_export_answers_as_trained(work, merged_replies):
    base = vlmkit_replies(work["model"], work["root"], "base.jsonl")
    assert base == transformers_replies(work["model"], work["root"]) and all(base)
    assert lora_b_max(work["checkpoint"]) > 0, "training left every lora_B at 0"
    assert merged_replies == transformers_replies(work["merged"], work["root"])
    assert merged_replies != base  # the merged adapter changed the answers


def test_serve_answers_an_openai_image_request(work, merged_replies):
    proc, url = start_server("--model", str(work["merged"]), "--served-model-name", "gemma", log=work["root"] / "serve.log")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        data = base64.b64encode((work["root"] / "0.png").read_bytes()).decode()
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}}
        reply = client.chat.completions.create(
            model="gemma", max_tokens=NEW_TOKENS, temperature=0,
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "What colour is it?"}]}],
        )  # fmt: skip
    finally:
        stop_server(proc)
    assert reply.choices[0].message.content == merged_replies[0]
