"""Grounding: objects rows and literal box text -> each family's box text (after the model's resize),
replies -> boxes in original-image pixels, `vlmkit infer` objects output and --draw."""

from __future__ import annotations

import functools
import json

import pytest
from conftest import random_image
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmkit.data import row_to_sample
from vlmkit.errors import DataError
from vlmkit.families.internvl.boxes import BOX_FORMAT as INTERNVL
from vlmkit.families.qwen2_5_vl.boxes import BOX_FORMAT as QWEN2_5_VL
from vlmkit.families.qwen2_vl.boxes import BOX_FORMAT as QWEN2_VL
from vlmkit.families.qwen2_vl.template import smart_resize
from vlmkit.families.qwen3_vl.boxes import BOX_FORMAT as QWEN3_VL
from vlmkit.families.qwen_vl.boxes import BOX_FORMAT as QWEN_VL
from vlmkit.media.draw import PALETTE, draw_boxes
from vlmkit.media.grounding import (
    decode_reply,
    grid_unit,
    parse_objects,
    parse_reply,
    to_family,
    write_for_family,
)
from vlmkit.sample import to_sample

# family format, patch factor of its resize (patch_size * merge_size)
FORMATS = {
    "qwen2-vl": (QWEN2_VL, 28),
    "qwen2.5-vl": (QWEN2_5_VL, 28),
    "qwen3-vl": (QWEN3_VL, 32),
    "qwen-vl": (QWEN_VL, 28),
    "internvl": (INTERNVL, 28),
}

# Qwen's process_bbox notebook (Qwen2.5-VL repo, qwen-vl-finetune/tools/process_bbox.ipynb): COCO image
# 580957, 640x428, "bowl of carrots" [146, 137, 615, 415]; Qwen2-VL [228, 320, 961, 970], Qwen2.5-VL at
# min_pixels 56*56, max_pixels 14*14*4*1280 -> [147, 134, 619, 407].
PUBLISHED = {"size": (428, 640), "bbox": [146, 137, 615, 415], "label": "bowl of carrots"}


@functools.cache
def tokenizer_of(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def template_of(model_dir, family_name: str, **settings):
    from vlmkit.families import family_by_name

    return family_by_name(family_name).load_template(model_dir, tokenizer_of(model_dir), **settings)


def supervised_text(template, encoded) -> str:
    labels = encoded["labels"]
    return template.tokenizer.decode(labels[labels != -100].tolist())


# -- the published example --------------------------------------------------------------------------


def test_published_process_bbox_example_conversion():
    (h, w), box = PUBLISHED["size"], PUBLISHED["bbox"]
    resized = smart_resize(h, w, 28, 56 * 56, 14 * 14 * 4 * 1280)
    assert resized == (420, 644)
    assert to_family(box, "norm1000", (h, w), resized) == [228, 320, 961, 970]
    assert to_family(box, "resized_pixels", (h, w), resized) == [147, 134, 619, 407]


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("qwen2-vl", "<|box_start|>(228,320),(961,970)<|box_end|>"),
        ("qwen2.5-vl", '{"bbox_2d": [147, 134, 619, 407], "label": "bowl of carrots"}'),
    ],
)
def test_published_example_through_the_template(tiny_models, tmp_path, family, expected):
    image = tmp_path / "coco.png"
    random_image(*PUBLISHED["size"]).save(image)
    row = {
        "query": "Find <ref-object>",
        "response": "<bbox>",
        "images": [str(image)],
        "objects": {"ref": [PUBLISHED["label"]], "bbox": [PUBLISHED["bbox"]], "bbox_type": "real"},
    }
    template = template_of(tiny_models[family], family, min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280)
    encoded = template.encode(row_to_sample(row, "query-response", "row"))
    assert supervised_text(template, encoded) == expected + "<|im_end|>"
    assert template.count_tokens(row_to_sample(row, "query-response", "row")) == len(encoded["input_ids"])
    assert encoded["image_sizes"][0] == ((428, 640), (420, 644))


# -- round trips ------------------------------------------------------------------------------------


