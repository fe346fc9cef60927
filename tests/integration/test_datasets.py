"""Datasets as users bring them: Parquet, Arrow, save_to_disk and CSV in the schemas of the hub datasets
the seeds use (LaTeX_OCR, coco_2014_caption, RefCOCO-style grounding, DocVQA-style VQA, seed 003's CSV),
through `data check`, `data preview`, `sft`, `infer --input`, each row encoded exactly as the same row
written as ms-swift JSONL."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import greedy_replies, random_image
from transformers import AutoTokenizer
from typer.testing import CliRunner

datasets = pytest.importorskip("datasets")

import vlmkit  # noqa: E402
from vlmkit.cli import app  # noqa: E402
from vlmkit.data import load_dataset  # noqa: E402
from vlmkit.data.cache import sample_key  # noqa: E402
from vlmkit.errors import DataError  # noqa: E402
from vlmkit.families import family_for_model_dir  # noqa: E402

FEATURE = {"image": datasets.Image()}


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """datasets' Arrow cache in the test's folder (load_dataset reads the setting at call time)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def png(seed: int, size=(40, 56)) -> bytes:
    buffer = io.BytesIO()
    random_image(*size, seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


def image(seed: int) -> dict:
    # the `path` of an embedded image names a file of the machine that made it, absent here
    return {"bytes": png(seed), "path": f"/data/coco/train2014/{seed:012d}.png"}


# Each schema: rows in the hub dataset's exact columns, and the same rows in ms-swift JSONL (images as files).
PROMPTS = {
    "ocr": "Transcribe the text in the image.",
    "caption": "Describe the image.",
    "grounding": "Find <ref-object>",
}


def latex_ocr(n: int):  # AI-ModelScope/LaTeX_OCR: image, text
    return [{"image": image(i), "text": f"\\frac{{{i}}}{{x^{{2}}}} + \\alpha_{i}"} for i in range(n)]


def coco_caption(n: int):  # modelscope/coco_2014_caption: image_id, caption, image
    return [
        {"image_id": 100 + i, "caption": f"A red square number {i} on a table.", "image": image(i)}
        for i in range(n)
    ]


def refcoco(n: int):  # RefCOCO-style: one box, several referring expressions
    return [
        {
            "image": image(i),
            "bbox": [4.0 + i, 6.0, 30.0, 33.0 + i],
            "refs": [f"guy in red {i}", "man on the left"],
        }
        for i in range(n)
    ]


def docvqa(n: int):  # DocVQA-style: questionId, question, answers (several variants), image
    return [
        {
            "questionId": i,
            "question": f"What is the total in box {i}?",
            "answers": [f"${i}.00", f"{i} dollars"],
            "image": image(i),
        }
        for i in range(n)
    ]


SCHEMAS = {"ocr": latex_ocr, "caption": coco_caption, "grounding": refcoco, "vqa": docvqa}


def twin_row(schema: str, row: dict, image_path: str) -> dict:
    """The same row as an ms-swift query/response row, the way a user would have converted it."""
    if schema == "ocr":
        return {"query": PROMPTS["ocr"], "response": row["text"], "images": [image_path]}
    if schema == "caption":
        return {"query": PROMPTS["caption"], "response": row["caption"], "images": [image_path]}
    if schema == "vqa":
        return {"query": row["question"], "response": row["answers"][0], "images": [image_path]}
    refs = row["refs"]
    return {
        "history": [["Find <ref-object>", "<bbox>"]] * (len(refs) - 1),
        "query": "Find <ref-object>",
        "response": "<bbox>",
        "images": [image_path],
        "objects": {"ref": refs, "bbox": [row["bbox"]] * len(refs), "bbox_type": "real"},
    }


def write(rows: list[dict], kind: str, folder: Path, name: str) -> Path:
    """`rows` as a Parquet file, an Arrow (stream) file or a save_to_disk folder made by `datasets`."""
    table = datasets.Dataset.from_list(rows).cast_column("image", FEATURE["image"])
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        table.to_parquet(folder / f"{name}.parquet")
        return folder / f"{name}.parquet"
    if kind == "save_to_disk":
        table.save_to_disk(str(folder / name))
        return folder / name
    import pyarrow as pa

    with (
        pa.OSFile(str(folder / f"{name}.arrow"), "wb") as sink,
        pa.ipc.new_stream(sink, table.data.table.schema) as writer,
    ):
        writer.write_table(table.data.table)
    return folder / f"{name}.arrow"


def write_twin(schema: str, rows: list[dict], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        (folder / f"{i}.png").write_bytes(row["image"]["bytes"])
        lines.append(json.dumps(twin_row(schema, row, f"{i}.png")))
    (folder / "twin.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "twin.jsonl"


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def assert_same_encoding(template, dataset, twin):
    assert len(dataset) == len(twin)
    for i in range(len(dataset)):
        ours, theirs = template.encode(dataset[i]), template.encode(twin[i])
        assert ours.keys() == theirs.keys()
        for key in ("input_ids", "labels", "pixel_values", "image_grid_thw"):
            assert np.array_equal(np.asarray(ours[key]), np.asarray(theirs[key])), (i, key)


@pytest.fixture(scope="module")
def template(small_model):
    return family_for_model_dir(small_model).load_template(
        small_model, AutoTokenizer.from_pretrained(small_model)
    )


@pytest.mark.parametrize("kind", ["parquet", "arrow", "save_to_disk"])
@pytest.mark.parametrize("schema", list(SCHEMAS))
def test_hub_schemas_check_preview_and_encode_as_their_jsonl_twin(
    small_model, template, tmp_path, schema, kind
):
    rows = SCHEMAS[schema](3)
    source = write(rows, kind, tmp_path, schema)
    twin = load_dataset(write_twin(schema, rows, tmp_path / "twin"))
    dataset = load_dataset(source)
    assert dataset.format == schema
    assert_same_encoding(template, dataset, twin)

    checked = cli("data", "check", "-m", small_model, "-d", source, "--histogram", tmp_path / "h.png")
    assert f"{schema} schema (" in checked and "checked 3 rows in 1 file: 3 good, 0 bad" in checked
    if schema in PROMPTS:
        assert f"user turn {PROMPTS[schema]!r} (the default; --prompt changes it)" in checked
    shown = cli("data", "preview", "-m", small_model, "-d", source, "-n", "1")
    assert f"--- {source}:#0 ({schema}) ---" in shown
    replies = {
        "ocr": lambda r: r["text"],
        "caption": lambda r: r["caption"],
        "vqa": lambda r: r["answers"][0],
    }
    if schema in replies:
        reply = replies[schema](rows[0])
        assert f"[[{reply}<|im_end|>]]" in shown


def test_several_answers_are_kept_as_references_and_the_most_common_is_trained(tmp_path):
    rows = docvqa(2)
    rows[1]["answers"] = ["two", "2", "2"]  # VQAv2-style annotators: the majority is trained on
    dataset = load_dataset(write(rows, "parquet", tmp_path, "vqa"))
    assert (
        dataset[0].extra["references"] == ["$0.00", "0 dollars"] and dataset[0].text("assistant") == "$0.00"
    )
    assert dataset[1].extra["references"] == ["two", "2", "2"] and dataset[1].text("assistant") == "2"


@pytest.mark.parametrize(
    ("schema", "kind"),
    [("ocr", "arrow"), ("caption", "save_to_disk"), ("grounding", "parquet"), ("vqa", "parquet")],
)
def test_sft_then_infer_input_on_each_schema(small_model, tmp_path, schema, kind):
    source = write(SCHEMAS[schema](4), kind, tmp_path, schema)
    out = cli(
        "sft",
        "-m",
        small_model,
        "-d",
        source,
        "--max-steps",
        "2",
        "--output-dir",
        tmp_path / "run",
        "--no-progress",
        "--report-to",
        "none",
        "--max-pixels",
        "3136",
    )
    assert f"{schema} schema (" in out and "4 good, 0 bad" in out
    preds = tmp_path / "preds.jsonl"
    cli("infer", "-m", small_model, "--input", source, "--output", preds, "--max-new-tokens", "2")
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(lines) == 4 and not any("error" in line for line in lines)
    # each reply is the model's own greedy reply to that row's question (Python API, rows read by vlmkit)
    assert [line["response"] for line in lines] == greedy_replies(vlmkit.load(str(small_model)), source, 2)
    if kind == "save_to_disk":  # without --output: beside the folder
        cli("infer", "-m", small_model, "--input", source, "--max-new-tokens", "1")
        assert len((tmp_path / f"{schema}.preds.jsonl").read_text().splitlines()) == 4
    if schema == "vqa":  # the reference trained on, and every answer for scoring
        assert lines[1]["labels"] == "$1.00" and lines[1]["references"] == ["$1.00", "1 dollars"]
    # every row keeps the dataset's own columns (ids, answers, ...) as a JSON Lines row keeps its fields
    rows = SCHEMAS[schema](4)
    for row, line in zip(rows, lines, strict=True):
        assert {k: v for k, v in line.items() if k != "image"} == {
            **{k: v for k, v in row.items() if k != "image"},
            **{k: line[k] for k in ("response", "labels", "references", "objects") if k in line},
            **({"query": PROMPTS[schema]} if schema in PROMPTS else {}),  # the user turn asked
        }
    assert set(lines[0]["image"]) == {"bytes", "path"}  # a datasets Image, its bytes described
    assert lines[0]["image"]["bytes"].startswith("<") and "bytes, sha256" in lines[0]["image"]["bytes"]
    if schema == "caption":
        assert [line["image_id"] for line in lines] == [100, 101, 102, 103]


def test_seed_003_csv_of_image_paths_with_its_prompt(small_model, template, tmp_path):
    # seed 003's data2csv.py: columns image_path (absolute) and caption; train.py's user turn is "COCO Yes:"
    folder = tmp_path / "coco_2014_caption"
    folder.mkdir()
    paths = []
    for i in range(4):
        paths.append(folder / f"{100 + i}.jpg")
        random_image(48, 64, seed=i).save(paths[-1])
    csv = tmp_path / "coco-2024-dataset.csv"
    captions = [
        "A snow skier assessing the mountain before starting to sky",
        "A living room, with a rocking chair",
        'A "quoted" caption',
        "Two dogs",
    ]
    import pandas as pd

    pd.DataFrame({"image_path": [str(p) for p in paths], "caption": captions}).to_csv(csv, index=False)
    dataset = load_dataset(csv, prompt="COCO Yes:")
    twin = tmp_path / "data_vl.json"  # seed 003's csv2json.py output
    twin.write_text(json.dumps([
        {"id": f"identity_{i + 1}", "conversations": [
            {"from": "user", "value": f"COCO Yes: <|vision_start|>{p}<|vision_end|>"},
            {"from": "assistant", "value": c}]}
        for i, (p, c) in enumerate(zip(paths, captions, strict=True))
    ]))  # fmt: skip
    ours, theirs = dataset[0], load_dataset(twin)[0]
    assert ours.text("user").strip() == theirs.text("user").strip() == "COCO Yes:"
    assert ours.media("image") == theirs.media("image") == [str(paths[0])]
    assert ours.text("assistant") == captions[0]

    checked = cli(
        "data",
        "check",
        "-m",
        small_model,
        "-d",
        csv,
        "--prompt",
        "COCO Yes:",
        "--histogram",
        tmp_path / "h.png",
    )
    assert (
        "caption schema (image=image_path, response=caption); user turn 'COCO Yes:' (from --prompt)"
        in checked
    )
    cli(
        "sft",
        "-m",
        small_model,
        "-d",
        csv,
        "--prompt",
        "COCO Yes:",
        "--max-steps",
        "2",
        "--output-dir",
        tmp_path / "run",
        "--no-progress",
        "--report-to",
        "none",
        "--max-pixels",
        "3136",
    )
    preds = tmp_path / "preds.jsonl"
    cli(
        "infer",
        "-m",
        small_model,
        "--input",
        csv,
        "--prompt",
        "COCO Yes:",
        "--output",
        preds,
        "--max-new-tokens",
        "2",
    )
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [line["labels"] for line in lines] == captions and lines[0]["image_path"] == str(paths[0])
    assert set(lines[0]) == {"image_path", "caption", "query", "labels", "response", "objects"}
    assert [line["caption"] for line in lines] == captions and lines[0]["query"] == "COCO Yes:"


@pytest.mark.slow
def test_seed_000_latex_ocr_parquet_sft_then_infer_ckpt_val(small_model, tmp_path, monkeypatch):
    # seed 000: swift sft --dataset latex-ocr-print#20000, then swift infer --ckpt_dir ... --load_dataset_config
    train = write(latex_ocr(30), "parquet", tmp_path / "latex_ocr", "train")
    val = write(latex_ocr(2), "parquet", tmp_path / "latex_ocr_val", "val")
    monkeypatch.chdir(tmp_path)
    out = cli(
        "sft",
        "-m",
        small_model,
        "--dataset",
        "./latex_ocr#200",
        "--val-dataset",
        "./latex_ocr_val",
        "--max-steps",
        "2",
        "--output-dir",
        "output",
        "--no-progress",
        "--report-to",
        "none",
        "--max-pixels",
        "3136",
    )
    assert "checked 200 rows" in out and train.exists() and val.exists()
    checkpoint = next(Path("output").glob("*/*/checkpoint-2"))
    cli("infer", "--ckpt", checkpoint, "--val", "--output", "val_preds.jsonl", "--max-new-tokens", "3")
    lines = [json.loads(line) for line in Path("val_preds.jsonl").read_text().splitlines()]
    assert [line["labels"] for line in lines] == [r["text"] for r in latex_ocr(2)]
    assert all(line["query"] == PROMPTS["ocr"] for line in lines)
    assert [line["response"] for line in lines] == greedy_replies(vlmkit.load(ckpt=str(checkpoint)), val, 3)


def test_media_values_bytes_base64_lists_and_relative_paths_encode_alike(template, tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png(0))
    (tmp_path / "imgs" / "b.png").write_bytes(png(1))
    base = {"question": "Same?", "answer": "yes"}
    rows = [
        {**base, "images": [image(0), image(1)]},  # a list of Image dicts
        {**base, "images": [png(0), png(1)]},  # raw bytes
        {**base, "images": [base64.b64encode(png(0)).decode(), base64.b64encode(png(1)).decode()]},  # base64
        {**base, "images": ["imgs/a.png", "imgs/b.png"]},  # paths relative to the dataset's folder
    ]
    for i, row in enumerate(rows):
        table = datasets.Dataset.from_list([row])
        table.to_parquet(tmp_path / f"{i}.parquet")
    first = template.encode(load_dataset(tmp_path / "0.parquet")[0])
    for i in range(1, 4):
        other = template.encode(load_dataset(tmp_path / f"{i}.parquet")[0])
        assert np.array_equal(first["input_ids"], other["input_ids"]) and np.array_equal(
            first["pixel_values"], other["pixel_values"]
        )


def test_encode_cache_keys_embedded_images_by_content_not_path(tmp_path):
    rows = [{"image": {"bytes": png(0), "path": "/gone/a.png"}, "text": "x"},
            {"image": {"bytes": png(0), "path": "/elsewhere/b.png"}, "text": "x"},
            {"image": {"bytes": png(1), "path": "/gone/a.png"}, "text": "x"}]  # fmt: skip
    dataset = load_dataset(write(rows, "parquet", tmp_path, "d"))
    keys = [sample_key(dataset[i], "fingerprint") for i in range(3)]
    assert keys[0] == keys[1] != keys[2]


def test_bad_values_are_listed_with_row_and_reason_and_stop_above_max_bad_fraction(small_model, tmp_path):
    rows = latex_ocr(6)
    rows[1]["image"] = None
    rows[4]["image"] = {"bytes": b"not an image at all", "path": "x.png"}
    source = write(rows, "parquet", tmp_path, "bad")
    result = CliRunner().invoke(
        app,
        [
            "data",
            "check",
            "-m",
            str(small_model),
            "-d",
            str(source),
            "--bad-samples",
            str(tmp_path / "bad.jsonl"),
            "--histogram",
            str(tmp_path / "h.png"),
        ],
    )
    assert result.exit_code == 1
    assert f"{source}:#1: the image is empty (null)" in result.output
    assert f"{source}:#4: image 1: not an image file" in result.output
    bad = [json.loads(line) for line in (tmp_path / "bad.jsonl").read_text().splitlines()]
    assert [b["where"] for b in bad] == [f"{source}:#1", f"{source}:#4"]
    assert bad[1]["row"]["image"]["bytes"].startswith("<19 bytes, sha256 ")
    result = CliRunner().invoke(
        app,
        [
            "sft",
            "-m",
            str(small_model),
            "-d",
            str(source),
            "--max-steps",
            "1",
            "--output-dir",
            str(tmp_path / "run"),
            "--no-progress",
            "--report-to",
            "none",
        ],
    )
    assert result.exit_code != 0 and "2 of 6 train rows are bad" in str(result.exception)
    with pytest.raises(
        DataError, match=r"--columns image=picture: no column 'picture'; columns: image, text"
    ):
        load_dataset(source, columns={"image": "picture"})


def test_columns_and_prompt_map_other_schemas(template, tmp_path):
    rows = [{"img": image(i), "q": f"Colour {i}?", "a": "red", "extra": i} for i in range(2)]
    source = write(
        [{**r, "image": r["img"]} for r in rows], "parquet", tmp_path, "custom"
    )  # `image` too: --columns wins
    dataset = load_dataset(source, columns={"image": "img", "query": "q", "response": "a"})
    assert (
        dataset.format == "vqa"
        and dataset[1].text("user") == "Colour 1?"
        and dataset[1].text("assistant") == "red"
    )
    with pytest.raises(DataError, match="--prompt is for datasets without a question column"):
        load_dataset(source, columns={"image": "img", "query": "q", "response": "a"}, prompt="Hi")
    from vlmkit.data.columns import parse_columns

    with pytest.raises(DataError, match="unknown field 'picture'"):
        parse_columns("picture=img")


def test_hub_ids_offline_fail_in_one_line_naming_a_local_copy(small_model, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", "data", "check", "-m", str(small_model), "-d", "hf::AI-ModelScope/LaTeX_OCR:full@train#20"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: hf::AI-ModelScope/LaTeX_OCR:full@train#20: cannot load from the Hugging Face Hub ("
    )
    assert "--local-dir DIR) and pass --dataset DIR" in lines[0]
    if __import__("importlib").util.find_spec("modelscope") is None:
        with pytest.raises(
            DataError,
            match=r"ms::AI-ModelScope/LaTeX_OCR: ModelScope datasets need modelscope: pip install modelscope",
        ):
            load_dataset("ms::AI-ModelScope/LaTeX_OCR")


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["data", "check", "-d", "hf::AI-ModelScope/LaTeX_OCR:full@train"], ["eval", "--benchmark", "chartqa", "-o", "ev"]],
    ids=["data-check", "eval-benchmark"],
)
def test_hub_ids_without_a_network_fail_at_once_in_one_line(small_model, tmp_path, command):
    """No network (a hub endpoint nothing listens on, so the test never leaves the machine): one error line at
    once, not 5 printed retries over about 25 s first (issue 28 #5b)."""
    import time

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name, None)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "vlmkit", *command, "-m", str(small_model)],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot load from the Hugging Face Hub (no answer from http://127.0.0.1:9: " in lines[0] or (
        "cannot stream from the Hugging Face Hub (no answer from http://127.0.0.1:9: " in lines[0]
    )
    assert "--local-dir DIR) and pass --" in lines[0]
    assert elapsed < 22  # the retries alone slept 23 s (start-up is the rest)


