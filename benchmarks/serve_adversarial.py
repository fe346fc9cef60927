"""The adversarial profile of benchmarks/serve_load.py (`--profile adversarial`).

Starts `vlmkit serve` (tiny small-vocabulary Qwen2-VL unless --model) with `--allow-private-urls
--media-timeout 2`, and a local media server that trickles its response headers. Measures short
greedy text requests alone (the baseline p50/p95), then again while, at the same time:

- mixed sampling settings: temperature 0.7, own seeds, n=3 (these used to kill the engine);
- huge images: 4000x4000 PNGs (16,384 tokens: refused by the prompt budget before decoding) and
  1000x1000 ones (1,296 tokens, served);
- long prompts just under the prompt budget (~4,000 tokens: a long prefill);
- images on the slow media server (cut at --media-timeout);
- abandoned requests: n=2, max_tokens=2000, the client gives up after 1 s;
- bad requests: malformed JSON, deep nesting, a BOM, a foreign Origin, an unknown model.

Every short reply is checked against its reference (wrong replies); every other answer against the
status it should get (errors: anything else, including time-outs, i.e. hangs). Prints the figures
and a markdown row for benchmarks/RESULTS.md; exits 1 on any wrong reply or error.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socketserver
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import openai
from PIL import Image


class _TrickledHeaders(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(65536)
        try:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 300:
                self.request.sendall(bytes([byte]))
                time.sleep(0.2)
        except OSError:
            pass


def _png_url(side: int) -> str:
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _user(text: str, *parts: dict) -> list[dict]:
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def _image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    latencies = sorted(latencies)
    return statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the process's peak resident set size
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_adversarial(base: str, clients: int, requests: int, slow_url: str) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)
    raw = httpx.AsyncClient(timeout=300)
    prompts = [f"Short question {i}" for i in range(8)]

    async def short(prompt: str) -> tuple[str, float]:
        start = time.perf_counter()
        reply = await client.chat.completions.create(model="bench", messages=_user(prompt), max_tokens=8)
        return reply.choices[0].message.content, time.perf_counter() - start

    references = {p: (await short(p))[0] for p in prompts}
    alone = [(await short(prompts[i % 8]))[1] for i in range(max(16, requests // 4))]
    counts = {"wrong": 0, "errors": 0, "heavy": 0}
    loaded: list[float] = []
    errors: list[str] = []

    def error(what: str) -> None:
        counts["errors"] += 1
        errors.append(what)

    async def short_client(k: int) -> None:
        for j in range(requests // clients):
            prompt = prompts[(k + j) % 8]
            try:
                text, seconds = await short(prompt)
            except Exception as e:
                error(f"short: {type(e).__name__}: {e}")
                continue
            loaded.append(seconds)
            counts["wrong"] += text != references[prompt]

    async def expect(status: int, what: str, **kwargs) -> None:
        try:
            response = await raw.post(f"{base}/v1/chat/completions", **kwargs)
        except httpx.HTTPError as e:
            error(f"{what}: {type(e).__name__}")
            return
        counts["heavy"] += 1
        if response.status_code != status:
            error(f"{what}: {response.status_code} {response.text[:120]}")

    def body(**fields) -> dict:
        return {"json": {"model": "bench", "max_tokens": 4, **fields}}

    async def abandoned() -> None:
        try:
            await raw.post(f"{base}/v1/chat/completions", timeout=1.0,
                           json={"model": "bench", "messages": _user("long"), "n": 2, "max_tokens": 2000})  # fmt: skip
            error("abandoned: answered within 1 s")
        except httpx.TimeoutException:
            counts["heavy"] += 1

    huge, large = _png_url(4000), _png_url(1000)
    json_type = {"Content-Type": "application/json"}
    heavy = [
        *[expect(200, "mixed", **body(messages=_user(f"q{i}"), **s)) for i, s in enumerate(
            [{"temperature": 0.7}, {"seed": 5, "temperature": 1.0}, {"n": 3}] * 4)],
        *[expect(400, "huge image", **body(messages=_user("x", _image(huge)))) for _ in range(4)],
        *[expect(200, "large image", **body(messages=_user("x", _image(large)))) for _ in range(2)],
        *[expect(200, "long prompt", **body(messages=_user("word " * 1300))) for _ in range(2)],
        *[expect(400, "slow media", **body(messages=_user("x", _image(slow_url)))) for _ in range(8)],
        *[abandoned() for _ in range(2)],
        expect(400, "malformed JSON", content=b'{"messages": [', headers=json_type),
        expect(400, "deep nesting", content=b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}", headers=json_type),
        expect(400, "BOM", content=b"\xef\xbb\xbf" + json.dumps(body(messages=_user("x"))["json"]).encode(),
               headers=json_type),
        expect(403, "foreign Origin", **body(messages=_user("x")), headers={"Origin": "http://evil.example"}),
        expect(404, "unknown model", json={"model": "nope", "messages": _user("x")}),
    ]  # fmt: skip
    start = time.perf_counter()
    await asyncio.gather(*heavy, *(short_client(k) for k in range(clients)))
    wall = time.perf_counter() - start
    # A long prefill alone, then a short request sent 0.1 s into it: how long the short one waits.
    start = time.perf_counter()
    await client.chat.completions.create(model="bench", messages=_user("word " * 1300), max_tokens=1)
    prefill = time.perf_counter() - start
    long_task = asyncio.create_task(
        client.chat.completions.create(model="bench", messages=_user("word " * 1300), max_tokens=1)
    )
    await asyncio.sleep(0.1)
    _, behind_prefill = await short(prompts[0])
    await long_task
    health = (await raw.get(f"{base}/health")).status_code
    await raw.aclose()
    alone_p50, alone_p95 = _percentiles(alone)
    p50, p95 = _percentiles(loaded) if loaded else (float("nan"), float("nan"))
    return {"alone_p50": alone_p50, "alone_p95": alone_p95, "p50": p50, "p95": p95, "short": len(loaded),
            "heavy": counts["heavy"], "wrong": counts["wrong"], "errors": counts["errors"], "error_list": errors,
            "wall": wall, "health": health, "prefill": prefill, "behind_prefill": behind_prefill}  # fmt: skip


def main(args) -> None:
    import sys

    from serve_process import free_port, start_server

    slow = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _TrickledHeaders)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    slow_url = f"http://127.0.0.1:{slow.server_address[1]}/cat.png"
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vlmkit.families import family_by_name
            from vlmkit.families.tiny import build_tiny_model

            model = build_tiny_model(family_by_name("qwen2-vl"), Path(tmp) / "tiny", small_vocab=True)
        port = free_port()
        proc = start_server(model, port, args.max_batch_size, Path(tmp) / "server.log",
                            "--allow-private-urls", "--media-timeout", "2")  # fmt: skip
        try:
            r = asyncio.run(run_adversarial(f"http://127.0.0.1:{port}", args.clients, args.requests, slow_url))
            rss = _peak_rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print("the server did not stop within 60 s of SIGTERM; killed. Its log ends:", file=sys.stderr)
                print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
                proc.kill()
            slow.shutdown()
    print(
        f"short text requests: alone p50 {r['alone_p50'] * 1000:.0f} ms, p95 {r['alone_p95'] * 1000:.0f} ms; "
        f"under adversarial load ({r['short']} requests from {args.clients} clients beside {r['heavy']} heavy or "
        f"hostile ones) p50 {r['p50'] * 1000:.0f} ms, p95 {r['p95'] * 1000:.0f} ms; wall {r['wall']:.1f} s; "
        f"peak RSS {rss:.0f} MB; {r['errors']} errors, {r['wrong']} wrong replies; /health {r['health']}; "
        f"a ~3,940-token prompt alone {r['prefill'] * 1000:.0f} ms, a short request sent during it "
        f"{r['behind_prefill'] * 1000:.0f} ms"
    )
    for line in r["error_list"]:
        print("  error:", line)
    print(
        f"| {args.clients} | {r['short']} | {r['heavy']} | {r['alone_p50'] * 1000:.0f} ms | "
        f"{r['alone_p95'] * 1000:.0f} ms | {r['p50'] * 1000:.0f} ms | {r['p95'] * 1000:.0f} ms | {rss:.0f} MB | "
        f"{r['errors']} | {r['wrong']} |"
    )
    sys.exit(1 if r["errors"] or r["wrong"] or r["health"] != 200 else 0)
