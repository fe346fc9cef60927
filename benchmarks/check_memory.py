"""Peak memory of `vlmkit data check` on a Parquet dataset with embedded images, against its row count.

Writes (once per size, kept in --workdir) an N-row Parquet file in the LaTeX_OCR schema (`image` as
`datasets.Image` PNG bytes embedded in every row, `text`; `datasets_scale.write_parquet`), then runs
`vlmkit data check` on it with a tiny model, each in a fresh process with an empty `datasets` cache, and
reads the peak resident memory (VmHWM: heap and mapped files together) of that process from
`resource.getrusage(RUSAGE_CHILDREN)` of a wrapper process of its own.

    python benchmarks/check_memory.py --rows 2000 20000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "vlmkit", *sys.argv[1:]], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(done.stdout[-2000:] + done.stderr[-2000:])
"""


def _write_parquet():
    spec = importlib.util.spec_from_file_location("datasets_scale", Path(__file__).with_name("datasets_scale.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_parquet


def peak_mb(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak resident MB, wall seconds) of `python -m vlmkit ARGS` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True, env=env)
    code, kb = done.stdout.split("\n", 1)[0].split()
    if code not in ("0", "1"):  # 1: some rows are bad, still measured
        raise RuntimeError(f"vlmkit {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return int(kb) / 1024, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[2_000, 20_000])
    parser.add_argument("--side", type=int, default=32, help="image side in pixels")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "vlmkit_check_memory")
    args = parser.parse_args(argv)

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "model"
    if not (model / "config.json").exists():
        build_tiny_model(family_by_name("qwen2-vl"), model, small_vocab=True)
    env = {**os.environ, "HF_DATASETS_CACHE": str(args.workdir / "hf_cache"), "OMP_NUM_THREADS": "1"}
    write_parquet, results = _write_parquet(), {}
    for n in args.rows:
        path = args.workdir / f"latex_ocr_{n}.parquet"
        if not path.exists():
            write_parquet(path, n, args.side)
        shutil.rmtree(args.workdir / "hf_cache", ignore_errors=True)  # as a first run: nothing cached
        check = ["data", "check", "-m", str(model), "-d", str(path), "--no-progress",
                 "--histogram", str(args.workdir / "h.png")]  # fmt: skip
        results[n] = peak_mb(check, env) + (path.stat().st_size / 2**20,)
        print(f"{n} rows: peak {results[n][0]:.0f} MB, {results[n][1]:.0f} s", flush=True)
    print("| rows | Parquet | `data check`: peak memory, wall time |")
    print("| --- | --- | --- |")
    for n, (peak, wall, size) in results.items():
        print(f"| {n:,} | {size:.0f} MB | {peak:,.0f} MB, {wall:.0f} s |")
    return results


if __name__ == "__main__":
    main()