def test_folder_of_shards_and_hub_copy_with_splits(tmp_path):
    folder = tmp_path / "LaTeX_OCR"  # the layout of `hf download --repo-type dataset --local-dir`
    write(latex_ocr(3), "parquet", folder / "data", "train-00000-of-00002")
    second = latex_ocr(5)[3:]
    second[1]["image"] = None
    write(second, "parquet", folder / "data", "train-00001-of-00002")
    write(latex_ocr(1), "parquet", folder / "data", "test-00000-of-00001")
    assert len(load_dataset(folder)) == 5 and len(load_dataset(f"{folder}@test")) == 1
    assert len(load_dataset(f"{folder}@train#2")) == 2
    # a bad row is named by its shard and its row there
    assert load_dataset(folder).check() == [
        (f"{folder}/data/train-00001-of-00002.parquet:#1", "the image is empty (null)")
    ]
    with pytest.raises(
        DataError, match=r"LaTeX_OCR@validation: cannot read it .*Unknown split \"validation\""
    ):
        load_dataset(f"{folder}@validation")
    only_test = tmp_path / "only_test"  # no train split: the only one is read
    write(latex_ocr(2), "parquet", only_test / "data", "test-00000-of-00001")
    assert len(load_dataset(only_test)) == 2


@pytest.mark.parametrize(
    ("row", "schema", "user", "reply", "references"),
    [
        # HuggingFaceM4/ChartQA: `query` is a question here, not ms-swift's query (no response/images)
        ({"image": "a.png", "query": "Highest bar?", "label": ["2019"], "human_or_machine": 0}, "vqa", "Highest bar?", "2019", ["2019"]),
        # VQAv2: ten annotators as dicts; the majority answer is trained on
        ({"image": "a.png", "question": "Colour?", "answers": [{"answer": "red", "answer_id": 1}, {"answer": "blue"}, {"answer": "blue"}]}, "vqa", "Colour?", "blue", ["red", "blue", "blue"]),
        # COCO Karpathy-style: several captions
        ({"image": "a.png", "captions": ["A dog.", "A puppy."]}, "caption", PROMPTS["caption"], "A dog.", ["A dog.", "A puppy."]),
        # a JSONL row of an image path and its text (LaTeX_OCR written out as JSON Lines)
        ({"image": "a.png", "text": "x^2"}, "ocr", PROMPTS["ocr"], "x^2", None),
    ],
)  # fmt: skip
def test_schemas_recognised_in_json_lines_too(tmp_path, row, schema, user, reply, references):
    (tmp_path / "a.png").write_bytes(png(0))
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    dataset = load_dataset(tmp_path / "d.jsonl")
    assert dataset.format == schema
    sample = dataset[0]
    assert sample.text("user") == user and sample.text("assistant") == reply
    assert sample.media("image") == [str(tmp_path / "a.png")]
    assert sample.extra.get("references") == references


