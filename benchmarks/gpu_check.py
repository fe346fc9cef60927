"""GPU check: every path of vlmkit that only a GPU machine can run, in one go, one line per path.

    python benchmarks/gpu_check.py               # on a GPU machine: about 10 minutes (--budget)
    python benchmarks/gpu_check.py --model DIR   # a local Qwen2-VL-family checkpoint instead of the built one
    python benchmarks/gpu_check.py --dry-run     # on CPU, toy sizes: the same plan (kept working by a test)

Each path runs as a user runs it (`vlmkit sft/infer/serve` in its own process, torchrun for DeepSpeed and
FSDP) and prints `PATH: figures` (tokens/s, peak GPU memory, ...), `PATH: SKIP (reason)` or
`PATH: FAIL (reason)`:

    bf16            vlmkit sft --dtype bf16, LoRA trained to answer the check's questions; its checkpoint is
                    what the inference paths below load (the adapter decides the replies, so a backend that
                    dropped it would answer otherwise)
    packing-flash   step-1 loss of the same 8 rows packed padding-free with flash_attention_2 equals the loss
                    of the rows padded with sdpa (bf16: relative difference under 1e-2)
    qlora           vlmkit sft --quant 4bit (bitsandbytes)
    deepspeed-zero2, deepspeed-zero3, fsdp
                    torchrun --nproc-per-node 1 -m vlmkit sft --tuner full --deepspeed zero2|zero3 / --fsdp full_shard
    transformers    vlmkit infer --ckpt (greedy): the reference replies; rows/s
    device-map      vlmkit infer --device-map auto: replies equal the reference (when vlmkit has --device-map)
    vllm-offline    vlmkit infer --backend vllm: replies equal the reference
    vllm-served     vlmkit serve --backend vllm, asked through the OpenAI API: replies equal the reference

Without --model, the model is a Qwen2-VL with the real Qwen2 vocabulary, 0.5B-shaped (head size 64, as vLLM's
kernels need), random weights: nothing is downloaded. With --dry-run the model is the tiny test model and the
paths a CPU cannot run are taken up to the one-line refusal vlmkit gives on CPU (so their options cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
PATHS = ("bf16", "packing-flash", "qlora", "deepspeed-zero2", "deepspeed-zero3", "fsdp", "transformers",
         "device-map", "vllm-offline", "vllm-served")  # fmt: skip
# Qwen2-0.5B's language model (head size 64) with a short vision tower: loads, trains and starts vLLM in seconds.
CHECK_SHAPE = {
    "text": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 12, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [8, 12, 12]}},
    "vision": {"depth": 4, "embed_dim": 1280, "hidden_size": 896, "num_heads": 16, "mlp_ratio": 4},
    "tie_word_embeddings": True,
}  # fmt: skip
QUESTIONS = ["What colour is the square?", "Name the shape.", "Say the magic word.", "Count to three."]
ANSWERS = ["The square is red.", "It is a circle.", "Abracadabra!", "One, two, three."]


@dataclass
class Check:
    dry_run: bool
    work: Path
    deadline: float
    lines: list[str] = field(default_factory=list)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def report(self, path: str, status: str, text: str, **figures: Any) -> None:
        line = f"{path}: {text}" if status == "ok" else f"{path}: {status.upper()} ({text})"
        self.lines.append(line)
        self.results[path] = {"status": status, "text": text, **figures}
        print(line, flush=True)

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


# -- running vlmkit as a user does ---------------------------------------------------------------------


@dataclass
class Ran:
    code: int
    output: str
    peak_gib: float | None
    seconds: float


def run_vlmkit(check: Check, args: list[str], torchrun: bool = False, timeout: float = 300) -> Ran:
    """`vlmkit ARGS` (under `torchrun --nproc-per-node 1` when asked) in its own process, its peak GPU memory
    read in that process at exit. Dry run: in this process (seconds of imports saved), without torchrun."""
    start = time.monotonic()
    if check.dry_run:
        from vlmkit.cli import main

        out = io.StringIO()
        saved, code = sys.argv, 0
        sys.argv = ["vlmkit", *args]
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            sys.argv = saved
        return Ran(code, out.getvalue(), None, time.monotonic() - start)
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-port", str(free_port())]
    timeout = max(10.0, min(timeout, check.seconds_left()))
    try:
        done = subprocess.run([*launcher, str(HERE), "--child", *args], capture_output=True, text=True,
                              timeout=timeout)  # fmt: skip
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        output, code = f"{(e.stdout or b'')!s}\ntimed out after {timeout:.0f} s", 124
    peaks = [float(m) for m in re.findall(r"^gpu-check-peak-gib=([\d.]+)$", output, re.M)]
    return Ran(code, output, max(peaks) if peaks else None, time.monotonic() - start)


def child(args: list[str]) -> None:
    """Run `vlmkit ARGS` here and print the process's peak GPU memory at exit (the --child mode)."""
    import atexit

    def peak() -> None:
        import torch

        if torch.cuda.is_available():
            print(f"\ngpu-check-peak-gib={torch.cuda.max_memory_allocated() / 2**30:.2f}", flush=True)

    atexit.register(peak)
    from vlmkit.cli import main

    sys.argv = ["vlmkit", *args]
    main()


