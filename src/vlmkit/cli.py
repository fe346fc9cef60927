"""The `vlmkit` command line: the app, its global options and the commands (`vlmkit.commands`, one module
per verb, each a thin function over the Python API), and `main`.

Heavy libraries (torch, transformers) are imported inside the commands, so `--help`
and mistakes in options answer at once.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vlmkit import __version__
from vlmkit.commands.app import app_command
from vlmkit.commands.convert import convert_command
from vlmkit.commands.data import app as data_app
from vlmkit.commands.demo import demo
from vlmkit.commands.dpo import dpo_command
from vlmkit.commands.eval import eval_command
from vlmkit.commands.export import export_command
from vlmkit.commands.families import families, family_titles
from vlmkit.commands.grpo import grpo_command
from vlmkit.commands.infer import infer
from vlmkit.commands.kto import kto_command
from vlmkit.commands.peers import PeerAwareGroup
from vlmkit.commands.serve import serve_command
from vlmkit.commands.sft import ManyValuesCommand, sft_command
from vlmkit.commands.tiny_model import tiny_model
from vlmkit.errors import VlmkitError


def show_version(value: bool) -> None:
    if value:
        typer.echo(f"vlmkit {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="vlmkit",
    cls=PeerAwareGroup,
    help="Chat with, fine-tune, export and serve vision-language models ("
    + ", ".join(family_titles())
    + ").",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def global_options(
    image_cache_mb: Annotated[
        float,
        typer.Option(
            min=0,
            help="Memory (MiB per process) for resized images of local files, so an image asked about in several "
            "rows is decoded once; 0 turns it off. Applies to this run only.",
        ),
    ] = 64,
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print vlmkit's version and exit.")
    ] = False,
) -> None:
    """Options for every command, given before it (`vlmkit --image-cache-mb 0 sft ...`)."""
    if image_cache_mb != 64:
        from vlmkit.media.images import set_image_cache_mb

        set_image_cache_mb(image_cache_mb)


app.command("tiny-model")(tiny_model)
app.command("convert")(convert_command)
app.command("families")(families)
app.command("infer")(infer)
app.command("sft", cls=ManyValuesCommand, context_settings={"help_option_names": ["-h", "--help"]})(sft_command)
app.command("dpo", cls=ManyValuesCommand, context_settings={"help_option_names": ["-h", "--help"]})(dpo_command)
app.command("kto", cls=ManyValuesCommand, context_settings={"help_option_names": ["-h", "--help"]})(kto_command)
app.command("grpo", cls=ManyValuesCommand, context_settings={"help_option_names": ["-h", "--help"]})(grpo_command)
app.command("eval")(eval_command)
app.add_typer(
    data_app, name="data", help="Check a dataset before training, preview rows as the model sees them, or encode it into the encode cache."
)
app.command("demo")(demo)
app.command("export")(export_command)
app.command("app")(app_command)
app.command("serve")(serve_command)


def main() -> None:
    """Entry point: user mistakes print one `error:` line and exit 2; bugs keep their traceback; Ctrl-C
    exits 130 at once (`leave_at_once`)."""
    from vlmkit.commands.peer_env import command_encodes, ignored_variable_warnings
    from vlmkit.commands.threads import COMMANDS as THREADED_COMMANDS
    from vlmkit.commands.threads import choose_wait_policy

    if sys.argv[1:2] and sys.argv[1] in THREADED_COMMANDS:
        choose_wait_policy()  # before the command imports torch
    if command_encodes(sys.argv[1:]):
        for line in ignored_variable_warnings():
            typer.echo(line, err=True)
    try:
        app()
    except VlmkitError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except SystemExit as e:
        if e.code == 130:  # Ctrl-C: typer turns KeyboardInterrupt into exit 130
            leave_at_once(130)
        raise
    except KeyboardInterrupt:
        leave_at_once(130)


def run() -> None:
    """The `vlmkit` process (the console script and `python -m vlmkit`): `main`, then the exit without the
    interpreter's teardown (`leave_at_once`) whatever the outcome, since nothing the teardown would do is left
    to do once the command has returned: a finished `vlmkit infer` answers seconds sooner. `main` itself keeps
    the ordinary exit, for callers in a process that goes on (tests, notebooks)."""
    try:
        main()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            leave_at_once(e.code or 0)
        typer.echo(str(e.code), err=True)  # sys.exit("message"): printed, exit 1, as the interpreter would
        leave_at_once(1)
    leave_at_once(0)


def leave_at_once(code: int) -> None:
    """Exit with `code` without the interpreter's teardown, once nothing is left to finish. The teardown
    frees every object of torch and transformers one by one (garbage collection over ~400k objects): 4-7 s
    on two busy cores, over 20 s at times, past 60 s under two pytest-xdist workers, while a user who
    pressed Ctrl-C waits for the shell. Exit handlers still run (temporary folders, logging) and the
    standard streams are flushed; while another non-daemon thread runs (it may be writing a file) the
    ordinary exit, which waits for it, is taken instead."""
    import atexit
    import os
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()  # what the teardown would run first: weakref.finalize, logging, offload folders
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
