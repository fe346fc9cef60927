"""InternVL family: parity with the real chat template and transformers' InternVL processor (tiling,
tokens, pixels), token counting and fitting, and the tiny model through generate, sft, export and infer."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
from conftest import CHAT_TEMPLATES, random_image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import (
    GotOcr2ImageProcessorPil,
    get_optimal_tiled_canvas,
)
from typer.testing import CliRunner

import vlmkit
from vlmkit.errors import VlmkitError
from vlmkit.families import family_by_name, resolution_settings
from vlmkit.families.internvl.template import tile_grid
from vlmkit.families.tiny import build_tiny_model
from vlmkit.sample import to_sample
from vlmkit.train import SFTConfig, sft

FAMILY = family_by_name("internvl")
SIZES = [(64, 64), (300, 900), (900, 300), (448, 448), (17, 913), (1080, 1920), (500, 501), (2000, 700)]


def real_chat_template() -> str:
    text = (CHAT_TEMPLATES / "internvl3_hf_chat_template.jinja").read_text()
    return text.split("\n", 1)[1]  # drop the {# SOURCE ... #} line


def jinja_render(messages, add_generation_prompt: bool) -> str:
    return (
        jinja2.Environment()
        .from_string(real_chat_template())
        .render(messages=messages, add_generation_prompt=add_generation_prompt)
    )


class Processor(InternVLProcessor):
    """transformers' InternVLProcessor without its video processor (that one needs torchvision)."""

    def check_argument_for_proper_class(self, name, arg):
        return None


