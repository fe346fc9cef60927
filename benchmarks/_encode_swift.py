"""Workload 1, ms-swift side: the same encode as _encode_vlmkit.py, through ms-swift's Qwen2-VL template.

    MAX_PIXELS=200704 PYTHONPATH=benchmarks/swift_stub SWIFT_VENV/bin/python benchmarks/_encode_swift.py \
        MODEL DATASET --workers 2

Run with the ms-swift venv's python by benchmarks/vs_swift.py. Loads only the processor (no
model), builds the template as `swift sft` does (train mode), and encodes each row of an
ms-swift "messages" JSONL file in a pool of worker processes; prints the same JSON line as the
vlmkit side. Pixel limits come from MAX_PIXELS / MIN_PIXELS, as for `swift sft`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

TEMPLATE = None
ROWS = None


def _encode(i: int) -> tuple[int, int]:
    row = ROWS[i]
    encoded = TEMPLATE.encode({"messages": row["messages"], "images": list(row["images"])})
    patches = encoded["pixel_values"].shape[0] if "pixel_values" in encoded else 0
    return len(encoded["input_ids"]), patches


def main() -> None:
    global TEMPLATE, ROWS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--chunksize", type=int, default=8)
    args = parser.parse_args()

    from swift import get_processor, get_template

    processor = get_processor(args.model, model_type="qwen2_vl")
    TEMPLATE = get_template(processor, template_type="qwen2_vl", max_length=args.max_length)
    TEMPLATE.set_mode("train")
    with open(args.dataset) as f:
        ROWS = [json.loads(line) for line in f if line.strip()]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        results = list(pool.imap(_encode, range(len(ROWS)), chunksize=args.chunksize))
    seconds = time.perf_counter() - start
    print(json.dumps({
        "rows": len(results),
        "seconds": seconds,
        "tokens": sum(t for t, _ in results),
        "patches": sum(p for _, p in results),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
