"""`vlmkit demo --rl`: supervised warm start, then GRPO with a verifiable reward, offline on a CPU.

1. build a tiny random Qwen2-VL and a coloured-shapes dataset ("What color is the circle?"),
2. warm-start it with a short `vlmkit sft` (full, so the model answers with colour words but is often wrong),
3. GRPO (`vlmkit grpo`, the `accuracy` reward) from that checkpoint on the same training questions,
4. score the SFT and the GRPO checkpoints on the held-out rows with `vlmkit eval` (exact match, greedy),
and print both accuracies and the reward curve (also in DIR/reward_curve.json).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RLRecipe:
    """Sizes of the RL demo on 2 CPU cores (benchmarks/RESULTS.md, `vlmkit demo --rl`).

    The warm start is the plain demo's recipe stopped at 1,000 of its 2,500 steps: 48.5% of the held-out
    questions right, well above chance (25%) and below 100%, so about 45% of GRPO's sampled answers earn
    reward (a warm start of a few hundred steps still answers one colour to everything, and its rollouts
    earn almost none). GRPO's fresh AdamW gets the same beta2 0.95 and a warm-up (at a constant 1e-3 the
    reward fell from 0.45 to 0.3). The reward rises only after ~130 steps: 60 steps gave no held-out gain,
    240 give 48.5% -> 55.5%."""

    train_rows: int = 4000
    test_rows: int = 200
    image_size: int = 84
    grid: int = 3
    questions: tuple[str, ...] = ("color",)
    sft_steps: int = 1000
    sft_batch: int = 32
    sft_lr: float = 1e-3
    grpo_steps: int = 240
    prompts_per_step: int = 32
    num_generations: int = 4
    grpo_lr: float = 3e-4
    grpo_warmup_ratio: float = 0.1
    grpo_loss: str = "grpo"
    temperature: float = 1.0


# `--rl --quick`: every step at toy size, to check an install (the figures mean nothing)
QUICK_RL_RECIPE = RLRecipe(train_rows=32, test_rows=8, sft_steps=4, sft_batch=8, grpo_steps=2, prompts_per_step=2,
                           num_generations=2)  # fmt: skip


def _prompts_file(train_file: Path, out: Path) -> Path:
    """The SFT rows as GRPO prompts: the question, its image, and the answer as the `solution`."""
    rows = []
    for line in train_file.read_text().splitlines():
        row = json.loads(line)
        user, answer = row["messages"]
        images = [str((train_file.parent / image).resolve()) for image in row["images"]]  # from another folder
        rows.append({"messages": [user], "images": images, "solution": answer["content"]})
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def _reward_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean reward) of each logged GRPO step, from the run's train_log.jsonl."""
    lines = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [(line["step"], line["reward"]) for line in lines if "reward" in line]


def run_rl_demo(output_dir: str | Path = "runs/demo", recipe: RLRecipe | None = None, progress: bool = True) -> dict:
    """Run the RL demo into a new folder under `output_dir`; returns the measured figures."""
    from vlmkit.commands.demo_run import demo_inputs
    from vlmkit.eval import evaluate
    from vlmkit.train import SFTConfig, sft
    from vlmkit.train.grpo import grpo
    from vlmkit.train.grpo_options import GRPOConfig

    recipe = recipe or RLRecipe()
    root = Path(output_dir) / time.strftime("rl-%Y%m%d-%H%M%S")
    started = time.perf_counter()
    say = print
    model_dir, train_file, test_file = demo_inputs(root, recipe, say)
    prompts_file = _prompts_file(train_file, root / "data" / "prompts.jsonl")
    pixels = recipe.image_size**2
    common = {"min_pixels": pixels, "max_pixels": pixels, "report_to": "none", "progress": progress, "seed": 0,
              "tuner": "full", "freeze_vit": False, "freeze_aligner": False, "weight_decay": 0.0}  # fmt: skip

    say(f"[3/5] warm start: vlmkit sft, {recipe.sft_steps} steps of batch {recipe.sft_batch}")
    sft_dir = sft(
        SFTConfig(
            model=str(model_dir), dataset=[str(train_file)], output_dir=str(root / "sft"), max_steps=recipe.sft_steps,
            batch_size=recipe.sft_batch, lr=recipe.sft_lr, adam_beta2=0.95, warmup_ratio=0.05, packing=False,
            save_steps=recipe.sft_steps, logging_steps=max(1, recipe.sft_steps // 10), eval_generate=0, **common,
        )
    )  # fmt: skip
    sft_checkpoint = sft_dir / f"checkpoint-{recipe.sft_steps}"

    batch = recipe.prompts_per_step * recipe.num_generations
    say(f"[4/5] vlmkit grpo from {sft_checkpoint}: {recipe.grpo_steps} steps, {recipe.prompts_per_step} prompts x "
        f"{recipe.num_generations} completions, reward: accuracy")  # fmt: skip
    grpo_dir = grpo(
        GRPOConfig(
            model=str(sft_checkpoint), dataset=[str(prompts_file)], output_dir=str(root / "grpo"),
            reward="accuracy", max_steps=recipe.grpo_steps, batch_size=batch, lr=recipe.grpo_lr,
            num_generations=recipe.num_generations, max_completion_length=4, temperature=recipe.temperature,
            beta=0.0, loss=recipe.grpo_loss, adam_beta2=0.95, warmup_ratio=recipe.grpo_warmup_ratio, scheduler="constant",
            save_steps=recipe.grpo_steps,
            logging_steps=max(1, recipe.grpo_steps // 15), **common,
        )
    )  # fmt: skip
    grpo_checkpoint = grpo_dir / f"checkpoint-{recipe.grpo_steps}"
    curve = _reward_curve(grpo_dir)
    (root / "reward_curve.json").write_text(json.dumps([{"step": s, "reward": r} for s, r in curve]) + "\n")

    say("[5/5] vlmkit eval: held-out accuracy after SFT and after GRPO")
    summary = evaluate(
        str(test_file), ckpts=[sft_checkpoint, grpo_checkpoint], metric="exact_match", output=root / "eval",
        batch_size=32, max_new_tokens=4, min_pixels=pixels, max_pixels=pixels,
    )  # fmt: skip
    after_sft, after_grpo = (r["scores"]["exact_match"]["value"] or 0.0 for r in summary["models"].values())
    total = time.perf_counter() - started
    figures = {"after_sft": after_sft, "after_grpo": after_grpo, "reward_curve": curve, "test_rows": recipe.test_rows,
               "total_seconds": round(total, 1), "sft_dir": str(sft_dir), "grpo_dir": str(grpo_dir)}  # fmt: skip
    (root / "demo_results.json").write_text(json.dumps(figures, indent=2) + "\n")
    say("")
    say(f"  held-out accuracy ({recipe.test_rows} questions)   after SFT: {after_sft:6.1%}   after GRPO: {after_grpo:6.1%}")
    say("  reward (mean accuracy of the sampled completions) by GRPO step:")
    say("    " + "  ".join(f"{step}:{reward:.2f}" for step, reward in curve))
    say(f"  whole demo: {total:.0f} s; reward curve: {root / 'reward_curve.json'}")
    say(f"  try it:  vlmkit infer --ckpt {grpo_checkpoint}")
    return figures
