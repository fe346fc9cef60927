"""Standard benchmarks as named presets for `vlmkit eval --benchmark NAME`: where the rows are on the
Hugging Face Hub, how a stored row becomes a question (the prompt the benchmark's usual evaluation
setups use: lmms-eval's, which Qwen2-VL and others report with), and the metric.

Each preset reads the hub dataset through `vlmkit.data.sources` (`hf::org/name:subset@split`), or a
local copy (`--benchmark-path FILE_OR_DIR`: a Parquet file, a `save_to_disk` folder, or a folder of shards
such as `hf download REPO --repo-type dataset --local-dir DIR` makes, read with the preset's subset
and split unless `DIR@SPLIT` names another). The columns each preset reads are
the hub schema written on it (`Benchmark.schema`); a local copy must have the same columns.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vlmkit.data.columns import DEFAULT_PROMPTS
from vlmkit.errors import DataError, VlmkitError

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


@dataclass(frozen=True)
class Benchmark:
    """A preset: `source` (hub spec), `metric` (names as --metric), `schema` (the stored columns it
    reads, as on the hub), `format` (the column schema its rows are given as: vqa or grounding) and
    `to_fields(raw, where)`: a stored row -> schema fields (image, query, response | boxes, labels), or
    None for a row the benchmark's metric does not cover; raises DataError for a row it cannot read."""

    name: str
    title: str
    source: str
    metric: str
    schema: str
    format: str
    to_fields: Callable[[dict[str, Any], str], dict[str, Any] | None]
    note: str = ""


def _column(raw: dict[str, Any], name: str, where: str) -> Any:
    if name not in raw:
        raise DataError(f"{where}: no column {name!r} (columns: {', '.join(raw)}); expected the hub schema")
    return raw[name]


def short_answer_row(answers_column: str) -> Callable[[dict[str, Any], str], dict[str, Any]]:
    """DocVQA / TextVQA / ChartQA: image + question + the short-answer instruction; the answers column
    (a list, or one string) are the references."""

    def to_fields(raw: dict[str, Any], where: str) -> dict[str, Any]:
        answers = _column(raw, answers_column, where)
        question = str(_column(raw, "question", where)).strip()
        return {
            "image": _column(raw, "image", where),
            "query": f"{question}\n{SHORT_ANSWER}",
            "response": list(answers) if isinstance(answers, (list, tuple)) else [answers],
        }

    return to_fields


def refcoco_row(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """RefCOCO: one box (COCO [x, y, width, height] -> [x1, y1, x2, y2] pixels), asked once per
    referring expression in `answer` (as lmms-eval's refcoco_bbox_rec explodes them). The prompt is
    vlmkit's grounding prompt in the family's own ref/box markup (how Qwen-VL models are asked and
    fine-tuned), not lmms-eval's generic one, which asks for 0-1 floats the family box parsers do not read."""
    box = _column(raw, "bbox", where)
    if isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
        x, y, w, h = box
        box = [x, y, x + w, y + h]
    return {
        "image": _column(raw, "image", where),
        "query": DEFAULT_PROMPTS["grounding"],
        "boxes": box,
        "labels": _column(raw, "answer", where),
    }


_IMAGE_TAG = re.compile(r"<image (\d)>")


def mmmu_row(raw: dict[str, Any], where: str) -> dict[str, Any] | None:
    """MMMU multiple-choice: question, options lettered A., B., ... and the letter instruction; the
    images the text names (`<image 2>`, in order of first mention; else all), given before the text.
    Open questions (question_type "open", ~5% of validation) are left out: choice accuracy does not
    score them."""
    if raw.get("question_type") == "open":
        return None
    question = str(_column(raw, "question", where)).strip()
    text = _column(raw, "options", where)
    try:
        options = ast.literal_eval(text) if isinstance(text, str) else list(text)
    except (ValueError, SyntaxError):
        raise DataError(f"{where}: options {text!r} is not a list of option texts") from None
    lettered = "\n".join(f"{chr(ord('A') + k)}. {option}" for k, option in enumerate(options))
    named = list(dict.fromkeys(int(n) for n in _IMAGE_TAG.findall(question + lettered)))
    numbers = named or range(1, 8)
    images = [raw[f"image_{n}"] for n in numbers if raw.get(f"image_{n}") is not None]
    if not images:
        raise DataError(f"{where}: no image in image_1..image_7")
    return {
        "image": images,
        "query": f"{question}\n{lettered}\n\n{OPTION_LETTER}",
        "response": [str(_column(raw, "answer", where))],
    }


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "docvqa", "DocVQA (validation)", "hf::lmms-lab/DocVQA:DocVQA@validation", "anls",
            "questionId str, question str, question_types list[str], image Image, docId int, "
            "ucsf_document_id str, ucsf_document_page_no str, answers list[str], data_split str",
            "vqa", short_answer_row("answers"),
        ),
        Benchmark(
            "chartqa", "ChartQA (test: the split papers report; the hub copy has no validation)",
            "hf::lmms-lab/ChartQA@test", "relaxed_accuracy",
            "type str (human/augmented), question str, answer str, image Image",
            "vqa", short_answer_row("answer"),
        ),
        Benchmark(
            "textvqa", "TextVQA (validation)", "hf::lmms-lab/textvqa@validation", "vqa_accuracy",
            "image_id str, question_id int, question str, question_tokens list[str], image Image, "
            "image_width int, image_height int, flickr_original_url str, flickr_300k_url str, "
            "answers list[str] (10), image_classes list[str], set_name str, ocr_tokens list[str]",
            "vqa", short_answer_row("answers"),
        ),
        Benchmark(
            "refcoco", "RefCOCO (val), one question per referring expression", "hf::lmms-lab/RefCOCO@val",
            "iou@0.5,iou",
            "question_id str, image Image, question str, answer list[str] (referring expressions), "
            "segmentation list[float], bbox list[float] (COCO x, y, width, height), iscrowd int, file_name str",
            "grounding", refcoco_row,
        ),
        Benchmark(
            "mmmu", "MMMU (validation), multiple-choice questions", "hf::lmms-lab/MMMU@validation", "choice",
            "id str, question str, options str (a Python list literal), explanation str, image_1..image_7 "
            "Image (null when unused), img_type str, answer str (a letter), topic_difficulty str, "
            "question_type str (multiple-choice/open), subfield str",
            "vqa", mmmu_row, note="open questions are left out",
        ),
    )
}  # fmt: skip


