"""Preference rows read as they are stored (`vlmkit.data.preference`): each format of tests/integration/test_dpo.py
(RLAIF-V, RLHF-V, TRL, ms-swift, LLaMA-Factory; JSON Lines and the hub's Parquet) becomes the same pair of
conversations, encoded to the same ids; ms-swift's `rejected_images`; rows that are not pairs, one line each."""

from __future__ import annotations

import json

import pytest
from preference_rows import CHOSEN, QUESTION, REJECTED, rlaif_v_parquet, rows_in_every_format, write_jsonl

from vlmkit.data.preference import load_preference_data, load_preference_datasets
from vlmkit.errors import DataError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    paths = {name: write_jsonl(root / f"{name}.jsonl", rows) for name, rows in rows_in_every_format(root).items()}
    paths["rlaif-v parquet"] = rlaif_v_parquet(root / "rlaif_v.parquet")
    return paths


def texts(sample) -> list[tuple[str, list[str]]]:
    """(role, [part type or text, ...]) per message: the conversation without its media sources."""
    return [(m["role"], [p["text"] if p["type"] == "text" else p["type"] for p in m["content"]]) for m in sample.messages]


@pytest.mark.parametrize("name", ["rlaif-v", "rlaif-v parquet", "rlhf-v", "trl", "ms-swift", "sharegpt"])
def test_every_format_reads_to_the_same_pairs(files, name, small_model):
    from vlmkit.models.loader import load_tokenizer_and_template, resolve_model

    data = load_preference_data(str(files[name]))
    assert data.format == name.split()[0] and len(data) == 4
    template = load_tokenizer_and_template(resolve_model(str(small_model)))[1]
    reference = load_preference_data(str(files["ms-swift"]))
    for i in range(4):
        pair, expected = data[i], reference[i]
        assert texts(pair.chosen) == [("user", ["image", QUESTION]), ("assistant", [CHOSEN[i]])]
        assert texts(pair.rejected) == [("user", ["image", QUESTION]), ("assistant", [REJECTED[i]])]
        for side in ("chosen", "rejected"):
            got, want = template.encode(getattr(pair, side)), template.encode(getattr(expected, side))
            assert got["input_ids"].tolist() == want["input_ids"].tolist()
            assert got["pixel_values"].equal(want["pixel_values"])  # the same image, from bytes or a path


def test_ms_swift_rejected_images_are_the_rejected_conversations(tmp_path, files):
    row = {"messages": [{"role": "user", "content": "<image>Which?"}, {"role": "assistant", "content": "左边。"}],
           "images": [str(files["ms-swift"].parent / "0.png")], "rejected_response": "右边。",
           "rejected_images": [str(files["ms-swift"].parent / "1.png")]}  # fmt: skip
    pair = load_preference_data(str(write_jsonl(tmp_path / "d.jsonl", [row])))[0]
    assert pair.chosen.media("image") == [row["images"][0]] and pair.rejected.media("image") == row["rejected_images"]
    assert texts(pair.rejected)[-1] == ("assistant", ["右边。"])


def test_several_files_and_row_counts(files):
    data = load_preference_datasets([str(files["trl"]), f"{files['rlhf-v']}#2"])
    assert len(data) == 6 and data.format == "trl+rlhf-v"


def test_rows_that_are_not_pairs_are_one_line_each(tmp_path):
    sft_rows = write_jsonl(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match=r"sft.jsonl: not a preference dataset; keys found: messages; "):
        load_preference_data(str(sft_rows))
    rows = [{"text": json.dumps({"question": "q", "chosen": "a", "rejected": "b"}), "image": "x.png"},
            {"text": "not json", "image": "x.png"}, {"text": json.dumps({"question": "q", "chosen": "", "rejected": "b"}),
            "image": "x.png"}]  # fmt: skip
    data = load_preference_data(str(write_jsonl(tmp_path / "rlhf.jsonl", rows)))
    with pytest.raises(DataError, match=r"rlhf.jsonl:2: 'text' is not JSON"):
        data[1]
    with pytest.raises(DataError, match=r"rlhf.jsonl:3: 'chosen' is empty"):
        data[2]


def test_image_and_text_columns_of_an_ocr_set_are_not_taken_for_rlhf_v():
    """LaTeX_OCR's rows (`image`, `text`: the formula) have RLHF-V's two columns; only a `text` that holds the pair
    makes a row RLHF-V (`vlmkit data check` took every OCR row for a bad pair)."""
    from vlmkit.data.preference import preference_format

    ocr = {"image": {"bytes": b"\x89PNG", "path": None}, "text": r"\frac { a } { b }"}
    assert preference_format([ocr]) is None
    pair = {"image": ocr["image"], "text": json.dumps({"question": "q", "chosen": "a", "rejected": "b"})}
    assert preference_format([pair]) == "rlhf-v"
