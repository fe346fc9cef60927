"""Start-up costs users feel: `vlmkit --help`, building a tiny model, loading it, and a short greedy reply.

    python benchmarks/startup.py [--repeats 5]

Prints the median wall time of each over --repeats runs (each in a fresh process where that is
what users run). Results are recorded in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], **kwargs) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, **kwargs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    vlmkit = [sys.executable, "-m", "vlmkit"]
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("vlmkit --help", statistics.median(timed([*vlmkit, "--help"]) for _ in range(args.repeats))))
        rows.append(("vlmkit sft --help", statistics.median(timed([*vlmkit, "sft", "--help"])
                                                             for _ in range(args.repeats))))
        for vocab in ("--small-vocab", "--no-small-vocab"):
            times = [timed([*vlmkit, "tiny-model", "qwen2-vl", str(Path(tmp) / f"m{vocab}{i}"), vocab])
                     for i in range(args.repeats)]
            rows.append((f"vlmkit tiny-model qwen2-vl {vocab}", statistics.median(times)))
        model = Path(tmp) / "m--no-small-vocab0"
        chat = [*vlmkit, "infer", "--model", str(model), "--max-new-tokens", "16"]
        rows.append(("load real-vocab tiny model + 16-token reply (process)",
                     statistics.median(timed(chat, input=b"Hello\n") for _ in range(args.repeats))))
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:6.2f} s")


if __name__ == "__main__":
    main()
