"""Memory and speed of reading a Parquet dataset with embedded images, against its row count.

Writes (once per size, cached in --workdir) an N-row Parquet file in the LaTeX_OCR schema: an
`image` column of `datasets.Image` values (PNG bytes embedded, every row its own copy: no Parquet
dictionary) and a `text` column. Then, each in a fresh process:

- `vlmkit data check` on it with a tiny model: wall time and peak memory, the first time (datasets
  converts the Parquet into its Arrow cache) and again (cache hit);
- reading: `load_dataset` then every row converted to a Sample (what check and training do per
  row): rows/s and peak memory.

Peak memory is split into heap (RssAnon) and mapped files (RssFile: the memory-mapped Arrow cache,
whose pages count as resident once read and are dropped by the kernel under pressure). Flat
memory means the heap does not grow with N: rows are read from the memory-mapped table a chunk at a
time and images are never decoded up front.

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
from pathlib import Path

import numpy as np

# Runs in a fresh process: samples its memory every 20 ms while it runs the CLI (`cli` mode) or
# reads every row (`read` mode), then prints the peaks. RssAnon is the heap (what would grow if rows
# were kept or decoded); RssFile is the memory-mapped Arrow cache and libraries, pages the kernel
# drops under pressure; VmHWM is the kernel's peak of the two together.
PROBE = """
import json, sys, threading, time
peak = {"RssAnon": 0, "RssFile": 0}
def status():
    return {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(("Rss", "VmHWM"))}
def sample():
    while True:
        now = status()
        for key in peak:
            peak[key] = max(peak[key], now[key])
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
mode, args = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
result = {}
if mode == "cli":
    from vlmkit.cli import main
    sys.argv = ["vlmkit", *args]
    try:
        main()
    except SystemExit as e:
        result["code"] = e.code or 0
else:
    from vlmkit.data import load_dataset, row_to_sample
    data = load_dataset(args[0])
    loaded = time.perf_counter()
    for row in data.rows:
        row_to_sample(row.data, row.format, row.where, row.base_dirs)
    result["rows_per_s"] = len(data) / (time.perf_counter() - loaded)
time.sleep(0.05)
result.update(wall_s=time.perf_counter() - start, anon_mb=peak["RssAnon"] / 1024,
              file_mb=peak["RssFile"] / 1024, hwm_mb=status()["VmHWM"] / 1024)
print("PROBE " + json.dumps(result))
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


def measure(mode: str, args: list[str], env: dict[str, str]) -> dict:
    """The PROBE figures of one fresh process."""
    done = subprocess.run([sys.executable, "-c", PROBE, mode, *args], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if not lines or json.loads(lines[-1][6:]).get("code", 0) not in (0, 1):
        raise RuntimeError(f"{mode} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][6:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--side", type=int, default=32, help="image side in pixels")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlmkit_datasets_scale")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

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
        check = ["data", "check", "-m", str(model), "-d", str(path), "--no-progress",
                 "--histogram", str(args.workdir / "h.png")]  # fmt: skip
        shutil.rmtree(args.workdir / "hf_cache", ignore_errors=True)  # the first check builds the Arrow cache
        first, again = measure("cli", check, env), measure("cli", check, env)
        read = measure("read", [str(path)], env)
        results[n] = {"parquet_mb": path.stat().st_size / 2**20, "check_first": first, "check": again, "read": read}
        print(json.dumps({"rows": n, **results[n]}), flush=True)
    print("| rows | Parquet | data check, first (builds the Arrow cache) | data check, cached | read rows/s |")
    print("| --- | --- | --- | --- | --- |")
    for n, r in results.items():
        cells = [f"{r[k]['wall_s']:.0f} s, heap {r[k]['anon_mb']:.0f} MB, mapped {r[k]['file_mb']:.0f} MB"
                 for k in ("check_first", "check")]  # fmt: skip
        read = r["read"]
        print(
            f"| {n:,} | {r['parquet_mb']:.0f} MB | {cells[0]} | {cells[1]} | {read['rows_per_s']:,.0f} "
            f"(heap {read['anon_mb']:.0f} MB) |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
