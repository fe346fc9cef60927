"""`vlmkit demo`: the whole product on an embedded task, offline, on a CPU, in a few minutes.

1. build a tiny random Qwen2-VL (`vlmkit tiny-model`),
2. generate a coloured-shapes dataset it can learn (`vlmkit.media.shapes`),
3. fine-tune it with `vlmkit sft`,
4. score the base model and the saved checkpoint on the held-out rows with `vlmkit eval`
   (exact_match; one side-by-side table, DIR/eval/report.md),
5. chat with the result about one held-out image,
and print a before/after line with the run folder and loss plot.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

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
    step_seconds: float = 0.06  # one training step on 2 quiet cores (benchmarks/RESULTS.md, `vlmkit demo`)


# `vlmkit demo --quick`: the same steps at toy size, to check an install (the figures mean nothing).
# Its step time is a margin over the full recipe's, not a measurement (a slow-step warning needs 5x it).
QUICK_RECIPE = DemoRecipe(train_rows=64, test_rows=16, max_steps=8, batch_size=8, step_seconds=0.05)

SLOW_FACTOR = 5  # steps this many times slower than the recipe's figure are worth a line
step_clock = time.perf_counter  # what SlowStepsNote times steps with


class SlowStepsNote(TrainerCallback):
    """One warning line when the demo's training steps run much slower than on a quiet machine. Timed from
    the end of step 1 (which also starts the data workers) to the end of step `after` (or the last step),
    once: a demo that would take an hour instead of minutes says so early, with the likely cause."""

    def __init__(self, expected: float, after: int = 21):
        self.expected, self.after = expected, after
        self.started: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.started = step_clock()
        elif self.started is not None and state.global_step == min(self.after, state.max_steps):
            each = (step_clock() - self.started) / (state.global_step - 1)
            self.started = None
            if each > SLOW_FACTOR * self.expected:
                print(slow_steps_line(each, self.expected, state.max_steps - state.global_step), file=sys.stderr,
                      flush=True)  # fmt: skip


def slow_steps_line(each: float, expected: float, steps_left: int) -> str:
    load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    return (
        f"warning: training steps take {each:.2f} s each, {each / expected:.0f} times the {expected:.2f} s of a "
        f"quiet 2-core machine: other processes are likely using the CPU (load average {load:.1f} on {cores} "
        f"cores); training needs about {duration(each * steps_left)} more"
    )


def duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{seconds:.0f} s"


def _held_out_accuracy(model_dir: Path, checkpoint: Path, test_file: Path, output: Path, pixels: int):
    """(accuracy before, after, predictions file of the checkpoint): `vlmkit eval` of the base model and
    the checkpoint on the held-out rows, exact match, greedy, answers of at most 4 tokens."""
    from vlmkit.eval import evaluate

    summary = evaluate(
        str(test_file), models=[model_dir], ckpts=[checkpoint], metric="exact_match", output=output,
        batch_size=32, max_new_tokens=4, min_pixels=pixels, max_pixels=pixels,
    )  # fmt: skip
    base, tuned = summary["models"].values()  # in the order given: the model, then the checkpoint
    value = [r["scores"]["exact_match"]["value"] or 0.0 for r in (base, tuned)]  # null: no row scored
    return value[0], value[1], output / tuned["predictions"]


def demo_inputs(
    root: Path, recipe: Any, say: Callable[[str], None], steps: int = 5
) -> tuple[Path, Path, Path]:
    """Steps 1 and 2 of both demos (`vlmkit demo`, `--rl`), in the new folder `root`: a tiny Qwen2-VL and the
    coloured-shapes training and held-out sets of `recipe`'s sizes; returns (model, train file, test file).
    `steps`: how many steps the demo prints, for the "[1/5]" of each line."""
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model
    from vlmkit.media.shapes import make_shapes_dataset

    if root.exists():
        raise VlmkitError(f"{root} already exists; wait a second and run again")
    say(f"[1/{steps}] building a tiny Qwen2-VL in {root / 'model'}")
    model_dir = build_tiny_model(family_by_name("qwen2-vl"), root / "model", small_vocab=True)
    say(f"[2/{steps}] generating {recipe.train_rows} training and {recipe.test_rows} held-out shape images")
    shape = {"image_size": recipe.image_size, "grid": recipe.grid, "questions": recipe.questions}
    train_file = make_shapes_dataset(root / "data" / "train", recipe.train_rows, seed=0, **shape)
    test_file = make_shapes_dataset(root / "data" / "test", recipe.test_rows, seed=1, **shape)
    return Path(model_dir), Path(train_file), Path(test_file)


def run_demo(
    output_dir: str | Path = "runs/demo", recipe: DemoRecipe | None = None, progress: bool = True
) -> dict:
    """Run the demo into a new folder under `output_dir`; returns the measured figures."""
    import vlmkit
    from vlmkit.data import load_dataset
    from vlmkit.media.shapes import chance_accuracy
    from vlmkit.train import SFTConfig, sft

    recipe = recipe or DemoRecipe()
    root = Path(output_dir) / time.strftime("%Y%m%d-%H%M%S")
    started = time.perf_counter()
    say = print

    model_dir, train_file, test_file = demo_inputs(root, recipe, say)
    rows = [json.loads(line) for line in Path(test_file).read_text().splitlines()]
    chance = chance_accuracy(
        [r["messages"][0]["content"] for r in rows], [r["messages"][1]["content"] for r in rows]
    )

    pixels = recipe.image_size**2
    say(f"[3/5] fine-tuning with vlmkit sft ({recipe.max_steps} steps, batch {recipe.batch_size})")
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
        ),
        callbacks=[SlowStepsNote(recipe.step_seconds)],
    )
    train_seconds = time.perf_counter() - train_started
    checkpoint = run_dir / f"checkpoint-{recipe.max_steps}"

    say(f"[4/5] vlmkit eval: held-out accuracy of the base model and {checkpoint}")
    before, after, _ = _held_out_accuracy(model_dir, checkpoint, test_file, root / "eval", pixels)

    say("[5/5] chatting with the fine-tuned model about a held-out image")
    test = load_dataset(test_file)
    image = test[0].media("image")[0]
    question = test[0].text("user")
    reply = vlmkit.load(ckpt=checkpoint).chat().send(question, images=[image], max_new_tokens=4)
    total = time.perf_counter() - started

    figures = {
        "chance": chance,
        "before": before,
        "after": after,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(total, 1),
        "run_dir": str(run_dir),
        "test_rows": len(test),
        "eval_dir": str(root / "eval"),
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
    say(f"  eval report (every answer, best and worst rows): {root / 'eval' / 'report.md'}")
    say(f"  run folder: {run_dir}  (loss curve: {run_dir / 'loss.png'})")
    say(f"  try it:  vlmkit infer --ckpt {checkpoint}")
    return figures
