"""`vlmkit sft --streaming` against the default (every row read and checked up front) on a large Parquet.

The data is `datasets_scale.py`'s: N rows in the LaTeX_OCR schema (a 32x32 PNG embedded in every row as a
`datasets.Image`, and a `text` column), with a small-vocabulary tiny Qwen2-VL. Each measure runs in a fresh
process whose memory is sampled every 20 ms (heap: RssAnon; mapped files: RssFile, the Arrow cache and
libraries), with an empty `datasets` cache as a first run has:

- read: every row turned into a Sample, by `load_dataset` (memory-mapped Arrow; `datasets` first converts the
  Parquet into its cache) and by `open_stream` (`datasets` streaming over the Parquet itself): rows/s;
- sft: `vlmkit sft --max-steps S --no-packing --no-cache` with and without --streaming: wall time, time
  before the first step (reading, checking), rows trained per second of training, peak memory.

    python benchmarks/streaming.py --rows 200000 --steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from datasets_scale import write_parquet  # noqa: E402

PROBE = """
import json, sys, threading, time
peak = {"RssAnon": 0, "RssFile": 0}
def status():
    return {l.split(":")[0]: int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("Rss")}
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
    from vlmkit.data import row_to_sample
    if mode == "read":
        from vlmkit.data import load_dataset
        rows = load_dataset(args[0]).rows
    else:
        from vlmkit.data.streaming import open_stream
        rows = (row for _, row in open_stream([args[0]]).rows())
    n = 0
    for row in rows:
        row_to_sample(row.data, row.format, row.where, row.base_dirs)
        n += 1
        if n == 1:
            result["first_row_s"] = time.perf_counter() - start
    result["rows_per_s"] = n / (time.perf_counter() - start)
time.sleep(0.05)
result.update(wall_s=time.perf_counter() - start, anon_mb=peak["RssAnon"] / 1024, file_mb=peak["RssFile"] / 1024)
print("PROBE " + json.dumps(result))
"""


def measure(mode: str, args: list[str], env: dict[str, str]) -> dict:
    """The PROBE figures of one fresh process (with an empty `datasets` cache)."""
    shutil.rmtree(env["HF_DATASETS_CACHE"], ignore_errors=True)
    done = subprocess.run([sys.executable, "-c", PROBE, mode, *args], capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    if not lines or json.loads(lines[-1][6:]).get("code", 0) != 0:
        raise RuntimeError(f"{mode} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][6:])


def sft(model: Path, data: Path, out: Path, steps: int, streaming: bool, env: dict[str, str]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    args = ["sft", "-m", str(model), "-d", str(data), "--max-steps", str(steps), "--batch-size", "8"]
    args += ["--no-packing", "--no-cache", "--no-progress", "--report-to", "none", "--output-dir", str(out)]
    args += ["--save-steps", str(steps), "--logging-steps", str(steps)] + (
        ["--streaming"] if streaming else []
    )
    result = measure("cli", args, env)
    (run_dir,) = (out / model.name).iterdir()
    last = [json.loads(line) for line in (run_dir / "train_log.jsonl").open()][-1]
    result["rows_trained_per_s"] = last["samples_seen"] / last["train_runtime"]
    result["before_training_s"] = result["wall_s"] - last["train_runtime"]
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000])
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps of 8 rows each")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlmkit_datasets_scale")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "model"
    if not (model / "config.json").exists():
        build_tiny_model(family_by_name("qwen2-vl"), model, small_vocab=True)
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(args.workdir / "hf_cache_streaming"),
        "OMP_NUM_THREADS": "1",
    }
    results = {}
    for n in args.rows:
        path = args.workdir / f"latex_ocr_{n}.parquet"
        if not path.exists():
            write_parquet(path, n, 32)
        r = {"read": measure("read", [str(path)], env), "stream": measure("stream", [str(path)], env)}
        for name, streaming in (("sft", False), ("sft --streaming", True)):
            r[name] = sft(model, path, args.workdir / "runs", args.steps, streaming, env)
        results[n] = r
        print(json.dumps({"rows": n, **r}), flush=True)
    print("| rows | reading rows to Samples | | `sft` | | | `sft --streaming` | | |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n, r in results.items():

        def mem(m):
            return f"heap {m['anon_mb']:.0f} MB, mapped {m['file_mb']:.0f} MB"

        reads = [f"{r[k]['rows_per_s']:,.0f} rows/s, first row {r[k]['first_row_s']:.1f} s, {mem(r[k])}"
                 for k in ("read", "stream")]  # fmt: skip
        runs = [f"{r[k]['wall_s']:.0f} s ({r[k]['before_training_s']:.0f} s before step 1) | "
                f"{r[k]['rows_trained_per_s']:.1f} rows/s trained | {mem(r[k])}" for k in ("sft", "sft --streaming")]  # fmt: skip
        print(f"| {n:,} | {reads[0]} | {reads[1]} | {runs[0]} | {runs[1]} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