@st.composite
def image_and_box(draw):
    height = draw(st.integers(8, 5000))
    width = draw(st.integers(max(8, height // 150), min(5000, height * 150)))
    max_pixels = draw(st.sampled_from([56 * 56 * 4, 200_704, 1_003_520, 12_845_056]))
    x1, x2 = sorted(draw(st.floats(0, width, allow_nan=False)) for _ in range(2))
    y1, y2 = sorted(draw(st.floats(0, height, allow_nan=False)) for _ in range(2))
    return (height, width), max_pixels, [x1, y1, x2, y2]


@pytest.mark.parametrize("family", list(FORMATS))
@settings(max_examples=150, deadline=None)
@given(case=image_and_box(), ref=st.sampled_from(["cat", "the man in red", 'a "quoted" sign', "猫"]))
def test_round_trip_original_to_text_to_original(family, case, ref):
    """original pixels -> `objects` row -> family text -> parsed -> original pixels, within one grid unit
    (mapped back to original pixels) for every family, including images the resize shrinks."""
    box_format, factor = FORMATS[family]
    original, max_pixels, box = case
    resized = smart_resize(*original, factor, min(3136, max_pixels), max_pixels)
    sample = to_sample(
        {
            "messages": [
                {"role": "user", "content": "<image>Where is it?"},
                {"role": "assistant", "content": "<ref-object><bbox>"},
            ],
            "images": ["unused.png"],
            "objects": {"ref": [ref], "bbox": [box], "bbox_type": "real", "image_id": [0]},
        }
    )
    written = write_for_family(sample, box_format, [(original, resized)])
    parsed = parse_reply(written.text("assistant"), box_format, [(original, resized)])
    assert len(parsed) == 1
    assert parsed[0]["image_id"] == 0
    assert parsed[0]["ref"] == ref
    unit_x, unit_y = grid_unit(box_format.space, original, resized)
    for got, want, unit in zip(parsed[0]["bbox"], box, [unit_x, unit_y, unit_x, unit_y], strict=True):
        assert abs(got - want) <= unit + 0.01, (got, want, unit)


@pytest.mark.parametrize("family", list(FORMATS))
@settings(max_examples=60, deadline=None)
@given(case=image_and_box())
def test_norm1_boxes_match_real_boxes(family, case):
    box_format, factor = FORMATS[family]
    (h, w), max_pixels, box = case
    resized = smart_resize(h, w, factor, min(3136, max_pixels), max_pixels)
    norm1 = [box[0] / w, box[1] / h, box[2] / w, box[3] / h]

    def text(bbox, bbox_type):
        row = {
            "messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "<bbox>"}],
            "images": ["unused.png"],
            "objects": {"bbox": [bbox], "bbox_type": bbox_type},
        }
        return write_for_family(to_sample(row), box_format, [((h, w), resized)]).text("assistant")

    assert text(norm1, "norm1") == text(box, "real")


# -- rows as the tiny models encode them ------------------------------------------------------------

SEED_000 = [  # seed 000's three custom-dataset grounding rows (image path replaced)
    {
        "query": "Find <bbox>",
        "response": "<ref-object>",
        "objects": '[{"caption": "guy in red", "bbox": [138, 136, 235, 359], "bbox_type": "real", "image": 0}]',
    },
    {
        "query": "Find <ref-object>",
        "response": "<bbox>",
        "objects": '[{"caption": "guy in red", "bbox": [[138, 136, 235, 359],[1,2,3,4]], "bbox_type": "real", "image": 0}]',
    },
    {
        "query": "Find <|object_ref_start|>the man<|object_ref_end|>",
        "response": "<|box_start|>(123,235),(324,546)<|box_end|>",
    },
]


@pytest.fixture
def coco_like(tmp_path):
    path = tmp_path / "coco.png"
    random_image(480, 640).save(path)  # h 480, w 640
    return path


def test_seed_000_rows_for_qwen2_vl(tiny_models, coco_like):
    template = template_of(tiny_models["qwen2-vl"], "qwen2-vl", max_pixels=200_704)
    samples = [
        row_to_sample({**row, "images": [str(coco_like)]}, "query-response", f"s:{i}")
        for i, row in enumerate(SEED_000)
    ]
    encoded = [template.encode(s) for s in samples]
    # 138/640*1000 = 215.6, 136/480*1000 = 283.3, 235/640*1000 = 367.2, 359/480*1000 = 747.9
    assert "Find <|box_start|>(216,283),(367,748)<|box_end|><|im_end|>" in template.tokenizer.decode(
        encoded[0]["input_ids"].tolist()
    )
    assert (
        supervised_text(template, encoded[0]) == "<|object_ref_start|>guy in red<|object_ref_end|><|im_end|>"
    )
    assert supervised_text(template, encoded[1]) == (
        "<|box_start|>(216,283),(367,748)<|box_end|><|box_start|>(2,4),(5,8)<|box_end|><|im_end|>"
    )
    # the special-token form written literally is already Qwen2-VL's: unchanged
    assert supervised_text(template, encoded[2]) == "<|box_start|>(123,235),(324,546)<|box_end|><|im_end|>"
    ids = encoded[1]["labels"][encoded[1]["labels"] != -100].tolist()
    assert ids[0] == template.tokenizer.convert_tokens_to_ids(
        "<|box_start|>"
    )  # one special token, as trained


def test_seed_000_rows_for_qwen2_5_vl_use_resized_pixels(tiny_models, coco_like):
    template = template_of(tiny_models["qwen2.5-vl"], "qwen2.5-vl", max_pixels=200_704)
    # 480x640 under 200704 pixels -> 364x504 (sqrt(307200/200704) = 1.237)
    assert template.resized_size(480, 640) == (364, 504)
    samples = [
        row_to_sample({**row, "images": [str(coco_like)]}, "query-response", f"s:{i}")
        for i, row in enumerate(SEED_000)
    ]
    encoded = [template.encode(s) for s in samples]
    assert supervised_text(template, encoded[1]) == (
        '[{"bbox_2d": [109, 103, 185, 272], "label": "guy in red"}, '
        '{"bbox_2d": [1, 2, 2, 3], "label": "guy in red"}]<|im_end|>'
    )
    # literal Qwen2-VL 0-1000 text -> ref as plain words, box in resized pixels (123/1000*504 = 62.0, ...)
    prompt = template.tokenizer.decode(encoded[2]["input_ids"].tolist())
    assert "Find the man<|im_end|>" in prompt
    assert supervised_text(template, encoded[2]) == '{"bbox_2d": [62, 86, 163, 199]}<|im_end|>'


def test_changing_max_pixels_moves_the_written_box_with_the_image(tiny_models, coco_like):
    row = {**SEED_000[0], "images": [str(coco_like)]}
    sample = row_to_sample(row, "query-response", "row")
    for max_pixels in (200_704, 1_003_520):
        template = template_of(tiny_models["qwen2.5-vl"], "qwen2.5-vl", max_pixels=max_pixels)
        encoded = template.encode(sample)
        (h, w), (rh, rw) = encoded["image_sizes"][0]
        text = template.tokenizer.decode(encoded["input_ids"].tolist())
        box = json.loads(text.split("Find ")[1].split("<|im_end|>")[0])["bbox_2d"]
        assert box == [round(138 * rw / w), round(136 * rh / h), round(235 * rw / w), round(359 * rh / h)]
        assert template.count_tokens(sample) == len(encoded["input_ids"])
    # and the same template encodes at a lower limit on request (as --truncation shrink does)
    encoded = template.encode(sample, limit=50_176)
    assert encoded["image_sizes"][0][1] == (168, 252)  # sqrt(307200 / 50176) = 2.474 -> 6 x 9 patches of 28
    text = template.tokenizer.decode(encoded["input_ids"].tolist())
    assert 'Find {"bbox_2d": [54, 48, 93, 126]}<|im_end|>' in text


def test_qwen_vl_picture_row_trains_qwen2_5_vl_with_absolute_coordinates(tiny_models, tmp_path):
    random_image(*PUBLISHED["size"]).save(tmp_path / "bowl.png")
    row = {
        "conversations": [
            {"from": "user", "value": "Picture 1: <img>bowl.png</img>\nWhere is <ref>the bowl</ref>?"},
            {"from": "assistant", "value": "<ref>the bowl</ref><box>(228,320),(961,970)</box>"},
        ]
    }
    sample = row_to_sample(row, "sharegpt", "qwen_vl.json:1", base_dirs=[tmp_path])
    template = template_of(
        tiny_models["qwen2.5-vl"], "qwen2.5-vl", min_pixels=56 * 56, max_pixels=14 * 14 * 4 * 1280
    )
    encoded = template.encode(sample)
    prompt = template.tokenizer.decode(encoded["input_ids"].tolist())
    assert "<|vision_end|>\nWhere is the bowl?<|im_end|>" in prompt
    # the Qwen-VL 0-1000 box is the published example's box: same absolute coordinates
    assert (
        supervised_text(template, encoded)
        == '{"bbox_2d": [147, 134, 619, 407], "label": "the bowl"}<|im_end|>'
    )
    assert encoded["pixel_values"].shape[0] == (420 // 14) * (644 // 14)


# -- bad rows ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (
            {"ref": ["a"], "bbox": [[1, 2, 3]]},
            r"bbox 0: a bbox must be 4 finite numbers \[x1, y1, x2, y2\], got \[1, 2, 3\]",
        ),
        (
            {"bbox": [[5, 2, 3, 4]]},
            r"bbox 0: bbox \[5, 2, 3, 4\] is not \[x1, y1, x2, y2\] with 0 <= x1 <= x2",
        ),
        ({"bbox": [[1, 2, 3, 4]], "bbox_type": "norm"}, r"bbox_type 'norm' is not one of real, norm1"),
        (
            {"bbox": [[0.1, 0.2, 3, 4]], "bbox_type": "norm1"},
            r"bbox 0 has values over 1 but bbox_type is norm1",
        ),
        ({"bbox": [[1, 2, 3, 4]], "image_id": [0, 1]}, r"2 image_id values for 1 bbox entries"),
        ({"bbox": [[1, 2, 3, 4]], "image_id": ["a"]}, r"image_id must be a whole number >= 0"),
        ({"bbox": [[1, 2, 3, 4]], "labels": []}, r"unknown key\(s\) labels"),
        ("[1, 2", r"a string but not valid JSON"),
        (7, r"expected an object with 'ref', 'bbox'"),
    ],
)
def test_bad_objects_are_one_line_errors(objects, message):
    with pytest.raises(DataError, match=rf"^data.jsonl:7: objects: {message}") as info:
        parse_objects(objects, "data.jsonl:7")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"query": "<image>Find <bbox> and <bbox>", "response": "ok", "objects": {"bbox": [[1, 2, 3, 4]]}},
            "2 <bbox> placeholders but 1 bbox(es) in objects",
        ),
        (
            {"query": "<image>Find <bbox>", "response": "ok"},
            "<bbox> in the text but the row has no 'objects'",
        ),
        (
            {
                "query": "<image>Find <bbox>",
                "response": "ok",
                "objects": {"bbox": [[1, 2, 3, 4]], "image_id": 1},
            },
            "bbox 0 is on image 1 (0-based) but the row has 1 image(s)",
        ),
    ],
)
def test_bad_placeholders_fail_at_encode_naming_the_row(tiny_models, image_file, row, message):
    template = template_of(tiny_models["qwen2-vl"], "qwen2-vl")
    sample = row_to_sample({**row, "images": [str(image_file)]}, "query-response", "data.jsonl:3")
    for call in (template.encode, template.count_tokens):
        with pytest.raises(DataError) as info:
            call(sample)
        assert str(info.value) == f"data.jsonl:3: {message}"


