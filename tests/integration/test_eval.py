"""`vlmkit eval`: metrics against their reference definitions on fixed inputs, and the command end to end
(scripted models whose answers are known, so the scores are known exactly)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
from conftest import random_image
from scripted import build_scripted_model
from typer.testing import CliRunner

from vlmkit.cli import app
from vlmkit.errors import VlmkitError
from vlmkit.eval.metrics import (
    Row,
    aggregate,
    anls,
    bleu4,
    bootstrap_interval,
    box_iou,
    cer,
    choice,
    choice_letter,
    cider_d,
    exact_match,
    iou,
    iou_at_50,
    ned,
    normalize_vqa,
    relaxed_accuracy,
    rouge_l,
    vqa_accuracy,
    wer,
)


def cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    random_image(48, 64, seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


def parquet(rows: list[dict], path) -> str:
    datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(path)
    return str(path)


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def red_cat(tmp_path_factory):
    """A scripted model that answers "red cat" to anything, in a folder named `right` (eval names its rows and
    images after it); built once for the tests that train from it or score it (they only read it)."""
    return build_scripted_model("qwen2-vl", tmp_path_factory.mktemp("red_cat") / "right", "red cat", small_vocab=True)


# -- metrics on fixed inputs (expected values worked out by hand from each metric's definition) ------


def test_exact_match_and_vqa_accuracy_with_the_vqav2_normalisation():
    assert exact_match(Row("  The Cat. ", ["the cat"])).value == 1.0
    assert exact_match(Row("", ["cat"])).value == 0.0
    # VQAv2: number words -> digits, articles and punctuation dropped, contractions restored
    assert normalize_vqa("Two dogs!") == "2 dogs"
    assert normalize_vqa("the dont") == "don't"
    assert normalize_vqa("1,000") == "1000"
    # 3 of 10 annotators said "2": leave-one-out subsets drop a match 3 times (2/3) and a non-match 7 times (1)
    ten = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy(Row("two", ten)).value == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy(Row("2", ["2"] + ["3"] * 9)).value == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_accuracy(Row("3", ["3"] * 10)).value == 1.0
    assert vqa_accuracy(Row("", ten)).value == 0.0  # empty prediction
    assert vqa_accuracy(Row("A dog.", ["dog"])).value == 1.0  # one reference: match after normalising


def test_anls_relaxed_accuracy_and_edit_distances():
    # ANLS: 1 - lev/max_len under 0.5, else 0; the best of several references
    assert anls(Row("helo", ["hello"])).value == pytest.approx(1 - 1 / 5)
    assert anls(Row("abc", ["xyz"])).value == 0.0
    assert anls(Row("Hello ", ["xyz", "hello"])).value == 1.0
    assert anls(Row("", ["abc"])).value == 0.0
    # ChartQA: within 5% of a number (a trailing % is /100); text must match
    assert relaxed_accuracy(Row("10.4", ["10"])).value == 1.0
    assert relaxed_accuracy(Row("10.6", ["10"])).value == 0.0
    assert relaxed_accuracy(Row("12%", ["0.12"])).value == 1.0
    assert relaxed_accuracy(Row("Yes", ["yes"])).value == 1.0
    assert relaxed_accuracy(Row("0", ["0"])).value == 1.0  # a 0 reference is compared as text
    # CER/WER: edits of the closest reference / its length; corpus value = sum of edits / sum of lengths
    assert cer(Row("abd", ["abc"])).stats == [1, 3]
    assert cer(Row("", ["abcd"])).value == 1.0
    assert wer(Row("a b d", ["x", "a b c"])).stats == [1, 3]
    assert aggregate("cer", np.array([[1, 3], [0, 7]], dtype=float)) == pytest.approx(0.1)
    assert ned(Row("abcd", ["abxy"])).value == pytest.approx(0.5)
    import jiwer

    assert cer(Row("kitten sat", ["sitting sat"])).value == pytest.approx(
        jiwer.cer("sitting sat", "kitten sat")
    )


def test_bleu_and_rouge_l_against_their_reference_implementations():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog runs in the park", ""]
    refs = [["the cat is on the mat", "a cat sat on a mat"], ["a dog is running in a park"], ["an empty one"]]
    stats = np.array([bleu4(Row(h, r)).stats for h, r in zip(hyps, refs, strict=True)], dtype=float)
    streams = [[r[0] for r in refs], [r[1] if len(r) > 1 else None for r in refs]]
    assert aggregate("bleu4", stats) == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score / 100)
    # ROUGE-L (pycocoevalcap): LCS "cat on mat" = 3 of 4 candidate words, 3 of 6 reference words,
    # F = (1 + 1.2^2) P R / (R + 1.2^2 P)
    p, r = 3 / 4, 3 / 6
    assert rouge_l(Row("a cat on mat", ["the cat is on the mat"])).value == pytest.approx(
        (1 + 1.44) * p * r / (r + 1.44 * p)
    )
    assert rouge_l(Row("", ["a cat"])).value == 0.0
    # pycocoevalcap 1.2 `Rouge().calc_score([candidate], references)`, run once outside the suite
    several = ["a man rides a horse", "a person on a horse near the sea", "a horse and rider on the beach"]
    assert rouge_l(Row("a man riding a horse on a beach", several)).value == pytest.approx(0.6421052631578947)
    assert rouge_l(Row("two dogs play", ["dogs play", "two cats"])).value == pytest.approx(0.8299319727891156)


def test_cider_d_equals_pycocoevalcap():
    # expected: pycocoevalcap 1.2 `CiderScorer(n=4, sigma=6.0)` on these rows (already lowercase words), run
    # once outside the suite (the wheel is 100 MB, with Java); its mean was 1.616565891700956
    rows = [
        Row(
            "a red square on a table",
            ["a red square on a wooden table", "a small red square", "red box on a table"],
        ),
        Row("two dogs play on the beach", ["two dogs running on a beach", "dogs playing in the sand"]),
        Row("", ["a man rides a horse"]),  # empty prediction
        Row(
            "a man riding a horse on a beach",
            ["a man rides a horse", "a person on a horse near the sea", "a horse and rider on the beach"],
        ),
    ]
    values = [s.value for s in cider_d(rows)]
    assert values == pytest.approx([4.07420059705994, 1.5142640983727451, 0.0, 0.8777988713711381], abs=1e-12)
    assert aggregate("cider", np.array([[v] for v in values])) == pytest.approx(1.616565891700956, abs=1e-12)


def test_grounding_iou_boxes_outside_the_image_and_unparsed_replies():
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    # a predicted box past the image's edge is not clipped: IoU of the boxes as given
    assert box_iou([50, 50, 70, 70], [60, 60, 100, 100]) == pytest.approx(100 / (400 + 1600 - 100))
    assert box_iou([200, 200, 300, 300], [0, 0, 10, 10]) == 0.0
    hit = Row(
        "<box>", [], predicted_boxes=[[0, 0, 10, 10], [90, 90, 99, 99]], reference_boxes=[[1, 1, 10, 10]]
    )
    assert iou(hit).value == pytest.approx(81 / 100)  # the reply's first box
    assert iou_at_50(hit).value == 1.0
    miss = Row("I cannot see it", [], predicted_boxes=[], reference_boxes=[[1, 1, 10, 10]])
    assert iou(miss).value == 0.0 and not iou(miss).parsed


def test_multiple_choice_letter_extraction():
    for reply, letter in [
        ("B", "B"), ("(C) a dog", "C"), ("D. cat", "D"), ("The answer is (A).", "A"), ("Answer: E", "E"),
        ("I think option B is right", "B"), ("I do not know", None), ("", None),
    ]:  # fmt: skip
        assert choice_letter(reply) == letter, reply
    assert choice(Row("The answer is B", ["B"])).value == 1.0
    unparsed = choice(Row("no idea", ["B"]))
    assert unparsed.value == 0.0 and not unparsed.parsed


def test_bootstrap_interval_is_seeded_and_brackets_the_value():
    stats = np.array([[1.0]] * 30 + [[0.0]] * 10)
    low, high = bootstrap_interval("exact_match", stats)
    assert low < 0.75 < high and (low, high) == bootstrap_interval("exact_match", stats)
    assert bootstrap_interval("exact_match", np.array([[1.0]] * 5)) == (1.0, 1.0)


# -- the command ------------------------------------------------------------------------------------


def test_eval_predictions_file_scores_rows_and_counts_failed_and_unparsed(tmp_path):
    lines = [
        {"query": "How many?", "response": "two", "references": ["2", "2", "2", "3"]},
        {"query": "Colour?", "response": "red", "references": ["blue", "blue", "navy"]},
        {"query": "Broken", "error": "row 3: image not found"},
        {"query": "Empty", "response": "", "references": ["cat", "cat", "cat"]},
    ]
    given = tmp_path / "preds.jsonl"
    given.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = cli("eval", "--predictions", given, "--output", tmp_path / "out").output
    assert "vqa_accuracy" in out and "several short reference answers" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    scores = metrics["models"]["preds"]
    assert scores["failed"] == 1 and scores["rows"] == 4
    # row 1: leaving out a "2" leaves 2 matches (2/3, three times), leaving out the "3" leaves 3 (1)
    assert scores["scores"]["vqa_accuracy"]["value"] == pytest.approx((3 * 2 / 3 + 1) / 4 / 3)
    scored = [json.loads(x) for x in (tmp_path / "out" / "preds.predictions.jsonl").read_text().splitlines()]
    assert [x.get("scores", {}).get("vqa_accuracy") for x in scored] == [0.75, 0.0, None, 0.0]
    assert given.read_text() == "".join(json.dumps(x) + "\n" for x in lines)  # the given file is untouched
    assert "| vqa_accuracy" in (tmp_path / "out" / "report.md").read_text()
    # the Python API gives what metrics.json holds
    from vlmkit.eval import evaluate

    summary = evaluate(predictions=[given], output=tmp_path / "py", echo=lambda line: None)
    assert summary == json.loads((tmp_path / "py" / "metrics.json").read_text())
    # the same folder again is refused, so nothing written is overwritten
    with pytest.raises(VlmkitError, match="already holds an evaluation"):
        cli("eval", "--predictions", given, "--output", tmp_path / "out")


def test_eval_two_models_side_by_side_on_a_vqa_parquet(tmp_path, red_cat):
    rows = [
        {"question": f"What is shown {i}?", "answers": ["a red cat", "red cat"], "image": {"bytes": png(i)}}
        for i in range(3)
    ]
    data = parquet(rows, tmp_path / "vqa.parquet")
    right = red_cat
    wrong = build_scripted_model("qwen2-vl", tmp_path / "wrong", "a blue dog", small_vocab=True)
    out = cli(
        "eval",
        "--model",
        right,
        "--model",
        wrong,
        "--dataset",
        data,
        "--output",
        tmp_path / "ev",
        "--max-new-tokens",
        8,
    ).output
    table = out[out.index("metric ") :]
    assert "right" in table.splitlines()[0] and "wrong" in table.splitlines()[0]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["metrics"] == ["anls", "exact_match"]  # two accepted variants: DocVQA-style
    assert metrics["models"]["right"]["scores"]["anls"]["value"] == 1.0
    assert metrics["models"]["wrong"]["scores"]["anls"]["value"] == 0.0
    assert metrics["models"]["right"]["failed"] == 0
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "## right" in report and "## wrong" in report and "](images/right_row00001.png)" in report
    assert (tmp_path / "ev" / "images" / "right_row00001.png").is_file()


def test_eval_refcoco_parquet_asks_each_box_alone_and_scores_iou(tmp_path):
    # images 64 x 48; Qwen2-VL writes boxes on a 0-1000 grid: (0,0),(500,500) is [0, 0, 32, 24] in pixels
    rows = [
        {"image": {"bytes": png(0)}, "bbox": [0.0, 0.0, 32.0, 24.0], "refs": ["left cat", "cat on the left"]},
        {"image": {"bytes": png(1)}, "bbox": [32.0, 24.0, 64.0, 48.0], "refs": ["right cat"]},
    ]
    data = parquet(rows, tmp_path / "refcoco.parquet")
    boxes = build_scripted_model(
        "qwen2-vl",
        tmp_path / "boxes",
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>",
        small_vocab=True,
    )
    words = build_scripted_model("qwen2-vl", tmp_path / "words", "I see a cat", small_vocab=True)
    out = cli(
        "eval", "-m", boxes, "-m", words, "-d", data, "-o", tmp_path / "ev", "--max-new-tokens", 24
    ).output
    assert "metrics: iou@0.5, iou (rows have reference boxes (grounding))" in out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]
    # three asked turns (two refs of row 1, one of row 2); the box hits row 1's twice and misses row 2's
    assert metrics["boxes"]["rows"] == 3 and metrics["boxes"]["scores"]["iou@0.5"]["value"] == pytest.approx(
        2 / 3
    )
    assert metrics["boxes"]["scores"]["iou@0.5"]["unparsed"] == 0
    assert (
        metrics["words"]["scores"]["iou"]["value"] == 0.0
        and metrics["words"]["scores"]["iou"]["unparsed"] == 3
    )
    lines = [json.loads(x) for x in (tmp_path / "ev" / "boxes.predictions.jsonl").read_text().splitlines()]
    assert [x["turn"] for x in lines] == [1, 2, 1]
    assert lines[0]["objects"][0]["bbox"] == [0.0, 0.0, 32.0, 24.0]
    assert lines[2]["reference_boxes"] == [[32.0, 24.0, 64.0, 48.0]]
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "green: reference box, red: predicted box" in report and 'question: "Find left cat"' in report
    assert (tmp_path / "ev" / "images" / "boxes_row00001.png").is_file()

    # `vlmkit infer --input` on an ms-swift grounding row, then `eval --predictions`: the answered (last)
    # turn's box is the reference, not the first box of the row's objects
    (tmp_path / "0.png").write_bytes(png(0))
    row = {
        "history": [["Find <ref-object>", "<bbox>"]],
        "query": "Find <ref-object>",
        "response": "<bbox>",
        "images": ["0.png"],
        "objects": {
            "ref": ["right cat", "left cat"],
            "bbox": [[32, 24, 64, 48], [0, 0, 32, 24]],
            "bbox_type": "real",
        },
    }
    (tmp_path / "ground.jsonl").write_text(json.dumps(row) + "\n")
    cli(
        "infer",
        "-m",
        boxes,
        "--input",
        tmp_path / "ground.jsonl",
        "--output",
        tmp_path / "ground.preds.jsonl",
    )
    out = cli("eval", "--predictions", tmp_path / "ground.preds.jsonl", "-o", tmp_path / "ev2").output
    scores = json.loads((tmp_path / "ev2" / "metrics.json").read_text())["models"]["ground.preds"]["scores"]
    assert scores["iou"]["value"] == 1.0, out
    assert "](images/ground.preds_row00001.png)" in (tmp_path / "ev2" / "report.md").read_text()


def test_eval_base_and_checkpoints_of_a_run_on_a_latex_ocr_parquet(tmp_path, monkeypatch):
    # seed 000's task: LaTeX OCR (AI-ModelScope/LaTeX_OCR schema: image, text); base vs its fine-tuned checkpoints
    texts = [f"\\frac{{{i}}}{{x^{{2}}}} + \\alpha_{i}" for i in range(3)]
    rows = [{"image": {"bytes": png(i)}, "text": t} for i, t in enumerate(texts)]
    data = parquet(rows, tmp_path / "latex_ocr.parquet")
    base = build_scripted_model("qwen2-vl", tmp_path / "base", texts[0], small_vocab=True)
    monkeypatch.chdir(tmp_path)
    cli("sft", "-m", base, "--dataset", data, "--max-steps", 2, "--save-steps", 1, "--output-dir", "run",
        "--no-progress", "--report-to", "none", "--max-pixels", 3136)  # fmt: skip
    first, second = sorted(tmp_path.glob("run/*/*/checkpoint-*"))
    out = cli(
        "eval",
        "--model",
        base,
        "--ckpt",
        first,
        "--ckpt",
        second,
        "-d",
        data,
        "-o",
        "ev",
        "--max-new-tokens",
        40,
    ).output
    assert "ocr schema" in out and "metrics: cer, exact_match (OCR schema (image + text))" in out
    header = out[out.index("metric ") :].splitlines()[0].split()
    assert header == [
        "metric",
        "base",
        f"{first.parent.name}/checkpoint-1",
        f"{first.parent.name}/checkpoint-2",
    ]
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]
    # the scripted reply is row 1's text: rows 2 and 3 differ from it in 2 characters each (the two digits)
    expected_cer = (0 + 2 + 2) / sum(len(t) for t in texts)
    for label in header[1:]:
        assert metrics[label]["scores"]["cer"]["value"] == pytest.approx(expected_cer)
        assert metrics[label]["scores"]["exact_match"]["value"] == pytest.approx(1 / 3)
    assert {p.name for p in (tmp_path / "ev").glob("*.jsonl")} == {
        "base.predictions.jsonl",
        f"{first.parent.name}_checkpoint-1.predictions.jsonl",
        f"{first.parent.name}_checkpoint-2.predictions.jsonl",
    }


def test_eval_coco_caption_parquet_picks_caption_metrics(tmp_path):
    # modelscope/coco_2014_caption schema: image_id, caption, image
    captions = ["a red square on a wooden table", "a blue circle on the grass", "a red square near a cup"]
    rows = [{"image_id": 100 + i, "caption": c, "image": {"bytes": png(i)}} for i, c in enumerate(captions)]
    data = parquet(rows, tmp_path / "coco.parquet")
    model = build_scripted_model(
        "qwen2-vl", tmp_path / "m", "a red square on a wooden table", small_vocab=True
    )
    out = cli("eval", "-m", model, "-d", data, "-o", tmp_path / "ev", "--max-new-tokens", 20).output
    assert "metrics: cider, bleu4, rouge_l (long references (captions))" in out
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]["m"]["scores"]
    lines = [json.loads(x) for x in (tmp_path / "ev" / "m.predictions.jsonl").read_text().splitlines()]
    assert lines[0]["scores"]["rouge_l"] == 1.0 and lines[0]["scores"]["bleu4"] == pytest.approx(1.0)
    reference = cider_d([Row("a red square on a wooden table", [c]) for c in captions])
    assert scores["cider"]["value"] == pytest.approx(np.mean([s.value for s in reference]))
    report = (tmp_path / "ev" / "report.md").read_text()
    assert report.index("### Best rows") < report.index("row 1**") < report.index("### Worst rows")


def test_eval_multiple_choice_predictions_and_option_mistakes(tmp_path):
    lines = [
        {"response": "The answer is (B).", "labels": "B"},
        {"response": "C. a dog", "labels": "C"},
        {"response": "I am not sure.", "labels": "A"},  # no letter: a miss, counted unparsed
        {"response": "D", "labels": "A"},
    ]
    given = tmp_path / "mc.jsonl"
    given.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = cli("eval", "--predictions", given, "-o", tmp_path / "ev").output
    assert "metrics: choice (references are option letters (multiple choice))" in out
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]["mc"]["scores"]["choice"]
    assert scores["value"] == 0.5 and scores["unparsed"] == 1
    assert "unparsed  1" in out
    for args, message in [
        (["--predictions", given, "--metric", "bleu,cer", "-o", tmp_path / "x"], "unknown metric bleu"),
        (["--model", tmp_path, "-o", tmp_path / "y"], "need --dataset"),
        (["-o", tmp_path / "z"], "give --model, --ckpt or --predictions"),
        (["--predictions", tmp_path / "missing.jsonl", "-o", tmp_path / "w"], "missing.jsonl not found"),
    ]:
        with pytest.raises(VlmkitError, match=message):
            cli("eval", *args)
    # rows without references: counted as failed, the table says "-" and metrics.json holds null, not NaN; no
    # row scored is an error, after the report is written
    unscored = tmp_path / "unscored.jsonl"
    unscored.write_text('{"response": "a"}\n')
    result = CliRunner().invoke(app, ["eval", "--predictions", str(unscored), "-o", str(tmp_path / "u")])
    assert "exact_match  -" in result.output
    assert str(result.exception).startswith("unscored: all 1 rows failed, none is scored; first: line 1: no reference")
    text = (tmp_path / "u" / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["models"]["unscored"]["failed"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"response": "a", "labels": "a"}\n{not json\n')
    with pytest.raises(VlmkitError, match=r"bad.jsonl:2: invalid JSON \(.*; expected one prediction \(a JSON object"):
        cli("eval", "--predictions", bad, "-o", tmp_path / "v")


def test_sft_eval_metric_scores_generated_answers_at_each_eval(tmp_path, monkeypatch, red_cat):
    rows = [
        {"question": f"What is it {i}?", "answers": ["red cat", "a red cat"], "image": {"bytes": png(i)}}
        for i in range(4)
    ]
    data = parquet(rows, tmp_path / "vqa.parquet")
    model = red_cat
    monkeypatch.chdir(tmp_path)
    tracker = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"  # the `train` extra
    out = cli("sft", "-m", model, "--dataset", data, "--val-dataset", data, "--max-steps", 2, "--eval-steps", 1,
              "--eval-metric", "exact_match,anls", "--eval-metric-rows", 3, "--eval-generate", 0, "--output-dir", "run",
              "--no-progress", "--report-to", tracker, "--max-pixels", 3136).output  # fmt: skip
    log = [json.loads(x) for x in next(tmp_path.glob("run/*/*/train_log.jsonl")).read_text().splitlines()]
    scored = [x for x in log if "eval_exact_match" in x]
    assert [x["step"] for x in scored] == [1, 2]
    assert all(
        x["eval_exact_match"] == 1.0 and x["eval_anls"] == 1.0 and x["eval_generated_rows"] == 3
        for x in scored
    )
    assert "eval_exact_match=1" in out
    assert next(tmp_path.glob("run/*/*/metrics.png")).stat().st_size > 0
    with pytest.raises(VlmkitError, match="--eval-metric: unknown metric bleu"):
        cli("sft", "-m", model, "--dataset", data, "--val-dataset", data, "--eval-metric", "bleu")
    if tracker == "none":
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next(tmp_path.glob("run/*/*/runs/*")))).Reload()
    assert [e.value for e in events.Scalars("eval/exact_match")] == [1.0, 1.0]  # the tracker got them too
    # and a prediction table: the rows as Markdown text, each with its image
    table = events.Tensors("eval/predictions/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| 1 | What is it 0? | red cat | red cat / a red cat |" in table
    assert (
        "eval/prediction_1" in events.Tags()["images"] and "eval/prediction_4" not in events.Tags()["images"]
    )


def test_sft_save_best_keeps_the_best_scored_checkpoint_besides_the_last(tmp_path, monkeypatch, red_cat):
    rows = [{"question": "What is it?", "answers": ["red cat"], "image": {"bytes": png(i)}} for i in range(2)]
    data = parquet(rows, tmp_path / "vqa.parquet")
    model = red_cat
    monkeypatch.chdir(tmp_path)
    common = ["-m", model, "--dataset", data, "--val-dataset", data, "--max-steps", 3, "--eval-steps", 1,
              "--save-steps", 1, "--eval-metric", "anls", "--eval-metric-rows", 2, "--eval-generate", 0,
              "--no-progress", "--report-to", "none", "--max-pixels", 3136]  # fmt: skip
    out = cli("sft", *common, "--save-best", "--output-dir", "best").output
    run = next(tmp_path.glob("best/*/*"))
    # every eval scores 1.0: the first stays the best (a later one must beat it) and is kept besides the
    # newest --save-total-limit (2) checkpoints, as the best by eval loss is (here the last: it falls)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    best = json.loads((run / "best_checkpoint.json").read_text())
    assert best == {"checkpoint": "checkpoint-1", "step": 1, "metric": "anls", "value": 1.0}
    assert f"best checkpoint: {run.relative_to(tmp_path) / 'checkpoint-1'} (anls 1)" in out
    cli("sft", *common, "--output-dir", "plain")
    plain = next(tmp_path.glob("plain/*/*"))
    assert sorted(p.name for p in plain.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    for extra, message in [
        (["--save-steps", 3, "--eval-steps", 2], "must be a multiple of --eval-steps"),
        (["--save-total-limit", 1], "--save-total-limit 2 or more"),
    ]:
        with pytest.raises(VlmkitError, match=message):
            cli("sft", *common, "--save-best", *extra)


@pytest.mark.slow
@pytest.mark.parametrize("tracker", ["wandb", "mlflow", "swanlab"])
def test_sft_eval_metric_prediction_table_reaches_each_tracker_offline(tmp_path, monkeypatch, red_cat, tracker):
    pytest.importorskip(tracker)
    rows = [
        {"question": f"What is it {i}?", "answers": ["red cat"], "image": {"bytes": png(i)}} for i in range(2)
    ]
    data = parquet(rows, tmp_path / "vqa.parquet")
    model = red_cat
    monkeypatch.chdir(tmp_path)
    # each tracker's own offline setting (their environment variables, not vlmkit's)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    monkeypatch.setenv("SWANLAB_LOG_DIR", str(tmp_path / "swanlog"))
    cli("sft", "-m", model, "--dataset", data, "--val-dataset", data, "--max-steps", 1, "--eval-steps", 1,
        "--eval-metric", "exact_match", "--eval-generate", 0, "--output-dir", "run", "--no-progress",
        "--report-to", tracker, "--max-pixels", 3136)  # fmt: skip
    if tracker == "swanlab":  # captioned images in the run's log (a LevelDB log of protobuf records)
        from swanlab.proto.swanlab.record.v1.record_pb2 import Record
        from test_trackers import leveldb_log_records

        (log_file,) = tmp_path.glob("swanlog/run-*/run-*.swanlab")
        records = [Record.FromString(data) for data in leveldb_log_records(log_file, header=7)]
        (media,) = [r.media for r in records if r.HasField("media") and r.media.key == "eval/predictions"]
        assert media.step == 1
        assert [item.caption for item in media.value.items] == [
            f"Q: What is it {i}?\nprediction: red cat\nreferences: red cat" for i in range(2)
        ]
        assert all(
            (log_file.parent / "media" / "image" / item.filename).is_file() for item in media.value.items
        )
    elif tracker == "wandb":
        tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/eval/predictions_*.table.json"))
        table = json.loads(tables[0].read_text())
        assert table["columns"] == ["image", "question", "prediction", "references"]
        assert table["data"][0][1:] == ["What is it 0?", "red cat", "red cat"]
    else:
        (artifact,) = tmp_path.glob("mlruns/*/*/artifacts/eval_predictions/step_1.json")
        table = json.loads(artifact.read_text())
        assert table["columns"] == ["row", "question", "prediction", "references"]
        assert table["data"][0] == [1, "What is it 0?", "red cat", "red cat"]
        assert list(tmp_path.glob("mlruns/*/*/artifacts/eval_predictions/step_1_row1.png"))


def test_grounding_rows_with_0_1_boxes_are_failed_rows_not_wrong_scores():
    from vlmkit.errors import DataError
    from vlmkit.eval.rows import asked_turns
    from vlmkit.sample import to_sample

    row = {
        "messages": [
            {"role": "user", "content": "<image>Find <ref-object>"},
            {"role": "assistant", "content": "<bbox>"},
        ],
        "images": [random_image(48, 64)],
        "objects": {"ref": ["cat"], "bbox": [[0.1, 0.1, 0.5, 0.5]], "bbox_type": "norm1"},
    }
    sample = to_sample(row)
    ((_, result),) = asked_turns(row, sample)
    assert isinstance(result, DataError) and "bbox_type real" in str(result)


# -- benchmark presets: small local sets in each benchmark's hub schema, read through --benchmark-path ------


def docvqa_row(i: int, answers: list[str]) -> dict:  # lmms-lab/DocVQA, subset DocVQA
    return {"questionId": str(50000 + i), "question": f"What is the total {i}?", "question_types": ["table/list"],
            "image": {"bytes": png(i)}, "docId": 14000 + i, "ucsf_document_id": f"jzhd{i:04d}",
            "ucsf_document_page_no": "1", "answers": answers, "data_split": "val"}  # fmt: skip


def textvqa_row(i: int, answers: list[str]) -> dict:  # lmms-lab/textvqa
    return {"image_id": f"{i:016x}", "question_id": 34602 + i, "question": f"what number is on it {i}?",
            "question_tokens": ["what", "number"], "image": {"bytes": png(i)}, "image_width": 64,
            "image_height": 48, "flickr_original_url": "", "flickr_300k_url": "", "answers": answers,
            "image_classes": ["Sign"], "set_name": "val", "ocr_tokens": ["12"]}  # fmt: skip


def test_benchmark_presets_on_local_copies_in_their_hub_schemas(tmp_path):
    twelve = build_scripted_model("qwen2-vl", tmp_path / "twelve", "12", small_vocab=True)

    def run(name, path, *extra):
        out = cli("eval", "-m", twelve, "--benchmark", name, "--benchmark-path", path, "-o", tmp_path / name,
                  "--max-new-tokens", 4, *extra).output  # fmt: skip
        return out, json.loads((tmp_path / name / "metrics.json").read_text())

    # DocVQA: a local copy of the hub repo (`hf download lmms-lab/DocVQA`): two subsets, two splits each;
    # the preset reads subset DocVQA, split validation
    repo = tmp_path / "DocVQA"
    for subset in ("DocVQA", "InfographicVQA"):
        (repo / subset).mkdir(parents=True)
        parquet([docvqa_row(9, ["x"])], repo / subset / "test-00000-of-00001.parquet")
    parquet([docvqa_row(9, ["x"])] * 3, repo / "InfographicVQA" / "validation-00000-of-00001.parquet")
    parquet([docvqa_row(0, ["12", "twelve"]), docvqa_row(1, ["13"]), docvqa_row(2, ["12"])],
            repo / "DocVQA" / "validation-00000-of-00001.parquet")  # fmt: skip
    configs = "".join(
        f"- config_name: {s}\n  data_files:\n  - split: validation\n    path: {s}/validation-*\n"
        f"  - split: test\n    path: {s}/test-*\n"
        for s in ("DocVQA", "InfographicVQA")
    )
    (repo / "README.md").write_text(f"---\nconfigs:\n{configs}---\n")
    out, metrics = run("docvqa", repo, "--limit", 2)
    assert f"docvqa: 2 rows sampled (seed 42) of the 3 of {repo}\n" in out
    assert "metrics: anls (the docvqa benchmark's metric)" in out
    scores = metrics["models"]["twelve"]
    # two sampled rows (seed 42) of three: ANLS is 1 for "12" and 0 for "13" (edit distance 1/2, not < 0.5)
    lines = [
        json.loads(x) for x in (tmp_path / "docvqa" / "twelve.predictions.jsonl").read_text().splitlines()
    ]
    assert scores["rows"] == 2 and metrics["benchmark"] == "docvqa"
    assert scores["scores"]["anls"]["value"] == pytest.approx(np.mean([x["scores"]["anls"] for x in lines]))
    assert {x["references"][0] for x in lines} <= {"12", "13"} and len(lines) == 2
    assert all(x["scores"]["anls"] == float(x["references"][0] == "12") for x in lines)
    assert lines[0]["query"].endswith("?\nAnswer the question using a single word or phrase.")

    # ChartQA (one string answer): 12 is within 5% of 12.5, not of 20
    chart = [{"type": "human_test", "question": f"Value {i}?", "answer": a, "image": {"bytes": png(i)}}
             for i, a in enumerate(["12.5", "20"])]  # fmt: skip
    _, metrics = run("chartqa", parquet(chart, tmp_path / "chartqa.parquet"))
    assert metrics["models"]["twelve"]["scores"]["relaxed_accuracy"]["value"] == 0.5
    # --limit with --dataset samples as DATASET#N does
    cli("eval", "-m", twelve, "--dataset", tmp_path / "chartqa.parquet", "--limit", 1, "-o", tmp_path / "lim",
        "--max-new-tokens", 4)  # fmt: skip
    assert json.loads((tmp_path / "lim" / "metrics.json").read_text())["models"]["twelve"]["rows"] == 1

    # TextVQA: ten annotators, 3 said "12" -> VQA accuracy (3 * 2/3 + 7) / 10
    _, metrics = run(
        "textvqa", parquet([textvqa_row(0, ["12"] * 3 + ["11"] * 7)], tmp_path / "textvqa.parquet")
    )
    assert metrics["models"]["twelve"]["scores"]["vqa_accuracy"]["value"] == pytest.approx(0.9)


def test_benchmark_refcoco_converts_coco_boxes_and_mmmu_asks_lettered_options(tmp_path):
    # RefCOCO (lmms-lab/RefCOCO): bbox is COCO [x, y, width, height]; images 64 x 48
    refcoco = [
        {"question_id": str(i), "image": {"bytes": png(i)}, "question": "Please carefully observe the area...",
         "answer": refs, "segmentation": [0.0] * 8, "bbox": bbox, "iscrowd": 0, "file_name": f"COCO_{i}.jpg"}
        for i, (refs, bbox) in enumerate([(["left cat", "cat on the left"], [0.0, 0.0, 32.0, 24.0]),
                                          (["right cat"], [32.0, 24.0, 32.0, 24.0])])
    ]  # fmt: skip
    boxes = build_scripted_model(
        "qwen2-vl",
        tmp_path / "boxes",
        "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>",
        small_vocab=True,
    )
    cli("eval", "-m", boxes, "--benchmark", "refcoco", "--benchmark-path", parquet(refcoco, tmp_path / "r.parquet"),
        "-o", tmp_path / "ref", "--max-new-tokens", 24)  # fmt: skip
    scores = json.loads((tmp_path / "ref" / "metrics.json").read_text())["models"]["boxes"]
    assert scores["rows"] == 3 and scores["scores"]["iou@0.5"]["value"] == pytest.approx(2 / 3)
    lines = [json.loads(x) for x in (tmp_path / "ref" / "boxes.predictions.jsonl").read_text().splitlines()]
    assert lines[2]["reference_boxes"] == [[32.0, 24.0, 64.0, 48.0]]  # corners, not x, y, w, h

    # MMMU (lmms-lab/MMMU): options a Python list literal, images image_1..image_7, open questions left out
    def mmmu(i, answer, kind="multiple-choice"):
        row = {"id": f"validation_Art_{i}", "question": f"Which is larger in <image 2>? ({i})",
               "options": "['10', '12', '14']", "explanation": "", "img_type": "['Charts']", "answer": answer,
               "topic_difficulty": "Easy", "question_type": kind, "subfield": "Art"}  # fmt: skip
        row.update({f"image_{k}": {"bytes": png(k)} if k <= 2 else None for k in range(1, 8)})
        return row

    table = datasets.Dataset.from_list([mmmu(0, "B"), mmmu(1, "C"), mmmu(2, "12", "open")])
    for k in range(1, 8):
        table = table.cast_column(f"image_{k}", datasets.Image())
    table.to_parquet(tmp_path / "mmmu.parquet")
    letter = build_scripted_model("qwen2-vl", tmp_path / "letter", "B", small_vocab=True)
    out = cli("eval", "-m", letter, "--benchmark", "mmmu", "--benchmark-path", tmp_path / "mmmu.parquet",
              "-o", tmp_path / "mmmu", "--max-new-tokens", 4).output  # fmt: skip
    assert "(1 left out: open questions are left out)" in out
    scores = json.loads((tmp_path / "mmmu" / "metrics.json").read_text())["models"]["letter"]
    assert scores["rows"] == 2 and scores["scores"]["choice"]["value"] == 0.5
    line = json.loads((tmp_path / "mmmu" / "letter.predictions.jsonl").read_text().splitlines()[0])
    assert line["query"] == (
        "Which is larger in <image 2>? (0)\nA. 10\nB. 12\nC. 14\n\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert len(line["image"]) == 1  # only the image the question names


def test_benchmark_list_and_option_mistakes(tmp_path):
    out = cli("eval", "--list-benchmarks").output
    for name in ("docvqa", "chartqa", "textvqa", "refcoco", "mmmu"):
        assert f"\n{name} " in out
    assert "hf::lmms-lab/DocVQA:DocVQA@validation" in out
    for extra, message in [
        (["--benchmark", "vqav9"], "unknown; benchmarks: docvqa"),
        (["--benchmark", "docvqa", "--dataset", "x.parquet"], "give one"),
        (["--benchmark", "docvqa", "--prompt", "Hi"], "sets its own columns and prompt"),
        (["--benchmark-path", "x.parquet"], "name the benchmark too"),
        (["--dataset", "x.parquet#5", "--limit", 2], "give the row count once"),
        (["--benchmark", "docvqa", "--limit", 0], "--limit 0: give a positive number"),
    ]:
        with pytest.raises(VlmkitError, match=message):
            cli("eval", "-m", "nothing", "-o", tmp_path / "ev", *extra)
    # the hub cannot be reached here: one line naming the local-copy option
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", "eval", "-m", "nothing", "--benchmark", "textvqa", "-o", tmp_path / "ev"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(
        "error: hf::lmms-lab/textvqa@validation: cannot load from the Hugging Face Hub"
    )
    assert (
        "hf download lmms-lab/textvqa --repo-type dataset --local-dir DIR) and pass --benchmark-path DIR"
        in (result.stderr)
    )


def test_eval_extra_is_needed_only_by_the_metrics_that_use_it(tmp_path, monkeypatch):
    # `vlmkit demo` scores with exact_match through eval on an install without the eval extra
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "rapidfuzz" else real(name, *a)
    )
    (tmp_path / "p.jsonl").write_text(json.dumps({"response": "red", "labels": "red"}) + "\n")
    out = cli(
        "eval", "--predictions", tmp_path / "p.jsonl", "--metric", "exact_match", "-o", tmp_path / "a"
    ).output
    assert "exact_match  1.000" in out
    with pytest.raises(VlmkitError, match=r"vlmkit eval needs rapidfuzz: pip install 'vlmkit\[eval\]'"):
        cli("eval", "--predictions", tmp_path / "p.jsonl", "--metric", "anls", "-o", tmp_path / "b")
    with pytest.raises(VlmkitError, match="needs rapidfuzz"):  # auto may pick any metric
        cli("eval", "--predictions", tmp_path / "p.jsonl", "-o", tmp_path / "c")


# -- what each row's answer is: the answers list of VQA datasets, boxes or text in grounding files ------


def eval_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """`vlmkit eval ARGS` as the user runs it (a subprocess); fails the test on a non-zero exit."""
    result = subprocess.run([sys.executable, "-m", "vlmkit", "eval", *map(str, args)], capture_output=True,
                            text=True, timeout=300, cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_eval_predictions_in_vqav2_textvqa_docvqa_schemas_score_against_every_answer(tmp_path):
    # each line: the dataset's row as its HF version lays it out, plus the model's `response`
    vqav2 = [  # HuggingFaceM4/VQAv2: ten {"answer", "answer_confidence", "answer_id"}, multiple_choice_answer
        {"question_type": "how many", "multiple_choice_answer": "2", "image_id": 262148, "answer_type": "number",
         "question_id": 262148000 + i, "question": "How many dogs?", "response": reply,
         "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]}
        for i, (reply, answers) in enumerate([("two", ["2"] * 2 + ["3"] * 8), ("3", ["2"] * 2 + ["3"] * 8),
                                              ("none", ["0"] * 10)])
    ]  # fmt: skip
    textvqa = [textvqa_row(0, ["nokia"] * 7 + ["nokia 3310"] * 3), textvqa_row(1, ["stop"] * 10)]
    docvqa = [docvqa_row(0, ["$1,000", "1,000", "1000"]), docvqa_row(1, ["Jan. 5, 1998", "January 5, 1998"])]
    for row, reply in zip(textvqa + docvqa, ["Nokia 3310", "STOP!", "1000.", "January 5 1998"], strict=True):
        row.update(response=reply, image=f"{row['question']}.png")
    # expected: the official VQA formula over the ten answers (min(#humans that said it / 3, 1) averaged over
    # the ten leave-one-out subsets), worked out by hand; ANLS: 1 - Levenshtein / longer length, 0 from 0.5
    expected = {
        # leaving out one of the two "2"s leaves 1 match (1/3), leaving out a "3" leaves 2 (2/3)
        "vqav2": ("vqa_accuracy", [(2 / 3 + 8 * 2 / 3) / 10, (2 * 1 + 8 * 1) / 10, 1.0]),
        "textvqa": ("vqa_accuracy", [(3 * 2 / 3 + 7 * 1) / 10, 1.0]),  # "stop!" -> "stop" (punctuation)
        "docvqa": ("anls", [1 - 1 / 5, 1 - 1 / 15]),  # "1000." vs "1000"; "january 5 1998" vs "january 5, 1998"
    }
    # captions in an `answers` list: CIDEr's idf and each row's score come from all of them
    captions = [("a red square on a table", ["a red square on a wooden table", "a small red square"]),
                ("two dogs on the beach", ["two dogs running on a beach", "dogs playing in the sand"])]  # fmt: skip
    expected["captions"] = ("cider", [s.value for s in cider_d([Row(r, a) for r, a in captions])])
    given = [write_jsonl(tmp_path / f"{name}.jsonl", rows) for name, rows in
             (("vqav2", vqav2), ("textvqa", textvqa), ("docvqa", docvqa),
              ("captions", [{"response": r, "answers": a} for r, a in captions]))]  # fmt: skip
    eval_cli(*[a for path in given for a in ("--predictions", path)], "--metric", "vqa_accuracy,anls,cider",
             "-o", tmp_path / "ev")  # fmt: skip
    models = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]
    for name, (metric, values) in expected.items():
        assert models[name]["failed"] == 0, models[name]["first_failures"]
        assert models[name]["scores"][metric]["value"] == pytest.approx(np.mean(values)), name
        lines = [json.loads(x) for x in (tmp_path / "ev" / f"{name}.predictions.jsonl").read_text().splitlines()]
        assert [x["scores"][metric] for x in lines] == pytest.approx(values), name


def test_eval_dataset_rows_with_an_answers_list_beside_their_reply_use_every_answer(tmp_path):
    # DocVQA rows written for training as ms-swift rows (query / response: the first answer), keeping the
    # dataset's `answers` list: eval scores against every accepted answer, not only the trained reply
    rows = [
        {"query": "<image>What is the date?", "response": "Jan. 5, 1998", "images": ["0.png"],
         "answers": ["Jan. 5, 1998", "January 5, 1998", "5 January 1998"]},
        {"query": "<image>总金额是多少?", "response": "$1,000", "images": ["1.png"], "answers": ["$1,000", "1,000"]},
    ]  # fmt: skip
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    write_jsonl(tmp_path / "docvqa.jsonl", rows)
    model = build_scripted_model("qwen2-vl", tmp_path / "m", "January 5, 1998", small_vocab=True)
    eval_cli("-m", model, "-d", "docvqa.jsonl", "--metric", "anls,exact_match", "-o", "ev", "--max-new-tokens", 16,
             cwd=tmp_path)  # fmt: skip
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]["m"]["scores"]
    # row 1: "January 5, 1998" is one of the answers; row 2: ANLS 0 against "$1,000" and "1,000"
    assert scores["exact_match"]["value"] == 0.5 and scores["anls"]["value"] == 0.5
    # a reply field that is not among the answers is a contradiction: a failed row naming both fields
    write_jsonl(tmp_path / "odd.jsonl", [{"response": "x", "labels": "blue", "answers": ["red", "red"]},
                                         {"response": "x", "labels": "x", "answers": [{"id": 3}]}])  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "vlmkit", "eval", "--predictions", str(tmp_path / "odd.jsonl"),
                             "--metric", "exact_match", "-o", str(tmp_path / "odd")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    # every row failed: metrics.json still names each failure, and the run exits 2 (issue 25 #2)
    assert result.returncode == 2 and result.stderr.splitlines()[-1].startswith("error: odd: all 2 rows failed")
    failures = json.loads((tmp_path / "odd" / "metrics.json").read_text())["models"]["odd"]["first_failures"]
    assert failures[0] == "line 1: labels 'blue' is not one of its answers ['red', 'red']; which is the reference? keep one of the two fields"
    assert failures[1].startswith("line 2: answers [{'id': 3}] holds no answer text")
    assert "warning: odd: 2 of 2 rows failed" in result.stderr


def msswift_grounding_rows(n: int, refs: list[str]) -> tuple[list[dict], list[dict]]:
    """ms-swift's grounding rows ("Find <ref-object>" -> "<bbox>") and reverse-grounding rows ("<bbox>" in
    the question, the answer "<ref-object>": a caption), each on image i.png (64 x 48) with its box
    [0, 0, 32, 24] (the top-left quarter)."""
    def row(i, question, answer):
        return {"messages": [{"role": "user", "content": f"<image>{question}"},
                             {"role": "assistant", "content": answer}],
                "images": [f"{i}.png"], "objects": {"ref": [refs[i]], "bbox": [[0, 0, 32, 24]]}}  # fmt: skip

    grounding = [row(i, "Find <ref-object>", "<bbox>") for i in range(n)]
    reverse = [row(i, "这个框里是什么？<bbox>", "<ref-object>") for i in range(n)]
    return grounding, reverse


@pytest.mark.slow
def test_eval_scores_grounding_rows_by_iou_and_reverse_grounding_rows_by_their_caption(tmp_path):
    refs = ["一只羊", "一只羊", "一只羊", "一只羊"]
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    grounding, reverse = msswift_grounding_rows(4, refs)
    write_jsonl(tmp_path / "grounding.jsonl", grounding)
    write_jsonl(tmp_path / "reverse.jsonl", reverse)
    write_jsonl(tmp_path / "mixed.jsonl", [r for pair in zip(grounding, reverse, strict=True) for r in pair])
    # a model that boxes the quarter and one that names it: each right on its own kind of row
    boxes = build_scripted_model("qwen2-vl", tmp_path / "boxes", small_vocab=True,
                                 reply="<|object_ref_start|>一只羊<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>")
    words = build_scripted_model("qwen2-vl", tmp_path / "words", "一只羊", small_vocab=True)  # fmt: skip

    # a perfect predictions file: `vlmkit infer` of each model on the rows it answers right
    cli("infer", "-m", boxes, "--input", tmp_path / "grounding.jsonl", "--output", tmp_path / "g.jsonl")
    cli("infer", "-m", words, "--input", tmp_path / "reverse.jsonl", "--output", tmp_path / "r.jsonl")
    answered = [(tmp_path / name).read_text(encoding="utf-8").splitlines() for name in ("g.jsonl", "r.jsonl")]
    (tmp_path / "perfect.jsonl").write_text("".join(g + "\n" + r + "\n" for g, r in zip(*answered, strict=True)))
    result = eval_cli("--predictions", "perfect.jsonl", "-o", "ev", cwd=tmp_path)
    assert ("metrics: iou@0.5, iou, exact_match, anls (iou for the 4 rows answered with boxes (grounding), "
            "exact_match, anls for the 4 answered with text: one short reference answer per row)") in result.stdout
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]["perfect"]["scores"]
    for name in ("iou@0.5", "iou", "exact_match", "anls"):
        assert (scores[name]["value"], scores[name]["scored"], scores[name]["unparsed"]) == (1.0, 4, 0), name
    assert "warning" not in result.stderr  # correct input is silent
    lines = [json.loads(x) for x in (tmp_path / "ev" / "perfect.predictions.jsonl").read_text().splitlines()]
    assert lines[1]["scores"] == {"exact_match": 1.0, "anls": 1.0}  # a caption, not a box
    assert lines[0]["scores"] == {"iou@0.5": 1.0, "iou": 1.0}
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "### Best rows by iou@0.5" in report and "### Best rows by exact_match" in report
    assert '- references: ["一只羊"]' in report

    # the same rows answered by both models through `vlmkit eval --model --dataset`
    result = eval_cli("-m", boxes, "-m", words, "-d", "mixed.jsonl", "-o", "both", "--max-new-tokens", 64,
                      cwd=tmp_path)  # fmt: skip
    models = json.loads((tmp_path / "both" / "metrics.json").read_text())["models"]
    assert models["boxes"]["scores"]["iou"]["value"] == 1.0 and models["boxes"]["scores"]["exact_match"]["value"] == 0.0
    assert models["words"]["scores"]["exact_match"]["value"] == 1.0
    assert models["words"]["scores"]["iou"]["value"] == 0.0 and models["words"]["scores"]["iou"]["unparsed"] == 4
    assert "warning: words: iou: no reply of the 4 rows holds a box vlmkit can read" in result.stderr
    line = json.loads((tmp_path / "both" / "words.predictions.jsonl").read_text().splitlines()[1])
    assert line["references"] == ["一只羊"] and line["reference_boxes"] == []


def test_eval_predictions_read_boxes_written_as_text_in_every_syntax_vlmkit_trains_on(tmp_path):
    # predictions made elsewhere (no `objects` parsed by `vlmkit infer`): the answer and the reply write their
    # boxes as text on the 0-1000 grid of the line's image (64 x 48): (0,0),(500,500) is [0, 0, 32, 24]
    (tmp_path / "a.png").write_bytes(png(0))
    qwen2_vl = "<|object_ref_start|>羊<|object_ref_end|><|box_start|>({}),({})<|box_end|>"
    qwen_vl = "<ref>羊</ref><box>({}),({})</box>"
    lines = [
        {"labels": qwen2_vl.format("0,0", "500,500"), "response": qwen2_vl.format("0,0", "500,250")},  # half
        {"labels": qwen_vl.format("0,0", "500,500"), "response": qwen_vl.format("0,0", "250,500")},  # half
        {"labels": "<ref>羊</ref><box>[[0, 0, 500, 500]]</box>", "response": "<box>[[0, 0, 500, 500]]</box>"},  # InternVL
        {"labels": "<bbox>", "objects": None, "labels_objects": {"ref": ["羊"], "bbox": [[0, 0, 32, 24]]},
         "messages": [{"role": "user", "content": "<image>Find <ref-object>"}], "response": qwen_vl.format("0,0", "500,500")},
        {"labels": qwen_vl.format("0,0", "500,500"), "response": "I cannot see it"},  # a miss, unparsed
        {"labels": qwen_vl.format("0,0", "500,500"), "response": '{"bbox_2d": [0, 0, 32, 24], "label": "羊"}'},
    ]  # fmt: skip
    for line in lines:
        line["images"] = ["a.png"]
        line.pop("objects", None)
    write_jsonl(tmp_path / "boxes.jsonl", lines)
    result = eval_cli("--predictions", tmp_path / "boxes.jsonl", "--metric", "iou", "-o", tmp_path / "ev")
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"]["boxes"]
    assert [json.loads(x).get("scores", {}).get("iou") for x in (tmp_path / "ev" / "boxes.predictions.jsonl")
            .read_text().splitlines()] == [0.5, 0.5, 1.0, 1.0, 0.0, None]  # fmt: skip
    assert scores["scores"]["iou"]["value"] == pytest.approx(3 / 5) and scores["scores"]["iou"]["unparsed"] == 1
    # JSON boxes' grid depends on the model (Qwen2.5-VL: resized pixels, Qwen3-VL: 0-1000): not guessed
    assert scores["failed"] == 1 and "the response writes JSON bbox_2d boxes" in scores["first_failures"][0]

    # never a 0 where nothing was read: a box metric on text answers scores no row and says so
    write_jsonl(tmp_path / "text.jsonl", [{"response": "a cat", "labels": "a cat", "images": ["a.png"]}])
    result = eval_cli("--predictions", tmp_path / "text.jsonl", "--metric", "iou,exact_match", "-o", tmp_path / "t")
    assert "iou          -" in result.stdout and "exact_match  1.000" in result.stdout
    assert "warning: text: iou scored none of the 1 rows: no row is answered with boxes" in result.stderr


@pytest.mark.slow
def test_sft_eval_metric_scores_reverse_grounding_answers_by_their_caption(tmp_path, monkeypatch):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(png(i))
    grounding, reverse = msswift_grounding_rows(2, ["一只羊", "一只羊"])
    write_jsonl(tmp_path / "val.jsonl", [*grounding, *reverse])
    model = build_scripted_model("qwen2-vl", tmp_path / "m", "一只羊", small_vocab=True)
    monkeypatch.chdir(tmp_path)
    cli("sft", "-m", model, "--dataset", "val.jsonl", "--val-dataset", "val.jsonl", "--max-steps", 1,
        "--eval-steps", 1, "--eval-metric", "exact_match,iou", "--eval-generate", 0, "--output-dir", "run",
        "--no-progress", "--report-to", "none", "--max-pixels", 3136)  # fmt: skip
    log = [json.loads(x) for x in next(tmp_path.glob("run/*/*/train_log.jsonl")).read_text().splitlines()]
    (scored,) = [x for x in log if "eval_exact_match" in x]
    # the two reverse-grounding answers are the ref, not "<ref-object>"; the two boxes are missed (no box)
    assert scored["eval_exact_match"] == 1.0 and scored["eval_iou"] == 0.0 and scored["eval_generated_rows"] == 4