@pytest.fixture(scope="module")
def real(tiny_models):
    """(folder, tokenizer, template) of the tiny InternVL with the real Qwen2.5 vocabulary."""
    path = tiny_models["internvl"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    return path, tokenizer, FAMILY.load_template(path, tokenizer)


@pytest.fixture(scope="module")
def processor(real):
    path, tokenizer, _ = real
    tokenizer.video_token = "<video>"  # InternVLProcessor reads it; images never use it
    image_processor = GotOcr2ImageProcessorPil.from_pretrained(path)
    config = json.loads((path / "processor_config.json").read_text())
    return Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=None,
        image_seq_length=config["image_seq_length"],
        chat_template=tokenizer.chat_template,
    )


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A tiny InternVL with the 600-token BPE: fast to load and train."""
    return build_tiny_model(FAMILY, tmp_path_factory.mktemp("internvl") / "m", small_vocab=True)


CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello"}]},
    {
        "messages": [
            {"role": "user", "content": "<image>What is this?"},
            {"role": "assistant", "content": "A cat."},
        ],
        "images": [random_image(40, 60)],
    },
    {
        "system": "Answer in French.",
        "messages": [
            {"role": "user", "content": "Compare <image> and <image>\nplease"},
            {"role": "assistant", "content": "Le premier est rouge."},
            {"role": "user", "content": "And now?<image>"},
            {"role": "assistant", "content": "  Spaces and\n\nnewlines kept. "},
        ],
        "images": [random_image(64, 64, 1), random_image(100, 30, 2), random_image(30, 100, 3)],
    },
]


def test_shipped_chat_template_is_the_real_one(real):
    assert FAMILY.chat_template == real_chat_template()
    assert (real[0] / "chat_template.jinja").read_text() == real_chat_template()


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_rendered_text_equals_real_chat_template(real, conversation, generation_prompt):
    sample = to_sample(CONVERSATIONS[conversation])
    expected = jinja_render(sample.messages, generation_prompt)
    assert real[2].render_text(sample, add_generation_prompt=generation_prompt) == expected


def test_special_token_ids_are_the_real_ones(real):
    _, tokenizer, template = real
    ids = tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|file_sep|>", "<img>", "</img>", "<IMG_CONTEXT>", "</box>"]
    )
    assert ids == [151645, 151664, 151665, 151666, 151667, 151673]
    assert template.tokens_per_tile == 256  # (448 / 14)**2 * 0.5**2, read from config.json
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]


@pytest.mark.parametrize("min_tiles, max_tiles", [(1, 12), (1, 6), (1, 2), (1, 1), (2, 4), (3, 12)])
def test_tile_grid_equals_transformers(min_tiles, max_tiles):
    rng = np.random.default_rng(max_tiles)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(200)]
    for height, width in sizes:
        assert tile_grid(height, width, 448, min_tiles, max_tiles) == get_optimal_tiled_canvas(
            (height, width), (448, 448), min_tiles, max_tiles
        ), (height, width)


PARITY_CASES = [(size, (1, 12)) for size in SIZES] + [
    ((300, 900), (1, 2)),
    ((1080, 1920), (1, 1)),
    ((17, 913), (2, 6)),
    ((500, 501), (3, 12)),
]


@pytest.mark.parametrize("size, tiles", PARITY_CASES)
def test_tokens_and_pixels_equal_internvl_processor(real, processor, size, tiles):
    min_tiles, max_tiles = tiles
    template = FAMILY.load_template(real[0], real[1], min_tiles=min_tiles, max_tiles=max_tiles)
    image = random_image(*size, seed=size[0])
    sample = to_sample(
        {
            "messages": [
                {"role": "user", "content": "<image>Describe it."},
                {"role": "assistant", "content": "Noise."},
            ],
            "images": [image],
        }
    )
    encoded = template.encode(sample)
    text = jinja_render(sample.messages, False)
    expected = processor(
        images=[image], text=text, min_patches=min_tiles, max_patches=max_tiles, return_tensors="pt"
    )
    assert encoded["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert encoded["pixel_values"].shape == expected["pixel_values"].shape
    assert torch.allclose(encoded["pixel_values"], expected["pixel_values"].float(), atol=1e-5)
    tiles_expected = processor.image_processor.get_number_of_image_patches(
        *size, {"crop_to_patches": True, "min_patches": min_tiles, "max_patches": max_tiles}
    )
    assert encoded["image_tiles"] == [tiles_expected]
    assert template.count_tokens(sample) == len(encoded["input_ids"])


def test_multi_image_multi_turn_tokens_and_labels(real, processor):
    _, tokenizer, template = real
    sample = to_sample(CONVERSATIONS[2])
    encoded = template.encode(sample)
    expected = processor(
        images=[p["image"] for m in sample.messages for p in m["content"] if p["type"] == "image"],
        text=jinja_render(sample.messages, False),
        return_tensors="pt",
    )
    assert encoded["input_ids"].tolist() == expected["input_ids"][0].tolist()
    assert torch.allclose(encoded["pixel_values"], expected["pixel_values"].float(), atol=1e-5)
    labels = encoded["labels"]
    supervised = tokenizer.decode(labels[labels != -100])
    assert supervised == "Le premier est rouge.<|im_end|>  Spaces and\n\nnewlines kept. <|im_end|>"
    image_ids = {template.image_token_id, template.image_start_id, template.image_end_id}
    assert all(
        label == -100
        for token, label in zip(encoded["input_ids"].tolist(), labels.tolist(), strict=True)
        if token in image_ids
    )
    assert template.count_tokens(sample) == len(encoded["input_ids"])


def test_fit_lowers_the_tile_limit_until_a_row_fits(real):
    _, _, template = real
    sample = to_sample(
        {
            "messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Yo"}],
            "images": [random_image(1080, 1920)],
        }
    )
    full = template.count_tokens(sample)  # 1080x1920 at 12 tiles: a 4x2 grid + thumbnail = 9 tiles
    assert full == template.count_tokens(sample, limit=12)
    fitted = template.fit_limit(sample, full - 1)
    assert fitted is not None and fitted < 12
    assert template.count_tokens(sample, limit=fitted) <= full - 1
    assert len(template.encode(sample, limit=fitted)["input_ids"]) == template.count_tokens(
        sample, limit=fitted
    )
    assert template.fit_limit(sample, 100) is None  # one tile is 258 tokens already
    assert template.fit_limit(sample, full) == 12
    # the limit's bounds are tile counts under the interface's names, not under pixel names
    assert (template.min_limit, template.max_limit) == (template.min_tiles, template.max_tiles) == (1, 12)
    assert not hasattr(template, "min_pixels") and not hasattr(template, "max_pixels")


def test_data_check_names_the_tile_option_when_shrinking(real, tmp_path):
    from vlmkit.data import load_dataset
    from vlmkit.data.check import check_dataset

    _, _, template = real
    random_image(1080, 1920).save(tmp_path / "wide.png")
    row = {"messages": [{"role": "user", "content": "<image>Hi"}, {"role": "assistant", "content": "Yo"}]}
    (tmp_path / "d.jsonl").write_text(json.dumps({**row, "images": ["wide.png"]}) + "\n")
    dataset = load_dataset(tmp_path / "d.jsonl")
    full = template.count_tokens(dataset[0])
    report = check_dataset(dataset, template, full - 1, truncation="shrink", progress=False)
    assert "(smallest --max-tiles " in report.summary()
    report = check_dataset(dataset, template, 100, truncation="shrink", progress=False)
    assert "even at --max-tiles 1; raise --max-length" in report.bad[0].reason


def test_resolution_options_are_checked(real, tiny_models):
    path, tokenizer, _ = real
    with pytest.raises(VlmkitError, match="--max-pixels does not apply to internvl models"):
        FAMILY.load_template(path, tokenizer, max_pixels=100_000)
    with pytest.raises(VlmkitError, match="--min-tiles 4 is larger than --max-tiles 2"):
        FAMILY.load_template(path, tokenizer, min_tiles=4, max_tiles=2)
    with pytest.raises(VlmkitError, match="--max-tiles does not apply to qwen2-vl models"):
        resolution_settings(family_by_name("qwen2-vl"), max_tiles=2)
    assert resolution_settings(FAMILY, min_tiles=None, max_tiles=3) == {"max_tiles": 3}
    # <IMG_CONTEXT> typed in the text is text (issue 12 #4): the image still gets exactly its own span
    image = random_image(30, 30)
    typed, plain = (
        real[2].encode(to_sample({"messages": [{"role": "user", "content": text}], "images": [image]}))
        for text in ("<image><IMG_CONTEXT>", "<image>")
    )
    assert (typed["input_ids"] == real[2].image_token_id).sum() == (plain["input_ids"] == real[2].image_token_id).sum()
    assert "<IMG_CONTEXT>" in real[2].tokenizer.decode(typed["input_ids"][-20:].tolist())


def test_tiny_model_forward_and_batched_generation(small):
    vlm = vlmkit.load(str(small), max_tiles=1)  # one tile per image: the batching is what is tested
    samples = [
        {
            "messages": [{"role": "user", "content": "<image>Describe it"}],
            "images": [random_image(40, 70, 1)],
        },
        {
            "messages": [
                {"role": "user", "content": "A much longer text-only question, to force left padding"}
            ]
        },
        {
            "messages": [{"role": "user", "content": "<image>x<image>"}],
            "images": [random_image(90, 300, 2), random_image(28, 28)],
        },
    ]
    encoded = vlm.template.encode(
        to_sample(
            {**samples[0], "messages": [*samples[0]["messages"], {"role": "assistant", "content": "red"}]}
        )
    )
    with torch.no_grad():
        out = vlm.model(**vlm.template.collate([encoded]))
    assert torch.isfinite(out.loss)
    together = vlm.generate(samples, max_new_tokens=5)
    alone = [vlm.generate([s], max_new_tokens=5)[0] for s in samples]
    assert together == alone
    assert any(alone)


@pytest.mark.slow
def test_sft_lora_and_full_then_export_and_infer(small, tmp_path):
    from vlmkit.cli import app

    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for i, colour in enumerate(["red", "green", "blue"]):
        path = images / f"{i}.png"
        random_image(40 + 10 * i, 50, seed=i).save(path)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>Colour?"},
                    {"role": "assistant", "content": colour},
                ],
                "images": [str(path)],
            }
        )
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = dict(
        model=str(small),
        dataset=[str(data)],
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        logging_steps=1,
        progress=False,
        num_workers=0,
        report_to="none",
        eval_generate=0,
        max_tiles=2,
    )

    full_dir = sft(SFTConfig(**options, tuner="full", freeze_aligner=False, lr=1e-2, weight_decay=0.0))
    before = load_file(small / "model.safetensors")
    after = load_file(full_dir / "checkpoint-2" / "model.safetensors")
    for name, tensor in before.items():
        changed = not torch.equal(tensor, after[name])
        assert changed == (not name.startswith("vision_tower.")), name  # the vision tower stays frozen

    lora_dir = sft(SFTConfig(**options, tuner="lora"))
    checkpoint = lora_dir / "checkpoint-2"
    settings = json.loads((checkpoint / "vlmkit.json").read_text())
    assert (settings["family"], settings["max_tiles"], settings["min_tiles"]) == ("internvl", 2, 1)
    assert (checkpoint / "processor_config.json").is_file()

    runner = CliRunner()
    preds = tmp_path / "preds.jsonl"
    result = runner.invoke(
        app,
        [
            "infer",
            "--ckpt",
            str(checkpoint),
            "--input",
            str(data),
            "--output",
            str(preds),
            "--max-new-tokens",
            "3",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [line["labels"] for line in lines] == ["red", "green", "blue"]
    assert all("error" not in line for line in lines)

    exported = runner.invoke(
        app,
        ["export", "--ckpt", str(checkpoint), "--merge-lora", "--output", str(tmp_path / "merged")],
        catch_exceptions=False,
    )
    assert exported.exit_code == 0, exported.output
    merged = tmp_path / "merged"
    assert json.loads((merged / "vlmkit.json").read_text())["max_tiles"] == 2
    assert AutoModelForImageTextToText.from_pretrained(merged).config.model_type == "internvl"
    reloaded = vlmkit.load(str(merged))
    assert reloaded.template.max_tiles == 2
    with pytest.raises(VlmkitError, match="--max-pixels does not apply to internvl"):
        runner.invoke(app, ["infer", "--model", str(merged), "--max-pixels", "1000"], catch_exceptions=False)


def frames(colours: list[tuple[int, int, int]], size: tuple[int, int] = (40, 60)) -> list:
    from PIL import Image

    return [Image.new("RGB", (size[1], size[0]), colour) for colour in colours]


def test_video_is_frame_segments_one_tile_per_frame(real, processor):
    _, tokenizer, template = real
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    sample = to_sample(
        {
            "messages": [
                {"role": "user", "content": "<video>What happens?"},
                {"role": "assistant", "content": "Colours change."},
            ],
            "videos": [frames(colours)],
        }
    )
    encoded = template.encode(sample)
    # The text transformers' InternVLProcessor puts in place of <video> for a 3-frame video.
    frame_text = processor.replace_video_token({"pixel_values_videos": [np.zeros((3, 3, 448, 448))]}, 0)
    assert frame_text.startswith("Frame1: <img><IMG_CONTEXT>") and "</img>\nFrame2: <img>" in frame_text
    text = jinja_render(sample.messages, False).replace("<video>", frame_text)
    assert encoded["input_ids"].tolist() == tokenizer(text)["input_ids"]
    assert encoded["pixel_values"].shape == (3, 3, 448, 448)
    assert encoded["image_tiles"] == [1, 1, 1]
    # Each tile is its frame: the red frame's red channel is at the normalised maximum, the others' at the minimum.
    red = encoded["pixel_values"][:, 0].mean(dim=(1, 2))
    assert red[0] > 2 and red[1] < -2 and red[2] < -2
    assert template.count_tokens(sample) == len(encoded["input_ids"])
    # Frames are resized whole to one tile, as the image processor does without tiling.
    noisy = [random_image(40, 60, seed=k) for k in range(3)]
    video = template.encode(
        to_sample({"messages": [{"role": "user", "content": "<video>"}], "videos": [noisy]})
    )
    single = processor.image_processor(images=noisy, crop_to_patches=False, return_tensors="pt")
    assert torch.allclose(video["pixel_values"], single["pixel_values"].float(), atol=1e-5)
    two = FAMILY.load_template(real[0], tokenizer, nframes=2)
    assert two.encode(sample)["pixel_values"].shape[0] == 2
    assert two.settings["nframes"] == 2


def test_tiny_model_generates_on_a_video(small):
    vlm = vlmkit.load(str(small), nframes=2)
    sample = {"messages": [{"role": "user", "content": "<video>What?"}], "videos": [frames([(9, 9, 9)] * 4)]}
    assert isinstance(vlm.generate([sample], max_new_tokens=3)[0], str)


def test_families_lists_tiling_and_its_options():
    from vlmkit.cli import app

    result = CliRunner().invoke(app, ["families"], catch_exceptions=False)
    line = next(line for line in result.output.splitlines() if line.startswith("internvl "))
    assert "inputs=image+video" in line
    assert "448px tiles, 1..12 tiles + thumbnail, 256 tokens/tile" in line
    assert "(resolution options: --min-tiles --max-tiles)" in line
    qwen = next(line for line in result.output.splitlines() if line.startswith("qwen2-vl "))
    assert "(resolution options: --min-pixels --max-pixels)" in qwen
