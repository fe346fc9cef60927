"""Training steps of `vlmkit demo` beside busy processes, for torch's thread settings (issue 28 #8).

    python benchmarks/busy_machine.py --hogs 0 1 2 --repeats 2 --steps 30

Builds the demo's tiny Qwen2-VL and one batch of its shapes data (batch 32, 84 px) once, then for each
number of busy processes (`python -c 'while True: pass'`, started here and stopped after) and each
setting runs a fresh process that times `--steps` full fine-tuning steps (forward, backward, AdamW) after
3 warm-up steps, and prints the median step time. The settings:

- default: torch as installed (one intra-op thread per core, OpenMP's default wait policy),
- passive: OMP_WAIT_POLICY=passive (threads sleep at a barrier instead of spinning),
- 1 thread: OMP_NUM_THREADS=1,
- vlmkit: no variable set; vlmkit's own choice at start (`vlmkit.commands.threads.choose_wait_policy`).

The load average (`uptime`) is printed before and after each group: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = r"""
import sys, time, json
from pathlib import Path
import vlmkit.commands.threads
if sys.argv[3] == "vlmkit":
    vlmkit.commands.threads.choose_wait_policy()  # before torch is imported, as the CLI does
import torch
from vlmkit.families import family_by_name
from vlmkit.data import load_dataset
from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
model_dir, data, steps = Path(sys.argv[1]), sys.argv[2], int(sys.argv[4])
template = family_by_name("qwen2-vl").load_template(model_dir, AutoTokenizer.from_pretrained(model_dir),
                                                     min_pixels=84 * 84, max_pixels=84 * 84)
dataset = load_dataset(data)
rows = [dataset[i] for i in range(32)]
batch = template.collate([template.encode(r) for r in rows], padding_side="right")
batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
model = Qwen2VLForConditionalGeneration.from_pretrained(model_dir)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
times = []
for step in range(3 + steps):
    started = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    if step >= 3:
        times.append(time.perf_counter() - started)
print(json.dumps({"threads": torch.get_num_threads(), "times": times}))
"""

SETTINGS = {
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "passive"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "vlmkit": {},
}


def load_average() -> str:
    return open("/proc/loadavg").read().split(" ", 3)[:3].__str__()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hogs", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    args = parser.parse_args()

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model
    from vlmkit.media.shapes import make_shapes_dataset

    folder = Path(tempfile.mkdtemp(prefix="busy-"))
    model_dir = build_tiny_model(family_by_name("qwen2-vl"), folder / "model", small_vocab=True)
    data = make_shapes_dataset(folder / "data", 32, seed=0, image_size=84, grid=3, questions=("color",))
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    results = []
    for hogs in args.hogs:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            time.sleep(1)
            print(f"-- {hogs} busy process(es); load average before {load_average()}", flush=True)
            for repeat in range(args.repeats):
                for name in args.settings:
                    env = {**clean, **SETTINGS[name]}
                    done = subprocess.run(
                        [sys.executable, "-c", STEP, str(model_dir), str(data), name, str(args.steps)],
                        capture_output=True, text=True, env=env, timeout=1800,
                    )  # fmt: skip
                    if done.returncode != 0:
                        print(done.stderr[-2000:], file=sys.stderr)
                        raise SystemExit(1)
                    measured = json.loads(done.stdout.strip().splitlines()[-1])
                    median = statistics.median(measured["times"])
                    results.append({"hogs": hogs, "setting": name, "repeat": repeat, "median_s": median,
                                    "threads": measured["threads"]})  # fmt: skip
                    print(f"{hogs} busy, {name:9s} ({measured['threads']} thread(s)), repeat {repeat}: "
                          f"median step {median * 1000:.0f} ms", flush=True)  # fmt: skip
            print(f"   load average after {load_average()}", flush=True)
        finally:
            for process in busy:
                process.kill()
                process.wait()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
