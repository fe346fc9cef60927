"""Shared fixtures: tiny models built once per test session, images made on the spot.

The README's test command runs the suite on two pytest-xdist workers (`-n 2 --dist loadfile`: each test
file stays in one worker, so a module's fixtures are built once and README blocks run in order). The
session models are built once for both workers (`built_once`), and each worker and the vlmkit processes
its tests start use one thread, so two workers share two cores instead of fighting over them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # read by torch (and numpy's BLAS) at import, below

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.is_dir():  # CI clones the repo with shared/ beside it; a checkout may also carry it inside
    SHARED = Path(__file__).resolve().parents[1] / "shared"
PEERS = SHARED / "data" / "peers"
CHAT_TEMPLATES = SHARED / "data" / "chat_templates"

FAMILY_NAMES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """`build(folder)` (a new folder -> the path of what it made there) run once per test run, even with
    several xdist workers: they share one folder beside their own temporary roots, and a file lock makes
    the others wait for the first to finish. What it makes must be read-only to the tests."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name) / "m")
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "shared-models"
    root.mkdir(exist_ok=True)
    done = root / f"{name}.done"  # holds the path `build` returned
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            done.write_text(str(build(root / name)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Family name -> folder of a tiny model with the real Qwen2 vocabulary (built lazily)."""
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    class Lazy(dict):
        def __missing__(self, name: str) -> Path:
            path = built_once(
                tmp_path_factory, "tiny-" + name.replace(".", "_"),
                lambda folder: build_tiny_model(family_by_name(name), folder),
            )  # fmt: skip
            self[name] = path
            return path

    return Lazy()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """A Qwen2-VL tiny model with the 600-token BPE: the fastest model to load."""
    from vlmkit.families import family_by_name
    from vlmkit.families.tiny import build_tiny_model

    return built_once(
        tmp_path_factory, "small", lambda folder: build_tiny_model(family_by_name("qwen2-vl"), folder, small_vocab=True)
    )


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def greedy_replies(vlm, source: str | Path, max_new_tokens: int) -> list[str]:
    """The greedy replies of `vlm` (a `vlmkit.load`) to the rows of the dataset `source`, each without its
    last (assistant) turn, through the Python API: what `vlmkit infer --input` must write, row by row."""
    import dataclasses

    from vlmkit.data import load_dataset

    data = load_dataset(str(source))
    prompts = [dataclasses.replace(data[i], messages=data[i].messages[:-1]) for i in range(len(data))]
    return vlm.generate(prompts, max_new_tokens=max_new_tokens)


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "img.png"
    random_image(60, 80).save(path)
    return path


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory) -> Path:
    """A Qwen2-VL tiny model (real vocabulary) that replies `scripted.MULTILINE_CJK_REPLY` to anything."""
    from scripted import MULTILINE_CJK_REPLY, build_scripted_model

    return built_once(
        tmp_path_factory, "scripted", lambda folder: build_scripted_model("qwen2-vl", folder, MULTILINE_CJK_REPLY)
    )


@pytest.fixture(scope="session")
def adapter(small_model, tmp_path_factory) -> Path:
    """A LoRA checkpoint of a few large steps, trained with its own pixel limit and system prompt."""
    from vlmkit.train import SFTConfig, sft

    def train(root: Path) -> Path:
        root.mkdir(parents=True)
        rows = [
            {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "zz zz zz"}]}
        ] * 4
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        run_dir = sft(
            SFTConfig(
                model=str(small_model),
                dataset=[str(data)],
                output_dir=str(root / "out"),
                max_steps=4,
                lr=0.3,
                max_pixels=4000,
                system="Be brief.",
                save_steps=50,
                logging_steps=1,
                progress=False,
                num_workers=0,
                report_to="none",
                eval_generate=0,
            )
        )
        return run_dir / "checkpoint-4"

    return built_once(tmp_path_factory, "adapter", train)


@pytest.fixture(scope="session")
def qwen_vl_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny Qwen-VL as users make it: `vlmkit tiny-model qwen-vl` (the original remote-code layout, seed 0,
    the checkpoint of tests/parity/vectors/qwen_vl) then `vlmkit convert`: {"original": .., "native": ..}."""
    from typer.testing import CliRunner

    from vlmkit.cli import app

    def build(root: Path) -> Path:
        root.mkdir(parents=True)
        for args in (["tiny-model", "qwen-vl", str(root / "original")],
                     ["convert", "--model", str(root / "original"), "--output", str(root / "native")]):  # fmt: skip
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, (args, result.output, result.exception)
        return root

    root = built_once(tmp_path_factory, "qwen_vl", build)
    return {"original": root / "original", "native": root / "native"}
