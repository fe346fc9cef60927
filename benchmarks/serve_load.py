"""Load test of `vlmkit serve`: many concurrent clients, every reply checked.

    python benchmarks/serve_load.py --clients 64 --requests 512 --max-tokens 16
    python benchmarks/serve_load.py --profile adversarial --clients 8 --requests 64
    python benchmarks/serve_load.py --profile mixed --clients 32 --requests 256 [--swift-python PY]

The adversarial profile (see `run_adversarial`) sends short greedy text requests while heavy and
hostile ones run beside them, and reports the short requests' p50/p95 against their p50/p95 alone,
the server's peak RSS, unexpected answers (errors) and wrong replies. The mixed profile (see
`serve_mixed.py`) compares throughput and short requests' latency with one sampling setting and with
mixed settings (streaming, abandoning and image requests among them), optionally against ms-swift's
`swift deploy` on the same model and requests.

Starts `vlmkit serve` on a free loopback port (a tiny small-vocabulary Qwen2-VL unless --model
is given), asks each prompt once alone for its greedy reference reply, then sends --requests
requests from --clients concurrent clients (the official `openai` async client), a quarter of
them with an image as a data: URL, and checks every reply against its reference. Prints
p50/p95 latency, requests/s and generated tokens/s, and a markdown row for RESULTS.md.
Exits 1 when any reply is missing or wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import openai
from serve_process import free_port, prompts, start_server


async def run_load(base_url: str, clients: int, requests: int, max_tokens: int, n_prompts: int) -> dict:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)
    conversations = prompts(n_prompts)

    async def ask(messages):
        reply = await client.chat.completions.create(model="bench", messages=messages, max_tokens=max_tokens)
        return reply.choices[0].message.content, reply.usage.completion_tokens

    references = [(await ask(m))[0] for m in conversations]
    latencies: list[float] = []
    wrong = tokens = 0
    counter = iter(range(requests))

    async def worker() -> None:
        nonlocal wrong, tokens
        for i in counter:
            start = time.perf_counter()
            text, used = await ask(conversations[i % n_prompts])
            latencies.append(time.perf_counter() - start)
            wrong += text != references[i % n_prompts]
            tokens += used

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "wrong": wrong,
        "wall_s": wall,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "req_per_s": len(latencies) / wall,
        "tokens_per_s": tokens / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="model folder (default: a tiny small-vocab Qwen2-VL)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompts", type=int, default=16, help="distinct conversations")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--profile", choices=["plain", "adversarial", "mixed"], default="plain")
    parser.add_argument("--swift-python", help="mixed profile: python of a venv with ms-swift, to compare")
    args = parser.parse_args()
    if args.profile == "mixed":
        from serve_mixed import main as mixed

        mixed(args)
        return
    if args.profile == "adversarial":
        from serve_adversarial import main as adversarial

        adversarial(args)
        return

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vlmkit.families import family_by_name
            from vlmkit.families.tiny import build_tiny_model

            model = build_tiny_model(family_by_name("qwen2-vl"), Path(tmp) / "tiny", small_vocab=True)
        port = free_port()
        proc = start_server(model, port, args.max_batch_size, Path(tmp) / "server.log")
        try:
            result = asyncio.run(
                run_load(
                    f"http://127.0.0.1:{port}/v1", args.clients, args.requests, args.max_tokens, args.prompts
                )
            )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(
        f"{result['requests']} requests from {args.clients} clients, {result['wrong']} wrong; "
        f"wall {result['wall_s']:.1f} s; latency p50 {result['p50_s'] * 1000:.0f} ms, "
        f"p95 {result['p95_s'] * 1000:.0f} ms; {result['req_per_s']:.1f} requests/s, "
        f"{result['tokens_per_s']:.0f} generated tokens/s"
    )
    print(
        f"| {args.clients} | {result['requests']} | {args.max_tokens} | {args.max_batch_size} | "
        f"{result['wrong']} | {result['p50_s'] * 1000:.0f} ms | {result['p95_s'] * 1000:.0f} ms | "
        f"{result['req_per_s']:.1f} | {result['tokens_per_s']:.0f} |"
    )
    sys.exit(1 if result["wrong"] or result["requests"] != args.requests else 0)


if __name__ == "__main__":
    main()
