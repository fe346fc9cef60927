"""Workload 1, vlmkit side: encode every row of a dataset to model inputs with a pool of worker processes.

    python benchmarks/_encode_vlmkit.py MODEL DATASET --workers 2 --max-pixels 200704

Run by benchmarks/vs_swift.py (which measures the process tree's memory); prints one JSON line:
rows, seconds (pool start to last row), tokens (sum of input_ids lengths), patches (sum of
pixel_values rows), so that both sides can be checked to have done the same work.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

TEMPLATE = None
DATASET = None


def _encode(i: int) -> tuple[int, int]:
    encoded = TEMPLATE.encode(DATASET[i])
    patches = encoded["pixel_values"].shape[0] if "pixel_values" in encoded else 0
    return encoded["input_ids"].shape[0], patches


def main() -> None:
    global TEMPLATE, DATASET
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("dataset")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-pixels", type=int, default=3136)
    parser.add_argument("--max-pixels", type=int, default=200704)
    parser.add_argument("--chunksize", type=int, default=8)
    parser.add_argument("--image-cache-mb", type=float, default=64, help="0: every image decoded for every row")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from vlmkit.data import load_dataset
    from vlmkit.families import family_for_model_dir
    from vlmkit.media.images import set_image_cache_mb

    set_image_cache_mb(args.image_cache_mb)  # before the workers fork: they inherit it

    family = family_for_model_dir(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    TEMPLATE = family.load_template(
        args.model, tokenizer, min_pixels=args.min_pixels, max_pixels=args.max_pixels
    )
    DATASET = load_dataset(args.dataset)
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        results = list(pool.imap(_encode, range(len(DATASET)), chunksize=args.chunksize))
    seconds = time.perf_counter() - start
    print(json.dumps({
        "rows": len(results),
        "seconds": seconds,
        "tokens": sum(t for t, _ in results),
        "patches": sum(p for _, p in results),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