# -- replies ----------------------------------------------------------------------------------------


def test_parse_replies_of_each_family():
    sizes = [((428, 640), (420, 644))]
    q2 = "It is <|object_ref_start|>the bowl<|object_ref_end|><|box_start|>(228,320),(961,970)<|box_end|>."
    q25 = 'Here:\n```json\n[\n  {"bbox_2d": [147, 134, 619, 407], "label": "the bowl"}\n]\n```'
    q3 = '```json\n[{"bbox_2d": [228, 320, 961, 970], "label": "the bowl"}]\n```'
    qvl = "<ref>the bowl</ref><box>(228,320),(961,970)</box>"
    ivl = "<ref>the bowl</ref><box>[[228, 320, 961, 970]]</box>"
    for box_format, text in [
        (QWEN2_VL, q2),
        (QWEN2_5_VL, q25),
        (QWEN3_VL, q3),
        (QWEN_VL, qvl),
        (INTERNVL, ivl),
    ]:
        (obj,) = parse_reply(text, box_format, sizes)
        assert obj["ref"] == "the bowl"
        assert obj["image_id"] == 0
        assert all(abs(a - b) <= 1.1 for a, b in zip(obj["bbox"], PUBLISHED["bbox"], strict=True)), obj
    # Qwen2-VL decoded with special tokens skipped still gives the box (without its ref)
    (obj,) = parse_reply("the bowl(228,320),(961,970)", QWEN2_VL, sizes)
    assert obj["ref"] is None and obj["bbox"] == [145.92, 136.96, 615.04, 415.16]
    assert parse_reply("no boxes here", QWEN2_5_VL, sizes) == []
    assert parse_reply(q2, QWEN2_VL, []) == []


