"""The README, run as a user runs it: every ```bash and ```python block, top to bottom, in one folder.

Tier: user-level integration tests (see tests/README.md). Each block of README.md that a user would run is
executed in README order in one temporary working directory (`bash -e` for shell blocks, the venv's
`python` for Python blocks), with this checkout's `vlmkit` first on PATH and PYTHONPATH, so a block sees
the files the blocks above it wrote, as a user's shell would.

What cannot run here is replaced by ONE documented substitution, the table `SUBSTITUTIONS` below: hub ids
become tiny local models built in the test (`Qwen/Qwen2-VL-2B-Instruct` answers the Quickstart's transcript
reply, so the transcript is checked word for word), placeholders (`/path/to/LLaMA-Factory/data`, `MODEL`,
`.../checkpoint-500`) become what they stand for, the serve port becomes a free one and a URL on the
internet becomes a data: URL. The data files the README names (cat.jpg, train.jsonl, val.json, run.yaml,
boxes.jsonl ...) are made in the working directory in the schemas the README shows (`make_readme_files`).

A block that cannot run here (several GPUs, a hub-only checkpoint) carries an HTML comment just before it:
`<!-- readme-test: skip (REASON) -->`. `test_every_readme_block_is_run_or_marked` fails on any block that is
neither run nor marked, so a new block cannot go untested silently. Blocks of output or data shown to the
reader are ```text and ```json.

Chat transcripts (a `vlmkit infer` line followed by `<<< ` lines) are run by feeding their inputs on
stdin; every line of the transcript must then appear, in order, in what the chat printed. A comment
`# ... TEXT` after a command says what its output contains, and is checked. A command put in the background
with `&` is stopped when the module ends; the lines after it wait for its `--port` to answer /health.

The blocks depend on each other, so the tests of this file run in README order; run the whole file.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import PEERS, random_image

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN = {"bash", "python"}  # blocks a user runs
SHOWN = {"text", "json"}  # blocks of output or data shown to the reader
MARKER = re.compile(r"<!--\s*readme-test:\s*(.*?)\s*-->")
SKIP = re.compile(r"skip \((.+)\)")
CHAT_REPLY = "A cat sitting on a windowsill."  # the Quickstart transcript's reply


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # the text of a `<!-- readme-test: ... -->` just before the fence

    @property
    def skip_reason(self) -> str | None:
        match = SKIP.fullmatch(self.marker or "")
        return match.group(1) if match else None


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of a Markdown text, with the readme-test marker among the comment lines above it."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        start, lang = i, lines[i][3:].strip()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        marker, k = None, start - 1
        while k >= 0 and lines[k].strip().startswith("<!--"):
            found = MARKER.search(lines[k])
            marker = found.group(1) if found else marker
            k -= 1
        blocks.append(Block(start + 1, lang, "\n".join(lines[start + 1 : end]) + "\n", marker))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUN_BLOCKS = [b for b in BLOCKS if b.lang in RUN and b.skip_reason is None]

# Blocks that a known, open defect breaks: a line of the block -> the defect. Each is a strict xfail, so the
# test turns red (XPASS) when the fix lands; then delete the entry.
KNOWN_DEFECTS: dict[str, str] = {}


def block_param(block: Block):
    defects = [reason for line, reason in KNOWN_DEFECTS.items() if line in block.code]
    marks = [pytest.mark.xfail(strict=True, reason="; ".join(defects))] if defects else []
    return pytest.param(block, id=f"README.md:{block.line}", marks=marks)


def test_every_readme_block_is_run_or_marked():
    problems = []
    for block in BLOCKS:
        where = f"README.md:{block.line}"
        if block.lang not in RUN | SHOWN:
            problems.append(
                f"{where}: ```{block.lang or '(no language)'}: mark it ```bash/```python (run by "
                "this test) or ```text/```json (shown, not run)"
            )
        elif block.marker is not None and block.skip_reason is None:
            problems.append(f"{where}: marker {block.marker!r} is not `skip (REASON)`")
        elif block.marker is not None and block.lang in SHOWN:
            problems.append(f"{where}: a ```{block.lang} block is never run; remove its marker")
    assert not problems, "\n".join(problems)
    assert len(RUN_BLOCKS) >= 10, "the README's runnable blocks were not found"


# -- the substitution ---------------------------------------------------------------------------------


@dataclass
class Workspace:
    dir: Path
    models: Path
    port: int
    pids: Path  # background commands' process ids, one a line
    outputs: dict[int, str]  # README line of a block -> what it printed


def newest_checkpoint(ws: Workspace, runs: str) -> str:
    """The newest complete checkpoint of the run folder(s) matching `runs` (what `.../checkpoint-500` stands for)."""
    found = sorted(ws.dir.glob(f"{runs}/checkpoint-*/vlmkit_complete"), key=lambda p: p.stat().st_mtime)
    assert found, f"no complete checkpoint in {runs}: did the sft block above run?"
    return str(found[-1].parent.relative_to(ws.dir))


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


# README text -> what runs instead, applied in order to every block that runs. Each entry says why.
SUBSTITUTIONS = [
    # The set-up line: the install is the test command's own (CI runs exactly it), the demo runs shortened.
    (
        re.escape(
            ".venv/bin/pip install -q torch==2.13.0 && .venv/bin/pip install -q -e . && .venv/bin/vlmkit demo"
        ),
        lambda ws: "vlmkit demo --quick",
    ),
    (r"python3 -m venv \.venv && ", lambda ws: ""),
    # Hub ids -> tiny models built here, named like the checkpoint (run folders are named after the model).
    (r"Qwen/Qwen2-VL-2B-Instruct", lambda ws: str(ws.models / "Qwen2-VL-2B-Instruct")),
    (r"Qwen/Qwen2-VL-7B-Instruct", lambda ws: str(ws.models / "Qwen2-VL-7B-Instruct")),
    (r"OpenGVLab/InternVL3-1B-hf", lambda ws: "tiny-internvl"),  # the block's own tiny InternVL
    (r"\bMODEL\b", lambda ws: str(ws.models / "Qwen2-VL-2B-Instruct")),
    # Placeholders for what earlier blocks made or a user has.
    (
        r"output/Qwen2-VL-7B-Instruct/v0-20261121-120000/checkpoint-500|\.\.\./checkpoint-500",
        lambda ws: newest_checkpoint(ws, "output/Qwen2-VL-7B-Instruct/v0-*"),
    ),
    (r"/path/to/LLaMA-Factory/data", lambda ws: str(PEERS / "llamafactory")),
    # The encode example's 8 processes are for a bigger machine than CI's 2 cores.
    (r"(?<=--workers )8\b|(?<=--encode-workers )8\b", lambda ws: "2"),
    # A streamed run's 2000 steps: 2 show it trains (the tiny data loops over its 4 rows either way).
    (r"(?<=--streaming --max-steps )2000\b", lambda ws: "2"),
    # No network in tests; another developer's server may hold port 8000.
    (r"https://example\.com/cat\.jpg", lambda ws: data_url(ws.dir / "cat.jpg")),
    (r"(?<=--port )8000\b|(?<=localhost:)8000\b|(?<=127\.0\.0\.1:)8000\b", lambda ws: str(ws.port)),
    # `vlmkit app` beside the serve block's server, which is still running.
    (r"(?<=--port )8001\b|(?<=localhost:)8001\b", lambda ws: str(second_port())),
]


@functools.cache
def second_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def substitute(code: str, ws: Workspace) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        if re.search(pattern, code):
            code = re.sub(pattern, lambda _m, r=replacement: r(ws), code)
    return code


def make_readme_files(ws: Workspace) -> None:
    """The files the README's commands name, in the schemas the README shows."""
    d = ws.dir
    random_image(240, 320, seed=1).save(d / "cat.jpg")
    random_image(300, 200, seed=2).save(d / "photo.jpg")
    random_image(480, 640, seed=3).save(d / "street.jpg")  # 640x480, as COCO_train2014_000000001507.jpg
    shutil.copy(PEERS / "llamafactory" / "mllm_demo_data" / "4.mp4", d / "clip.mp4")
    shutil.copy(PEERS / "llamafactory" / "mllm_video_demo.json", d / "mllm_video_demo.json")
    shutil.copytree(PEERS / "llamafactory" / "mllm_demo_data", d / "mllm_demo_data")
    shutil.copy(d / "clip.mp4", d / "mllm_demo_data" / "1.mp4")  # LLaMA-Factory's 1.mp4 is not in PEERS

    def row(question: str, answer: str, image: str) -> dict:
        return {
            "messages": [
                {"role": "user", "content": f"<image>{question}"},
                {"role": "assistant", "content": answer},
            ],
            "images": [image],
        }

    train = [
        row("What is in this picture?", CHAT_REPLY, "cat.jpg"),
        row("Describe it.", "A tall photo.", "photo.jpg"),
    ]
    write_jsonl(d / "train.jsonl", train * 8)
    write_jsonl(d / "val.jsonl", train)
    (d / "val.json").write_text(json.dumps(train, indent=2))
    write_jsonl(d / "data.jsonl", train * 2)
    write_jsonl(
        d / "videos.jsonl",
        [
            {
                "messages": [
                    {"role": "user", "content": "<video>What happens?"},
                    {"role": "assistant", "content": "A clip."},
                ],
                "videos": ["clip.mp4"],
            }
        ]
        * 2,
    )
    (d / "run.yaml").write_text(
        f"model: {ws.models / 'Qwen2-VL-7B-Instruct'}\ndataset: [train.jsonl]\ntuner: lora\nmax_steps: 2\n"
    )
    import datasets
    import pandas as pd

    for i in range(4):
        random_image(40, 120, seed=10 + i).save(d / f"formula{i}.png")
        random_image(96, 128, seed=20 + i).save(d / f"coco{i}.jpg")
    latex = datasets.Dataset.from_list(  # AI-ModelScope/LaTeX_OCR: image, text
        [{"image": str(d / f"formula{i}.png"), "text": f"\\frac{{{i}}}{{x}}"} for i in range(4)]
    ).cast_column("image", datasets.Image())
    latex.to_parquet(d / "latex_ocr.parquet")
    pd.DataFrame(  # seed 003's data2csv.py: image_path, caption
        {"image_path": [str(d / f"coco{i}.jpg") for i in range(4)], "caption": [f"A photo {i}." for i in range(4)]}
    ).to_csv(d / "coco-2024-dataset.csv", index=False)
    boxes = next(
        b for b in BLOCKS if b.lang == "json" and '"objects"' in b.code
    )  # the Grounding section's row
    (d / "boxes.jsonl").write_text(boxes.code)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def readme_ws(tmp_path_factory):
    from scripted import build_scripted_model

    root = tmp_path_factory.mktemp("readme")
    models = root / "models"
    build_scripted_model("qwen2-vl", models / "Qwen2-VL-2B-Instruct", CHAT_REPLY)
    (models / "Qwen2-VL-7B-Instruct").symlink_to(models / "Qwen2-VL-2B-Instruct")
    ws = Workspace(root / "work", models, free_port(), root / "background.pids", {})
    ws.dir.mkdir()
    make_readme_files(ws)
    yield ws
    for pid in ws.pids.read_text().split() if ws.pids.exists() else []:
        try:
            os.kill(int(pid), signal.SIGTERM)
        except ProcessLookupError:
            pass


