"""What scoring adds to inference: `vlmkit eval` against `vlmkit infer --input` on the same rows.

Builds a tiny Qwen2-VL (600-token vocabulary) and an N-row VQA Parquet (embedded 64x48 PNGs, two
answers per row), then times, each in a fresh process and `--repeats` times (median):

- `vlmkit infer -m MODEL --input DATA` (batch inference only);
- `vlmkit eval -m MODEL -d DATA` (the same inference, then metrics with bootstrap intervals, report);
- `vlmkit eval --predictions` on infer's output (scoring and report alone, no model).

    python benchmarks/eval_speed.py --rows 64 --max-new-tokens 16 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_dataset(rows: int, path: Path) -> None:
    import datasets
    import numpy as np
    from PIL import Image

    def png(seed: int) -> bytes:
        pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        return buffer.getvalue()

    table = [
        {
            "question": f"What is in box {i}?",
            "answers": [f"item {i}", f"the item {i}"],
            "image": {"bytes": png(i)},
        }
        for i in range(rows)
    ]
    datasets.Dataset.from_list(table).cast_column("image", datasets.Image()).to_parquet(path)


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vlmkit", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(family_by_name("qwen2-vl"), work / "model", small_vocab=True)
        data = work / "vqa.parquet"
        write_dataset(args.rows, data)
        common = ["--max-new-tokens", str(args.max_new_tokens)]
        times: dict[str, list[float]] = {"infer --input": [], "eval --model": [], "eval --predictions": []}
        for k in range(args.repeats):
            preds = work / f"preds{k}.jsonl"
            times["infer --input"].append(timed(["infer", "-m", str(model), "--input", str(data), "--output", str(preds), *common]))  # fmt: skip
            times["eval --model"].append(timed(["eval", "-m", str(model), "-d", str(data), "-o", str(work / f"ev{k}"), *common]))  # fmt: skip
            times["eval --predictions"].append(timed(["eval", "--predictions", str(preds), "-o", str(work / f"evp{k}")]))  # fmt: skip
    print(
        f"{args.rows} rows, --max-new-tokens {args.max_new_tokens}, median of {args.repeats} (process wall time)"
    )
    print("| command | wall | rows/s |")
    print("| --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| `vlmkit {name}` | {median:.2f} s | {args.rows / median:.1f} |")


if __name__ == "__main__":
    main()
