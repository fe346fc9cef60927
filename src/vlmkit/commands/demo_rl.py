"""`vlmkit demo --rl`: what GRPO with a verifiable reward learns that more SFT cannot, offline on a CPU.

The SFT data are captions with a systematic mistake, as scraped captions have: most green shapes are
called "blue". The GRPO reward checks the true colour. So SFT learns the mistake (and more SFT only makes
it surer), while GRPO, rewarded by the truth, unlearns it.

1. build a tiny random Qwen2-VL and a coloured-shapes dataset ("What color is the circle?"),
2. write the SFT captions: the true answers, except a fixed share of the green ones, which say "blue",
3. warm start: `vlmkit sft` (full) on the captions,
4. control: more `vlmkit sft` on the captions from the warm start, as many updates of as many rows as GRPO's,
5. `vlmkit grpo` from the warm start on the same images, the `accuracy` reward checking the true answers,
6. `vlmkit eval` of the three checkpoints on the held-out rows (true answers; exact match, greedy),
and print the three accuracies with their 95% bootstrap intervals, the paired interval of GRPO's gain over
the control, and the reward curve (also in DIR/reward_curve.json and DIR/demo_results.json).
"""

from __future__ import annotations

import json
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RLRecipe:
    """Sizes of the RL demo on 2 CPU cores (benchmarks/RESULTS.md, `vlmkit demo --rl`)."""

    train_rows: int = 4000
    test_rows: int = 400
    image_size: int = 84
    grid: int = 3
    questions: tuple[str, ...] = ("color",)
    mistake: tuple[str, str] = ("green", "blue")  # the captions call this colour that one ...
    mistake_share: float = 0.6  # ... in this share of the rows whose true answer it is
    sft_steps: int = 2500
    sft_batch: int = 32
    sft_lr: float = 1e-3
    more_steps: int = 200  # the control's sft steps and GRPO's steps, each of `prompts_per_step` rows
    control_lr: float = 3e-4
    prompts_per_step: int = 32
    num_generations: int = 4
    grpo_lr: float = 3e-4
    grpo_loss: str = "grpo"
    temperature: float = 1.0


# `--rl --quick`: every step at toy size, to check an install (the figures mean nothing)
QUICK_RL_RECIPE = RLRecipe(train_rows=32, test_rows=8, sft_steps=4, sft_batch=8, more_steps=2, prompts_per_step=2,
                           num_generations=2)  # fmt: skip


