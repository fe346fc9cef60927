"""Shared fixtures: tiny models built once per test session, images made on the spot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared"
if not SHARED.is_dir():  # CI clones the repo with shared/ beside it; a checkout may also carry it inside
    SHARED = Path(__file__).resolve().parents[1] / "shared"
PEERS = SHARED / "data" / "peers"
CHAT_TEMPLATES = SHARED / "data" / "chat_templates"

FAMILY_NAMES = ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Family name -> folder of a tiny model with the real Qwen2 vocabulary (built lazily)."""
    from vlmkit.families import family_by_name
    from vlmkit.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Path:
            path = build_tiny_model(family_by_name(name), root / name.replace(".", "_"))
            built[name] = path
            self[name] = path
            return path

    return Lazy()


@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> Path:
    """A Qwen2-VL tiny model with the 600-token BPE: the fastest model to load."""
    from vlmkit.families import family_by_name
    from vlmkit.tiny import build_tiny_model

    return build_tiny_model(
        family_by_name("qwen2-vl"), tmp_path_factory.mktemp("small") / "m", small_vocab=True
    )


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def image_file(tmp_path) -> Path:
    path = tmp_path / "img.png"
    random_image(60, 80).save(path)
    return path


@pytest.fixture(scope="session")
def scripted_model(tmp_path_factory) -> Path:
    """A Qwen2-VL tiny model (real vocabulary) that replies `scripted.MULTILINE_CJK_REPLY` to anything."""
    from scripted import MULTILINE_CJK_REPLY, build_scripted_model

    return build_scripted_model("qwen2-vl", tmp_path_factory.mktemp("scripted") / "m", MULTILINE_CJK_REPLY)


@pytest.fixture(scope="session")
def adapter(small_model, tmp_path_factory) -> Path:
    """A LoRA checkpoint of a few large steps, trained with its own pixel limit and system prompt."""
    from vlmkit.train import SFTConfig, sft

    root = tmp_path_factory.mktemp("adapter")
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


@pytest.fixture(scope="session")
def qwen_vl_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny Qwen-VL as users make it: `vlmkit tiny-model qwen-vl` (the original remote-code layout, seed 0,
    the checkpoint of tests/parity/vectors/qwen_vl) then `vlmkit convert`: {"original": .., "native": ..}."""
    from typer.testing import CliRunner

    from vlmkit.cli import app

    root = tmp_path_factory.mktemp("qwen_vl")
    for args in (["tiny-model", "qwen-vl", str(root / "original")],
                 ["convert", "--model", str(root / "original"), "--output", str(root / "native")]):  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (args, result.output, result.exception)
    return {"original": root / "original", "native": root / "native"}
