"""`vlmkit demo`: the whole product on an embedded task, offline, on a CPU, in a few minutes.

1. build a tiny random Qwen2-VL (`vlmkit tiny-model`),
2. generate a coloured-shapes dataset it can learn (`vlmkit.shapes`),
3. measure held-out accuracy (chance level: the model has learnt nothing),
4. fine-tune it with `vlmkit sft`,
5. measure again from the saved checkpoint (`vlmkit infer --ckpt` path),
6. chat with the result about one held-out image,
and print a before/after table with the run folder and loss plot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from vlmkit.errors import VlmkitError


@dataclass(frozen=True)
class DemoRecipe:
    """What makes the shapes task learnable in minutes on 2 CPU cores (see benchmarks/RESULTS.md).

    84-px images on a 3x3 grid: each 28-px cell is one image token after the 2x2 merge, so a
    shape never straddles tokens; a randomly initialised model needs AdamW's beta2 at 0.95
    (at 0.999 it stays at chance for as long as the demo may run)."""

    train_rows: int = 4000
    test_rows: int = 200
    image_size: int = 84
    grid: int = 3
    questions: tuple[str, ...] = ("color",)
    max_steps: int = 2500
    batch_size: int = 32
    lr: float = 1e-3
    adam_beta2: float = 0.95
    warmup_ratio: float = 0.05


# `vlmkit demo --quick`: the same steps at toy size, to check an install (the figures mean nothing).
QUICK_RECIPE = DemoRecipe(train_rows=64, test_rows=16, max_steps=8, batch_size=8)


def _accuracy(vlm, dataset, batch_size: int = 32) -> tuple[float, list[tuple[str, str, str]]]:
    """Greedy held-out accuracy; also returns (question, answer, reference) triples."""
    from vlmkit.infer import split_reference
    from vlmkit.model import GenerationOptions
    from vlmkit.shapes import score

    prompts, references = zip(*(split_reference(dataset[i]) for i in range(len(dataset))), strict=True)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = [vlm.encode(p) for p in prompts[start : start + batch_size]]
        answers += vlm.generate_encoded(batch, GenerationOptions(max_new_tokens=4))
    triples = [(p.text("user"), a.strip(), r) for p, a, r in zip(prompts, answers, references, strict=True)]
    return score(answers, list(references)), triples


def run_demo(
    output_dir: str | Path = "runs/demo", recipe: DemoRecipe | None = None, progress: bool = True
) -> dict:
    """Run the demo into a new folder under `output_dir`; returns the measured figures."""
    import vlmkit
    from vlmkit.data import load_dataset
    from vlmkit.families import family_by_name
    from vlmkit.shapes import chance_accuracy, make_shapes_dataset
    from vlmkit.tiny import build_tiny_model
    from vlmkit.train import SFTConfig, sft

    recipe = recipe or DemoRecipe()
    root = Path(output_dir) / time.strftime("%Y%m%d-%H%M%S")
    if root.exists():
        raise VlmkitError(f"{root} already exists; wait a second and run again")
    started = time.perf_counter()
    say = print

    say(f"[1/6] building a tiny Qwen2-VL in {root / 'model'}")
    model_dir = build_tiny_model(family_by_name("qwen2-vl"), root / "model", small_vocab=True)
    say(f"[2/6] generating {recipe.train_rows} training and {recipe.test_rows} held-out shape images")
    shape = {"image_size": recipe.image_size, "grid": recipe.grid, "questions": recipe.questions}
    train_file = make_shapes_dataset(root / "data" / "train", recipe.train_rows, seed=0, **shape)
    test_file = make_shapes_dataset(root / "data" / "test", recipe.test_rows, seed=1, **shape)
    test = load_dataset(test_file)
    rows = [json.loads(line) for line in Path(test_file).read_text().splitlines()]
    chance = chance_accuracy(
        [r["messages"][0]["content"] for r in rows], [r["messages"][1]["content"] for r in rows]
    )

    say("[3/6] measuring held-out accuracy before training")
    pixels = recipe.image_size**2
    before, _ = _accuracy(vlmkit.load(str(model_dir), min_pixels=pixels, max_pixels=pixels), test)

    say(f"[4/6] fine-tuning with vlmkit sft ({recipe.max_steps} steps, batch {recipe.batch_size})")
    train_started = time.perf_counter()
    run_dir = sft(
        SFTConfig(
            model=str(model_dir),
            dataset=[str(train_file)],
            output_dir=str(root / "output"),
            tuner="full",
            freeze_vit=False,
            freeze_aligner=False,
            min_pixels=pixels,
            max_pixels=pixels,
            max_steps=recipe.max_steps,
            batch_size=recipe.batch_size,
            packing=False,  # the recipe counts rows per step; packing would put ~70 rows in each sequence
            lr=recipe.lr,
            adam_beta2=recipe.adam_beta2,
            warmup_ratio=recipe.warmup_ratio,
            weight_decay=0.0,
            save_steps=recipe.max_steps,
            logging_steps=max(1, recipe.max_steps // 20),
            report_to="none",
            progress=progress,
            eval_generate=0,
            seed=0,
        )
    )
    train_seconds = time.perf_counter() - train_started
    checkpoint = run_dir / f"checkpoint-{recipe.max_steps}"

    say(f"[5/6] measuring held-out accuracy of {checkpoint}")
    tuned = vlmkit.load(ckpt=checkpoint)
    after, triples = _accuracy(tuned, test)

    say("[6/6] chatting with the fine-tuned model about a held-out image")
    image = test[0].media("image")[0]
    question = triples[0][0]
    reply = tuned.chat().send(question, images=[image], max_new_tokens=4)
    total = time.perf_counter() - started

    figures = {
        "chance": chance,
        "before": before,
        "after": after,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(total, 1),
        "run_dir": str(run_dir),
        "test_rows": len(test),
    }
    (root / "demo_results.json").write_text(json.dumps(figures, indent=2) + "\n")
    say("")
    say(f"  chat: <image>{question}   [{image}]")
    say(f"  model: {reply.strip()}")
    say("")
    say(
        f"  held-out accuracy ({len(test)} questions)   before: {before:6.1%}   after: {after:6.1%}"
        f"   (chance {chance:.1%})"
    )
    say(f"  training: {train_seconds:.0f} s; whole demo: {total:.0f} s")
    say(f"  run folder: {run_dir}  (loss curve: {run_dir / 'loss.png'})")
    say(f"  try it:  vlmkit infer --ckpt {checkpoint}")
    return figures
