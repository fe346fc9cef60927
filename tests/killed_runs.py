"""A training command run in this test's process, and the promise of `--resume`: a run killed after a checkpoint
and resumed ends as the same run uninterrupted (tests/integration/test_dpo.py and test_grpo.py).

    uninterrupted, resumed = killed_and_resumed(lambda out: ["grpo", ..., "--output-dir", out], tmp_path, ...)
    assert_same_weights(resumed / "checkpoint-3", uninterrupted / "checkpoint-3", "model.safetensors")
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlmkit.models.loader import checkpoints


def vlmkit_main(args, monkeypatch, capsys) -> tuple[int, str, str]:
    """`vlmkit ...` run in this process, as tests/integration/test_sft_resume.py does (no second start-up of torch,
    transformers and TRL): (exit code, stdout, stderr)."""
    from vlmkit.cli import main

    monkeypatch.setattr(sys, "argv", ["vlmkit", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def killed_and_resumed(
    argv: Callable[[Path], list], tmp_path: Path, monkeypatch, capsys
) -> tuple[Path, Path]:
    """(the run folder of `vlmkit *argv(tmp_path / "full")`, a copy of it killed before its last checkpoint and
    resumed with `--resume latest`). `argv(output_dir)`: the command, saving a checkpoint at every step."""
    code, _, err = vlmkit_main(argv(tmp_path / "full"), monkeypatch, capsys)
    assert code == 0, err
    (uninterrupted,) = (tmp_path / "full").glob("*/*")
    *_, before, last = checkpoints(uninterrupted)
    killed = tmp_path / "killed" / uninterrupted.parent.name / uninterrupted.name
    shutil.copytree(uninterrupted, killed)
    shutil.rmtree(killed / last.name)  # killed after the step before the last
    code, out, err = vlmkit_main([*argv(tmp_path / "killed"), "--resume", "latest"], monkeypatch, capsys)
    assert code == 0, err
    assert f"resuming from {killed / before.name}" in out
    return uninterrupted, killed


def assert_same_weights(checkpoint: Path, expected: Path, file: str) -> None:
    """Every tensor of `checkpoint / file` equals `expected / file`'s (to 1e-6)."""
    got, wanted = load_file(checkpoint / file), load_file(expected / file)
    assert got.keys() == wanted.keys()
    for name in wanted:
        torch.testing.assert_close(got[name], wanted[name], rtol=0, atol=1e-6, msg=name)
