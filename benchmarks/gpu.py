"""GPU benchmark: Qwen2-VL-2B- and 7B-shaped models with random weights, trained and run through vlmkit's path.

    python benchmarks/gpu.py                 # on a GPU: both shapes, fits one 10-minute call
    python benchmarks/gpu.py --sizes 2b      # one shape
    python benchmarks/gpu.py --toy           # tiny sizes on CPU in seconds (kept working by a test)

No weights are downloaded: each model is built from its config (the released checkpoints'
shapes) with random weights, in bf16 on the GPU. Rows are vlmkit-encoded samples (family
template: real Qwen2 token ids, smart_resize, patches) of random photos of mixed sizes with
answers of mixed lengths. For each shape:

- training, LoRA and full (vision tower frozen, as `vlmkit sft` defaults), with and without
  packing (`vlmkit.train.packing`; without: length-padded batches): tokens/s (real tokens, no
  padding), model-FLOPs utilisation against the measured bf16 matmul peak, peak GPU memory.
  Model FLOPs per step: (6 for full, 4 for LoRA: no weight gradients of the frozen base) x
  language-model parameters x text+image tokens, + 3 x causal attention (2 x layers x T^2 x hidden
  per sequence), + 2 x vision-tower parameters x patches (frozen: forward only).
- inference: end-to-end latency of one image + question to a 128-token reply (encode, prefill,
  decode; `VLM.generate`), and batch throughput (new tokens/s) for --infer-batch prompts.

Prints a markdown table and writes --json. Where a case runs out of memory it says so and goes on.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

# Qwen2-VL-2B/7B-Instruct config.json shapes; the vision tower is the same 675M ViT in both.
SHAPES: dict[str, dict[str, Any]] = {
    "2b": {
        "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                 "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                     "mrope_section": [16, 24, 24]}, "tie_word_embeddings": True},
        "vision": {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4},
        "tie_word_embeddings": True,
    },
    "7b": {
        "text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                     "mrope_section": [16, 24, 24]}, "tie_word_embeddings": False},
        "vision": {"depth": 32, "embed_dim": 1280, "hidden_size": 3584, "num_heads": 16, "mlp_ratio": 4},
        "tie_word_embeddings": False,
    },
}  # fmt: skip


def build_model(family, tokenizer, shape: str, device, dtype, attn_impl: str):
    """A randomly initialised model of `shape` ("toy": the family's tiny test config) on `device`."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t, _ in family.special_tokens}
    config = family.tiny_config(len(tokenizer), ids)
    if shape != "toy":
        spec = SHAPES[shape]
        config["text_config"].update(spec["text"])
        config["vision_config"].update(spec["vision"])
        config["tie_word_embeddings"] = spec["tie_word_embeddings"]
    model_type = config.pop("model_type")
    config = AutoConfig.for_model(model_type, **config)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype, attn_implementation=attn_impl)
    return model


