"""What a checkpoint of any vlmkit trainer promises (tests/integration/test_grpo.py and test_dpo.py use it on
their trained checkpoints): `vlmkit export --merge-lora` writes a folder plain transformers loads and that answers
as `vlmkit infer --ckpt` does (fed the export's own encoding: the Qwen2-VL processor needs torchvision), and `vlmkit serve --ckpt` gives the same greedy reply to an OpenAI request."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

NEW_TOKENS = 4


def vlmkit(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "vlmkit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_export_and_serve_answer_as_infer(
    checkpoint: Path, image: Path, question: str, tmp_path: Path
) -> None:
    """`checkpoint` (a LoRA run's RUN/checkpoint-N) asked `question` about `image`, greedy: `vlmkit infer --ckpt`,
    plain transformers on the merged export, and `vlmkit serve --ckpt` give the same reply."""
    from test_serve import start_server, stop_server
    from transformers import AutoModelForImageTextToText

    import vlmkit as vlmkit_api

    row = {"messages": [{"role": "user", "content": f"<image>{question}"}], "images": [str(image)]}
    (tmp_path / "q.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    vlmkit("infer", "--ckpt", checkpoint, "--input", tmp_path / "q.jsonl", "--output", tmp_path / "p.jsonl",
           "--max-new-tokens", NEW_TOKENS)  # fmt: skip
    reply = json.loads((tmp_path / "p.jsonl").read_text(encoding="utf-8"))["response"]

    vlmkit("export", "--ckpt", checkpoint, "--merge-lora", "--output", tmp_path / "merged")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    exported = vlmkit_api.load(
        str(tmp_path / "merged")
    )  # the export's own tokenizer, template and pixel limits
    inputs = exported.template.collate([exported.encode(vlmkit_api.to_sample(row))])
    inputs.pop("labels")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert (
        exported.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True) == reply
    )

    import httpx

    proc, url = start_server(
        "--ckpt", str(checkpoint), "--served-model-name", "run", log=tmp_path / "serve.log"
    )
    try:
        data = base64.b64encode(image.read_bytes()).decode()
        request = {"model": "run", "max_tokens": NEW_TOKENS, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
            {"type": "text", "text": question},
        ]}]}  # fmt: skip
        answer = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=120).json()
    finally:
        stop_server(proc)
    assert answer["choices"][0]["message"]["content"] == reply
