"""The chat and inference as users run them: `vlmkit infer` piped and interrupted, `vlmkit.load` and
`vlm.generate` / `vlm.chat()`, on the scripted model whose reply is a known multi-line CJK text."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import MULTILINE_CJK_REPLY

import vlmkit

SEPARATOR = "-" * 50


def cli(*args: str, stdin: str = "", env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m vlmkit ARGS` with `stdin` piped in, in an environment without ms-swift's variables."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MAX_PIXELS", "MIN_PIXELS", "FPS", "NFRAMES")}
    return subprocess.run(
        [sys.executable, "-m", "vlmkit", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
    )


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warn" in line.lower()]


@pytest.fixture(scope="module")
def scripted_vlm(scripted_model):
    return vlmkit.load(str(scripted_model))


def test_piped_chat_prints_the_whole_multiline_cjk_reply_every_turn(scripted_model):
    result = cli("infer", "--model", str(scripted_model), "--quiet", stdin="Hi\n你好，再说一遍\n")
    assert result.returncode == 0, result.stderr
    turn = f"{MULTILINE_CJK_REPLY}\n{SEPARATOR}\n"
    assert result.stdout == f"<<< Hi\n{turn}<<< 你好，再说一遍\n{turn}<<< "


def test_three_turn_chat_prints_no_warnings(scripted_model):
    result = cli("infer", "--model", str(scripted_model), stdin="Hi\nAgain\nOnce more\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(MULTILINE_CJK_REPLY) == 3
    assert warning_lines(result.stderr) == []


def test_streamed_chat_reply_joins_to_the_generated_reply(scripted_vlm):
    generated = scripted_vlm.generate([{"messages": [{"role": "user", "content": "Hi"}]}], max_new_tokens=200)
    chat = scripted_vlm.chat()
    pieces = list(chat.stream("Hi", max_new_tokens=200))
    assert len(pieces) > 1  # it did stream
    assert "".join(pieces) == generated[0] == MULTILINE_CJK_REPLY
    assert "".join(chat.stream("Again", max_new_tokens=200)) == MULTILINE_CJK_REPLY
    assert chat.messages[-1]["content"][0]["text"] == MULTILINE_CJK_REPLY


@pytest.fixture(scope="module")
def lora_checkpoint(scripted_model, tmp_path_factory) -> Path:
    """A LoRA checkpoint of the scripted model after one `vlmkit sft` step."""
    root = tmp_path_factory.mktemp("ckpt")
    data = root / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ho"}]}\n')
    result = cli(
        "sft", "--model", str(scripted_model), "--dataset", str(data), "--output-dir", str(root / "run"),
        "--max-steps", "1", "--save-steps", "1", "--no-progress", "--report-to", "none",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return next((root / "run").glob("*/v0-*/checkpoint-1"))


@pytest.mark.slow  # a training step and a chat: ~25 s on 2 cores
def test_chat_with_a_lora_checkpoint_prints_no_warnings(lora_checkpoint):
    result = cli("infer", "--ckpt", str(lora_checkpoint), "--max-new-tokens", "4", stdin="Hi\nAgain\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(SEPARATOR) == 2
    assert warning_lines(result.stderr) == []
