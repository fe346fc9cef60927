"""Training throughput with and without packing and length grouping, on a tiny model (CPU).

    python benchmarks/packing.py --rows 256 --max-length 1024

Builds a small-vocabulary tiny Qwen2-VL (or takes --model) and a dataset of mixed lengths
(long-tailed text, a third of the rows with an image of random size), then trains one epoch
per setting with `vlmkit.train.sft` and reports, from the run's train_log.jsonl: wall time of
the training loop (transformers' train_runtime), rows/s, real (non-padding) tokens/s, and the
padding and fill fractions. Packed runs take --packed-batch sequences of up to --max-length
tokens per step; padded runs take --batch rows, about the same tokens per step by default.
Tiny models measure the data path and per-token overhead, not a real model's speed.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

SETTINGS = {
    "packing": {"packing": True},
    "padded, length-grouped": {"packing": False, "group_by_length": True},
    "padded, random order": {"packing": False, "group_by_length": False},
}


def make_dataset(folder: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        words = min(300, max(2, int(rng.lognormvariate(3.2, 0.9))))  # median ~25 words, long tail
        row = {
            "query": f"Row {i}: " + " ".join(["word"] * (words // 3)),
            "response": " ".join(["reply"] * words),
        }
        if i % 3 == 0:
            h, w = rng.randint(28, 112), rng.randint(28, 112)
            pixels = np.random.default_rng(i).integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / "imgs" / f"{i}.png")
            row["query"] = "<image>" + row["query"]
            row["images"] = [str(folder / "imgs" / f"{i}.png")]
        lines.append(json.dumps(row))
    path = folder / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(model: str, data: Path, out: Path, options: dict, args) -> dict:
    from vlmkit.train import SFTConfig, sft

    batch = args.packed_batch if options["packing"] else args.batch
    config = SFTConfig(
        model=model,
        dataset=[str(data)],
        output_dir=str(out),
        tuner="full",
        lr=1e-4,
        epochs=1,
        batch_size=batch,
        max_length=args.max_length,
        max_pixels=12544,
        max_bad_fraction=0.2,  # over-long rows are left out alike in every setting
        logging_steps=5,
        save_steps=100000,
        num_workers=0,
        report_to="none",
        progress=False,
        eval_generate=0,
        seed=args.seed,
        **options,
    )
    run_dir = sft(config)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    summary = next(r for r in log if "train_loss" in r)  # the end-of-training record
    return {
        "steps": summary["step"],
        "seconds": summary["train_runtime"],
        "rows_per_s": summary["samples_seen"] / summary["train_runtime"],
        "tokens_per_s": summary["num_input_tokens_seen"] / summary["train_runtime"],
        "padding_fraction": summary["padding_fraction"],
        "fill_fraction": summary.get("fill_fraction"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: build a small-vocab tiny Qwen2-VL)")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8, help="rows per step without packing")
    parser.add_argument("--packed-batch", type=int, default=1, help="packed sequences per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            from vlmkit.families import family_by_name
            from vlmkit.families.tiny import build_tiny_model

            model = str(build_tiny_model(family_by_name("qwen2-vl"), tmp / "model", small_vocab=True))
        data = make_dataset(tmp / "data", args.rows, args.seed)
        results = {
            name: run(model, data, tmp / name.replace(" ", "_"), opts, args)
            for name, opts in SETTINGS.items()
        }

    print(
        f"\n{args.rows} rows, max length {args.max_length}, padded batch {args.batch}, packed batch {args.packed_batch}"
    )
    print("| setting | steps | train s | rows/s | tokens/s | padding | fill |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        fill = f"{r['fill_fraction']:.1%}" if r["fill_fraction"] is not None else "-"
        print(
            f"| {name} | {r['steps']} | {r['seconds']:.1f} | {r['rows_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['padding_fraction']:.1%} | {fill} |"
        )


if __name__ == "__main__":
    main()
