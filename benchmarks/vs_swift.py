"""vlmkit and ms-swift side by side on CPU: preprocessing, start-up, training and batch inference.

    python benchmarks/vs_swift.py                       # the full run (2,000 rows, 3 repeats)
    python benchmarks/vs_swift.py --rows 64 --repeats 1 # a quick check

Both sides get the same tiny Qwen2-VL (`vlmkit tiny-model qwen2-vl`, real Qwen2 token ids, which
ms-swift's template hard-codes), the same generated rows (photo-sized JPEGs, 320x240 to
1920x1080, 1-3 per row), the same pixel limits, max_length, batch sizes, steps and number of
worker processes. Each measurement runs the two sides one after the other, alternating which goes
first, and reports the median over --repeats. Workloads:

1. preprocess: encode every row to model inputs (ids, labels, pixel patches) with a pool of
   --workers processes, cache cold (benchmarks/_encode_vlmkit.py, _encode_swift.py); rows/s and
   peak memory. Both sides must produce the same number of tokens and patches, which is checked.
   Where vlmkit has `vlmkit data encode`, that command into a cold cache is measured as well.
   The rows draw their images from --unique-images files (400 by default: each image in about 10
   rows, as in VQA-style data); vlmkit's per-process cache of resized images decodes a repeated
   image once, so its pool is measured a second time with that cache off (--image-cache-mb 0:
   every image decoded for every row, as ms-swift does and as data without repeats gets).
2. startup: `sft --help`, and the time from launching `sft` to its first logged training step
   (wall and CPU seconds, taken from the LoRA training runs of workload 3).
3. train: LoRA and full tuning (vision tower frozen) for --train-steps steps; samples/s and
   tokens/s between the first and the last logged step, peak memory of the whole run. vlmkit runs
   --no-packing (where it has the option) so that both sides take --batch-size rows a step.
4. infer: batch inference (greedy, --max-new-tokens); rows/s from the difference between a run on
   one batch and a run on --infer-rows, so that start-up cancels out; peak memory.

Peak memory is the largest sum over the command's whole process tree (workers included) of each
process's proportional set size (PSS, so pages shared after fork are not counted twice), sampled
every 200 ms.

ms-swift is a benchmark dependency only: it is installed from PyPI into its own venv under
--cache-dir (created on first use, reused after; torch pinned to 2.13.0 like vlmkit's). On a machine
without torchvision, benchmarks/swift_plugin/ (on PYTHONPATH of ms-swift commands only) lets its
Qwen2-VL image path run. Prints a table and writes --json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
PHOTO_SIZES = [(320, 240), (640, 480), (800, 600), (1024, 768), (1280, 720), (1600, 900), (1920, 1080),
               (480, 640), (1080, 1920)]  # fmt: skip
WORDS = ("the a photo of with red green blue small large left right near far sky road tree house car "
         "person dog cat water light dark bright shows picture image scene color shape top bottom").split()  # fmt: skip


# -- setup ---------------------------------------------------------------------------------------


def ensure_swift_venv(cache_dir: Path, swift_version: str) -> Path:
    """The ms-swift venv's python: created on first use (torch first, pinned, so that ms-swift does not
    pull a CUDA build), reused after, and moved to `swift_version` if it holds another."""
    venv = cache_dir / "swift-venv"
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"creating the ms-swift venv in {venv} (a few minutes, once)", flush=True)
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    installed = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('ms-swift'))"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
    if installed != swift_version:
        subprocess.run([*pip, "torch==2.13.0"], check=True)
        subprocess.run([*pip, f"ms-swift=={swift_version}", "qwen-vl-utils"], check=True)
    return python


def build_model(work: Path) -> Path:
    model = work / "tiny-qwen2-vl"
    if not (model / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "vlmkit", "tiny-model", "qwen2-vl", str(model)], check=True)
    return model


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Smooth colour regions plus sensor-like noise: JPEG sizes and decode costs like real photos."""
    low = rng.integers(0, 256, size=(max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    image = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def make_dataset(work: Path, rows: int, unique_images: int, seed: int = 0) -> Path:
    """rows-row ms-swift/vlmkit "messages" JSONL; each row 1-3 images drawn from `unique_images`
    generated JPEGs of mixed photo sizes, a question and a 10-60 word answer."""
    images_dir = work / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(unique_images):
        path = images_dir / f"{i:05d}.jpg"
        width, height = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        if not path.is_file():
            _photo(rng, width, height).save(path, quality=90)
        paths.append(str(path))
    out = work / f"rows-{rows}-{unique_images}-{seed}.jsonl"
    if out.is_file():
        return out
    pick = random.Random(seed)
    with out.open("w") as f:
        for _ in range(rows):
            k = pick.randint(1, 3)
            question = " ".join(pick.choices(WORDS, k=pick.randint(4, 12))) + "?"
            answer = " ".join(pick.choices(WORDS, k=pick.randint(10, 60))) + "."
            row = {
                "messages": [
                    {"role": "user", "content": "<image>" * k + question},
                    {"role": "assistant", "content": answer},
                ],
                "images": pick.sample(paths, k),
            }
            f.write(json.dumps(row) + "\n")
    return out


def head_rows(dataset: Path, n: int, out: Path) -> Path:
    out.write_text("".join(dataset.read_text().splitlines(keepends=True)[:n]))
    return out


# -- running and measuring -----------------------------------------------------------------------


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        parent = psutil.Process(pid)
        return [pid] + [child.pid for child in parent.children(recursive=True)]
    except psutil.Error:
        return []


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and of their children already reaped."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def run(command: list[str], env: dict[str, str] | None = None, watch: str | None = None,
        cwd: Path | None = None) -> dict:  # fmt: skip
    """Run `command`; wall seconds, CPU seconds and peak PSS (MiB) of its process tree, its output, and
    for `watch` (a glob under cwd) each line of the first matching file with the wall and CPU seconds
    since launch at which it appeared (CPU seconds are less disturbed by other work on the machine)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    peak = 0
    lines: list[tuple[float, str]] = []
    cpu_at: list[float] = []
    cpu = 0.0
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    watched: Path | None = None
    seen = 0
    while True:
        done = process.poll() is not None
        tree = _tree(process.pid)
        peak = max(peak, sum(_pss_kib(pid) for pid in tree))
        cpu = max(cpu, _cpu_seconds(tree)) if tree else cpu
        if watch:
            if watched is None:
                found = sorted((cwd or Path.cwd()).glob(watch))
                watched = found[0] if found else None
            if watched is not None:
                text = watched.read_text()
                complete = text[: text.rfind("\n") + 1]
                now = time.perf_counter() - start
                for line in complete[seen:].splitlines():
                    lines.append((now, line))
                    cpu_at.append(cpu)
                seen = len(complete)
        if done:
            break
        time.sleep(0.2)
    reader.join()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime  # the whole reaped tree
    text = "".join(output)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({process.returncode}):\n{text[-3000:]}")
    return {
        "wall": wall,
        "cpu": cpu,
        "peak_mib": peak / 1024,
        "output": text,
        "lines": lines,
        "cpu_at": cpu_at,
    }


class Sides:
    """The command lines of the two sides for each workload."""

    def __init__(self, swift_python: Path, model: Path, args: argparse.Namespace):
        self.swift_bin = swift_python.parent
        self.model = model
        self.args = args
        self.swift_env = {
            "PYTHONPATH": str(HERE / "swift_plugin"),
            "MAX_PIXELS": str(args.max_pixels),
            "MIN_PIXELS": str(args.min_pixels),
        }
        self.vlmkit = [sys.executable, "-m", "vlmkit"]
        # Packing puts a varying number of rows in a step; ms-swift does not pack by default, so for the
        # same rows per step vlmkit runs --no-packing where it has the option.
        sft_help = subprocess.run([*self.vlmkit, "sft", "--help"], capture_output=True, text=True).stdout
        self.vlmkit_sft_extra = ["--no-packing"] if "--no-packing" in sft_help else []

    # 1. preprocessing
    def encode(self, side: str, dataset: Path) -> tuple[list[str], dict]:
        a = self.args
        if side == "vlmkit":
            return [sys.executable, str(HERE / "_encode_vlmkit.py"), str(self.model), str(dataset),
                    "--workers", str(a.workers), "--min-pixels", str(a.min_pixels),
                    "--max-pixels", str(a.max_pixels)], {}  # fmt: skip
        return [str(self.swift_bin / "python"), str(HERE / "_encode_swift.py"), str(self.model), str(dataset),
                "--workers", str(a.workers), "--max-length", str(a.max_length)], self.swift_env  # fmt: skip

    def encode_cli(self, dataset: Path, cache: Path) -> list[str]:
        a = self.args
        return [*self.vlmkit, "data", "encode", "--model", str(self.model), "--dataset", str(dataset),
                "--cache-dir", str(cache), "--workers", str(a.workers), "--max-length", str(a.max_length),
                "--min-pixels", str(a.min_pixels), "--max-pixels", str(a.max_pixels), "--no-progress"]  # fmt: skip

    # 2. --help
    def help(self, side: str) -> tuple[list[str], dict]:
        if side == "vlmkit":
            return [*self.vlmkit, "sft", "--help"], {}
        return [str(self.swift_bin / "swift"), "sft", "--help"], self.swift_env

    # 2-3. training
    def sft(self, side: str, dataset: Path, out: Path, tuner: str, steps: int, logging_steps: int):
        a = self.args
        if side == "vlmkit":
            return [*self.vlmkit, "sft", "--model", str(self.model), "--dataset", str(dataset), "--tuner", tuner,
                    "--max-steps", str(steps), "--batch-size", str(a.batch_size),
                    "--logging-steps", str(logging_steps), "--save-steps", "100000",
                    "--max-length", str(a.max_length), "--min-pixels", str(a.min_pixels),
                    "--max-pixels", str(a.max_pixels), "--lr", "1e-4", "--num-workers", str(a.workers),
                    "--report-to", "none", "--dtype", "fp32", "--no-progress",
                    "--output-dir", str(out), *self.vlmkit_sft_extra], {}  # fmt: skip
        return [str(self.swift_bin / "swift"), "sft", "--model", str(self.model), "--model_type", "qwen2_vl",
                "--template", "qwen2_vl", "--dataset", str(dataset), "--tuner_type", tuner,
                "--max_steps", str(steps), "--per_device_train_batch_size", str(a.batch_size),
                "--logging_steps", str(logging_steps), "--save_steps", "100000",
                "--max_length", str(a.max_length), "--learning_rate", "1e-4",
                "--dataloader_num_workers", str(a.workers), "--dataset_num_proc", str(a.workers),
                "--gradient_checkpointing", "false", "--split_dataset_ratio", "0",
                "--report_to", "none", "--torch_dtype", "float32",
                "--output_dir", str(out)], self.swift_env  # fmt: skip

    # 4. batch inference
    def infer(self, side: str, dataset: Path, out: Path) -> tuple[list[str], dict]:
        a = self.args
        if side == "vlmkit":
            return [*self.vlmkit, "infer", "--model", str(self.model), "--input", str(dataset),
                    "--output", str(out), "--batch-size", str(a.infer_batch_size),
                    "--max-new-tokens", str(a.max_new_tokens), "--temperature", "0", "--device", "cpu",
                    "--dtype", "fp32", "--min-pixels", str(a.min_pixels),
                    "--max-pixels", str(a.max_pixels)], {}  # fmt: skip
        return [str(self.swift_bin / "swift"), "infer", "--model", str(self.model), "--model_type", "qwen2_vl",
                "--template", "qwen2_vl", "--val_dataset", str(dataset), "--infer_backend", "transformers",
                "--max_batch_size", str(a.infer_batch_size), "--max_new_tokens", str(a.max_new_tokens),
                "--temperature", "0", "--torch_dtype", "float32", "--stream", "false",
                "--result_path", str(out)], self.swift_env  # fmt: skip


def log_glob(side: str) -> str:
    """Where each side appends one JSON line per logged step, relative to its output folder."""
    return "*/*/*/train_log.jsonl" if side == "vlmkit" else "*/*/logging.jsonl"


def logged_steps(side: str, lines: list[tuple[float, str]]) -> list[tuple[float, int]]:
    """(seconds since launch, step) of each logged training step."""
    steps = []
    for seconds, line in lines:
        record = json.loads(line)
        if side == "vlmkit" and "loss" in record:
            steps.append((seconds, int(record["step"])))
        elif side == "swift" and "loss" in record:
            steps.append((seconds, int(str(record["global_step/max_steps"]).split("/")[0])))
    return steps


# -- workloads -----------------------------------------------------------------------------------


def order(repeat: int) -> tuple[str, str]:
    return ("vlmkit", "swift") if repeat % 2 == 0 else ("swift", "vlmkit")


def preprocess(sides: Sides, dataset: Path, work: Path, repeats: int) -> dict:
    """Encode pools on both sides (rows/s from pool start, peak memory of the whole command); where
    vlmkit has `vlmkit data encode`, also that whole command into a cold cache, against the whole
    ms-swift driver command (start-up included on both)."""
    has_cli = (
        " encode " in subprocess.run([*sides.vlmkit, "data", "--help"], capture_output=True, text=True).stdout
    )
    results: dict[str, list[dict]] = {"vlmkit": [], "swift": []}
    for r in range(repeats):
        for side in order(r):
            command, env = sides.encode(side, dataset)
            measured = run(command, env)
            line = [x for x in measured["output"].splitlines() if x.startswith("{")][-1]
            summary = json.loads(line)
            x = {
                **summary,
                "peak_mib": measured["peak_mib"],
                "rows_per_s_command": summary["rows"] / measured["wall"],
                "rows_per_s_no_image_cache": summary["rows"] / summary["seconds"],
            }
            if side == "vlmkit":  # again without its cache of resized images: each image decoded per row
                plain = run([*command, "--image-cache-mb", "0"], env)["output"]
                plain_summary = json.loads([x for x in plain.splitlines() if x.startswith("{")][-1])
                x["rows_per_s_no_image_cache"] = plain_summary["rows"] / plain_summary["seconds"]
            if side == "vlmkit" and has_cli:
                cache = work / "encode-cache"
                shutil.rmtree(cache, ignore_errors=True)
                cli = run(sides.encode_cli(dataset, cache))
                shutil.rmtree(cache, ignore_errors=True)
                x["rows_per_s_command"] = summary["rows"] / cli["wall"]
                rate = re.search(r"\(([\d.]+) rows/s\)", cli["output"])  # its own figure: encode and store
                x["data_encode_rows_per_s"] = float(rate.group(1)) if rate else math.nan
                x["peak_mib_command"] = cli["peak_mib"]
            results[side].append(x)
            print(
                f"  preprocess {side}: {summary['rows'] / summary['seconds']:.1f} rows/s "
                f"({x['rows_per_s_no_image_cache']:.1f} without the image cache), "
                f"{measured['peak_mib']:.0f} MiB; whole command {x['rows_per_s_command']:.1f} rows/s",
                flush=True,
            )
    work_done = {side: (runs[0]["tokens"], runs[0]["patches"]) for side, runs in results.items()}
    if work_done["vlmkit"] != work_done["swift"]:
        print(f"  WARNING: the sides encoded different work (tokens, patches): {work_done}", flush=True)
    return {
        side: {
            "rows_per_s": statistics.median(x["rows"] / x["seconds"] for x in runs),
            "peak_mib": statistics.median(x["peak_mib"] for x in runs),
            "rows_per_s_command": statistics.median(x["rows_per_s_command"] for x in runs),
            "rows_per_s_no_image_cache": statistics.median(x["rows_per_s_no_image_cache"] for x in runs),
            # vlmkit: `vlmkit data encode`'s own rate; ms-swift: its encode pool again, for the table
            "data_encode_rows_per_s": statistics.median(
                x.get("data_encode_rows_per_s", x["rows"] / x["seconds"]) for x in runs
            ),
            "tokens": runs[0]["tokens"],
            "patches": runs[0]["patches"],
            "command": "vlmkit data encode" if side == "vlmkit" and has_cli else "encode driver",
        }
        for side, runs in results.items()
    }


def help_times(sides: Sides, repeats: int) -> dict:
    results: dict[str, list[float]] = {"vlmkit": [], "swift": []}
    for r in range(repeats):
        for side in order(r):
            command, env = sides.help(side)
            results[side].append(run(command, env)["wall"])
            print(f"  sft --help {side}: {results[side][-1]:.2f} s", flush=True)
    return {side: {"help_s": statistics.median(times)} for side, times in results.items()}


def train(sides: Sides, dataset: Path, work: Path, repeats: int, tuner: str, tokens_per_row: float) -> dict:
    """Training throughput between the first and the last logged step; the first logged step's time
    since launch (wall and CPU seconds of the process tree) is the start-up measure."""
    a = sides.args
    results: dict[str, list[dict]] = {"vlmkit": [], "swift": []}
    for r in range(repeats):
        for side in order(r):
            out = work / f"train-{tuner}-{side}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            command, env = sides.sft(side, dataset, out / "o", tuner, a.train_steps, a.logging_steps)
            measured = run(command, env, watch=log_glob(side), cwd=out)
            steps = logged_steps(side, measured["lines"])
            cpu_lines = [
                (c, line) for c, (_, line) in zip(measured["cpu_at"], measured["lines"], strict=True)
            ]
            if len(steps) < 2:
                raise RuntimeError(f"{side}: fewer than two logged steps in {out}; raise --train-steps")
            (t0, s0), (t1, s1) = steps[0], steps[-1]
            samples_per_s = (s1 - s0) * a.batch_size / (t1 - t0)
            results[side].append({
                "samples_per_s": samples_per_s,
                "tokens_per_s": samples_per_s * tokens_per_row,
                "peak_mib": measured["peak_mib"],
                "cpu_s": measured["cpu"],
                "wall_s": measured["wall"],
                "first_step_s": t0 / s0,  # per logged step: launch to the end of step 1 when s0 == 1
                "first_step_cpu_s": logged_steps(side, cpu_lines)[0][0] / s0,
            })  # fmt: skip
            print(f"  train {tuner} {side}: {samples_per_s:.2f} samples/s, {measured['peak_mib']:.0f} MiB, "
                  f"first step at {t0:.1f} s, {measured['wall']:.1f} s wall, {measured['cpu']:.1f} CPU s",
                  flush=True)  # fmt: skip
            shutil.rmtree(out, ignore_errors=True)
    return {
        side: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for side, runs in results.items()
    }


def infer(sides: Sides, dataset: Path, work: Path, repeats: int) -> dict:
    a = sides.args
    small = head_rows(dataset, a.infer_batch_size, work / "infer-small.jsonl")
    large = head_rows(dataset, a.infer_rows, work / "infer-large.jsonl")
    results: dict[str, list[dict]] = {"vlmkit": [], "swift": []}
    for r in range(repeats):
        for side in order(r):
            walls, cpus, peak = [], [], 0.0
            for data in (small, large):
                out = work / f"infer-{side}-{data.stem}.jsonl"
                out.unlink(missing_ok=True)
                command, env = sides.infer(side, data, out)
                measured = run(command, env, cwd=work)
                walls.append(measured["wall"])
                cpus.append(measured["cpu"])
                peak = max(peak, measured["peak_mib"])
            # Noise larger than the extra rows' time gives no figure (nan) rather than a wrong one.
            rows_per_s = (
                (a.infer_rows - a.infer_batch_size) / (walls[1] - walls[0])
                if walls[1] > walls[0]
                else math.nan
            )
            rows_per_cpu_s = (
                (a.infer_rows - a.infer_batch_size) / (cpus[1] - cpus[0]) if cpus[1] > cpus[0] else math.nan
            )
            results[side].append(
                {
                    "rows_per_s": rows_per_s,
                    "rows_per_cpu_s": rows_per_cpu_s,
                    "peak_mib": peak,
                    "wall_s": walls[1],
                }
            )
            print(f"  infer {side}: {rows_per_s:.2f} rows/s ({walls[0]:.1f} s for {a.infer_batch_size} rows, "
                  f"{walls[1]:.1f} s for {a.infer_rows}), {peak:.0f} MiB", flush=True)  # fmt: skip
    return {
        side: {k: statistics.median(x[k] for x in runs) for k in runs[0]} for side, runs in results.items()
    }


def tokens_per_row(model: Path, dataset: Path, args: argparse.Namespace) -> float:
    """Mean sequence length (image tokens included) of the rows, from image headers only."""
    from transformers import AutoTokenizer

    from vlmkit.data import load_dataset
    from vlmkit.families import family_for_model_dir

    template = family_for_model_dir(model).load_template(
        model, AutoTokenizer.from_pretrained(model), min_pixels=args.min_pixels, max_pixels=args.max_pixels
    )
    rows = load_dataset(dataset)
    return statistics.fmean(template.count_tokens(rows[i]) for i in range(len(rows)))


# -- report --------------------------------------------------------------------------------------

# (workload, metric, unit, higher is better)
METRICS = [
    ("preprocess", "rows_per_s", "rows/s", True),
    (
        "preprocess",
        "rows_per_s_no_image_cache",
        "rows/s; vlmkit's cache of resized images off, as for data where no image repeats",
        True,
    ),
    ("preprocess", "peak_mib", "MiB", False),
    ("preprocess", "data_encode_rows_per_s", "rows/s; vlmkit: `vlmkit data encode` into a cold cache", True),
    ("preprocess", "rows_per_s_command", "rows/s, whole command", True),
    ("startup", "help_s", "s", False),
    ("startup", "first_step_s", "s", False),
    ("startup", "first_step_cpu_s", "CPU s", False),
    ("train_lora", "samples_per_s", "samples/s", True),
    ("train_lora", "tokens_per_s", "tokens/s", True),
    ("train_lora", "peak_mib", "MiB", False),
    ("train_lora", "cpu_s", "CPU s, whole run", False),
    ("train_full", "samples_per_s", "samples/s", True),
    ("train_full", "tokens_per_s", "tokens/s", True),
    ("train_full", "peak_mib", "MiB", False),
    ("train_full", "cpu_s", "CPU s, whole run", False),
    ("infer", "rows_per_s", "rows/s", True),
    ("infer", "rows_per_cpu_s", "rows/CPU s", True),
    ("infer", "peak_mib", "MiB", False),
]


def table(results: dict) -> str:
    lines = [
        "| workload | metric | vlmkit | ms-swift | vlmkit advantage |",
        "| --- | --- | --- | --- | --- |",
    ]
    for workload, metric, unit, higher in METRICS:
        if workload not in results:
            continue
        if metric not in results[workload]["vlmkit"] or metric not in results[workload]["swift"]:
            continue
        ours, theirs = results[workload]["vlmkit"][metric], results[workload]["swift"][metric]
        advantage = ours / theirs if higher else theirs / ours
        lines.append(f"| {workload} | {metric} ({unit}) | {ours:.3g} | {theirs:.3g} | {advantage:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=2000, help="Rows of the generated dataset (preprocessing)."
    )
    parser.add_argument(
        "--unique-images", type=int, default=400, help="Distinct generated JPEGs the rows draw from."
    )
    parser.add_argument("--repeats", type=int, default=3, help="Runs per side; medians are reported.")
    parser.add_argument(
        "--workers", type=int, default=2, help="Worker processes for encoding, on both sides."
    )
    parser.add_argument("--min-pixels", type=int, default=3136)
    parser.add_argument(
        "--max-pixels", type=int, default=200704, help="Largest image area (256 image tokens)."
    )
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=4, help="Training batch size.")
    parser.add_argument("--train-steps", type=int, default=16)
    parser.add_argument(
        "--logging-steps",
        type=int,
        default=1,
        help="Throughput is measured between the first and last logged step; 1 also times the first step.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="OMP/MKL threads per process on both sides (1 on a shared 2-core machine: spinning threads "
        "against other work cost seconds per step); 0 leaves torch's default.",
    )
    parser.add_argument("--infer-rows", type=int, default=32)
    parser.add_argument("--infer-batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--workloads", default="preprocess,startup,train_lora,train_full,infer")
    parser.add_argument("--swift-version", default="4.6.0")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "vlmkit-bench",
                        help="Holds the ms-swift venv, the tiny model and the generated data (reused).")  # fmt: skip
    parser.add_argument(
        "--json", type=Path, default=Path("vs_swift.json"), help="Where to write the results."
    )
    args = parser.parse_args()
    workloads = args.workloads.split(",")

    swift_python = ensure_swift_venv(args.cache_dir, args.swift_version)
    work = args.cache_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(work)
    dataset = make_dataset(work, args.rows, args.unique_images)
    train_data = head_rows(dataset, args.train_steps * args.batch_size, work / "train.jsonl")
    if args.threads:
        os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    sides = Sides(swift_python, model, args)
    results: dict = {}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}

    def save() -> None:  # after each workload, so a long run that fails keeps what it measured
        args.json.write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")

    if "preprocess" in workloads:
        print(f"1. preprocessing {args.rows} rows with {args.workers} workers", flush=True)
        results["preprocess"] = preprocess(sides, dataset, work, args.repeats)
        save()
    if "startup" in workloads:
        print(
            "2. start-up: sft --help (the time to the first step comes from the LoRA training runs)",
            flush=True,
        )
        results["startup"] = help_times(sides, args.repeats)
    row_tokens = tokens_per_row(model, train_data, args)
    for tuner in ("lora", "full"):
        if f"train_{tuner}" in workloads:
            print(f"3. training, {tuner}: {args.train_steps} steps of {args.batch_size} rows "
                  f"({row_tokens:.0f} tokens per row)", flush=True)  # fmt: skip
            results[f"train_{tuner}"] = train(sides, train_data, work, args.repeats, tuner, row_tokens)
            save()
    if "startup" in results and "train_lora" in results:
        for side in ("vlmkit", "swift"):
            for key in ("first_step_s", "first_step_cpu_s"):
                results["startup"][side][key] = results["train_lora"][side][key]
    if "infer" in workloads:
        print(f"4. batch inference: {args.infer_rows} rows, batch {args.infer_batch_size}", flush=True)
        results["infer"] = infer(sides, dataset, work, args.repeats)
        save()

    report = table(results)
    print(report)
    args.json.write_text(
        json.dumps({"settings": settings, "results": results, "table": report}, indent=2) + "\n"
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
