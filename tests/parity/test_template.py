"""Parity of the Qwen family templates with the real chat templates and transformers' image processor."""

from __future__ import annotations

import functools

import jinja2
import pytest
import torch
from conftest import CHAT_TEMPLATES, FAMILY_NAMES, random_image
from transformers import AutoImageProcessor, AutoTokenizer

from vlmkit.errors import DataError, MediaError
from vlmkit.families import family_by_name
from vlmkit.families.qwen2_vl.template import smart_resize
from vlmkit.sample import to_sample

SHARED_TEMPLATE = {
    "qwen2-vl": "qwen2_vl_chat_template.jinja",
    "qwen2.5-vl": "qwen2_5_vl_chat_template.jinja",
    "qwen3-vl": "qwen3_vl_instruct_chat_template.jinja",
}
SIZES = [(28, 28), (300, 217), (50, 500), (1080, 1920), (17, 913)]


def real_chat_template(name: str) -> str:
    text = (CHAT_TEMPLATES / SHARED_TEMPLATE[name]).read_text()
    return text.split("\n", 1)[1]  # drop the {# SOURCE ... #} line


def jinja_render(name: str, messages, add_generation_prompt: bool) -> str:
    env = jinja2.Environment()
    return env.from_string(real_chat_template(name)).render(
        messages=messages, add_generation_prompt=add_generation_prompt
    )


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


@functools.cache
def tokenizer_of(path):
    """The real-vocabulary tokenizer, loaded once per model (templates only read it)."""
    return AutoTokenizer.from_pretrained(path)