def make_samples(n: int, sizes: list[int], answer_words: tuple[int, int], seed: int = 0) -> list[dict]:
    """`messages` rows with one random photo-like image (side from `sizes`) and a question and answer."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    words = "the a photo of red green blue small large left right tree house car person sky".split()
    rows = []
    for _ in range(n):
        width, height = pick.choice(sizes), pick.choice(sizes)
        low = rng.integers(0, 256, size=(max(2, height // 32), max(2, width // 32), 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((width, height), Image.Resampling.BICUBIC)
        answer = " ".join(pick.choices(words, k=pick.randint(*answer_words)))
        rows.append({
            "messages": [{"role": "user", "content": "<image>Describe the picture."},
                         {"role": "assistant", "content": answer}],
            "images": [image],
        })  # fmt: skip
    return rows


def measure_peak_flops(device, dtype, toy: bool) -> float:
    """Measured bf16 matmul FLOP/s (the MFU denominator): the best of several large square matmuls."""
    import torch

    n = 256 if toy else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = math.inf
    for _ in range(3 if toy else 10):
        _sync(device)
        start = time.perf_counter()
        for _ in range(1 if toy else 10):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / (1 if toy else 10))
    return 2 * n**3 / best


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_gib(device) -> float | None:
    import torch

    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def _reset_memory(device) -> None:
    import gc

    import torch

    if torch.device(device).type == "cuda":  # (a full gc costs seconds on a busy CPU and frees nothing there)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _parameter_counts(model, family) -> tuple[int, int]:
    """(language-model parameters without the input embedding, vision-tower parameters)."""
    from vlmkit.train.tuning import group_of

    llm = vit = 0
    for name, param in model.named_parameters():
        group = group_of(name, family.module_groups)
        if group in ("vit", "aligner"):
            vit += param.numel()
        elif "embed_tokens" not in name:
            llm += param.numel()
    return llm, vit


def model_flops(batch_lengths: list[int], patches: int, llm_params: int, vit_params: int, text_config,
                tuner: str) -> float:  # fmt: skip
    """Model FLOPs of one training step (see the module docstring)."""
    tokens = sum(batch_lengths)
    factor = 6 if tuner == "full" else 4
    attention = sum(
        2 * text_config.num_hidden_layers * t * t * text_config.hidden_size for t in batch_lengths
    )
    return factor * llm_params * tokens + 3 * attention + 2 * vit_params * patches


def _to(batch: dict, device, dtype) -> dict:
    out = {}
    for k, v in batch.items():
        if hasattr(v, "to"):
            v = v.to(device, dtype) if v.is_floating_point() else v.to(device)
        out[k] = v
    return out


def train_case(
    model,
    family,
    template,
    encoded,
    args,
    tuner: str,
    packing: bool,
    checkpointing: bool,
    device,
    dtype,
    peak: float,
):
    """Train `args.steps` steps (after `args.warmup`) of `tuner`, packed or padded; one result row."""
    import torch

    from vlmkit.train.config import SFTConfig
    from vlmkit.train.packing import collate_packed, pack_lengths
    from vlmkit.train.sampler import collate_padded
    from vlmkit.train.tuning import apply_tuning

    config = SFTConfig(tuner=tuner, gradient_checkpointing=checkpointing)
    model = apply_tuning(model, config, family.module_groups)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=torch.device(device).type == "cuda")
    lengths = [e["input_ids"].shape[0] for e in encoded]
    if packing:
        packs = pack_lengths(lengths, args.max_length)
        per_step = max(
            1, round(len(packs) * args.batch_size / len(encoded))
        )  # same samples per step on average
        batches = [[[encoded[j] for j in pack] for pack in packs[i : i + per_step]]
                   for i in range(0, len(packs), per_step)]  # fmt: skip
        collate = lambda b: collate_packed(template, b, padding_free=args.attn_impl == "flash_attention_2")  # noqa: E731
    else:
        order = sorted(range(len(encoded)), key=lambda i: lengths[i])  # length-grouped, as --group-by-length
        batches = [
            [encoded[j] for j in order[i : i + args.batch_size]]
            for i in range(0, len(order), args.batch_size)
        ]
        collate = lambda b: collate_padded(template, b)  # noqa: E731
    random.Random(0).shuffle(batches)
    llm_params, vit_params = _parameter_counts(model, family)
    text_config = model.config.get_text_config()
    _reset_memory(device)
    times, tokens, flops = [], 0, 0.0
    try:
        for step in range(args.warmup + args.steps):
            raw = batches[step % len(batches)]
            batch = collate(raw)
            stats = batch.pop("batch_stats")
            samples = [s for pack in raw for s in pack] if packing else raw
            batch = _to(batch, device, dtype)
            _sync(device)
            start = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if step >= args.warmup:
                times.append(time.perf_counter() - start)
                tokens += stats["tokens"]
                patches = sum(s["pixel_values"].shape[0] for s in samples if "pixel_values" in s)
                seq_lengths = [s["input_ids"].shape[0] for s in samples]
                flops += model_flops(seq_lengths, patches, llm_params, vit_params, text_config, tuner)
        seconds = sum(times)
        result = {
            "tokens_per_s": tokens / seconds,
            "mfu": flops / seconds / peak,
            "step_s": statistics.median(times),
            "peak_gib": _peak_memory_gib(device),
            "loss": loss.item(),
        }
    except torch.OutOfMemoryError:
        result = {"error": "out of memory"}
    del optimizer
    if tuner == "lora":
        model = model.unload()  # the base model again, adapters removed
    if checkpointing:
        model.gradient_checkpointing_disable()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    _reset_memory(device)
    return model, result


def infer_case(model, family, tokenizer, template, args, device) -> dict:
    """Single-image latency to a 128-token reply, and batch throughput, through `VLM.generate_encoded`."""
    from vlmkit.backends.transformers_backend import VLM, GenerationOptions
    from vlmkit.sample import to_sample

    model.eval()
    vlm = VLM(
        model=model, tokenizer=tokenizer, template=template, family=family, path=Path("."), device=device
    )
    options = GenerationOptions(max_new_tokens=args.max_new_tokens)
    force = {"min_new_tokens": args.max_new_tokens}  # random weights: never stop early
    prompts = [to_sample({"messages": r["messages"][:1], "images": r["images"]}, where=f"row {i}")
               for i, r in enumerate(make_samples(args.infer_batch, [448, 640], (1, 2), seed=1))]  # fmt: skip
    _reset_memory(device)

    def one() -> float:
        _sync(device)
        start = time.perf_counter()
        vlm.generate_encoded([vlm.encode(prompts[0])], options, **force)  # encode + prefill + decode
        _sync(device)
        return time.perf_counter() - start

    one()  # warm-up
    latency = statistics.median(one() for _ in range(args.infer_repeats))
    vlm.generate_encoded([vlm.encode(p) for p in prompts], options, **force)  # warm-up
    _sync(device)
    start = time.perf_counter()
    vlm.generate_encoded([vlm.encode(p) for p in prompts], options, **force)
    _sync(device)
    batch_s = time.perf_counter() - start
    return {
        "latency_s": latency,
        "batch": args.infer_batch,
        "batch_tokens_per_s": args.infer_batch * args.max_new_tokens / batch_s,
        "peak_gib": _peak_memory_gib(device),
    }


def run_shape(shape: str, args, family, tokenizer, template, device, dtype, peak: float) -> dict:
    from vlmkit.sample import to_sample

    start = time.perf_counter()
    rows = make_samples(args.rows, args.image_sizes, (args.min_words, args.max_words))
    encoded = []
    for i, row in enumerate(rows):
        e = template.encode(to_sample(row, where=f"row {i}"))
        e.pop("image_sizes", None)
        encoded.append(e)
    model = build_model(family, tokenizer, shape, device, dtype, args.attn_impl)
    print(f"[{shape}] model built ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters) and "
          f"{len(encoded)} rows encoded in {time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    out: dict[str, Any] = {"train": {}}
    for tuner in args.tuners:
        for packing in (False, True):
            name = f"{tuner}, {'packed' if packing else 'padded'}"
            checkpointing = args.gradient_checkpointing
            model, result = train_case(
                model, family, template, encoded, args, tuner, packing, checkpointing, device, dtype, peak
            )
            if (
                "error" in result and not checkpointing
            ):  # e.g. 7B full tuning on 80 GB: trade compute for memory
                print(f"[{shape}] {name}: {result['error']}; again with gradient checkpointing", flush=True)
                name += ", gradient checkpointing"
                model, result = train_case(
                    model, family, template, encoded, args, tuner, packing, True, device, dtype, peak
                )
            out["train"][name] = result
            print(f"[{shape}] {name}: {json.dumps(result)}", flush=True)
    out["infer"] = infer_case(model, family, tokenizer, template, args, device)
    print(f"[{shape}] inference: {json.dumps(out['infer'])}", flush=True)
    del model
    _reset_memory(device)
    return out


def table(results: dict) -> str:
    lines = ["| model | case | tokens/s | MFU | step (s) | peak GPU memory (GiB) |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for shape, out in results["shapes"].items():
        for name, r in out["train"].items():
            if "error" in r:
                lines.append(f"| {shape} | {name} | {r['error']} | | | |")
                continue
            memory = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
            lines.append(f"| {shape} | {name} | {r['tokens_per_s']:,.0f} | {100 * r['mfu']:.1f}% | "
                         f"{r['step_s']:.3f} | {memory} |")  # fmt: skip
    lines += ["", "| model | 1 image -> 128 tokens latency (s) | batch | batch new tokens/s | peak GPU memory (GiB) |",
              "| --- | --- | --- | --- | --- |"]  # fmt: skip
    for shape, out in results["shapes"].items():
        r = out["infer"]
        memory = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
        lines.append(
            f"| {shape} | {r['latency_s']:.2f} | {r['batch']} | {r['batch_tokens_per_s']:,.0f} | {memory} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--toy", action="store_true", help="Tiny sizes on CPU (fp32) in seconds, to check the script."
    )
    parser.add_argument("--sizes", default="2b,7b", help="Comma-separated shapes: 2b, 7b.")
    parser.add_argument("--tuners", default="lora,full", help="Comma-separated: lora, full.")
    parser.add_argument("--rows", type=int, default=64, help="Encoded rows the steps cycle through.")
    parser.add_argument(
        "--batch-size", type=int, default=8, help="Rows per step (packed: the same on average)."
    )
    parser.add_argument("--max-length", type=int, default=4096, help="Packing length.")
    parser.add_argument("--steps", type=int, default=6, help="Timed steps per case.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps first.")
    parser.add_argument(
        "--max-pixels", type=int, default=602112, help="Largest image area (768 image tokens)."
    )
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="Recompute activations (saves memory)."
    )
    parser.add_argument(
        "--attn-impl", default=None, help="sdpa or flash_attention_2 (default: flash when installed)."
    )
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--infer-batch", type=int, default=16)
    parser.add_argument("--infer-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = parser.parse_args(argv)

    import importlib.util

    import torch
    import transformers
    from transformers import AutoTokenizer

    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    transformers.utils.logging.disable_progress_bar()
    if args.toy:
        args.sizes, device, dtype = ["toy"], "cpu", torch.float32
        torch.set_num_threads(
            1
        )  # a shared CPU: OpenMP threads spinning against other work cost seconds per step
        args.rows, args.batch_size, args.steps, args.warmup = 6, 2, 1, 1
        args.max_new_tokens, args.infer_batch, args.infer_repeats, args.max_length = 8, 2, 1, 1024
        args.image_sizes, args.min_words, args.max_words, args.max_pixels = [56, 84, 112], 2, 20, 12544
    else:
        if not torch.cuda.is_available():
            raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; use --toy to check it on CPU")
        args.sizes, device, dtype = args.sizes.split(","), "cuda", torch.bfloat16
        args.image_sizes, args.min_words, args.max_words = [224, 336, 448, 640, 896, 1024], 10, 400
    args.tuners = args.tuners.split(",")
    if args.attn_impl is None:
        args.attn_impl = (
            "flash_attention_2" if importlib.util.find_spec("flash_attn") and not args.toy else "sdpa"
        )

    family = family_by_name("qwen2-vl")
    with tempfile.TemporaryDirectory() as tmp:
        # The tokenizer (real Qwen2 ids) and image-processor config of a tiny model: the same for every shape.
        folder = build_tiny_model(family, Path(tmp) / "tok", small_vocab=args.toy)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        template = family.load_template(folder, tokenizer, max_pixels=args.max_pixels)
    peak = measure_peak_flops(device, dtype if not args.toy else torch.float32, args.toy)
    device_name = torch.cuda.get_device_name() if device == "cuda" else "CPU (toy sizes)"
    print(f"device: {device_name}; measured matmul peak {peak / 1e12:.1f} TFLOP/s; attention: {args.attn_impl}",
          flush=True)  # fmt: skip
    results: dict[str, Any] = {
        "device": device_name,
        "peak_tflops": peak / 1e12,
        "settings": {k: v for k, v in vars(args).items() if k != "json" and not isinstance(v, Path)},
        "shapes": {},
    }
    for shape in args.sizes:
        start = time.perf_counter()
        results["shapes"][shape] = run_shape(shape, args, family, tokenizer, template, device, dtype, peak)
        print(f"[{shape}] done in {time.perf_counter() - start:.0f} s", flush=True)
    results["attn_impl"] = args.attn_impl
    results["table"] = table(results)
    print(results["table"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
