"""GLM-4.1V through the CLI as a user runs it (subprocesses), compared with plain transformers: `vlmkit infer
--input` greedy replies equal `generate` on `Glm4vProcessor`'s inputs; `vlmkit sft --tuner lora --max-pixels`
trains an adapter and the pixel limit travels into the merged export's `preprocessor_config.json`, which plain
transformers loads, resizes as trained and answers with as `vlmkit infer` does; grounding rows (seed 000's
refcoco forms) pass `data check`, and a GLM box reply comes back in the original image's pixels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import random_image
from family_cli import lora_run_and_export, transformers_replies, vlmkit_replies
from test_seeds import lora_b_max, read_jsonl, refcoco_rows, vlmkit, write_jsonl
from transformers import AutoImageProcessor, AutoTokenizer, Glm4vProcessor

from vlmkit.families import family_by_name
from vlmkit.families.tiny import build_tiny_model

pytestmark = pytest.mark.slow
REPLY = "红色的方块。\nA red square."
BOX_REPLY = "<think>The man in red.</think><answer><|begin_of_box|>[216,283,367,748]<|end_of_box|></answer>"
MAX_PIXELS = 28 * 28 * 2 * 9  # 2 x height x width: at most 9 patches of 28x28 (9 image tokens)


class ImagesOnly(Glm4vProcessor):
    def check_argument_for_proper_class(self, argument_name, argument):
        return None  # no video processor: transformers' needs torchvision


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny GLM-4.1V, image rows with multi-line CJK replies, a LoRA run at a pixel limit, its merged export."""
    root = tmp_path_factory.mktemp("glm4v")
    model = build_tiny_model(family_by_name("glm4v"), root / "tiny-glm4v", small_vocab=True)
    for i, (h, w) in enumerate(((300, 500), (64, 48))):
        random_image(h, w, i).save(root / f"{i}.png")
    rows = [{"query": "<image>What colour is it?", "response": REPLY, "images": [f"{i}.png"]} for i in range(2)]
    return lora_run_and_export(root, model, rows, "--max-pixels", str(MAX_PIXELS))


def processor(folder: Path) -> Glm4vProcessor:
    """The folder's tokenizer (chat template) and image processor."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return ImagesOnly(image_processor=AutoImageProcessor.from_pretrained(folder), tokenizer=tokenizer,
                      video_processor=None, chat_template=tokenizer.chat_template)  # fmt: skip


@pytest.fixture(scope="module")
def base_replies(work) -> list[str]:
    return vlmkit_replies(work["model"], work["root"], "base.jsonl")


def test_infer_greedy_replies_equal_transformers_generate(work, base_replies):
    assert base_replies == transformers_replies(processor(work["model"]), work["model"], work["root"])
    assert all(base_replies)


def test_lora_trains_and_the_export_resizes_and_answers_as_trained(work, base_replies):
    assert lora_b_max(work["checkpoint"]) > 0, "training left every lora_B at 0"
    assert json.loads((work["checkpoint"] / "vlmkit.json").read_text())["max_pixels"] == MAX_PIXELS
    exported = json.loads((work["merged"] / "preprocessor_config.json").read_text())
    assert exported["size"]["longest_edge"] == MAX_PIXELS
    grid = AutoImageProcessor.from_pretrained(work["merged"])(images=[random_image(300, 500)])["image_grid_thw"][0]
    assert 2 * int(grid.prod()) * 14 * 14 <= MAX_PIXELS  # plain transformers resizes the export as trained
    replies = vlmkit_replies(work["merged"], work["root"], "merged.jsonl")
    assert replies == transformers_replies(processor(work["merged"]), work["merged"], work["root"])
    assert replies != base_replies  # the merged adapter changed the answers


def test_grounding_boxes_come_back_in_original_pixels(tmp_path):
    """Seed 000's refcoco rows: the 0-1000 box a GLM-4.1V replies maps back to the 640x480 original."""
    from scripted import build_scripted_model

    model = build_scripted_model("glm4v", tmp_path / "m", BOX_REPLY, small_vocab=True)
    random_image(480, 640, seed=4).save(tmp_path / "COCO_train2014_000000001507.jpg")
    write_jsonl(tmp_path / "refcoco.jsonl", refcoco_rows())
    check = vlmkit("data", "check", "--model", str(model), "--dataset", "refcoco.jsonl", cwd=tmp_path)
    assert "3 good, 0 bad" in check.stdout, check.stdout
    vlmkit("infer", "--model", str(model), "--input", "refcoco.jsonl", "--output", "preds.jsonl",
           "--batch-size", "3", "--max-new-tokens", "80", cwd=tmp_path)  # fmt: skip
    for p in read_jsonl(tmp_path / "preds.jsonl"):
        assert p["response"] == BOX_REPLY
        (found,) = p["objects"]
        assert found["image_id"] == 0
        assert found["bbox"] == pytest.approx([138.2, 135.8, 234.9, 359.0], abs=1.0)
