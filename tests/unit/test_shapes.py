"""The synthetic shapes task: deterministic files, loadable rows, balanced answers, scoring."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from vlmkit.data import load_dataset
from vlmkit.media.shapes import (
    COLORS,
    COUNTS,
    QUESTION_KINDS,
    chance_accuracy,
    make_shapes_dataset,
    normalize_answer,
    score,
)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", 12, seed=3, questions=QUESTION_KINDS)
    b = make_shapes_dataset(tmp_path / "b", 12, seed=3, questions=QUESTION_KINDS)
    c = make_shapes_dataset(tmp_path / "c", 12, seed=4, questions=QUESTION_KINDS)
    assert a.read_text() == b.read_text()
    for row in _rows(a):
        name = row["images"][0]
        assert (a.parent / name).read_bytes() == (b.parent / name).read_bytes()
    assert a.read_text() != c.read_text()


def test_rows_are_messages_with_relative_images_and_load(tmp_path):
    path = make_shapes_dataset(tmp_path / "set", 10, seed=0, image_size=84, grid=3)
    assert path == tmp_path / "set" / "data.jsonl"
    rows = _rows(path)
    assert len(rows) == 10
    for i, row in enumerate(rows):
        user, assistant = row["messages"]
        assert user["role"] == "user" and user["content"].startswith("<image>")
        assert assistant["role"] == "assistant" and assistant["content"]
        assert row["images"] == [f"images/{i:05d}.png"]
        with Image.open(path.parent / row["images"][0]) as image:
            assert image.size == (84, 84) and image.mode == "RGB"
    dataset = load_dataset(path)
    assert dataset.format == "messages" and len(dataset) == 10 and not dataset.bad
    sample = dataset[0]
    (image,) = sample.media("image")
    assert (path.parent / rows[0]["images"][0]).samefile(image)
    assert sample.text("assistant") == rows[0]["messages"][1]["content"]


def test_answers_are_balanced_within_each_question_type(tmp_path):
    questions = ("color", "count")
    rows = _rows(make_shapes_dataset(tmp_path / "set", 400, seed=1, image_size=56, questions=questions))
    by_type: dict[str, Counter] = {"color": Counter(), "count": Counter()}
    for row in rows:
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        by_type["color" if "color" in question else "count"][answer] += 1
    assert set(by_type["color"]) == set(COLORS)
    assert set(by_type["count"]) == {str(n) for n in COUNTS}
    assert sum(by_type["color"].values()) == sum(by_type["count"].values()) == 200
    for counts in by_type.values():
        assert max(counts.values()) - min(counts.values()) <= 1
    questions = [r["messages"][0]["content"] for r in rows]
    answers = [r["messages"][1]["content"] for r in rows]
    assert chance_accuracy(questions, answers) < 0.35


def test_images_show_what_the_answer_says(tmp_path):
    """A colour image holds the answer's colour and 2-4 shapes of different colours (the distractors)."""
    path = make_shapes_dataset(tmp_path / "set", 40, seed=2, questions=("color", "count"))
    palette = set(COLORS.values())
    for row in _rows(path):
        question, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        with Image.open(path.parent / row["images"][0]) as image:
            assert image.getpixel((0, 0)) in {(255, 255, 255)} | palette
            colours = {c for _, c in image.getcolors(84 * 84)} & palette
        if "color" in question:
            assert COLORS[answer] in colours and 2 <= len(colours) <= 4
        else:
            assert colours


def test_chance_accuracy_is_the_best_blind_guess():
    questions = ["<image>What color is the square?"] * 3 + ["<image>How many circles are there?"] * 2
    assert chance_accuracy(questions, ["red", "Red.", "blue", "1", "2"]) == 3 / 5


def test_score_normalises_case_space_and_trailing_punctuation():
    assert normalize_answer("  Red.\n") == "red"
    assert normalize_answer("3!") == "3"
    assert score(["Red.", " 3", "blue", "green"], ["red", "3", "Blue", "yellow"]) == 0.75
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no references"):
        score([], [])


def test_question_kinds_can_be_chosen(tmp_path):
    rows = _rows(make_shapes_dataset(tmp_path / "t", 40, seed=0, questions=("total",)))
    assert {r["messages"][0]["content"] for r in rows} == {"<image>How many shapes are there?"}
    assert Counter(r["messages"][1]["content"] for r in rows) == {"1": 10, "2": 10, "3": 10, "4": 10}
    rows = _rows(make_shapes_dataset(tmp_path / "c", 9, seed=0, image_size=56, grid=2))
    assert all(r["messages"][0]["content"].startswith("<image>What color is the ") for r in rows)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="n_rows"):
        make_shapes_dataset(tmp_path / "x", 0, seed=0)
    with pytest.raises(ValueError, match="2x2 grid has fewer than the 6 cells"):
        make_shapes_dataset(tmp_path / "x", 2, seed=0, grid=2, questions=("color", "count"))
    with pytest.raises(ValueError, match="choose from color, count, total"):
        make_shapes_dataset(tmp_path / "x", 2, seed=0, questions=("size",))
    assert not (tmp_path / "x").exists()
