"""Gemma 3 through the CLI as a user runs it (subprocesses), compared with plain transformers: `vlmkit infer
--input` greedy replies equal `generate` on `Gemma3Processor`'s inputs; `vlmkit sft --tuner lora --pan-and-scan`
trains an adapter and saves the pan-and-scan settings with it; the merged `vlmkit export` loads in plain
transformers (its image processor crops as trained) and answers as `vlmkit infer` does; `vlmkit serve`
answers an OpenAI image request with `vlmkit infer`'s reply. One tiny model, one training run for the module."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch
from conftest import random_image
from safetensors.torch import load_file
from test_serve import start_server, stop_server
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

from vlmkit.families import family_by_name
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample

pytestmark = pytest.mark.slow
REPLY = "红色的方块。\nA red square."
NEW_TOKENS = 12


def vlmkit_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", *args], cwd=cwd, capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny Gemma 3, a dataset (a wide image, so pan-and-scan crops it), a LoRA run and its merged export."""
    root = tmp_path_factory.mktemp("gemma3")
    model = build_tiny_model(family_by_name("gemma3"), root / "tiny-gemma3", small_vocab=True)
    random_image(300, 1000, 1).save(root / "wide.png")
    random_image(64, 48, 2).save(root / "small.png")
    rows = [
        {"messages": [{"role": "user", "content": "<image>What colour is it?"}, {"role": "assistant", "content": REPLY}],
         "images": [image]}
        for image in ("wide.png", "small.png")
    ]  # fmt: skip
    (root / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    prompts = [{"messages": r["messages"][:1], "images": r["images"]} for r in rows]
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    vlmkit_cli("sft", "--model", str(model), "--dataset", "train.jsonl", "--tuner", "lora", "--pan-and-scan",
               "--max-steps", "8", "--lr", "0.02", "--warmup-ratio", "0", "--save-steps", "8", "--output-dir", "run",
               "--no-progress", cwd=root)  # fmt: skip
    [checkpoint] = list((root / "run").glob("*/v0-*/checkpoint-8"))
    vlmkit_cli("export", "--ckpt", str(checkpoint), "--merge-lora", "--output", "merged", cwd=root)
    return {"root": root, "model": model, "checkpoint": checkpoint, "merged": root / "merged"}


def vlmkit_replies(model: Path, root: Path, name: str) -> list[str]:
    """The replies of `vlmkit infer --input prompts.jsonl --output NAME`."""
    vlmkit_cli("infer", "--model", str(model), "--input", "prompts.jsonl", "--output", name,
               "--max-new-tokens", str(NEW_TOKENS), cwd=root)  # fmt: skip
    return [json.loads(line)["response"] for line in (root / name).read_text().splitlines()]


def transformers_replies(model: Path, root: Path, **images_kwargs) -> list[str]:
    """Plain transformers: the folder's processor (chat template included) and model, greedy."""
    processor = AutoProcessor.from_pretrained(model)
    net = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    replies = []
    for line in (root / "prompts.jsonl").read_text().splitlines():
        messages = to_sample(json.loads(line), base_dirs=(root,)).messages
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            processor_kwargs=images_kwargs,
        )  # fmt: skip
        with torch.no_grad():
            out = net.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        replies.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return replies


@pytest.fixture(scope="module")
def replies(work) -> dict[str, list[str]]:
    """`vlmkit infer --input prompts.jsonl` of the base model and of the merged export."""
    return {name: vlmkit_replies(work[name], work["root"], f"{name}.jsonl") for name in ("model", "merged")}


def test_infer_greedy_replies_equal_transformers_generate(work, replies):
    assert replies["model"] == transformers_replies(work["model"], work["root"])
    assert all(replies["model"])


def test_lora_trains_and_the_pan_and_scan_settings_travel(work):
    adapter = load_file(work["checkpoint"] / "adapter_model.safetensors")
    assert max(float(v.abs().max()) for name, v in adapter.items() if "lora_B" in name) > 0  # it learned
    saved = json.loads((work["checkpoint"] / "vlmkit.json").read_text())
    assert saved["pan_and_scan"] is True and saved["pan_and_scan_max_num_crops"] == 4
    exported = json.loads((work["merged"] / "preprocessor_config.json").read_text())
    assert exported["do_pan_and_scan"] is True and exported["pan_and_scan_min_crop_size"] == 256
    crops = AutoImageProcessor.from_pretrained(work["merged"])(images=[random_image(300, 1000)])["num_crops"]
    assert list(crops) == [3]  # plain transformers' image processor of the export crops as training did


def test_merged_export_answers_in_plain_transformers_as_vlmkit_infer(work, replies):
    # Gemma3Processor ignores the saved pan-and-scan settings (its defaults win): the user passes them
    assert replies["merged"] == transformers_replies(work["merged"], work["root"], do_pan_and_scan=True)
    assert replies["merged"] != replies["model"]  # the merged adapter changed the answers


def test_serve_answers_an_openai_image_request(work, replies):
    proc, url = start_server("--model", str(work["merged"]), "--served-model-name", "gemma", log=work["root"] / "serve.log")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
        buffer = io.BytesIO()
        random_image(300, 1000, 1).save(buffer, format="PNG")  # wide.png, the first prompt's image
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}
        reply = client.chat.completions.create(
            model="gemma", max_tokens=NEW_TOKENS, temperature=0,
            messages=[{"role": "user", "content": [image, {"type": "text", "text": "What colour is it?"}]}],
        )  # fmt: skip
    finally:
        stop_server(proc)
    assert reply.choices[0].message.content == replies["merged"][0]