def test_decode_reply_keeps_grounding_tokens(tiny_models):
    tokenizer = tokenizer_of(tiny_models["qwen2-vl"])
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    ids = tokenizer.encode(text + "<|im_end|><|endoftext|><|endoftext|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "cat(1,2),(3,4)"
    assert decode_reply(tokenizer, ids, QWEN2_VL.keep_tokens) == text


def test_draw_boxes_outlines_each_box_in_its_colour():
    image = Image.new("RGB", (200, 100), (255, 255, 255))
    drawn = draw_boxes(
        image, [{"ref": "cat", "bbox": [20, 30, 120, 90]}, {"ref": None, "bbox": [150, 10, 190, 50]}]
    )
    assert image.getpixel((20, 60)) == (255, 255, 255)  # the input is not changed
    assert drawn.getpixel((20, 60)) == PALETTE[0]  # left edge of box 1
    assert drawn.getpixel((70, 90)) == PALETTE[0]  # bottom edge
    assert drawn.getpixel((150, 30)) == PALETTE[1]  # box 2
    assert drawn.getpixel((70, 60)) == (255, 255, 255)  # inside stays
    tag = [drawn.getpixel((x, y)) for x in range(20, 40) for y in range(15, 30)]
    assert tag.count(PALETTE[0]) > 50  # the label's tag, above box 1


def test_batch_infer_writes_objects_and_draws(small_model, tmp_path, monkeypatch):
    """`vlmkit infer --input --output --draw` on a tiny model whose replies are replaced by grounding text."""
    from typer.testing import CliRunner

    from vlmkit.backends.transformers_backend import VLM
    from vlmkit.cli import app

    random_image(300, 400).save(tmp_path / "a.png")
    rows = [
        {"query": "<image>Find the cat", "images": ["a.png"]},
        {"query": "Find <bbox>", "response": "<ref-object>", "images": ["a.png"],
         "objects": {"ref": ["cat"], "bbox": [[40, 60, 200, 240]]}},
        {"query": "no image here"},
    ]  # fmt: skip
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reply = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"
    monkeypatch.setattr(VLM, "generate_encoded", lambda self, encoded, options, **kw: [reply] * len(encoded))
    out, draw = tmp_path / "preds.jsonl", tmp_path / "drawn"
    result = CliRunner().invoke(
        app,
        [
            "infer",
            "--model",
            str(small_model),
            "--input",
            str(data),
            "--output",
            str(out),
            "--draw",
            str(draw),
        ],
    )
    assert result.exit_code == 0, result.output
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [{"ref": "cat", "bbox": [40.0, 60.0, 200.0, 240.0], "image_id": 0}]
    assert preds[0]["objects"] == expected
    assert preds[0]["response"] == reply
    assert preds[1]["objects"] == expected
    assert preds[1]["labels_objects"] == rows[1]["objects"]  # the row's own objects are kept
    assert preds[2]["objects"] == []
    assert sorted(p.name for p in draw.iterdir()) == ["row00001_image0.png", "row00002_image0.png"]
    drawn = Image.open(draw / "row00001_image0.png").convert("RGB")
    assert drawn.size == (400, 300)
    assert drawn.getpixel((40, 150)) == PALETTE[0]
    assert drawn.getpixel((120, 240)) == PALETTE[0]


def test_batch_infer_draws_the_reference_boxes_beside_the_predicted_ones(small_model, tmp_path, monkeypatch):
    """Issue 11: `--draw` shows the row's own `objects` (another colour, a legend) next to the reply's."""
    from typer.testing import CliRunner

    from vlmkit.backends.transformers_backend import VLM
    from vlmkit.cli import app
    from vlmkit.media.draw import REFERENCE_COLOUR

    Image.new("RGB", (400, 300), (255, 255, 255)).save(tmp_path / "a.png")
    row = {"query": "Find <ref-object>", "response": "<bbox>", "images": ["a.png"],
           "objects": {"ref": ["猫"], "bbox": [[0.05, 0.1, 0.25, 0.5]], "bbox_type": "norm1"}}  # fmt: skip
    (tmp_path / "data.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    reply = "<|object_ref_start|>猫<|object_ref_end|><|box_start|>(500,400),(900,900)<|box_end|>"
    monkeypatch.setattr(VLM, "generate_encoded", lambda self, encoded, options, **kw: [reply] * len(encoded))
    result = CliRunner().invoke(
        app, ["infer", "--model", str(small_model), "--input", str(tmp_path / "data.jsonl"),
              "--output", str(tmp_path / "p.jsonl"), "--draw", str(tmp_path / "drawn")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    drawn = Image.open(tmp_path / "drawn" / "row00001_image0.png").convert("RGB")
    assert drawn.getpixel((20, 60)) == REFERENCE_COLOUR  # reference left edge: x = 0.05 * 400, y in 30..150
    assert drawn.getpixel((200, 200)) == PALETTE[0]  # predicted left edge: x = 500/1000 * 400
    assert drawn.getpixel((2, 298)) == (0, 0, 0)  # the legend's panel, bottom-left


def test_cjk_labels_draw_real_glyphs():
    from vlmkit.media.draw import cjk_font_path

    if cjk_font_path() is None:
        pytest.skip("no font with CJK glyphs installed (apt-get install fonts-noto-cjk)")
    image = Image.new("RGB", (300, 200), (255, 255, 255))

    def tag(label):
        drawn = draw_boxes(image, [{"ref": label, "bbox": [50, 100, 250, 190]}])
        return drawn.crop((50, 70, 120, 100)).tobytes()

    assert tag("中文") != tag("国家")  # an empty-box (tofu) font draws both the same
    assert tag("中文") != tag("ab")


def test_without_a_cjk_font_labels_fall_back_and_warn_once(monkeypatch, capsys):
    from vlmkit.media import draw

    monkeypatch.setattr(draw, "cjk_font_path", lambda: None)
    draw._warn_no_cjk_font.cache_clear()
    image = Image.new("RGB", (300, 200), (255, 255, 255))
    draw_boxes(image, [{"ref": "cat", "bbox": [50, 100, 250, 190]}])
    assert capsys.readouterr().err == ""  # a Latin label needs no CJK font
    for _ in range(2):
        draw_boxes(image, [{"ref": "猫", "bbox": [50, 100, 250, 190]}])
    assert capsys.readouterr().err == (
        "warning: no font with CJK glyphs found: CJK labels are drawn as empty boxes; install one "
        "(Debian/Ubuntu: apt-get install fonts-noto-cjk)\n"
    )
    draw._warn_no_cjk_font.cache_clear()


# `vlmkit ...` with no CJK font, whatever the machine has (the font search is patched before the CLI starts).
WITHOUT_CJK_FONT = (
    "import runpy, vlmkit.media.draw as d; d.cjk_font_path = lambda: None; "
    "runpy.run_module('vlmkit', run_name='__main__')"
)


@pytest.mark.slow
def test_chat_draw_without_a_cjk_font_warns_once_on_its_own_line(tmp_path):
    """The warning is one `warning:` line of its own, not a Python warning glued to the reply (issue 28 #5a)."""
    import subprocess
    import sys

    from scripted import build_scripted_model

    reply = "<|object_ref_start|>猫<|object_ref_end|><|box_start|>(100,200),(500,800)<|box_end|>"
    model = build_scripted_model("qwen2-vl", tmp_path / "model", reply)
    random_image(100, 200).save(tmp_path / "a.png")
    script = f"<image>Where is the cat?\n{tmp_path / 'a.png'}\nAgain\nexit\n"
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_CJK_FONT, "infer", "-m", str(model), "--quiet", "--max-pixels", "20000",
         "--draw", str(tmp_path / "drawn")],
        input=script, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # stderr merged into stdout, as a terminal shows them
    assert run.returncode == 0, run.stdout
    lines = run.stdout.splitlines()
    warning = (
        "warning: no font with CJK glyphs found: CJK labels are drawn as empty boxes; install one "
        "(Debian/Ubuntu: apt-get install fonts-noto-cjk)"
    )
    assert lines.count(warning) == 1, run.stdout  # once, on a line of its own
    assert "Warning" not in run.stdout and "draw.py" not in run.stdout
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["chat001_image0.png", "chat002_image0.png"]


def test_chat_draw_saves_the_turns_image_with_its_boxes(small_model, tmp_path, monkeypatch):
    import io

    import vlmkit
    from vlmkit.backends.transformers_backend import VLM, GenerationOptions
    from vlmkit.infer.batch import run_chat

    random_image(100, 200).save(tmp_path / "a.png")
    reply = "<|box_start|>(100,200),(500,800)<|box_end|>"  # as a stream shows it: no ref tokens needed
    monkeypatch.setattr(VLM, "_stream", lambda self, batch, options, result=None, **kw: iter([reply]))
    vlm = vlmkit.load(str(small_model), max_pixels=20_000)
    stdout = io.StringIO()
    script = f"<image>Where is the cat?\n{tmp_path / 'a.png'}\nThanks\nexit\n"
    run_chat(vlm, GenerationOptions(), stdin=io.StringIO(script), stdout=stdout, draw_dir=tmp_path / "drawn")
    assert f"[1 box(es) drawn: {tmp_path / 'drawn' / 'chat001_image0.png'}]" in stdout.getvalue()
    # the second turn has no new image but the conversation has one: drawn again for that turn
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == [
        "chat001_image0.png",
        "chat002_image0.png",
    ]
    drawn = Image.open(tmp_path / "drawn" / "chat001_image0.png").convert("RGB")
    assert drawn.getpixel((20, 50)) == PALETTE[0]  # left edge at x = 100/1000 * 200


def test_internvl_writes_ref_and_box_tags_on_the_original_image(tiny_models, coco_like):
    template = template_of(tiny_models["internvl"], "internvl")
    rows = [{**row, "images": [str(coco_like)]} for row in SEED_000]
    encoded = [template.encode(row_to_sample(r, "query-response", f"s:{i}")) for i, r in enumerate(rows)]
    assert supervised_text(template, encoded[0]) == "<ref>guy in red</ref><|im_end|>"
    # 0-1000 of the 640x480 original, however many tiles the image is cut into
    assert (
        supervised_text(template, encoded[1]) == "<box>[[216, 283, 367, 748], [2, 4, 5, 8]]</box><|im_end|>"
    )
    assert supervised_text(template, encoded[2]) == "<box>[[123, 235, 324, 546]]</box><|im_end|>"
    prompt = template.tokenizer.decode(encoded[2]["input_ids"].tolist())
    assert "Find <ref>the man</ref><|im_end|>" in prompt
    sample = row_to_sample(rows[1], "query-response", "s:1")
    assert template.count_tokens(sample) == len(encoded[1]["input_ids"])


# The box of `Find <bbox>` in each family's form, without the label that is the answer.
PROMPT_BOX = {
    "qwen2-vl": "Find <|box_start|>(216,283),(367,748)<|box_end|><|im_end|>",
    "qwen2.5-vl": 'Find {"bbox_2d": [109, 103, 185, 272]}<|im_end|>',
    "qwen3-vl": 'Find {"bbox_2d": [216, 283, 367, 748]}<|im_end|>',
    "internvl": "Find <box>[[216, 283, 367, 748]]</box><|im_end|>",
}


@pytest.mark.parametrize("family", list(PROMPT_BOX))
def test_a_bbox_in_the_prompt_carries_the_box_only(tiny_models, coco_like, family):
    """Seed 000's `Find <bbox>` -> `<ref-object>`: the prompt must not hold the answer (issue 11 #3)."""
    settings = {} if family == "internvl" else {"max_pixels": 200_704}
    template = template_of(tiny_models[family], family, **settings)
    sample = row_to_sample({**SEED_000[0], "images": [str(coco_like)]}, "query-response", "s:0")
    encoded = template.encode(sample)
    prompt = template.tokenizer.decode(encoded["input_ids"].tolist())
    assert PROMPT_BOX[family] in prompt
    assert prompt.count("guy in red") == 1  # in the supervised reply only
    assert "guy in red" in supervised_text(template, encoded)


def test_a_bbox_in_a_reply_keeps_its_label(tiny_models, coco_like):
    template = template_of(tiny_models["qwen3-vl"], "qwen3-vl", max_pixels=200_704)
    row = {"query": "Find <ref-object>", "response": "<bbox>", "images": [str(coco_like)],
           "objects": SEED_000[0]["objects"]}
    encoded = template.encode(row_to_sample(row, "query-response", "s:0"))
    assert supervised_text(template, encoded) == (
        '{"bbox_2d": [216, 283, 367, 748], "label": "guy in red"}<|im_end|>'
    )


def test_data_preview_shows_the_prompt_box_without_its_label(tiny_models, coco_like, tmp_path):
    from typer.testing import CliRunner

    from vlmkit.cli import app

    data = tmp_path / "ground.jsonl"
    data.write_text(json.dumps({**SEED_000[0], "images": [str(coco_like)]}) + "\n")
    result = CliRunner().invoke(
        app,
        ["data", "preview", "--model", str(tiny_models["qwen2.5-vl"]), "--dataset", str(data),
         "--max-pixels", "200704"],
    )
    assert result.exit_code == 0, result.output
    assert 'Find {"bbox_2d": [109, 103, 185, 272]}' in result.output
    assert result.output.count("guy in red") == 1


def test_trust_remote_code_reaches_transformers(small_model, monkeypatch, tmp_path):
    import transformers

    import vlmkit
    from vlmkit.errors import VlmkitError

    seen = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForImageTextToText):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            seen.append((_name, kwargs.get("trust_remote_code")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    vlmkit.load(str(small_model), trust_remote_code=True)
    assert seen == [("AutoTokenizer", True), ("AutoModelForImageTextToText", True)]
    # a Qwen-VL (first generation) folder loads only through its remote code (tests/test_qwen_vl.py)
    (tmp_path / "qwen-vl").mkdir()
    (tmp_path / "qwen-vl" / "config.json").write_text(json.dumps({"model_type": "qwen", "auto_map": {}}))
    with pytest.raises(VlmkitError, match="pass --trust-remote-code"):  # converted on load without it (issue 28 #7)
        vlmkit.load(str(tmp_path / "qwen-vl"))


def test_boxes_written_as_text_are_read_in_every_syntax_datasets_use():
    """What `vlmkit eval` reads in answers and in replies made elsewhere: the markup training data may write
    (0-1000 grid), and a text answer as the model is taught to write it (refs filled in)."""
    from vlmkit.media.grounding import answer_text, literal_boxes, norm1000_to_pixels

    qwen2_vl = "<|object_ref_start|>羊<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>"
    assert literal_boxes(qwen2_vl) == [[1, 2, 3, 4]]
    qwen_vl_and_internvl = "<ref>a</ref><box>(1,2),(3,4)</box> and <box>[[5, 6, 7, 8], [9, 10, 11, 12]]</box>"
    assert literal_boxes(qwen_vl_and_internvl) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    with pytest.raises(DataError, match=r"labels: box text '\(1,2\)' does not hold"):
        literal_boxes("<box>(1,2)</box>", "labels")
    assert literal_boxes("<box>(1,2)</box> <box>(0,0),(10,10)</box>", strict=False) == [[0, 0, 10, 10]]
    assert norm1000_to_pixels([0, 0, 500, 500], (48, 64)) == [0, 0, 32, 24]
    assert answer_text("这是<ref-object>和<ref>狗</ref>", ["一只羊"]) == "这是一只羊和狗"
    with pytest.raises(DataError, match=r"row: 2 <ref-object> placeholder\(s\) in the answer but 1 ref"):
        answer_text("<ref-object> and <ref-object>", ["a"], "row")
