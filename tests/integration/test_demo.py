"""`vlmkit demo` plumbing at toy size (the accuracy bar itself is measured by running the demo; see RESULTS.md)."""

from __future__ import annotations

import json

from vlmkit.commands.demo_run import DemoRecipe, run_demo


def test_demo_runs_end_to_end_and_records_its_figures(tmp_path, capsys):
    recipe = DemoRecipe(train_rows=24, test_rows=8, max_steps=2, batch_size=4)
    figures = run_demo(tmp_path, recipe, progress=False)
    out = capsys.readouterr().out
    root = next(p for p in tmp_path.iterdir() if p.is_dir())
    saved = json.loads((root / "demo_results.json").read_text())
    assert saved == figures
    assert figures["test_rows"] == 8 and 0 <= figures["before"] <= 1 and 0 <= figures["after"] <= 1
    assert 0 < figures["chance"] < 1
    assert "held-out accuracy (8 questions)" in out and "chat: <image>What color is the" in out
    run_dir = root / "output" / "model"
    checkpoint = next(run_dir.iterdir()) / "checkpoint-2"
    assert (checkpoint / "vlmkit_complete").is_file()
    assert json.loads((checkpoint / "vlmkit.json").read_text())["max_pixels"] == 84 * 84
    # before/after are `vlmkit eval`'s: the base model and the checkpoint side by side, exact match
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert metrics["metrics"] == ["exact_match"]
    base, tuned = metrics["models"].values()
    assert base["source"] == str(root / "model") and tuned["source"] == str(checkpoint)
    assert [base["scores"]["exact_match"]["value"], tuned["scores"]["exact_match"]["value"]] == [
        figures["before"],
        figures["after"],
    ]
    assert base["rows"] == tuned["rows"] == 8 and (root / "eval" / "report.md").is_file()
    assert "metrics: exact_match (given with --metric)" in out
