"""The mixed-traffic profile of benchmarks/serve_load.py (`--profile mixed`, issue 26).

    python benchmarks/serve_load.py --profile mixed --clients 32 --requests 256
    python benchmarks/serve_load.py --profile mixed --clients 32 --requests 256 --swift-python PY

Starts `vlmkit serve` (a tiny small-vocabulary Qwen2-VL unless --model; with --swift-python, the real-vocabulary
tiny Qwen2-VL that ms-swift's template needs) and measures, in one run on one server:

1. alone: 40 short greedy requests ("Hi", 8 tokens) one at a time (their p50/p95 alone), and the greedy reply of
   every prompt alone (the references);
2. same settings: --requests requests from --clients concurrent `openai.AsyncOpenAI` clients, all greedy;
3. mixed settings: the same requests, but each with its own sampling settings (greedy, temperature/top_p,
   own seeds, top_k, repetition penalty, n=2) in turn.

In both loaded phases every 8th request is a short greedy one (timed: p50/p95 under load), every 8th is
streamed, every 8th is abandoned by its client after 0.5 s, and every 4th prompt carries a 56x56 image as a
data: URL; the other requests ask for --max-tokens tokens. Every greedy reply is checked against its
reference (wrong replies), every answer must come (hangs: none within 180 s) and must not be a 5xx.

With --swift-python (the python of a venv holding ms-swift), the same phases then run against
`swift deploy --infer_backend transformers` on the same model (benchmarks/swift_plugin on its PYTHONPATH:
it stubs torchvision for qwen-vl-utils). Prints the figures and markdown rows for benchmarks/RESULTS.md;
exits 1 on any wrong greedy reply, 5xx or hang of vlmkit.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

SHORT = [{"role": "user", "content": "Hi"}]
SHORT_TOKENS = 8
# per request of the mixed phase, in turn; {} is greedy (checked against its reference)
MIXED = [
    {},
    {"temperature": 0.7, "top_p": 0.9},
    {"temperature": 1.0, "seed": "i"},  # "i": the request's index
    {"temperature": 1.2, "extra_body": {"top_k": 20}},
    {"temperature": 0.8, "extra_body": {"repetition_penalty": 1.2}},
    {},
    {"temperature": 0.5, "n": 2},
    {"temperature": 0.9, "top_p": 0.8, "seed": "i", "stop": ["e"]},
]


def _settings(kind: dict, i: int) -> dict:
    return {k: (i if v == "i" else v) for k, v in kind.items()}


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else float("nan")


async def run_phases(base_url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    from serve_process import prompts

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=180)
    conversations = prompts(16)

    async def ask(messages, tokens: int, stream: bool = False, **settings) -> tuple[list[str], int]:
        if not stream:
            reply = await client.chat.completions.create(
                model=model, messages=messages, max_tokens=tokens, **settings
            )
            return [c.message.content for c in reply.choices], reply.usage.completion_tokens
        chunks = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=tokens, stream=True, **settings
        )
        texts: dict[int, str] = {}
        async for chunk in chunks:
            for choice in chunk.choices:
                texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
        return [texts[k] for k in sorted(texts)], 0

    short_alone = []
    for _ in range(40):  # p95 of 40: the third slowest, steadier than the second of 20 on a shared machine
        start = time.perf_counter()
        short_reference = (await ask(SHORT, SHORT_TOKENS))[0][0]
        short_alone.append(time.perf_counter() - start)
    references = [(await ask(m, max_tokens))[0][0] for m in conversations]

    async def phase(mixed: bool) -> dict:
        short, wrong, fives, hangs, done, tokens = [], 0, 0, 0, 0, 0
        counter = iter(range(requests))

        async def one(i: int) -> None:
            nonlocal wrong, fives, hangs, done, tokens
            role = i % 8
            settings = _settings(MIXED[i % len(MIXED)], i) if mixed and role not in (0,) else {}
            greedy = not settings.get("temperature")
            messages, expected, count = conversations[i % 16], references[i % 16], max_tokens
            if role == 0:
                messages, expected, count = SHORT, short_reference, SHORT_TOKENS
            start = time.perf_counter()
            try:
                if role == 2:  # the client gives up after 0.5 s
                    try:
                        await asyncio.wait_for(ask(messages, count, **settings), 0.5)
                    except asyncio.TimeoutError:
                        return
                else:
                    texts, used = await asyncio.wait_for(ask(messages, count, stream=role == 4, **settings), 180)
                    done += 1
                    tokens += used
                    if greedy and "stop" not in settings:
                        wrong += sum(text != expected for text in texts)
            except asyncio.TimeoutError:
                hangs += 1
                return
            except openai.APIStatusError as e:
                fives += e.status_code >= 500
                return
            if role == 0:
                short.append(time.perf_counter() - start)

        async def worker() -> None:
            for i in counter:
                await one(i)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
        return {
            "answered": done, "wall_s": wall, "req_per_s": done / wall, "tokens_per_s": tokens / wall,
            "short_p50_s": statistics.median(short), "short_p95_s": _percentile(short, 0.95),
            "wrong": wrong, "5xx": fives, "hangs": hangs,
        }  # fmt: skip

    same = await phase(mixed=False)
    mixed = await phase(mixed=True)
    return {
        "alone_p50_s": statistics.median(short_alone),
        "alone_p95_s": _percentile(short_alone, 0.95),
        "same": same,
        "mixed": mixed,
    }


def _row(server: str, clients: int, r: dict) -> str:
    same, mixed = r["same"], r["mixed"]
    return (
        f"| {server} | {clients} | {same['req_per_s']:.1f} | {mixed['req_per_s']:.1f} | "
        f"{mixed['req_per_s'] / same['req_per_s']:.2f} | {r['alone_p95_s'] * 1000:.0f} ms | "
        f"{same['short_p95_s'] * 1000:.0f} ms | {mixed['short_p95_s'] * 1000:.0f} ms | "
        f"{mixed['short_p95_s'] / r['alone_p95_s']:.1f} | {same['wrong'] + mixed['wrong']} | "
        f"{same['5xx'] + mixed['5xx']} | {same['hangs'] + mixed['hangs']} |"
    )


HEADER = (
    "| server | clients | req/s same settings | req/s mixed | mixed/same | short p95 alone | short p95 same "
    "| short p95 mixed | mixed p95 / alone | wrong greedy | 5xx | hangs |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit(f"server did not start in 300 s:\n{log.read_text()[-3000:]}")


def _swift_deploy(python: str, model: Path, port: int, max_batch_size: int, log: Path) -> subprocess.Popen:
    plugin = Path(__file__).parent / "swift_plugin"
    env = {**os.environ, "PYTHONPATH": str(plugin), "CUDA_VISIBLE_DEVICES": ""}
    swift = Path(python).parent / "swift"
    cmd = [str(swift), "deploy", "--model", str(model), "--model_type", "qwen2_vl", "--template", "qwen2_vl",
           "--infer_backend", "transformers", "--port", str(port), "--host", "127.0.0.1",
           "--served_model_name", "bench", "--max_batch_size", str(max_batch_size), "--torch_dtype", "float32"]  # fmt: skip
    # its own process group: `swift deploy` runs the server as a child, which outlives a terminated launcher
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _wait_healthy(proc, f"http://127.0.0.1:{port}/v1/models", log)
    return proc


def _stop(proc: subprocess.Popen, group: bool = False) -> None:
    """End the server (with `group`, its whole process group, children included)."""
    import signal

    def send(sig: int) -> None:
        os.killpg(proc.pid, sig) if group else proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)


def main(args) -> None:
    from serve_process import free_port, start_server

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    results = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_tiny_model(
            family_by_name("qwen2-vl"), Path(tmp) / "tiny", small_vocab=args.swift_python is None
        )
        port = free_port()
        proc = start_server(model, port, args.max_batch_size, Path(tmp) / "server.log")
        try:
            r = asyncio.run(run_phases(f"http://127.0.0.1:{port}/v1", "bench", args.clients, args.requests,
                                       args.max_tokens))  # fmt: skip
        finally:
            _stop(proc)
        results.append(("vlmkit serve", r))
        if args.swift_python:
            port = free_port()
            proc = _swift_deploy(args.swift_python, model, port, args.max_batch_size, Path(tmp) / "swift.log")
            try:
                s = asyncio.run(run_phases(f"http://127.0.0.1:{port}/v1", "bench", args.clients, args.requests,
                                           args.max_tokens))  # fmt: skip
            finally:
                _stop(proc, group=True)
            results.append(("swift deploy", s))
    for name, r in results:
        print(f"{name}: {r}")
    load = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in zip(load_before, os.getloadavg(), strict=True))
    print(f"command: python benchmarks/serve_load.py {' '.join(sys.argv[1:])}; load average (1, 5, 15 min) {load}")
    print(HEADER)
    for name, r in results:
        print(_row(name, args.clients, r))
    vlmkit = results[0][1]
    bad = sum(vlmkit[p][k] for p in ("same", "mixed") for k in ("wrong", "5xx", "hangs"))
    sys.exit(1 if bad else 0)
