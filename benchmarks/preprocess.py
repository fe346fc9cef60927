"""Preprocessing throughput and memory: encoding a photo dataset to model inputs, with and without
the encode cache, with 1 and 2 worker processes.

    python benchmarks/preprocess.py --rows 2000 --workers 1 2 --max-pixels 200704

Generates (once, in --work) a dataset of --rows rows with 1-3 photo-like JPEGs each, 320x240 to
1920x1080, and a tiny Qwen2-VL (600-token vocabulary; the tokenizer barely matters here). Each
measurement runs in a fresh process and reports rows/s and peak RSS (the main process plus the
largest worker):

- before:  template.encode of the last commit (`git show HEAD:...template.py`), when available
- encode:  template.encode now (decode once, table-lookup normalisation), no cache
- draft:   the same with jpeg_draft=True (reduced-scale JPEG decoding; not bit-exact; only with
           --modes draft: it changes nothing unless photos are at least 4x the target size)
- cold:    `encode_dataset` into an empty encode cache (decode, resize, tokenize, write)
- warm:    `encode_dataset` again (every row found: what a second or resumed run's pre-pass costs)
- read:    model inputs read back from the cache (what DataLoader workers do in training)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = [(320, 240), (640, 480), (800, 600), (1024, 768), (1280, 720), (1600, 1200), (1920, 1080)]
MODES = ["before", "encode", "draft", "cold", "warm", "read"]


def make_data(work: Path, rows: int, seed: int = 0) -> Path:
    """--rows rows of 1-3 JPEGs (distinct photo-like images; one file per image) -> train.jsonl."""
    import numpy as np
    from PIL import Image

    dataset = work / f"photos-{rows}.jsonl"
    if dataset.exists():
        return dataset
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(rows):
        paths = []
        for k in range(int(rng.integers(1, 4))):
            width, height = SIZES[int(rng.integers(len(SIZES)))]
            path = images / f"{i:05d}-{k}.jpg"
            if not path.exists():
                y, x = np.mgrid[0:height, 0:width].astype(np.float32)
                phase = rng.uniform(0, 6.28, 3)
                pixels = np.stack(
                    [127 + 100 * np.sin(x / (40 + 20 * c) + y / 70 + phase[c]) for c in range(3)], -1
                )
                pixels += rng.normal(0, 10, (height, width, 3)).astype(np.float32)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=88)
            paths.append(str(path))
        question = "<image>" * len(paths) + f"Describe picture set {i}."
        lines.append(
            json.dumps({"query": question, "response": f"A set of {len(paths)} photos.", "images": paths})
        )
    dataset.write_text("\n".join(lines) + "\n")
    return dataset


def _old_template_class():
    """Qwen2VLTemplate as of the last commit, or None outside a git checkout."""
    try:
        source = subprocess.run(
            ["git", "show", "HEAD:src/vlmkit/families/qwen2_vl/template.py"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    namespace = {"__name__": "vlmkit_template_before"}
    exec(compile(source, "template_before.py", "exec"), namespace)
    return namespace["Qwen2VLTemplate"]


TEMPLATE = None
DATASET = None
CACHE = None


def _encode(i: int) -> int:
    return TEMPLATE.encode(DATASET[i])["input_ids"].shape[0]


def _read(i: int) -> int:
    return CACHE.encode(DATASET[i])["input_ids"].shape[0]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def measure(
    mode: str, model: Path, dataset_path: Path, workers: int, max_pixels: int, cache_dir: Path
) -> dict:
    """One measurement in this process (run by `main` in a fresh process per mode)."""
    global TEMPLATE, DATASET, CACHE
    from transformers import AutoTokenizer

    from vlmkit.data import load_dataset
    from vlmkit.data.cache import EncodeCache, encode_dataset
    from vlmkit.families import family_for_model_dir
    from vlmkit.families.qwen2_vl.render import render_qwen2_vl

    tokenizer = AutoTokenizer.from_pretrained(model)
    family = family_for_model_dir(model)
    if mode == "before":
        old = _old_template_class()
        if old is None:
            return {"mode": mode, "skipped": "not a git checkout"}
        TEMPLATE = old.from_pretrained(model, tokenizer, render=render_qwen2_vl, max_pixels=max_pixels)
    else:
        TEMPLATE = family.load_template(model, tokenizer, max_pixels=max_pixels)
        TEMPLATE.jpeg_draft = mode == "draft"
    DATASET = load_dataset(dataset_path)
    rows = len(DATASET)
    start = time.perf_counter()
    if mode in ("cold", "warm"):
        stats = encode_dataset(DATASET, TEMPLATE, workers=workers, cache_dir=cache_dir)
        assert not stats.failed, stats.failed[:3]
        done = {"encoded": stats.encoded, "cached": stats.cached}
    else:
        if mode == "read":
            CACHE = EncodeCache(cache_dir, TEMPLATE)
        work = _read if mode == "read" else _encode
        if workers <= 1:
            _worker_init()
            tokens = sum(map(work, range(rows)))
        else:
            with multiprocessing.get_context("fork").Pool(workers, _worker_init) as pool:
                tokens = sum(pool.imap(work, range(rows), chunksize=4))
        done = {"tokens": tokens}
    seconds = time.perf_counter() - start
    peak_mib = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    ) / 1024
    return {"mode": mode, "workers": workers, "rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1), "peak_rss_mib": round(peak_mib), **done}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-pixels", type=int, default=200704)
    parser.add_argument("--modes", nargs="+", default=[m for m in MODES if m != "draft"], choices=MODES)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vlmkit-preprocess-bench"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: mode,workers,model,dataset,cache
    args = parser.parse_args()
    if args.one:
        mode, workers, model, dataset, cache = args.one.split(",")
        print(
            json.dumps(measure(mode, Path(model), Path(dataset), int(workers), args.max_pixels, Path(cache)))
        )
        return

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    args.work.mkdir(parents=True, exist_ok=True)
    model = args.work / "tiny-qwen2-vl"
    if not (model / "config.json").exists():
        build_tiny_model(family_by_name("qwen2-vl"), model, small_vocab=True)
    dataset = make_data(args.work, args.rows)
    print(f"{args.rows} rows, max_pixels {args.max_pixels}, dataset {dataset}")
    print("| mode | workers | rows/s | seconds | peak RSS (MiB) |\n| --- | --- | --- | --- | --- |")
    for workers in args.workers:
        cache = args.work / f"cache-{workers}"
        shutil.rmtree(cache, ignore_errors=True)
        for mode in args.modes:
            spec = ",".join([mode, str(workers), str(model), str(dataset), str(cache)])
            command = [sys.executable, __file__, "--one", spec, "--max-pixels", str(args.max_pixels)]
            out = subprocess.run(command, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {mode} | {workers} | failed: {out.stderr.strip().splitlines()[-1]} | | |")
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if "skipped" in result:
                print(f"| {mode} | {workers} | skipped: {result['skipped']} | | |")
                continue
            print(
                f"| {mode} | {workers} | {result['rows_per_s']} | {result['seconds']} | {result['peak_rss_mib']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
