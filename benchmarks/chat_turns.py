"""A multi-turn chat with and without reusing the KV cache of earlier turns (`vlmkit.backends.chat_cache`).

    python benchmarks/chat_turns.py --turns 8 --image-size 448 --repeats 3

Builds a small-vocabulary tiny Qwen2-VL (or takes --model) and has the same conversation twice per
repeat; with --width / --layers the tiny model's language model and vision tower are widened and
deepened (random weights, the tiny tokenizer), so that prefill and the vision tower cost what they
do in a real model relative to decoding: every turn asks about one new image (--image-size square, random pixels) and the reply is
--max-new-tokens long (greedy). Reports per turn the tokens and images each mode puts through the
model, and the median seconds per turn; checks that both modes give the same replies.
Measures how the work grows with the history (prefill of every earlier turn and image), not a real
model's speed.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def conversation(vlm, reuse: bool, images: list[Image.Image], max_new_tokens: int) -> list[dict]:
    chat = vlm.chat(system="Answer briefly.", reuse_cache=reuse)
    turns = []
    for k, image in enumerate(images):
        start = time.perf_counter()
        reply = chat.send(f"Picture {k + 1}: what is in it, and how does it differ from the others?",
                          images=[image], max_new_tokens=max_new_tokens)  # fmt: skip
        seconds = time.perf_counter() - start
        turns.append({"reply": reply, "seconds": seconds, "tokens_run": chat.tokens_run,
                      "images_run": chat.images_run})  # fmt: skip
    return turns


def widen(model_dir: Path, width: int, layers: int) -> None:
    """Rewrite the tiny Qwen2-VL in `model_dir` with hidden size `width` and `layers` layers in both the
    language model and the vision tower (64-wide heads), random weights."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = json.loads((model_dir / "config.json").read_text())
    heads = width // 64
    config["text_config"].update(
        hidden_size=width, intermediate_size=3 * width, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2), layer_types=["full_attention"] * layers,
    )  # fmt: skip
    config["text_config"]["rope_parameters"]["mrope_section"] = [16, 8, 8]  # head_dim 64: 32 frequencies
    config["vision_config"].update(depth=layers, embed_dim=width, num_heads=heads, hidden_size=width)
    model_type = config.pop("model_type")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(
        AutoConfig.for_model(model_type, **config), dtype=torch.float32
    )
    model.save_pretrained(model_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="A model folder (default: a small-vocabulary tiny Qwen2-VL).")
    parser.add_argument("--width", type=int, default=0, help="Widen the tiny model to this hidden size.")
    parser.add_argument("--layers", type=int, default=8, help="Layers of the widened model (with --width).")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--max-pixels", type=int, default=200704)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    import vlmkit

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from vlmkit.families import family_by_name
            from vlmkit.families.tiny import build_tiny_model

            model = build_tiny_model(family_by_name("qwen2-vl"), Path(tmp) / "tiny", small_vocab=True)
            if args.width:
                widen(model, args.width, args.layers)
        vlm = vlmkit.load(str(model), device="cpu", dtype="fp32", max_pixels=args.max_pixels)
        rng = np.random.default_rng(0)
        size = args.image_size
        images = [
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(args.turns)
        ]
        conversation(vlm, True, images[:1], 2)  # warm-up
        runs: dict[bool, list[list[dict]]] = {False: [], True: []}
        for _ in range(args.repeats):
            for reuse in (False, True):
                runs[reuse].append(conversation(vlm, reuse, images, args.max_new_tokens))

    same = all(
        [t["reply"] for t in run] == [t["reply"] for t in runs[False][0]]
        for mode in runs.values()
        for run in mode
    )
    shape = f"width {args.width}, {args.layers} layers" if args.width else "tiny"
    print(f"model: {shape}; {args.turns} turns, one new {size}x{size} image each, {args.max_new_tokens} new tokens, "
          f"median of {args.repeats}; replies identical in both modes: {same}")  # fmt: skip
    print("| turn | tokens run, full / cached | images run, full / cached | seconds, full / cached |")
    print("| --- | --- | --- | --- |")
    totals = {False: 0.0, True: 0.0}
    for k in range(args.turns):
        full, cached = runs[False][0][k], runs[True][0][k]
        seconds = {reuse: statistics.median(run[k]["seconds"] for run in runs[reuse]) for reuse in runs}
        for reuse in runs:
            totals[reuse] += seconds[reuse]
        print(f"| {k + 1} | {full['tokens_run']} / {cached['tokens_run']} | {full['images_run']} / "
              f"{cached['images_run']} | {seconds[False]:.3f} / {seconds[True]:.3f} |")  # fmt: skip
    print(f"| all | | | {totals[False]:.2f} / {totals[True]:.2f} ({totals[False] / totals[True]:.1f}x) |")


if __name__ == "__main__":
    main()
