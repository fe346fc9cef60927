"""Memory and speed of reading a Parquet dataset with embedded images, against its row count.

Writes (once per size, cached in --workdir) an N-row Parquet file in the LaTeX_OCR schema: an
`image` column of `datasets.Image` values (PNG bytes embedded, every row its own copy: no Parquet
dictionary) and a `text` column. Then, each in a fresh process:

- `vlmkit data check` on it with a tiny model: wall time and peak RSS (ru_maxrss of that process),
  the first time (datasets converts the Parquet into its Arrow cache) and again (cache hit);
- reading: `load_dataset` then every row converted to a Sample (what check and training do per
  row), rows/s and peak RSS.

Flat memory means peak RSS does not grow with N: rows are read from the memory-mapped Arrow table
one chunk at a time and images are never decoded up front.

    python benchmarks/datasets_scale.py --rows 2000 20000 200000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

READ = """
import json, resource, sys, time
from vlmkit.data import load_dataset, row_to_sample
start = time.perf_counter()
data = load_dataset(sys.argv[1])
loaded = time.perf_counter()
n = 0
for row in data.rows:
    sample = row_to_sample(row.data, row.format, row.where, row.base_dirs)
    n += len(sample.media("image"))
end = time.perf_counter()
print(json.dumps({"rows": len(data), "images": n, "load_s": loaded - start, "read_s": end - loaded,
                  "rows_per_s": len(data) / (end - loaded),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_parquet(path: Path, rows: int, side: int, pool: int = 256, batch: int = 10_000) -> None:
    """`rows` rows of (PNG of side x side random pixels, LaTeX text), images cycling through `pool`."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(0)
    pngs = []
    for _ in range(pool):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
        pngs.append(buffer.getvalue())
    schema = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")}).arrow_schema
    tmp = path.with_suffix(".part")
    with pq.ParquetWriter(tmp, schema, use_dictionary=False) as writer:
        for start in range(0, rows, batch):
            ids = range(start, min(rows, start + batch))
            images = [{"bytes": pngs[i % pool], "path": f"{i:08d}.png"} for i in ids]
            texts = [f"\\frac{{{i}}}{{x^{{2}}}}" for i in ids]
            writer.write_table(pa.table({"image": images, "text": texts}, schema=schema))
    tmp.replace(path)


# Peak RSS is read by a small parent process: a child's ru_maxrss starts from its parent's RSS at
# fork (the kernel keeps the high-water mark across exec), and this script holds torch.
WAIT = """
import json, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
out, err = process.communicate()
import resource
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": process.returncode, "peak_kb": peak, "stdout": out, "stderr": err[-2000:]}))
"""


def measure(command: list[str], env: dict[str, str]) -> dict:
    """Wall time, peak RSS (MB) and stdout of one process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WAIT, *command], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    result = json.loads(done.stdout)
    if result["code"] not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} failed:\n{result['stderr']}")
    return {"wall_s": wall, "peak_rss_mb": result["peak_kb"] / 1024, "stdout": result["stdout"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--side", type=int, default=32, help="image side in pixels")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlmkit_datasets_scale")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from vlmkit.families import family_by_name
    from vlmkit.tiny import build_tiny_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "model"
    if not (model / "config.json").exists():
        build_tiny_model(family_by_name("qwen2-vl"), model, small_vocab=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(args.workdir / "hf_cache"), "OMP_NUM_THREADS": "1"}
    results = {}
    for n in args.rows:
        path = args.workdir / f"latex_ocr_{n}.parquet"
        if not path.exists():
            write_parquet(path, n, args.side)
        check = [sys.executable, "-m", "vlmkit", "data", "check", "-m", str(model), "-d", str(path),
                 "--no-progress", "--histogram", str(args.workdir / "h.png")]  # fmt: skip
        shutil.rmtree(args.workdir / "hf_cache", ignore_errors=True)  # the first check builds the Arrow cache
        first, again = measure(check, env), measure(check, env)
        read = measure([sys.executable, "-c", READ, str(path)], env)
        stats = json.loads(read["stdout"])
        results[n] = {
            "parquet_mb": path.stat().st_size / 2**20,
            "check_first_s": first["wall_s"],
            "check_first_rss_mb": first["peak_rss_mb"],
            "check_s": again["wall_s"],
            "check_rss_mb": again["peak_rss_mb"],
            "read_rows_per_s": stats["rows_per_s"],
            "read_rss_mb": stats["peak_rss_mb"],
        }
        print(json.dumps({"rows": n, **results[n]}), flush=True)
    print("| rows | Parquet | data check (first: Arrow cache built) | data check (cached) | read rows/s | read peak RSS |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, r in results.items():
        print(
            f"| {n:,} | {r['parquet_mb']:.0f} MB | {r['check_first_s']:.1f} s, {r['check_first_rss_mb']:.0f} MB "
            f"| {r['check_s']:.1f} s, {r['check_rss_mb']:.0f} MB | {r['read_rows_per_s']:,.0f} | {r['read_rss_mb']:.0f} MB |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
