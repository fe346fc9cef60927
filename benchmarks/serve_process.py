"""`vlmkit serve` started for the serve benchmarks (serve_load.py and its profiles, serve_adversarial.py and
serve_mixed.py): a free loopback port, the server as a subprocess, waited for until healthy; and their prompts.

A module of its own so that serve_load.py (which runs the profiles) and the profiles (which use these) do not
import each other.
"""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, max_batch_size: int, log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vlmkit", "serve", "--model", str(model), "--port", str(port),
           "--served-model-name", "bench", "--log-level", "warning", "--max-batch-size", str(max_batch_size),
           *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600  # a busy 2-core machine can take minutes to load a model
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    sys.exit("server did not start in 600 s")


def prompts(count: int) -> list[list[dict]]:
    """`count` distinct conversations; every fourth carries a small random image as a data: URL."""
    out = []
    rng = np.random.default_rng(0)
    for i in range(count):
        content: list[dict] = [{"type": "text", "text": f"Question {i}: what do you see?"}]
        if i % 4 == 0:
            image = Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        out.append([{"role": "user", "content": content}])
    return out
