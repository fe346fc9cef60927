"""`vlmkit serve` started for the serve benchmarks (serve_load.py and its adversarial profile,
serve_adversarial.py): a free loopback port, the server as a subprocess, waited for until healthy.

A module of its own so that serve_load.py (which runs the adversarial profile) and serve_adversarial.py
(which uses these) do not import each other.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_batch_size: int, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vlmkit", "serve", "--model", str(model), "--port", str(port),
           "--served-model-name", "bench", "--log-level", "warning", "--max-batch-size", str(max_batch_size),
           *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("server did not start in 180 s")
