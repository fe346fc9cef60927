"""`vlmkit demo`: build, measure, fine-tune and chat with a tiny model, offline, in minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    output_dir: Annotated[
        Path, typer.Option(help="Where the demo's model, data and run go (a new timestamped folder).")
    ] = Path("runs/demo"),
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the training progress bar.")
    ] = True,
    quick: Annotated[
        bool,
        typer.Option(
            help="Every step of the demo at toy size (64 training rows, 16 held-out, 8 training steps; about "
            "10 s) to check an install; the accuracy figures then mean nothing."
        ),
    ] = False,
    rl: Annotated[
        bool,
        typer.Option(
            "--rl",
            help="Reinforcement fine-tuning instead: a short sft warm start, then vlmkit grpo with a verifiable "
            "reward (the answer's accuracy); prints held-out accuracy after each and the reward curve.",
        ),
    ] = False,
) -> None:
    """Offline, on a CPU, in a few minutes: build a tiny Qwen2-VL, make a coloured-shapes dataset, measure
    held-out accuracy, fine-tune with `vlmkit sft`, measure again and chat with the result."""
    if rl:
        from vlmkit.commands.demo_rl import QUICK_RL_RECIPE, run_rl_demo

        run_rl_demo(output_dir, recipe=QUICK_RL_RECIPE if quick else None, progress=progress)
        return
    from vlmkit.commands.demo_run import QUICK_RECIPE, run_demo

    run_demo(output_dir, recipe=QUICK_RECIPE if quick else None, progress=progress)
