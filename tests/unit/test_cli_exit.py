"""`vlmkit` left with Ctrl-C: exit 130 at once, without the interpreter's teardown (seconds of garbage
collection over torch's and transformers' objects; past 60 s on a busy machine)."""

from __future__ import annotations

import atexit
import os
import sys
import threading

import pytest
import typer

from vlmkit import cli


class Left(Exception):
    """Raised by the stand-in for os._exit, which must not return."""


@pytest.fixture
def exits(monkeypatch) -> list:
    """What the exit did, in order: ("atexit",), ("flush", stream), ("_exit", code); the real ones would end
    pytest."""
    done: list = []

    def _exit(code: int) -> None:
        done.append(("_exit", code))
        raise Left

    monkeypatch.setattr(os, "_exit", _exit)
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: done.append(("atexit",)))
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        monkeypatch.setattr(stream, "flush", lambda name=name: done.append(("flush", name)), raising=False)
    return done


def interrupted_app() -> typer.Typer:
    """A CLI whose command is interrupted by Ctrl-C, as `vlmkit chat` is at its prompt."""
    app = typer.Typer()

    @app.command()
    def chat() -> None:
        raise KeyboardInterrupt

    return app


def test_ctrl_c_exits_130_after_the_exit_handlers_and_a_flush_without_the_teardown(monkeypatch, exits):
    monkeypatch.setattr(cli, "app", interrupted_app())
    monkeypatch.setattr(sys, "argv", ["vlmkit"])
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])  # pytest's own threads
    with pytest.raises(Left):
        cli.main()
    assert exits == [("atexit",), ("flush", "stdout"), ("flush", "stderr"), ("_exit", 130)]


def test_ctrl_c_while_another_thread_works_waits_for_it_as_an_ordinary_exit(monkeypatch, exits):
    release = threading.Event()
    writer = threading.Thread(target=release.wait)  # not a daemon: the ordinary exit waits for it
    writer.start()
    monkeypatch.setattr(cli, "app", interrupted_app())
    monkeypatch.setattr(sys, "argv", ["vlmkit"])
    try:
        with pytest.raises(SystemExit) as left:
            cli.main()
    finally:
        release.set()
        writer.join()
    assert left.value.code == 130
    assert exits == []


# -- every exit of the `vlmkit` process skips the teardown ------------------------------------------------------


def app_that(outcome: str) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def infer() -> None:
        print("wrote 1 rows")
        if outcome == "user mistake":
            raise cli.VlmkitError("--input: no such file")
        if outcome == "message":
            sys.exit("stopped: see the log")

    return app


@pytest.mark.parametrize(
    ("outcome", "code", "last_line"),
    [("success", 0, "wrote 1 rows"), ("user mistake", 2, "error: --input: no such file"),
     ("message", 1, "stopped: see the log")],
)  # fmt: skip
def test_the_vlmkit_process_leaves_without_the_teardown_whatever_the_outcome(
    monkeypatch, capsys, exits, outcome, code, last_line
):
    monkeypatch.setattr(cli, "app", app_that(outcome))
    monkeypatch.setattr(sys, "argv", ["vlmkit"])
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])
    with pytest.raises(Left):
        cli.run()
    assert [step for step in exits if step[0] != "flush"] == [("atexit",), ("_exit", code)]
    out, err = capsys.readouterr()
    assert (out + err).strip().splitlines()[-1] == last_line


LATE = """
import runpy, sys
class Late:
    def __del__(self):
        print("the teardown ran", flush=True)
keep = Late()  # freed only by the interpreter's teardown
sys.argv = ["vlmkit", "families"]
runpy.run_module("vlmkit", run_name="__main__")
"""


def test_python_m_vlmkit_answers_and_skips_the_teardown():
    """`python -m vlmkit families` prints its table and exits 0 without freeing every object first (what
    costs a finished `vlmkit infer` seconds: torch's and transformers' ~400k objects)."""
    import subprocess

    result = subprocess.run([sys.executable, "-c", LATE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "qwen2-vl" in result.stdout.lower()
    assert "the teardown ran" not in result.stdout