def last_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:") or "Error" in line]
    return (lines[-1] if lines else output.strip().splitlines()[-1] if output.strip() else "no output")[:300]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_log(output_dir: Path) -> list[dict]:
    logs = sorted(output_dir.glob("*/v*/train_log.jsonl"))
    return [json.loads(line) for line in logs[-1].read_text().splitlines()] if logs else []


def checkpoint_of(output_dir: Path) -> Path | None:
    found = sorted(output_dir.glob("*/v*/checkpoint-*/vlmkit_complete"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def memory(ran: Ran) -> str:
    return f", peak GPU memory {ran.peak_gib:.1f} GiB" if ran.peak_gib is not None else ""


# -- inputs ---------------------------------------------------------------------------------------------


def build_model(work: Path, dry_run: bool, device: str = "cuda") -> Path:
    """The check's model folder: the tiny test model (dry run), else the 0.5B-shaped one in bf16 (built on
    `device` by benchmarks/gpu.py's builder, the family's tiny config grown to CHECK_SHAPE)."""
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    family = family_by_name("qwen2-vl")
    folder = build_tiny_model(family, work / "model", small_vocab=dry_run)
    if dry_run:
        return folder
    import torch
    from transformers import AutoTokenizer

    spec = importlib.util.spec_from_file_location("bench_gpu", HERE.parent / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    gpu.SHAPES["check"] = CHECK_SHAPE
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = gpu.build_model(family, tokenizer, "check", device, torch.bfloat16, "sdpa")
    model.save_pretrained(folder)  # replaces the tiny weights and config; tokenizer and processor files stay
    del model
    return folder


def write_data(work: Path) -> tuple[Path, Path]:
    """(train.jsonl: each question with its answer and an image, 8 rows; questions.jsonl: the questions)."""
    from PIL import Image, ImageDraw

    rows, questions = [], []
    for i, (question, answer) in enumerate(zip(QUESTIONS, ANSWERS, strict=True)):
        image = Image.new("RGB", (224, 168), "white")
        ImageDraw.Draw(image).rectangle([40 + 20 * i, 30, 120 + 20 * i, 110], fill=("red", "blue", "green", "black")[i])
        image.save(work / f"{i}.png")
        user = {"role": "user", "content": f"<image>{question}"}
        rows += [{"messages": [user, {"role": "assistant", "content": answer}], "images": [f"{i}.png"]}] * 2
        questions.append({"messages": [user], "images": [f"{i}.png"]})
    train, asked = work / "train.jsonl", work / "questions.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    asked.write_text("".join(json.dumps(r) + "\n" for r in questions))
    return train, asked


def sft_args(model: Path, data: Path, out: Path, dry_run: bool, *extra: str) -> list[str]:
    dtype = ["--dtype", "fp32"] if dry_run else ["--dtype", "bf16"]
    return ["sft", "--model", str(model), "--dataset", str(data), "--output-dir", str(out), "--no-progress",
            "--report-to", "none", "--logging-steps", "1", "--save-steps", "1000", "--max-pixels", "50176",
            "--eval-generate", "0", *dtype, *extra]  # fmt: skip


# -- the paths ------------------------------------------------------------------------------------------


def check_training(check: Check, model: Path, data: Path) -> Path | None:
    """bf16, packing-flash, qlora, deepspeed, fsdp; returns the bf16 run's LoRA checkpoint."""
    import torch

    dry = check.dry_run
    steps = "2" if dry else "40"  # enough large steps for the adapter to learn the 4 answers by heart
    ran = run_vlmkit(check, sft_args(model, data, check.work / "bf16", dry, "--tuner", "lora", "--lr", "5e-3",
                                     "--max-steps", steps, "--batch-size", "8", "--no-packing"))  # fmt: skip
    ckpt = checkpoint_of(check.work / "bf16")
    if ran.code != 0 or ckpt is None:
        check.report("bf16", "fail", last_error(ran.output))
    else:
        log = [r for r in train_log(check.work / "bf16") if "loss" in r]
        check.report("bf16", "ok", f"{'fp32 on CPU (dry run), ' if dry else ''}{log[-1].get('tokens_per_second', 0):,.0f} "
                     f"tokens/s{memory(ran)}, loss {log[0]['loss']:.3f} -> {log[-1]['loss']:.3f}",
                     tokens_per_s=log[-1].get("tokens_per_second"), peak_gib=ran.peak_gib)  # fmt: skip

    # The same 8 rows in one step: padded (sdpa) vs one padding-free pack (flash-attention; sdpa on CPU).
    flash = not dry and importlib.util.find_spec("flash_attn") is not None
    if not dry and not flash:
        check.report("packing-flash", "skip", "flash-attn is not installed (pip install 'vlmkit[flash]')")
    else:
        losses = {}
        for name, extra in (("padded", ["--no-packing", "--batch-size", "8", "--attn-impl", "sdpa"]),
                            ("packed", ["--packing", "--batch-size", "1", "--max-length", "16384", "--attn-impl",
                                        "flash_attention_2" if flash else "sdpa"])):  # fmt: skip
            out = check.work / f"pack-{name}"
            ran = run_vlmkit(check, sft_args(model, data, out, dry, "--tuner", "lora", "--max-steps", "1", *extra))
            log = [r for r in train_log(out) if "loss" in r]
            losses[name] = (log[0]["loss"], log[0].get("tokens_per_second"), ran) if ran.code == 0 and log else None
        if None in losses.values():
            failed = next(name for name, v in losses.items() if v is None)
            check.report("packing-flash", "fail", f"the {failed} run failed")
        else:
            (padded, _, _), (packed, speed, ran) = losses["padded"], losses["packed"]
            diff = abs(packed - padded) / abs(padded)
            status = "ok" if diff < 1e-2 else "fail"
            check.report("packing-flash", status, f"{'sdpa on CPU (dry run): ' if not flash else ''}packed loss "
                         f"{packed:.4f} vs padded {padded:.4f} (relative difference {diff:.1e}), "
                         f"{speed or 0:,.0f} tokens/s{memory(ran)}", relative_difference=diff)  # fmt: skip

    gpu = torch.cuda.is_available() and not dry
    cases = [
        ("qlora", ["--tuner", "lora", "--quant", "4bit"], False, "bitsandbytes", "needs a CUDA GPU"),
        ("deepspeed-zero2", ["--tuner", "full", "--deepspeed", "zero2"], True, "deepspeed", "needs DeepSpeed"),
        ("deepspeed-zero3", ["--tuner", "full", "--deepspeed", "zero3"], True, "deepspeed", "needs DeepSpeed"),
        ("fsdp", ["--tuner", "full", "--fsdp", "full_shard"], True, None, "needs CUDA GPUs"),
    ]
    for path, extra, torchrun, package, refusal in cases:
        out = check.work / path
        args = sft_args(model, data, out, dry, "--max-steps", "2" if dry else "6", "--batch-size", "4", "--lr", "1e-5",
                        "--no-packing", *extra)  # fmt: skip
        if not gpu:
            if package is not None and importlib.util.find_spec(package) is not None and path != "qlora":
                check.report(path, "skip", f"no CUDA GPU here ({package} is installed, so vlmkit would try it)")
                continue
            ran = run_vlmkit(check, args)
            said = last_error(ran.output)
            status = "skip" if ran.code == 2 and refusal in said else "fail"
            check.report(path, status, f"no CUDA GPU; vlmkit refuses it here: {said}")
            continue
        if package is not None and importlib.util.find_spec(package) is None:
            check.report(path, "skip", f"{package} is not installed")
            continue
        ran = run_vlmkit(check, args, torchrun=torchrun)
        log = [r for r in train_log(out) if "loss" in r]
        if ran.code != 0 or not log:
            check.report(path, "fail", last_error(ran.output))
        else:
            check.report(path, "ok", f"{log[-1].get('tokens_per_second', 0):,.0f} tokens/s{memory(ran)}, loss "
                         f"{log[-1]['loss']:.3f}", tokens_per_s=log[-1].get("tokens_per_second"), peak_gib=ran.peak_gib)  # fmt: skip
    return ckpt


def replies(path: Path) -> list[str | None]:
    return [json.loads(line).get("response") for line in path.read_text().splitlines()] if path.is_file() else []


def compare(check: Check, path: str, ran: Ran, got: list, reference: list, rows: int, note: str = "") -> None:
    if ran.code != 0 or not got:
        check.report(path, "fail", last_error(ran.output))
        return
    equal = sum(a == b for a, b in zip(got, reference, strict=False))
    status = "ok" if equal == len(reference) == len(got) else "fail"
    check.report(path, status, f"{note}replies equal to transformers' greedy {equal}/{len(reference)}, "
                 f"{rows / ran.seconds:.2f} rows/s end to end{memory(ran)}", equal=equal, rows=len(reference))  # fmt: skip


def check_inference(check: Check, ckpt: Path | None, questions: Path) -> None:
    """transformers (the reference), device-map, vllm-offline, vllm-served."""
    if ckpt is None:
        for path in PATHS[6:]:
            check.report(path, "skip", "no checkpoint: the bf16 run failed")
        return
    n = len(QUESTIONS)
    common = ["--input", str(questions), "--max-new-tokens", "16", "--dtype", "fp32" if check.dry_run else "bf16"]
    out = check.work / "transformers.jsonl"
    ran = run_vlmkit(check, ["infer", "--ckpt", str(ckpt), *common, "--output", str(out)])
    reference = replies(out)
    learned = sum(r == a for r, a in zip(reference, ANSWERS, strict=False))
    if ran.code != 0 or not reference:
        check.report("transformers", "fail", last_error(ran.output))
    else:
        check.report("transformers", "ok", f"{n / ran.seconds:.2f} rows/s end to end{memory(ran)}; the adapter's "
                     f"trained answers {learned}/{n}", learned=learned)  # fmt: skip

    help_text = run_vlmkit(check, ["infer", "--help"]).output
    if "--device-map" not in help_text:
        check.report("device-map", "skip", "this vlmkit has no --device-map yet")
    else:
        out = check.work / "device-map.jsonl"
        ran = run_vlmkit(check, ["infer", "--ckpt", str(ckpt), *common, "--output", str(out), "--device-map", "auto"])
        compare(check, "device-map", ran, replies(out), reference, n)

    vllm = importlib.util.find_spec("vllm") is not None and not check.dry_run
    engine = ["--vllm-arg", "enforce-eager=true", "--vllm-arg", "gpu-memory-utilization=0.5"]
    out = check.work / "vllm-offline.jsonl"
    ran = run_vlmkit(check, ["infer", "--backend", "vllm", "--ckpt", str(ckpt), *common, "--output", str(out), *engine],
                     timeout=300)  # fmt: skip
    if not vllm:
        said = last_error(ran.output)
        status = "skip" if ran.code == 2 and "needs vLLM" in said else "fail"
        check.report("vllm-offline", status, f"no vLLM here; vlmkit says: {said}")
    else:
        compare(check, "vllm-offline", ran, replies(out), reference, n, note="(vLLM memory: 0.5 of the GPU reserved) ")
    check_vllm_served(check, ckpt, questions, reference, vllm, engine)


def check_vllm_served(check: Check, ckpt: Path, questions: Path, reference: list, vllm: bool, engine: list) -> None:
    name, port = "check", free_port()
    args = ["serve", "--backend", "vllm", "--ckpt", str(ckpt), "--served-model-name", name, "--port", str(port),
            "--dtype", "fp32" if check.dry_run else "bf16", *engine]  # fmt: skip
    if not vllm:
        ran = run_vlmkit(check, args)
        said = last_error(ran.output)
        command = [line for line in ran.output.splitlines() if line.startswith("running: vllm serve")]
        status = "skip" if ran.code == 2 and "needs vLLM" in said and command else "fail"
        check.report("vllm-served", status, f"no vLLM here; vlmkit says: {said}")
        return
    import base64
    import urllib.request

    log = (check.work / "vllm-served.log").open("w")
    start = time.monotonic()
    server = subprocess.Popen([sys.executable, "-m", "vlmkit", *args], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        while time.monotonic() - start < min(300, check.seconds_left()):
            if server.poll() is not None:
                raise RuntimeError(f"vlmkit serve exited with {server.returncode}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        else:
            raise RuntimeError("the server did not answer /health in time")
        got = []
        asked = time.monotonic()
        for line in questions.read_text().splitlines():
            row = json.loads(line)
            image = base64.b64encode((questions.parent / row["images"][0]).read_bytes()).decode()
            text = row["messages"][0]["content"].replace("<image>", "")
            body = {"model": name, "max_tokens": 16, "temperature": 0, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}},
                {"type": "text", "text": text}]}]}  # fmt: skip
            request = urllib.request.Request(f"{url}/v1/chat/completions", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=60) as response:
                got.append(json.loads(response.read())["choices"][0]["message"]["content"])
        ran = Ran(0, "", None, time.monotonic() - asked)
        compare(check, "vllm-served", ran, got, reference, len(got),
                note=f"(started in {asked - start:.0f} s) ")  # fmt: skip
    except Exception as e:  # reported as the path's line; the other paths' results stand
        check.report("vllm-served", "fail", f"{type(e).__name__}: {e}; see {check.work / 'vllm-served.log'}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1:])
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="On CPU at toy size (what the test suite runs).")
    parser.add_argument("--model", type=Path, default=None, help="A local Qwen2-VL-family model folder to use.")
    parser.add_argument("--budget", type=float, default=600, help="Seconds for the whole check (paths past it fail).")
    parser.add_argument("--work-dir", type=Path, default=None, help="Keep the runs here (default: a temporary folder).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args(argv)

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_check.py needs a CUDA GPU; --dry-run checks the script on CPU")
    if args.dry_run:
        torch.set_num_threads(1)  # a shared CPU: spinning OpenMP threads cost more than they give at toy size
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vlmkit-gpu-check-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        check = Check(dry_run=args.dry_run, work=work, deadline=start + args.budget)
        device = "CPU (dry run, toy sizes)" if args.dry_run else torch.cuda.get_device_name()
        print(f"device: {device}; work folder: {work}", flush=True)
        model = args.model or build_model(work, args.dry_run)
        data, questions = write_data(work)
        ckpt = check_training(check, model, data)
        check_inference(check, ckpt, questions)
        seconds = time.monotonic() - start
        print(f"done in {seconds:.0f} s: {sum(r['status'] == 'ok' for r in check.results.values())} ok, "
              f"{sum(r['status'] == 'skip' for r in check.results.values())} skipped, "
              f"{sum(r['status'] == 'fail' for r in check.results.values())} failed", flush=True)  # fmt: skip
        results = {"device": device, "seconds": seconds, "paths": check.results, "lines": check.lines}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers' fork warning in the server's workers
    main()
