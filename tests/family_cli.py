"""What the curated families' CLI tests (tests/integration/test_*_cli.py) do alike, as a user does it: train a
LoRA on image rows with `vlmkit sft`, merge it with `vlmkit export`, read `vlmkit infer`'s greedy replies, and
compute plain transformers' greedy replies for the same rows with the checkpoint's own processor, which is
the reference each family's replies are compared with."""

from __future__ import annotations

import base64
from pathlib import Path

import torch
from test_seeds import checkpoints, read_jsonl, vlmkit, write_jsonl
from transformers import AutoModelForImageTextToText

from vlmkit.sample import to_sample

NEW_TOKENS = 8


def lora_run_and_export(root: Path, model: Path, rows: list[dict], *sft_options: str) -> dict[str, Path]:
    """`train.jsonl` from `rows` (images in `root`), six LoRA steps on it, the last checkpoint merged into `merged`."""
    write_jsonl(root / "train.jsonl", rows)
    vlmkit("sft", "--model", str(model), "--dataset", "train.jsonl", "--tuner", "lora", *sft_options,
           "--max-steps", "6", "--lr", "0.05", "--warmup-ratio", "0", "--output-dir", "run", cwd=root)  # fmt: skip
    checkpoint = checkpoints(root / "run")[-1]
    vlmkit("export", "--ckpt", str(checkpoint), "--merge-lora", "--output", "merged", cwd=root)
    return {"root": root, "model": model, "checkpoint": checkpoint, "merged": root / "merged"}


def vlmkit_replies(model: Path, root: Path, name: str) -> list[str]:
    """`vlmkit infer --input train.jsonl` greedy replies, written to `name`."""
    vlmkit("infer", "--model", str(model), "--input", "train.jsonl", "--output", name,
           "--max-new-tokens", str(NEW_TOKENS), cwd=root)  # fmt: skip
    return [row["response"] for row in read_jsonl(root / name)]


def transformers_replies(processor, model: Path, root: Path) -> list[str]:
    """Plain transformers on `train.jsonl`'s prompts: `processor` (the checkpoint's own, built by the test from the
    folder) applies the chat template and encodes, the folder's model generates greedily."""
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


def served_reply(url: str, model_name: str, image: Path, question: str) -> str:
    """One greedy OpenAI chat request with `image` as a data: URL to the server at `url`."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    data = base64.b64encode(image.read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": "data:image/png;base64," + data}},
               {"type": "text", "text": question}]  # fmt: skip
    reply = client.chat.completions.create(model=model_name, max_tokens=NEW_TOKENS, temperature=0,
                                           messages=[{"role": "user", "content": content}])  # fmt: skip
    return reply.choices[0].message.content
