"""The GRPO rewards (`vlmkit.train.rewards`) against values worked out by hand, boxes in each family's own
coordinates mapped back to the original image (the reward never depends on the resolution setting),
unparseable replies (0, counted), the `--reward` spec and a user's plugin module."""

from __future__ import annotations

import pytest
from PIL import Image
from transformers import AutoTokenizer

from vlmkit.errors import VlmkitError
from vlmkit.families import family_for_model_dir
from vlmkit.media.grounding import to_family
from vlmkit.sample import to_sample
from vlmkit.train import rewards
from vlmkit.train.rewards import parse_reward_spec


def test_accuracy_exact_numeric_and_choice():
    replies = ["  The Cat.", "<think>2+2</think><answer>4.02</answer>", "98", "Answer: (B)", "A", "dog"]
    solutions = ["the cat", 4, "100", "B", "b", "cat"]
    # numbers within 1%: 4.02 for 4 is right, 98 for 100 is not; "A" does not pick b
    assert rewards.accuracy(replies, solutions) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]


def test_count_reads_digits_and_words_and_counts_unparsed():
    logged = {}
    replies = ["There are 3 circles.", "<answer>three</answer>", "4", "many"]
    values = rewards.count(replies, [3, "3", 3, 2], log_metric=logged.__setitem__)
    assert values == [1.0, 1.0, 0.0, 0.0]
    assert logged == {"rewards/count/unparsed": 1.0}


def test_format_length_and_repetition():
    assert rewards.think_answer_format(
        ["<think>a\nb</think> <answer>3</answer>", "<answer>3</answer>", "<think>a</think><answer>3</answer> extra"]
    ) == [1.0, 0.0, 0.0]
    # 80 words free, -1 at 120: 100 words is halfway
    assert rewards.length(["w " * 80, "w " * 100, "w " * 500]) == [0.0, -0.5, -1.0]
    # "a b c a b c": 3-grams abc bca cab abc -> one repeat of four
    assert rewards.repetition(["a b c a b c", "one two", "x y z"]) == [-0.25, 0.0, 0.0]


@pytest.fixture(scope="module")
def templates(tiny_models):
    """(family name -> template) for the box conventions: 0-1000 tokens, resized-pixel JSON, 0-1000 JSON."""
    out = {}
    for name in ("qwen2-vl", "qwen2.5-vl", "qwen3-vl"):
        model = tiny_models[name]
        out[name] = family_for_model_dir(model).load_template(model, AutoTokenizer.from_pretrained(model))
    return out


def _sizes(template, image_path, max_pixels):
    """The prompt's image sizes as the template resizes at `max_pixels` (what the trainer passes)."""
    sample = to_sample({"messages": [{"role": "user", "content": "<image>box?"}], "images": [str(image_path)]})
    return template.image_sizes(sample, limit=max_pixels)


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_iou_is_measured_in_original_pixels_whatever_the_resolution(templates, tmp_path, family):
    """The same answer (the solution box written in the family's coordinates of the image as resized at two
    pixel budgets) gets the same reward, and one computed by hand from original pixels."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (640, 480)).save(image)
    template = templates[family]
    solution = [100.0, 120.0, 300.0, 360.0]  # original pixels
    predicted = [100.0, 120.0, 300.0, 280.0]  # the upper two thirds: IoU 160/240 by hand
    values, resized_sizes = [], set()
    for max_pixels in (640 * 480, 300 * 300):
        sizes = _sizes(template, image, max_pixels)
        original, resized = sizes[0]
        assert original == (480, 640)
        resized_sizes.add(resized)
        box_text = template.box_format.write_boxes([to_family(predicted, template.box_format.space, original, resized)])
        row = {"box_format": template.box_format, "image_sizes": [sizes]}
        values.append((rewards.iou([box_text], [solution], **row)[0], rewards.iou_at_50([box_text], [solution], **row)[0]))
    assert len(resized_sizes) == 2  # the two settings resize the image differently
    (low_iou, low_hit), (high_iou, high_hit) = values
    assert low_hit == high_hit == 1.0
    assert low_iou == pytest.approx(2 / 3, abs=0.02) and high_iou == pytest.approx(2 / 3, abs=0.02)
    assert abs(low_iou - high_iou) < 0.02  # only the rounding of the family's integer grid differs


def test_iou_solution_in_family_text_and_norm1_and_unparsed(templates, tmp_path):
    image = tmp_path / "photo.png"
    Image.new("RGB", (1000, 500)).save(image)
    template = templates["qwen2-vl"]
    sizes = _sizes(template, image, None)
    reply = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(100,200),(300,600)<|box_end|>"
    # 0-1000 grid of a 1000x500 image: x as is, y halved -> [100, 100, 300, 300] pixels
    logged = {}
    row = {"box_format": template.box_format, "image_sizes": [sizes] * 4, "log_metric": logged.__setitem__}
    solutions = [
        "<|box_start|>(100,200),(300,600)<|box_end|>",  # the family's own text
        [100, 100, 300, 200],  # pixels: half of the box -> 0.5
        {"bbox": [0.1, 0.2, 0.3, 0.6], "bbox_type": "norm1"},  # 0-1 of the image -> the same box
        [100, 100, 300, 300],
    ]
    values = rewards.iou([reply, reply, reply, "no box here"], solutions, **row)
    assert values == [pytest.approx(1.0), pytest.approx(0.5), pytest.approx(1.0), 0.0]
    assert logged == {"rewards/iou/unparsed": 1.0}
    assert rewards.box_format([reply, "(1, 2)"], box_format=template.box_format) == [1.0, 0.0]


def test_reward_spec_names_weights_and_errors():
    spec = parse_reward_spec("iou:1.0, format:0.2,iou@0.5")
    assert [(name, weight) for name, _, weight in spec] == [("iou", 1.0), ("format", 0.2), ("iou@0.5", 1.0)]
    assert spec[0][1] is rewards.iou
    with pytest.raises(VlmkitError, match=r"unknown reward 'ioux'; known: accuracy, count, iou, iou@0\.5, format"):
        parse_reward_spec("ioux")
    with pytest.raises(VlmkitError, match="named twice"):
        parse_reward_spec("iou,iou:2")


def test_reward_spec_loads_a_user_plugin(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shorter(completions, solutions, **row):\n    return [1.0 / (1 + len(c)) for c in completions]\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    [(name, function, weight)] = parse_reward_spec("my_rewards:shorter:0.5")
    assert (name, weight) == ("shorter", 0.5) and function(["abc"], [None]) == [0.25]
    [(_, by_file, _)] = parse_reward_spec(f"{tmp_path / 'my_rewards.py'}:shorter")
    assert by_file(["a"], [None]) == [0.5]
    with pytest.raises(VlmkitError, match="my_rewards has no function 'longer'"):
        parse_reward_spec("my_rewards:longer")
    with pytest.raises(VlmkitError, match="cannot import no_such_module"):
        parse_reward_spec("no_such_module:f")