def get_benchmark(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name.strip().lower()]
    except KeyError:
        raise VlmkitError(f"--benchmark {name}: unknown; benchmarks: {', '.join(BENCHMARKS)}") from None


def benchmark_table() -> str:
    """The presets as lines for `vlmkit eval --list-benchmarks`."""
    lines = [f"{'name':<9} {'metric':<17} {'source':<40} title"]
    for b in BENCHMARKS.values():
        lines.append(f"{b.name:<9} {b.metric:<17} {b.source:<40} {b.title}")
    return "\n".join(lines)


def read_benchmark(
    benchmark: Benchmark, path: str | None, limit: int | None, media_root: Any = None
) -> tuple[list[tuple[dict, Any]], str]:
    """(rows as `vlmkit.eval.rows.read_dataset` gives them, one line on what was read). `path`: a local
    copy instead of the hub; `limit`: N rows sampled (seed 42, as `#N`), before open MMMU rows are
    left out."""
    from pathlib import Path

    from vlmkit.data import row_to_sample, sample_indices
    from vlmkit.data.sources import TableRows, load_table, parse_source, take_rows
    from vlmkit.eval.rows import asked_turns

    spec = path if path is not None else benchmark.source
    source = parse_source(spec)
    if path is not None and Path(source.location).is_dir():
        # a local copy of the hub repo (`hf download ... --local-dir DIR`): the preset's split, and its
        # subset when the folder's README declares subsets (configs) as the hub's does
        hub = parse_source(benchmark.source)
        subset = hub.subset if (Path(source.location) / "README.md").is_file() else None
        source = replace(source, subset=source.subset or subset, split=source.split or hub.split)
    if source.count is not None:
        limit = source.count if limit is None else min(limit, source.count)
    try:
        table, base_dirs, shards = load_table(source, spec)
    except DataError as e:  # offline: the local copy is passed to --benchmark-path, not --dataset
        raise DataError(str(e).replace("pass --dataset DIR", "pass --benchmark-path DIR")) from None
    extra = (Path(media_root),) if media_root is not None else ()
    stored = TableRows(table, spec, benchmark.format, base_dirs + extra, shards=shards)
    line = f"{benchmark.name}: {len(stored)} rows of {spec}"
    if limit is not None and limit < len(stored):
        stored = take_rows(stored, sorted(sample_indices(len(stored), limit)))
        line = f"{benchmark.name}: {len(stored)} rows sampled (seed 42) of the {table.num_rows} of {spec}"
    out: list[tuple[dict, Any]] = []
    left_out = 0
    for row in stored:
        try:
            fields = benchmark.to_fields(row.data, row.where)
            if fields is None:
                left_out += 1
                continue
            sample = row_to_sample(fields, benchmark.format, row.where, row.base_dirs)
            out.extend(asked_turns(fields, sample))
        except DataError as e:
            out.append(({}, e))
    if left_out:
        line += f" ({left_out} left out: {benchmark.note})"
    return out, line
