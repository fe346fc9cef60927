"""Videos made in the tests with PyAV: frame i is a solid colour that encodes i (`colour`), so a test can
tell which frames were sampled (used by tests/integration/test_video.py and others)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def colour(i: int) -> tuple[int, int, int]:
    """The colour of frame i (< 256): its two base-16 digits, 16 levels apart, in red and green."""
    return ((i % 16) * 16 + 8, (i // 16) * 16 + 8, 128)


def make_video(path: Path, count: int, fps: int = 10, size=(48, 64), gop: int = 10, codec="libx264") -> Path:
    """`count` frames of colour(i) at `fps`, a keyframe every `gop` frames."""
    height, width = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "qp": "0"} if codec == "libx264" else {"g": str(gop)}
        for i in range(count):
            pixels = np.full((height, width, 3), colour(i), dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
