"""Training runs of the page: `vlmkit sft` launched as its own process, found again from the disk.

The run folder is the source of truth (`vlmkit.train.run`): a reloaded page or a restarted `vlmkit app` reads
the same state. The app adds only a launch record, RUNS/.app/<id>.json (the process id and the command) and
the process's output, RUNS/.app/<id>.log, so that a run that fails before its run folder exists (a bad option)
still shows its error. A run folder belongs to a launch when its `.lock` names the launch's pid.

    state: "starting" (the process runs, no run folder yet), "running" (its run folder is locked),
           "done" (the log has the trainer's final line), "failed" (the process ended otherwise; `error`
           is the last error line of its output), "stopped" (by the stop button)

A stopped or failed run is resumed as the CLI resumes it: the same arguments plus `--resume RUN_FOLDER` (its
newest complete checkpoint, same data order, optimizer and scheduler), under the same launch id and log.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.train.run import read_log

LOG_TAIL = 40  # lines of output shown


class Runs:
    """The runs under `root` (the app's --runs folder)."""

    def __init__(self, root: Path, cwd: Path):
        self.root, self.cwd = root, cwd
        self.launches = root / ".app"
        self.children: dict[int, subprocess.Popen] = {}  # launched by this process: reaped here

    def launch(self, args: list[str]) -> str:
        """Start `vlmkit sft ARGS --output-dir RUNS` in its own session; returns the launch id."""
        self.launches.mkdir(parents=True, exist_ok=True)
        launch_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
        pid = self._start(launch_id, args, "wb")
        record = {"id": launch_id, "pid": pid, "args": args, "started": time.time()}
        (self.launches / f"{launch_id}.json").write_text(json.dumps(record) + "\n")
        return launch_id

    def _start(self, launch_id: str, args: list[str], mode: str) -> int:
        command = [sys.executable, "-m", "vlmkit", "sft", *args, "--output-dir", str(self.root), "--no-progress"]
        with open(self.launches / f"{launch_id}.log", mode) as log:
            child = subprocess.Popen(
                command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a stop signals its whole process group; it outlives the page
            )  # fmt: skip
        self.children[child.pid] = child
        return child.pid

    def resume(self, run_id: str) -> list[str]:
        """Launch a stopped or failed run again with `--resume RUN_FOLDER`; returns the arguments given to sft."""
        run = self.find(run_id)
        record = next((r for r in self.records() if r["id"] == run_id), None)
        if record is None:
            raise VlmkitError(f"run {run_id!r}: only runs launched from the page can be resumed here")
        if run["state"] not in ("stopped", "failed"):
            raise VlmkitError(f"run {run_id!r} is {run['state']}; only a stopped or failed run is resumed")
        if not run["checkpoints"]:
            raise VlmkitError(f"run {run_id!r} saved no checkpoint, so there is nothing to resume from; start it again")
        args = [*_without_resume(record["args"]), "--resume", run["folder"]]
        record |= {"pid": self._start(run_id, args, "ab"), "args": args, "folder": run["folder"], "resumed": time.time()}
        record.pop("stopped", None)
        (self.launches / f"{run_id}.json").write_text(json.dumps(record) + "\n")
        return args

    def _alive(self, record: dict[str, Any]) -> bool:
        pid = record["pid"]
        if pid in self.children:
            return self.children[pid].poll() is None
        try:  # launched by an earlier app: not our child, so it cannot linger as a zombie of ours
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def run_folders(self) -> list[Path]:
        """RUNS/<model>/v<N>-<time>/ folders (those with args.json), newest first."""
        found = [p.parent for p in self.root.glob("*/v*/args.json")]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.launches.glob("*.json"), reverse=True):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return out

    def list(self) -> list[dict[str, Any]]:
        """Every run: launches of the page (with their run folder once it exists) and run folders trained
        into RUNS by `vlmkit sft` itself."""
        folders = self.run_folders()
        by_pid = {_lock_pid(folder): folder for folder in folders}
        runs, seen = [], set()
        for record in self.records():
            folder = by_pid.get(record["pid"]) or (Path(record["folder"]) if record.get("folder") else None)
            if folder is not None and folder.stat().st_mtime + 1 < record["started"]:
                folder = None  # an older run of a pid reused since
            seen.add(folder)
            runs.append(self.describe(record["id"], folder, record))
        runs += [self.describe(self._folder_id(f), f, None) for f in folders if f not in seen]
        return runs

    def _folder_id(self, folder: Path) -> str:
        return folder.relative_to(self.root).as_posix()

    def find(self, run_id: str) -> dict[str, Any]:
        for run in self.list():
            if run["id"] == run_id:
                return run
        raise VlmkitError(f"run {run_id!r}: no such run under {self.root}")

    def describe(self, run_id: str, folder: Path | None, record: dict[str, Any] | None) -> dict[str, Any]:
        """The run's state, curves and output tail, from the disk."""
        log = read_log(folder / "train_log.jsonl") if folder else []
        output = self.launches / f"{record['id']}.log" if record else None
        tail = _tail(output) if output else []
        locked = folder is not None and _is_locked(folder)
        alive = record is not None and self._alive(record)
        finished = _finished(log)
        if record is not None and record.get("stopped"):
            state = "running" if alive else "stopped"
        elif locked or alive:
            state = "running" if folder else "starting"
        elif finished:
            state = "done"
        else:
            state = "failed"
        error = _last_error(tail) if state == "failed" else None
        if state == "failed" and error is None:
            error = "the training process ended without finishing (no error line in its output)"
        args = json.loads((folder / "args.json").read_text()) if folder and (folder / "args.json").is_file() else {}
        return {
            "id": run_id,
            "folder": str(folder) if folder else None,
            "state": state,
            "error": error,
            "pid": record["pid"] if record else None,
            "command": record["args"] if record else None,
            "max_steps": args.get("max_steps"),
            "points": [
                {k: v for k, v in line.items() if isinstance(v, (int, float))} for line in log
            ],
            "output": tail,
            "checkpoints": sorted(p.name for p in folder.glob("checkpoint-*")) if folder else [],
        }

    def stop(self, run_id: str) -> None:
        """SIGTERM the launch's process group (the Trainer stops; what is saved stays)."""
        record = next((r for r in self.records() if r["id"] == run_id), None)
        if record is None:
            raise VlmkitError(f"run {run_id!r}: only runs launched from the page can be stopped here")
        if not self._alive(record):
            return
        record["stopped"] = True
        (self.launches / f"{run_id}.json").write_text(json.dumps(record) + "\n")
        try:
            os.killpg(record["pid"], signal.SIGTERM)
        except OSError:
            pass


def _finished(log: list[dict[str, Any]]) -> bool:
    """Whether the trainer's final line (train_runtime) comes after the last step: a stopped run writes one
    too, and a resumed run's new steps follow it."""
    ends = [i for i, line in enumerate(log) if "train_runtime" in line]
    steps = [i for i, line in enumerate(log) if "loss" in line]
    return bool(ends) and (not steps or ends[-1] > steps[-1])


def _without_resume(args: list[str]) -> list[str]:
    """The arguments less an earlier `--resume X` (a run resumed twice resumes from its folder once)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        else:
            out.append(arg)
    return out


def _lock_pid(folder: Path) -> int | None:
    try:
        text = (folder / ".lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _is_locked(folder: Path) -> bool:
    """Whether a process holds the run folder's lock (it is training)."""
    try:
        with open(folder / ".lock") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return False


def _tail(path: Path) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-LOG_TAIL:]


def _last_error(lines: list[str]) -> str | None:
    """The last line that reads as an error (vlmkit's `error: ...`, a traceback's last line)."""
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^[A-Za-z_.]+(Error|Exception)\b", line):
            return line
    return None