def load_template(tiny_models, name, **settings):
    path = tiny_models[name]
    tokenizer = tokenizer_of(path)
    return family_by_name(name).load_template(path, tokenizer, **settings), tokenizer


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_shipped_chat_template_is_the_real_one(tiny_models, name):
    assert family_by_name(name).chat_template == real_chat_template(name)
    assert (tiny_models[name] / "chat_template.jinja").read_text() == real_chat_template(name)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_rendered_text_equals_real_chat_template(tiny_models, name, conversation, generation_prompt):
    template, _ = load_template(tiny_models, name)
    sample = to_sample(CONVERSATIONS[conversation])
    expected = jinja_render(name, sample.messages, generation_prompt)
    assert template.render_text(sample, add_generation_prompt=generation_prompt) == expected


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_input_ids_equal_tokenizing_the_real_template(tiny_models, name):
    template, tokenizer = load_template(tiny_models, name, max_pixels=50_000)
    sample = to_sample(CONVERSATIONS[2])
    encoded = template.encode(sample)
    text = jinja_render(name, sample.messages, False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    counts = (encoded["image_grid_thw"].prod(-1) // template.merge_size**2).tolist()
    expanded = []
    for token in ids:
        expanded += [token] * (counts.pop(0) if token == template.image_token_id else 1)
    assert encoded["input_ids"].tolist() == expanded


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize(("height", "width"), SIZES)
@pytest.mark.parametrize("limits", [(3136, 100_000), (3136, 12845056), (200_000, 400_000)])
def test_pixel_values_equal_transformers_image_processor(tiny_models, name, height, width, limits):
    min_pixels, max_pixels = limits
    template, _ = load_template(tiny_models, name, min_pixels=min_pixels, max_pixels=max_pixels)
    image = random_image(height, width, seed=height)
    sample = to_sample({"messages": [{"role": "user", "content": "<image>x"}], "images": [image]})
    encoded = template.encode(sample)
    processor = AutoImageProcessor.from_pretrained(tiny_models[name])
    expected = processor(
        [image], size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, return_tensors="pt"
    )
    assert encoded["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    torch.testing.assert_close(encoded["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    n_tokens = int((encoded["input_ids"] == template.image_token_id).sum())
    assert n_tokens == int(expected["image_grid_thw"].prod()) // template.merge_size**2
    assert (
        encoded["mm_token_type_ids"].tolist()
        == (encoded["input_ids"] == template.image_token_id).int().tolist()
    )


# Thinner than one patch (within 200:1) and smaller than one patch: issue 11 #7.
THIN_AND_TINY = [(1, 150), (3, 500), (20, 3000), (10, 1500), (2000, 13), (1, 1), (5, 5), (13, 27)]


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize(("height", "width"), THIN_AND_TINY)
def test_thin_and_tiny_images_resize_as_the_image_processor(tiny_models, name, height, width):
    template, _ = load_template(tiny_models, name, max_pixels=100_000)
    image = random_image(height, width, seed=width)
    encoded = template.encode(to_sample({"messages": [{"role": "user", "content": "<image>x"}], "images": [image]}))
    processor = AutoImageProcessor.from_pretrained(tiny_models[name])
    expected = processor([image], size={"shortest_edge": template.min_pixels, "longest_edge": 100_000}, return_tensors="pt")
    assert encoded["image_grid_thw"].tolist() == expected["image_grid_thw"].tolist()
    torch.testing.assert_close(encoded["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    assert template.count_tokens(
        to_sample({"messages": [{"role": "user", "content": "<image>x"}], "images": [image]})
    ) == len(encoded["input_ids"])


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_images_over_200_to_1_are_one_line_naming_the_image(tiny_models, name, tmp_path):
    template, _ = load_template(tiny_models, name)
    random_image(3, 2000).save(tmp_path / "strip.png")
    processor = AutoImageProcessor.from_pretrained(tiny_models[name])
    with pytest.raises(ValueError, match="aspect ratio"):
        processor([random_image(3, 2000)], return_tensors="pt")
    sample = to_sample(
        {"messages": [{"role": "user", "content": "<image>x"}], "images": [str(tmp_path / "strip.png")]}, where="d.jsonl:7"
    )
    for call in (template.encode, template.count_tokens):
        with pytest.raises(DataError) as error:
            call(sample)
        assert str(error.value) == "d.jsonl:7: image 1: aspect ratio 667:1 is over the 200:1 limit"


def seed_003_row(path, height: int, width: int) -> dict:
    """Seed 003's message, as qwen-vl-utils' `process_vision_info` reads it."""
    image = {"type": "image", "image": str(path), "resized_height": height, "resized_width": width}
    return {
        "messages": [
            {"role": "user", "content": [image, {"type": "text", "text": "COCO Yes:"}]},
            {"role": "assistant", "content": "A cat."},
        ]
    }


@pytest.mark.parametrize(("height", "width", "expected"), [(280, 280, (280, 280)), (300, 250, (308, 252))])
def test_seed_003_resized_height_and_width_are_honoured(tiny_models, tmp_path, height, width, expected):
    """Issue 11 #10: qwen-vl-utils resizes such an image to that size rounded to the factor (aspect not
    kept), then the processor sees it; vlmkit gives the same grid and pixels, and counts them."""
    from PIL import Image

    template, _ = load_template(tiny_models, "qwen2-vl", max_pixels=200_000)
    image = random_image(480, 640)
    image.save(tmp_path / "coco.png")
    sample = to_sample(seed_003_row(tmp_path / "coco.png", height, width))
    encoded = template.encode(sample)
    assert encoded["image_sizes"][0] == ((480, 640), expected)
    resized = image.resize(expected[::-1], Image.Resampling.BICUBIC)  # what qwen-vl-utils hands the processor
    reference = AutoImageProcessor.from_pretrained(tiny_models["qwen2-vl"])([resized], return_tensors="pt")
    assert encoded["image_grid_thw"].tolist() == reference["image_grid_thw"].tolist()
    torch.testing.assert_close(encoded["pixel_values"], reference["pixel_values"], atol=1e-5, rtol=0)
    assert template.count_tokens(sample) == len(encoded["input_ids"])


def test_resized_size_is_refused_where_a_family_cannot_honour_it(tiny_models, tmp_path):
    random_image(60, 80).save(tmp_path / "a.png")
    row = seed_003_row(tmp_path / "a.png", 280, 280)
    template, _ = load_template(tiny_models, "internvl")
    with pytest.raises(DataError, match="resized_height/resized_width on an image apply to the Qwen2-VL families"):
        template.encode(to_sample(row))
    row["messages"][0]["content"][0].pop("resized_width")
    with pytest.raises(DataError, match="resized_height and resized_width must both be given"):
        to_sample(row)
    row["messages"][0]["content"][0] |= {"resized_width": 280, "max_pixels": 1000}
    with pytest.raises(DataError, match="a per-image max_pixels is not supported; use --max-pixels"):
        to_sample(row)


def test_supervised_tokens_are_exactly_the_assistant_replies(tiny_models):
    template, tokenizer = load_template(tiny_models, "qwen2-vl", max_pixels=3136)
    sample = to_sample(
        {
            "messages": [
                {"role": "user", "content": "<image>Hi"},
                {"role": "assistant", "content": "Hello world"},
                {"role": "user", "content": "Again"},
                {"role": "assistant", "content": "Bye"},
            ],
            "images": [random_image(56, 56)],
        }
    )
    encoded = template.encode(sample)
    supervised = [
        t
        for t, label in zip(encoded["input_ids"].tolist(), encoded["labels"].tolist(), strict=True)
        if label != -100
    ]
    # Real Qwen2 ids: "Hello"=9707, " world"=1879, <|im_end|>=151645, "Bye" = "By" + "e" = 1359, 68.
    assert supervised == [9707, 1879, 151645, 1359, 68, 151645]
    labels = encoded["labels"].tolist()
    assert all(
        label in (-100, token) for label, token in zip(labels, encoded["input_ids"].tolist(), strict=True)
    )


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_the_newline_after_the_end_token_is_not_supervised(tiny_models, name):
    """Issue 11 #15b (README: what is supervised): each reply is trained up to and with `<|im_end|>`;
    the template's newline after it is not (ms-swift supervises it: one token more per reply)."""
    template, tokenizer = load_template(tiny_models, name)
    sample = to_sample(
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                      {"role": "user", "content": "Again"}, {"role": "assistant", "content": "Bye"}]}
    )  # fmt: skip
    encoded = template.encode(sample)
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    supervised_ends = [i for i, (t, label) in enumerate(zip(ids, labels, strict=True)) if t == end and label == end]
    assert len(supervised_ends) == 2
    for i in supervised_ends:
        if i + 1 < len(ids):
            assert tokenizer.decode([ids[i + 1]]) == "\n" and labels[i + 1] == -100


def test_qwen_vl_picture_rows_keep_the_newline_after_the_image(tiny_models, tmp_path):
    from vlmkit.data import row_to_sample

    random_image(56, 56).save(tmp_path / "a.png")
    row = {"conversations": [{"from": "user", "value": "Picture 1: <img>a.png</img>\nWhat is it?"},
                             {"from": "assistant", "value": "A square."}]}  # fmt: skip
    template, tokenizer = load_template(tiny_models, "qwen2-vl", max_pixels=3136)
    encoded = template.encode(row_to_sample(row, "sharegpt", "qwen_vl.json:1", base_dirs=[tmp_path]))
    assert "<|image_pad|><|vision_end|>\nWhat is it?<|im_end|>" in tokenizer.decode(encoded["input_ids"].tolist())


def test_generation_prompt_has_no_supervised_tokens(tiny_models):
    template, _ = load_template(tiny_models, "qwen3-vl")
    encoded = template.encode(
        to_sample({"messages": [{"role": "user", "content": "Hi"}]}), add_generation_prompt=True
    )
    assert (encoded["labels"] == -100).all()
    assert template.tokenizer.decode(encoded["input_ids"][-3:]) == "<|im_start|>assistant\n"


def test_smart_resize_keeps_limits_and_factor():
    for height, width in [(1, 1), (10, 2000), (4000, 3000), (28, 28), (333, 777)]:
        h, w = smart_resize(height, width, factor=28, min_pixels=3136, max_pixels=1_000_000)
        assert h % 28 == 0 and w % 28 == 0
        assert 3136 <= h * w <= 1_000_000
    with pytest.raises(ValueError, match="200:1"):
        smart_resize(1, 500, factor=28, min_pixels=3136, max_pixels=1_000_000)


def test_bad_media_errors_name_sample_and_item(tiny_models, tmp_path):
    template, _ = load_template(tiny_models, "qwen2-vl")
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"not an image")
    sample = to_sample(
        {
            "messages": [{"role": "user", "content": "<image><image>"}],
            "images": [random_image(30, 30), str(corrupt)],
        },
        where="train.jsonl:12",
    )
    with pytest.raises(MediaError, match=r"^train.jsonl:12: image 2: .*bad.jpg"):
        template.encode(sample)
    missing = to_sample(
        {"messages": [{"role": "user", "content": "<image>"}], "images": ["nope.png"]}, where="r:1"
    )
    with pytest.raises(MediaError, match=r"^r:1: image 1: .*nope.png"):
        template.encode(missing)
    thin = to_sample(
        {"messages": [{"role": "user", "content": "<image>"}], "images": [random_image(2, 900)]}, where="r:2"
    )
    with pytest.raises(DataError, match=r"^r:2: image 1: aspect ratio 450:1"):
        template.encode(thin)


def test_qwen3_refuses_what_its_template_would_drop(tiny_models):
    template, _ = load_template(tiny_models, "qwen3-vl")
    late_system = to_sample(
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}, where="s:1"
    )
    with pytest.raises(DataError, match="s:1: Qwen3-VL accepts a system message only as the first"):
        template.encode(late_system)