# -- running a block ----------------------------------------------------------------------------------


def chat_transcripts(code: str) -> tuple[str, list[list[str]]]:
    """Replace each chat transcript (a command followed by `<<< ` lines) by the command fed its inputs;
    returns the new code and each transcript's lines (what the chat must print, in order)."""
    lines, out, transcripts = code.splitlines(), [], []
    i = 0
    while i < len(lines):
        j = i + 1
        if "vlmkit infer" in lines[i] and j < len(lines) and lines[j].startswith("<<< "):
            while j < len(lines) and lines[j].strip() and not lines[j].startswith("#"):
                j += 1
            shown = lines[i + 1 : j]
            inputs = [line.split("<<< ", 1)[1] for line in shown if "<<< " in line]
            out.append(f"printf '%s\\n' {' '.join(shlex.quote(x) for x in inputs)} | {lines[i]}")
            transcripts.append(shown)
            i = j
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out) + "\n", transcripts


def background_and_wait(code: str, ws: Workspace) -> str:
    """`CMD &` -> CMD logged to a file, its pid recorded, and the next line waits for its port's /health."""
    out = []
    for n, line in enumerate(code.splitlines()):
        if line.rstrip().endswith("&") and not line.rstrip().endswith("&&"):
            command = line.rstrip()[:-1]
            port = re.search(r"--port (\d+)", command)
            out.append(f"{command} > background{n}.log 2>&1 & echo $! >> {shlex.quote(str(ws.pids))}")
            if port:
                out.append(
                    f"for _ in $(seq 600); do curl -s -o /dev/null localhost:{port.group(1)}/health && break; "
                    f"kill -0 $! || {{ cat background{n}.log; exit 1; }}; sleep 0.2; done"
                )
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def expected_in_output(code: str) -> list[str]:
    """The `# ... TEXT` comments after commands: TEXT must be in the command's output."""
    return [m.group(1).strip() for m in re.finditer(r"#\s*\.\.\.\s+(.+)$", code, re.MULTILINE)]


