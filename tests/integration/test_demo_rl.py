"""`vlmkit demo --rl --quick` through the CLI: every step at toy size (sft warm start, grpo, eval of both),
asserting the structure the user reads: the before/after accuracy line, the reward curve (printed and in
reward_curve.json, one point per logged GRPO step) and demo_results.json. The real gain is measured by
the full recipe (benchmarks/RESULTS.md), too slow for CI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_rl_quick_prints_both_accuracies_and_the_reward_curve(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", "demo", "--rl", "--quick", "--no-progress", "--output-dir", "runs"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,  # a relative --output-dir, as users give it
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"held-out accuracy \(8 questions\)\s+after SFT:\s+\d+\.\d%\s+after GRPO:\s+\d+\.\d%", done.stdout)
    [root] = (tmp_path / "runs").glob("rl-*")
    curve = json.loads((root / "reward_curve.json").read_text())
    assert [point["step"] for point in curve] == [1, 2]
    assert all(0.0 <= point["reward"] <= 1.0 for point in curve)
    assert re.search(r"1:\d\.\d\d  2:\d\.\d\d", done.stdout)
    figures = json.loads((root / "demo_results.json").read_text())
    assert set(figures) >= {"after_sft", "after_grpo", "reward_curve", "total_seconds"}
    assert (root / "grpo").is_dir() and (root / "eval" / "report.md").is_file()