def test_min_pixels_above_max_pixels_is_refused(tiny_models):
    with pytest.raises(DataError, match="--min-pixels 5000 is larger than --max-pixels 4000"):
        load_template(tiny_models, "qwen2-vl", min_pixels=5000, max_pixels=4000)


def test_saved_settings_travel_with_the_model(tiny_models, tmp_path):
    import shutil

    from vlmkit.settings import write_settings

    folder = tmp_path / "model"
    shutil.copytree(tiny_models["qwen2-vl"], folder)
    write_settings(folder, {"min_pixels": 1000, "max_pixels": 20_000, "system": "Trained prompt."})
    template, _ = load_template({"qwen2-vl": folder}, "qwen2-vl")
    assert template.settings == {
        "min_pixels": 1000,
        "max_pixels": 20_000,
        "system": "Trained prompt.",
        **{"fps": 2.0, "nframes": None, "max_frames": 768, "min_frames": 4, "video_max_pixels": 768 * 28 * 28},
    }
    assert template.render_text(to_sample({"messages": [{"role": "user", "content": "x"}]})).startswith(
        "<|im_start|>system\nTrained prompt.<|im_end|>"
    )
    explicit, _ = load_template({"qwen2-vl": folder}, "qwen2-vl", max_pixels=30_000)
    assert explicit.max_pixels == 30_000 and explicit.min_pixels == 1000