def in_order(wanted: list[str], printed: list[str]) -> list[str]:
    """The lines of `wanted` not found in `printed` in that order (stripped, blank lines ignored)."""
    rest = iter(line.strip() for line in printed)
    return [w for w in wanted if w.strip() and not any(w.strip() == p for p in rest)]


def run_block(block: Block, ws: Workspace) -> str:
    code = substitute(block.code, ws)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["COLUMNS"] = "200"
    transcripts = []
    if block.lang == "bash":
        code, transcripts = chat_transcripts(code)
        code = background_and_wait(code, ws)
        cmd = ["bash", "-e", "-o", "pipefail", "-x", "-c", code]
    else:
        cmd = [sys.executable, "-c", code]
    done = subprocess.run(
        cmd, cwd=ws.dir, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    printed = done.stdout + done.stderr
    where = f"README.md:{block.line} (ran in {ws.dir}):\n{code}\n--- output ---\n{printed[-6000:]}"
    assert done.returncode == 0, f"exit {done.returncode}: {where}"
    assert "Traceback" not in printed, where
    errors = [line for line in printed.splitlines() if line.startswith("error:") or '"error"' in line]
    assert not errors, f"{errors}: {where}"
    for transcript in transcripts:
        missing = in_order(transcript, done.stdout.splitlines())
        assert not missing, f"transcript lines not printed in order: {missing}: {where}"
    for text in expected_in_output(block.code):
        assert text in printed, f"{text!r} not in the output: {where}"
    ws.outputs[block.line] = printed
    return printed


@pytest.mark.slow
@pytest.mark.parametrize("block", [block_param(b) for b in RUN_BLOCKS])
def test_readme_block_runs(block, readme_ws):
    printed = run_block(block, readme_ws)
    if "vlmkit demo" in block.code:  # the demo ends with the table the README shows after it
        shown = next(b for b in BLOCKS if b.line > block.line and b.lang == "text")
        labels = [m.group(1) for m in re.finditer(r"^\s*([a-z][a-z -]*?)\s*[:(]", shown.code, re.MULTILINE)]
        starts = [line.strip() for line in printed.splitlines()]
        missing = [label for label in labels if not any(s.startswith(label) for s in starts)]
        assert len(labels) >= 5 and not missing, f"{missing} not printed:\n{printed[-3000:]}"
    if "--input data.jsonl --output preds.jsonl" in block.code:  # the reply and the reference, row by row
        rows = [json.loads(line) for line in (readme_ws.dir / "preds.jsonl").read_text().splitlines()]
        assert len(rows) == 4 and all(r["response"] == CHAT_REPLY for r in rows)
        assert [r["labels"] for r in rows] == [CHAT_REPLY, "A tall photo."] * 2
    if "--val --output val_preds.jsonl" in block.code:  # the run's validation rows, then a plain HF folder
        rows = [json.loads(line) for line in (readme_ws.dir / "val_preds.jsonl").read_text().splitlines()]
        assert [r["labels"] for r in rows] == [CHAT_REPLY, "A tall photo."]
        assert (readme_ws.dir / "qwen2vl-latex" / "config.json").is_file()
    if "/v1/chat/completions" in block.code and block.lang == "bash":  # curl got a completion
        assert '"chat.completion"' in printed, printed[-3000:]


@pytest.mark.slow
def test_readme_lora_example_trains_the_adapter(readme_ws):
    """The `vlmkit sft ... --tuner lora ... --epochs 1 --batch-size 2 --grad-accum 8` block on a small train.jsonl
    (run above): the adapter it saved must have learnt something."""
    from safetensors.torch import load_file

    ckpt = readme_ws.dir / newest_checkpoint(readme_ws, "output/Qwen2-VL-7B-Instruct/v0-*")
    weights = load_file(ckpt / "adapter_model.safetensors")
    assert max(w.abs().max().item() for name, w in weights.items() if "lora_B" in name) > 0