def test_without_the_datasets_library_tables_fail_in_one_line_and_json_still_reads(tmp_path, monkeypatch):
    source = write(latex_ocr(1), "parquet", tmp_path, "d")
    jsonl = write_twin("ocr", latex_ocr(1), tmp_path / "twin")
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    with pytest.raises(DataError, match=r"d.parquet: reading it needs the datasets library: pip install 'vlmkit\[datasets\]'"):
        load_dataset(source)
    assert load_dataset(jsonl)[0].text("assistant") == latex_ocr(1)[0]["text"]


def test_grounding_boxes_that_are_not_corners_are_refused(tmp_path):
    rows = refcoco(2)
    rows[1]["bbox"] = [40.0, 30.0, 12.0, 9.0]  # COCO [x, y, w, h]: x2 < x1
    dataset = load_dataset(write(rows, "parquet", tmp_path, "g"))
    assert dataset.check() == [
        (
            f"{tmp_path}/g.parquet:#1",
            "box [40.0, 30.0, 12.0, 9.0] has x2 <= x1 or y2 <= y1; boxes are [x1, y1, x2, y2] in pixels "
            "(convert COCO-style [x, y, width, height] first)",
        )
    ]
    assert dataset[0].objects == {"ref": ["guy in red 0", "man on the left"], "bbox": [[4.0, 6.0, 30.0, 33.0]] * 2, "bbox_type": "real"}


def test_videos_as_dataset_values_encode_as_the_same_video_file(template, tmp_path):
    pytest.importorskip("av")
    from videos import make_video

    video = make_video(tmp_path / "clip.mp4", 8)
    rows = [{"video": {"bytes": video.read_bytes(), "path": "/gone/clip.mp4"}, "caption": "It changes colour."}]
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(tmp_path / "v.parquet")
    dataset = load_dataset(tmp_path / "v.parquet")
    assert dataset.format == "caption" and dataset[0].text("user") == "Describe the video."
    assert dataset[0].media("video") == [video.read_bytes()]
    twin = {"query": "Describe the video.", "response": "It changes colour.", "videos": [str(video)]}
    (tmp_path / "twin.jsonl").write_text(json.dumps(twin) + "\n")
    ours, theirs = template.encode(dataset[0]), template.encode(load_dataset(tmp_path / "twin.jsonl")[0])
    for key in ("input_ids", "labels", "pixel_values_videos", "video_grid_thw"):
        assert np.array_equal(np.asarray(ours[key]), np.asarray(theirs[key])), key
