"""The resumable partial output of batch inference (`vlmkit.infer.output`), without a model."""

from __future__ import annotations

import json

import pytest
import torch

from vlmkit.backends.transformers_backend import GenerationOptions
from vlmkit.errors import VlmkitError
from vlmkit.infer.output import PartialOutput, input_description, join_ranks


def test_a_torn_last_line_is_answered_again_and_rows_answered_twice_are_written_once(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("{}\n" * 5)
    output = tmp_path / "out.jsonl"
    description = input_description(str(data), 5, "model", {"max_pixels": 3136}, GenerationOptions())
    with PartialOutput(output, description) as partial:
        assert partial.rows_to_answer() == ([0, 1, 2, 3, 4], 0)
        for i in (0, 1, 3):
            partial.write(i, {"id": i, "response": "é"})
    part = next(partial.folder.glob("part-*.jsonl"))
    part.write_text(part.read_text() + '{"index": 4, "row": {"id"')  # killed while writing row 4
    (partial.folder / "part-0-1.jsonl").write_text('{"index": 1, "row": {"id": 1, "response": "again"}}\n')

    with PartialOutput(output, description) as partial:
        left, answered = partial.rows_to_answer()
        assert (left, answered) == ([2, 4], 3)
        for i in left:
            partial.write(i, {"id": i, "response": "é", **({"error": "x"} if i == 4 else {})})
        assert partial.finish() == {"ok": 4, "failed": 1}
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3, 4] and rows[1]["response"] in ("é", "again")
    assert "é" in output.read_text(encoding="utf-8") and not partial.folder.exists()


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("{}\n")
    description = input_description(str(data), 1, "model", {"max_pixels": 3136}, GenerationOptions())
    with PartialOutput(tmp_path / "out.jsonl", description) as first:
        first.rows_to_answer()
        with pytest.raises(VlmkitError, match=r"out.jsonl is being written by another vlmkit run"):
            PartialOutput(tmp_path / "out.jsonl", description).rows_to_answer()


def test_more_torchrun_processes_than_gpus_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(VlmkitError, match=r"^torchrun process 1 of this machine has no GPU of its own \(1 visible\)"):
        join_ranks("auto")


def test_the_vllm_backend_under_torchrun_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(VlmkitError, match=r"^--backend vllm under torchrun: vLLM spreads one engine over the GPUs"):
        join_ranks("auto", "vllm")
