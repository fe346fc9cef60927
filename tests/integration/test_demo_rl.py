"""`vlmkit demo --rl --quick` through the CLI: every step at toy size (the warm start on the mistaken captions,
the control's more sft, grpo, eval of the three checkpoints), asserting what the user reads: the three held-out
accuracies with their intervals, GRPO's paired gain over the control, the reward curve (printed and in
reward_curve.json, one point per logged GRPO step) and demo_results.json. The real gain is measured by the
full recipe (benchmarks/RESULTS.md, `vlmkit demo --rl`), too slow for CI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

PERCENT = r"\d+\.\d%"


def test_demo_rl_quick_prints_and_records_the_three_figures(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", "demo", "--rl", "--quick", "--no-progress", "--output-dir", "runs"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,  # a relative --output-dir, as users give it
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "held-out accuracy (8 questions, true answers):" in out
    for label in (r"after the warm start \(4 sft steps\)", r"after 2 more sft steps \(control\)",
                  r"after 2 grpo steps instead"):  # fmt: skip
        assert re.search(rf"{label}\s+{PERCENT}\s+\(95% interval {PERCENT} to {PERCENT}\)", out), out[-2000:]
    assert re.search(
        r"grpo - more sft: [+-]\d+\.\d points \(paired 95% interval [+-]\d+\.\d to [+-]\d+\.\d\)", out
    )
    assert re.search(r"the SFT captions call \d+ of the green shapes blue \(60%\)", out)
    assert re.search(r"1:\d\.\d\d  2:\d\.\d\d", out)

    [root] = (tmp_path / "runs").glob("rl-*")
    curve = json.loads((root / "reward_curve.json").read_text())
    assert [point["step"] for point in curve] == [1, 2]
    assert all(0.0 <= point["reward"] <= 1.0 for point in curve)
    figures = json.loads((root / "demo_results.json").read_text())
    assert list(figures["accuracy"]) == ["warm_start", "more_sft", "grpo"]
    for figure in figures["accuracy"].values():
        low, high = figure["ci95"]
        assert 0.0 <= low <= figure["value"] <= high <= 1.0
    assert figures["grpo_minus_more_sft"] == pytest.approx(
        figures["accuracy"]["grpo"]["value"] - figures["accuracy"]["more_sft"]["value"]
    )
    assert set(figures["phases"]) == {"data", "warm start", "more sft", "grpo", "eval"}
    assert all(phase["cpu"] >= 0 and phase["wall"] > 0 for phase in figures["phases"].values())
    # the control and GRPO both start from the warm start's checkpoint; the captions, not the prompts, hold the mistake
    assert "/more-sft/checkpoint-4/" in figures["checkpoints"]["more_sft"]
    assert "/grpo/checkpoint-4/" in figures["checkpoints"]["grpo"]
    captions = [
        json.loads(line) for line in (root / "data" / "train" / "captions.jsonl").read_text().splitlines()
    ]
    prompts = [json.loads(line) for line in (root / "data" / "prompts.jsonl").read_text().splitlines()]
    said = [row["messages"][1]["content"] for row in captions]
    truth = [row["solution"] for row in prompts]
    mistakes = [(t, s) for t, s in zip(truth, said, strict=True) if t != s]
    assert mistakes and set(mistakes) == {("green", "blue")} and len(mistakes) == figures["captions_changed"]
    assert len(mistakes) == round(0.6 * truth.count("green"))