def _rows(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def _write(rows: list[dict], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _captions(train_file: Path, recipe: RLRecipe) -> tuple[Path, int]:
    """The SFT rows beside `train_file` (same images): its rows with `mistake_share` of those answering
    `mistake[0]` (seeded, an exact count) answering `mistake[1]`; returns (file, rows changed)."""
    rows = _rows(train_file)
    true, said = recipe.mistake
    affected = [row for row in rows if row["messages"][1]["content"] == true]
    wrong = random.Random(0).sample(affected, round(recipe.mistake_share * len(affected)))
    for row in wrong:
        row["messages"][1]["content"] = said
    return _write(rows, train_file.with_name("captions.jsonl")), len(wrong)


def _prompts_file(train_file: Path, out: Path) -> Path:
    """The training images as GRPO prompts: the question, its image, and the true answer as the `solution`."""
    rows = []
    for row in _rows(train_file):
        user, answer = row["messages"]
        images = [
            str((train_file.parent / image).resolve()) for image in row["images"]
        ]  # from another folder
        rows.append({"messages": [user], "images": images, "solution": answer["content"]})
    return _write(rows, out)


def _reward_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean reward) of each logged GRPO step, from the run's train_log.jsonl."""
    lines = _rows(run_dir / "train_log.jsonl")
    return [(line["step"], line["reward"]) for line in lines if "reward" in line]


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and its finished children (data workers) so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Clock:
    """Wall and CPU seconds of each phase: on a shared machine the wall says little, the CPU time what a
    quiet one needs."""

    def __init__(self):
        self.phases: dict[str, dict[str, float]] = {}

    def __call__(self, name: str, work, *args, **kwargs):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        result = work(*args, **kwargs)
        self.phases[name] = {
            "wall": round(time.perf_counter() - wall, 1),
            "cpu": round(_cpu_seconds() - cpu, 1),
        }
        return result


def _paired_interval(eval_dir: Path, summary: dict, better: str, worse: str) -> tuple[float, float]:
    """95% bootstrap interval of the accuracy difference `better` - `worse` on the same held-out rows
    (resampling rows, seeded, as `vlmkit eval` does each accuracy's)."""
    import numpy as np

    from vlmkit.eval.metrics import bootstrap_interval

    def hits(label: str) -> np.ndarray:
        lines = _rows(eval_dir / summary["models"][label]["predictions"])
        return np.array([line.get("scores", {}).get("exact_match", 0.0) for line in lines])

    return bootstrap_interval("exact_match", (hits(better) - hits(worse))[:, None])


def run_rl_demo(
    output_dir: str | Path = "runs/demo", recipe: RLRecipe | None = None, progress: bool = True
) -> dict:
    """Run the RL demo into a new folder under `output_dir`; returns the measured figures."""
    from vlmkit.commands.demo_run import demo_inputs
    from vlmkit.eval import evaluate
    from vlmkit.train import SFTConfig, sft
    from vlmkit.train.grpo import grpo
    from vlmkit.train.grpo_options import GRPOConfig

    recipe = recipe or RLRecipe()
    root = Path(output_dir) / time.strftime("rl-%Y%m%d-%H%M%S")
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    say, clock = print, _Clock()
    model_dir, train_file, test_file = clock("data", demo_inputs, root, recipe, say, steps=6)
    captions, changed = _captions(train_file, recipe)
    prompts_file = _prompts_file(train_file, root / "data" / "prompts.jsonl")
    true, said = recipe.mistake
    say(f"      the SFT captions call {changed} of the {true} shapes {said} ({recipe.mistake_share:.0%}); "
        "the GRPO reward and the held-out rows know the true colour")  # fmt: skip
    pixels = recipe.image_size**2
    common = {"min_pixels": pixels, "max_pixels": pixels, "report_to": "none", "progress": progress, "seed": 0,
              "tuner": "full", "freeze_vit": False, "freeze_aligner": False, "weight_decay": 0.0,
              "adam_beta2": 0.95}  # fmt: skip

    def more_sft(model: Path | str, name: str, steps: int, batch: int, lr: float) -> Path:
        run_dir = sft(
            SFTConfig(
                model=str(model), dataset=[str(captions)], output_dir=str(root / name), max_steps=steps,
                batch_size=batch, lr=lr, warmup_ratio=0.05, packing=False, save_steps=steps,
                logging_steps=max(1, steps // 10), eval_generate=0, **common,
            )
        )  # fmt: skip
        return run_dir / f"checkpoint-{steps}"

    say(f"[3/6] warm start: vlmkit sft on the captions, {recipe.sft_steps} steps of batch {recipe.sft_batch}")
    warm = clock("warm start", more_sft, model_dir, "sft", recipe.sft_steps, recipe.sft_batch, recipe.sft_lr)
    say(f"[4/6] control: vlmkit sft from {warm} on the captions, {recipe.more_steps} more steps of batch "
        f"{recipe.prompts_per_step}")  # fmt: skip
    control = clock("more sft", more_sft, warm, "more-sft", recipe.more_steps, recipe.prompts_per_step,
                    recipe.control_lr)  # fmt: skip

    say(f"[5/6] vlmkit grpo from {warm}: {recipe.more_steps} steps, {recipe.prompts_per_step} prompts x "
        f"{recipe.num_generations} completions, reward: accuracy (against the true answers)")  # fmt: skip
    grpo_dir = clock("grpo", grpo, GRPOConfig(
        model=str(warm), dataset=[str(prompts_file)], output_dir=str(root / "grpo"), reward="accuracy",
        max_steps=recipe.more_steps, batch_size=recipe.prompts_per_step * recipe.num_generations, lr=recipe.grpo_lr,
        num_generations=recipe.num_generations, max_completion_length=4, temperature=recipe.temperature,
        beta=0.0, loss=recipe.grpo_loss, scheduler="constant",  # no warm-up: "constant" has none
        save_steps=recipe.more_steps, logging_steps=max(1, recipe.more_steps // 10), **common,
    ))  # fmt: skip
    tuned = grpo_dir / f"checkpoint-{recipe.more_steps}"
    curve = _reward_curve(grpo_dir)
    (root / "reward_curve.json").write_text(json.dumps([{"step": s, "reward": r} for s, r in curve]) + "\n")

    say("[6/6] vlmkit eval: held-out accuracy after the warm start, after more SFT and after GRPO")
    summary = clock("eval", evaluate,
        str(test_file), ckpts=[warm, control, tuned], metric="exact_match", output=root / "eval",
        batch_size=32, max_new_tokens=4, min_pixels=pixels, max_pixels=pixels,
    )  # fmt: skip
    labels = list(summary["models"])  # in the order given
    scores = [summary["models"][label]["scores"]["exact_match"] for label in labels]
    accuracy = {name: {"value": s["value"] or 0.0, "ci95": s["ci95"]}
                for name, s in zip(("warm_start", "more_sft", "grpo"), scores, strict=True)}  # fmt: skip
    gain = accuracy["grpo"]["value"] - accuracy["more_sft"]["value"]
    gain_ci = _paired_interval(root / "eval", summary, labels[2], labels[1])
    figures = {
        "test_rows": recipe.test_rows, "accuracy": accuracy, "grpo_minus_more_sft": gain,
        "grpo_minus_more_sft_ci95": list(gain_ci), "reward_curve": curve, "captions_changed": changed,
        "phases": clock.phases, "total_seconds": round(time.perf_counter() - started, 1),
        "total_cpu_seconds": round(_cpu_seconds() - cpu_started, 1),
        "checkpoints": {"warm_start": str(warm), "more_sft": str(control), "grpo": str(tuned)},
    }  # fmt: skip
    (root / "demo_results.json").write_text(json.dumps(figures, indent=2) + "\n")
    _print_figures(say, figures, recipe, root)
    say(f"  try it:  vlmkit infer --ckpt {tuned}")
    return figures


def _print_figures(say, figures: dict, recipe: RLRecipe, root: Path) -> None:
    def line(label: str, key: str) -> str:
        value, (low, high) = figures["accuracy"][key]["value"], figures["accuracy"][key]["ci95"]
        return f"    {label:<34} {value:6.1%}   (95% interval {low:.1%} to {high:.1%})"

    low, high = figures["grpo_minus_more_sft_ci95"]
    say("")
    say(f"  held-out accuracy ({figures['test_rows']} questions, true answers):")
    say(line(f"after the warm start ({recipe.sft_steps} sft steps)", "warm_start"))
    say(line(f"after {recipe.more_steps} more sft steps (control)", "more_sft"))
    say(line(f"after {recipe.more_steps} grpo steps instead", "grpo"))
    say(f"  grpo - more sft: {figures['grpo_minus_more_sft'] * 100:+.1f} points (paired 95% interval "
        f"{low * 100:+.1f} to {high * 100:+.1f})")  # fmt: skip
    say("  reward (mean accuracy of the sampled completions) by GRPO step:")
    say("    " + "  ".join(f"{step}:{reward:.2f}" for step, reward in figures["reward_curve"]))
    say(f"  whole demo: {figures['total_seconds']:.0f} s ({figures['total_cpu_seconds']:.0f} s of CPU); "
        f"figures: {root / 'demo_results.json'}")  # fmt: skip
