"""Issue 27 #14: one hostile row among good ones (a raw H.264 stream named .h264 or .mp4, a NaN box, a lone
surrogate, 100,000-deep JSON, a number where text goes) is one line naming file:line in `vlmkit data check`,
`vlmkit sft` (and `--streaming`, resumed) and `vlmkit infer --input`; the other rows are checked, trained and
answered. Each used to stop the whole command with a traceback, or, for a number, train on its digits.
Issue 26 #B3: an image in a format outside the allowlist (EPS, which made Pillow run Ghostscript on the file's
PostScript; PCX, one of some 40 other formats Pillow reads) is refused the same way, and Ghostscript never runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import random_image

GOOD = {
    "messages": [
        {"role": "user", "content": "<image>这是什么？\nWhat is it?"},
        {"role": "assistant", "content": "一个方块。\nA square."},
    ],
    "images": ["square.png"],
}


def image_row(name: str) -> str:
    return json.dumps({**GOOD, "images": [name]}, ensure_ascii=False)


def video_row(name: str) -> str:
    row = {"messages": [{"role": "user", "content": "<video>What happens?"}, {"role": "assistant", "content": "Nothing."}]}
    return json.dumps({**row, "videos": [name]})


# kind -> (the row's line as written in the file, what its one line says after "FILE:LINE: ")
KINDS = {
    "raw H.264 named .h264": (video_row("clip.h264"), "video 1: {folder}/clip.h264: a raw h264 stream without a container"),
    "raw H.264 named .mp4": (video_row("clip.mp4"), "video 1: {folder}/clip.mp4: a raw h264 stream without a container"),
    "EPS image": (image_row("drawing.eps"), "image 1: {folder}/drawing.eps: not an image file, or not in a format read here"),
    "PCX image named .png": (image_row("scan.png"), "image 1: {folder}/scan.png: not an image file, or not in a format read here"),
    "NaN box": (
        '{"messages": [{"role": "user", "content": "<image>What is at <bbox>?"}, {"role": "assistant", "content": '
        '"<ref-object>"}], "images": ["square.png"], "objects": {"ref": ["cat"], "bbox": [[NaN, 1, 20, 30]]}}',
        "objects: bbox 0: a bbox must be 4 finite numbers [x1, y1, x2, y2], got [nan, 1, 20, 30]",
    ),
    "lone surrogate": (
        '{"messages": [{"role": "user", "content": "<image>Hi \\ud800"}, {"role": "assistant", "content": "ok"}], '
        '"images": ["square.png"]}',
        "a string holds an unpaired UTF-16 surrogate",
    ),
    "100,000-deep JSON": ("[" * 100_000 + "]" * 100_000, "invalid JSON (nested too deeply"),
    "content NaN": (
        '{"messages": [{"role": "user", "content": "<image>How many?"}, {"role": "assistant", "content": NaN}], '
        '"images": ["square.png"]}',
        "messages turn 1 is a number (nan); expected text",
    ),
    "content 5": (
        '{"messages": [{"role": "user", "content": "<image>How many?"}, {"role": "assistant", "content": 5}], '
        '"images": ["square.png"]}',
        "messages turn 1 is a number (5); expected text",
    ),
}


def write_raw_h264(path: Path, frames: int = 12) -> Path:
    """An Annex-B H.264 stream with no container (what `ffmpeg -f h264` or a camera dump writes)."""
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            pixels = np.full((48, 64, 3), i * 20, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """d.jsonl: a good row, then each hostile row followed by a good row; returns (its folder, kind -> line)."""
    folder = tmp_path_factory.mktemp("hostile")
    random_image(56, 56).save(folder / "square.png")
    write_raw_h264(folder / "clip.h264")
    shutil.copy(folder / "clip.h264", folder / "clip.mp4")  # the same raw stream under a container's name
    random_image(56, 56).save(folder / "drawing.eps", format="EPS")
    random_image(56, 56).save(folder / "scan.png", format="PCX")
    lines, at = [json.dumps(GOOD, ensure_ascii=False)], {}
    for kind, (line, _) in KINDS.items():
        at[kind] = len(lines) + 1
        lines += [line, json.dumps(GOOD, ensure_ascii=False)]
    (folder / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, at


def vlmkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run vlmkit with a `gs` first on PATH that leaves a file `ghostscript-ran` when run."""
    fake = cwd / "fake-bin"
    fake.mkdir(exist_ok=True)
    (fake / "gs").write_text(f"#!/bin/sh\ntouch '{cwd / 'ghostscript-ran'}'\nexit 1\n")
    (fake / "gs").chmod(0o755)
    done = subprocess.run(
        [sys.executable, "-m", "vlmkit", *args], cwd=cwd, capture_output=True, text=True, timeout=400,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not (cwd / "ghostscript-ran").exists(), "Pillow ran Ghostscript on a client's EPS file"
    return done


def expected(folder: Path, kind: str, line: int) -> str:
    return f"d.jsonl:{line}: " + KINDS[kind][1].format(folder=folder)


@pytest.mark.slow  # one `vlmkit data check` subprocess, ~10 s
def test_data_check_lists_each_hostile_row_in_one_line_and_checks_the_others(small_model, hostile):
    folder, at = hostile
    done = vlmkit("data", "check", "-m", str(small_model), "-d", "d.jsonl", "--bad-samples", "bad.jsonl", cwd=folder)
    assert done.returncode == 1, done.stdout + done.stderr
    n = len(KINDS)
    assert f"checked {2 * n + 1} rows in 1 file: {n + 1} good, {n} bad" in done.stdout
    listed = {json.loads(line)["where"]: json.loads(line)["reason"] for line in open(folder / "bad.jsonl")}
    for kind, line in at.items():
        where, _, reason = expected(folder, kind, line).partition(": ")
        assert listed[where].startswith(reason), (kind, listed)


@pytest.mark.slow  # one `vlmkit infer` subprocess, ~15 s
def test_infer_answers_the_good_rows_and_gives_each_hostile_row_its_error(small_model, hostile, tmp_path):
    folder, at = hostile
    done = vlmkit("infer", "-m", str(small_model), "--input", "d.jsonl", "--output", str(tmp_path / "out.jsonl"),
                  "--max-new-tokens", "2", cwd=folder)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    n = len(KINDS)
    assert f"wrote {2 * n + 1} rows to {tmp_path / 'out.jsonl'} ({n} failed)" in done.stdout
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl", encoding="utf-8")]
    errors = {number: row["error"] for number, row in enumerate(rows, 1) if "error" in row}
    assert sorted(errors) == sorted(at.values())
    for kind, line in at.items():
        assert errors[line].startswith(expected(folder, kind, line)), (kind, errors[line])
    answered = [row for row in rows if "error" not in row]
    assert len(answered) == n + 1 and all("response" in row for row in answered)


@pytest.mark.slow  # two `vlmkit sft` subprocesses of 2 steps, ~40 s
def test_sft_trains_the_good_rows_and_lists_each_hostile_row(small_model, hostile):
    folder, at = hostile
    common = ["--max-steps", "2", "--max-pixels", "4000", "--max-bad-fraction", "0.6", "--no-progress",
              "--report-to", "none", "--eval-generate", "0"]  # fmt: skip
    done = vlmkit("sft", "-m", str(small_model), "-d", "d.jsonl", "--output-dir", "out", *common, cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"train rows={len(KINDS) + 1} " in done.stdout
    run_dir = next((folder / "out" / small_model.name).iterdir())
    assert (run_dir / "checkpoint-2").is_dir()
    listed = {json.loads(line)["where"]: json.loads(line)["reason"] for line in open(run_dir / "bad_samples.jsonl")}
    for kind, line in at.items():
        where, _, reason = expected(folder, kind, line).partition(": ")
        assert listed[where].startswith(reason), (kind, listed)


@pytest.mark.slow  # two `vlmkit sft --streaming` subprocesses, ~40 s
def test_streaming_sft_resumed_lists_each_hostile_row_once(small_model, hostile):
    """Issue 27 #15: every pass over a stream, and every resume (which reads its window again), appended the same
    bad rows to bad_samples.jsonl again."""
    folder, at = hostile
    common = ["--streaming", "--no-packing", "--batch-size", "4", "--max-steps", "4", "--save-steps", "2",
              "--save-total-limit", "5", "--max-pixels", "4000", "--max-bad-fraction", "0.6", "--no-progress",
              "--report-to", "none", "--eval-generate", "0"]  # fmt: skip
    args = ["sft", "-m", str(small_model), "-d", "d.jsonl", "--output-dir", "stream", *common]
    done = vlmkit(*args, cwd=folder)  # 8 good rows, 2 steps a pass: 2 passes over every bad row
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = next((folder / "stream" / small_model.name).iterdir())
    shutil.rmtree(run_dir / "checkpoint-4")  # as if killed after step 2
    done = vlmkit(*args, "--resume", "latest", cwd=folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (run_dir / "checkpoint-4").is_dir()
    listed = [json.loads(line)["where"] for line in open(run_dir / "bad_samples.jsonl")]
    assert sorted(listed) == sorted(f"d.jsonl:{line}" for line in at.values())
