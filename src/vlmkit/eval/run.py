"""Scoring prediction files and running models for `vlmkit eval`.

Each model (or checkpoint, or given predictions file) gets `DIR/LABEL.predictions.jsonl`: the lines of
`vlmkit infer --input` plus `scores` (metric -> that row's value). Rows that could not be read, encoded or
generated (`error`), or have no reference, are left out of the metrics and counted as `failed`. Each row
is scored by what its answer is: a row answered with boxes by the box metrics (iou), a text answer by the
text metrics (`metrics.scores_row`), so a file of grounding and reverse-grounding rows gets both. A reply
that can be read for no box or option letter is scored as a miss and counted as `unparsed`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlmkit.eval.metrics import (
    CORPUS_METRICS,
    LOWER_IS_BETTER,
    METRICS,
    Row,
    Score,
    aggregate,
    bootstrap_interval,
    choice_letter,
    scores_row,
)
from vlmkit.eval.rows import metric_row


@dataclass
class Result:
    """One model's scores: label, where its predictions are, counts and per-metric aggregates."""

    label: str
    source: str
    predictions: Path
    rows: int
    failed: int
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the first few reasons, for the report

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "predictions": self.predictions.name,
            "rows": self.rows,
            "failed": self.failed,
            "first_failures": self.failures,
            "scores": self.scores,
        }


def choose_metrics(rows: list[Row], schema: str | None) -> tuple[list[str], str]:
    """`--metric auto`: (metric names, why) from the references (and the dataset's column schema): box
    metrics for rows answered with boxes, text metrics for the others, both for a mix."""
    boxes = sum(1 for r in rows if r.reference_boxes)
    if boxes == len(rows) and rows:
        return ["iou@0.5", "iou"], "rows have reference boxes (grounding)"
    names, reason = _text_metrics([r for r in rows if not r.reference_boxes], schema)
    if boxes:
        return ["iou@0.5", "iou", *names], (
            f"iou for the {boxes} rows answered with boxes (grounding), {', '.join(names)} for the "
            f"{len(rows) - boxes} answered with text: {reason}"
        )
    return names, reason


def _text_metrics(rows: list[Row], schema: str | None) -> tuple[list[str], str]:
    if schema is not None and schema.startswith("ocr "):
        return ["cer", "exact_match"], "OCR schema (image + text)"
    references = [ref for r in rows for ref in r.references]
    if not references:
        return ["exact_match"], "no references to look at"
    if all(len(ref.strip()) == 1 and choice_letter(ref) for ref in references):
        return ["choice"], "references are option letters (multiple choice)"
    words = statistics.median(len(ref.split()) for ref in references)
    per_row = statistics.median(len(r.references) for r in rows)
    if words >= 5 or (schema is not None and schema.startswith("caption ")):
        return ["cider", "bleu4", "rouge_l"], "long references (captions)"
    if per_row >= 3:  # VQAv2 / TextVQA: ten annotators' answers, which VQA accuracy is defined on
        return ["vqa_accuracy", "anls"], "several short reference answers per row (VQA)"
    if per_row > 1:  # DocVQA: a few accepted variants; VQA accuracy would cap a right answer at 1/3
        return ["anls", "exact_match"], "a few accepted answer variants per row (DocVQA-style)"
    return ["exact_match", "anls"], "one short reference answer per row"


def score_predictions(
    path: Path,
    names: list[str] | None,
    schema: str | None,
    label: str,
    source: str,
    media_folder: Path | None = None,
) -> tuple[Result, list[str], str]:
    """Score the predictions file `path` in place (adds `scores` to each line, atomically); returns the
    result, the metrics used and why they were chosen (`names` None = auto). `media_folder`: where the
    lines' relative image paths start (the given file's folder), for boxes written as text."""
    from vlmkit.eval.rows import read_predictions

    predictions = read_predictions(path)
    parsed = [metric_row(p, media_folder) for p in predictions]
    rows = [r for r in parsed if isinstance(r, Row)]
    reason = "given with --metric"
    if names is None:
        names, reason = choose_metrics(rows, schema)
    failures = [f"line {i + 1}: {r}" for i, r in enumerate(parsed) if isinstance(r, str)]
    result = Result(label, source, path, rows=len(predictions), failed=len(failures), failures=failures[:5])
    per_row = {name: _row_scores(name, parsed) for name in names}
    for name, scores in per_row.items():
        stats = np.array([s.stats for s in scores if s is not None], dtype=float)
        low, high = bootstrap_interval(name, stats)
        result.scores[name] = {
            "value": _number(aggregate(name, stats)),  # null when no row could be scored
            "ci95": [_number(low), _number(high)],
            "scored": len(stats),
            "unparsed": sum(1 for s in scores if s is not None and not s.parsed),
            "lower_is_better": name in LOWER_IS_BETTER,
        }
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for i, prediction in enumerate(predictions):
            if isinstance(parsed[i], Row):
                # what the row was scored against, where the line did not say it (boxes written as text,
                # a caption's <ref-object> filled in, a dataset's answers): the report shows it
                row = parsed[i]
                reference = {"reference_boxes": row.reference_boxes} if row.reference_boxes else {"references": row.references}
                prediction.update({k: v for k, v in reference.items() if k not in prediction})
                row_scores = {name: per_row[name][i] for name in names}
                prediction["scores"] = {n: round(s.value, 6) for n, s in row_scores.items() if s is not None}
            out.write(json.dumps(prediction, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return result, names, reason


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _row_scores(name: str, parsed: list[Row | str]) -> list[Score | None]:
    """Metric `name` of each row (None for a row it does not score: failed, or another kind of answer)."""
    scored = [isinstance(r, Row) and scores_row(name, r) for r in parsed]
    if name in CORPUS_METRICS:
        scores = iter(CORPUS_METRICS[name]([r for r, s in zip(parsed, scored, strict=True) if s]))
        return [next(scores) if s else None for s in scored]
    return [METRICS[name](r) if s else None for r, s in zip(parsed, scored, strict=True)]


def model_label(model: str | None, ckpt: Path | None, taken: set[str]) -> str:
    """A short unique name for a model column: the folder name, RUN/checkpoint-N for a checkpoint."""
    if ckpt is not None:
        label = f"{Path(ckpt).resolve().parent.name}/{Path(ckpt).name}"
    else:
        label = Path(str(model)).name or str(model)
    unique, k = label, 2
    while unique in taken:
        unique, k = f"{label}-{k}", k + 1
    taken.add(unique)
    return unique


def file_stem(label: str) -> str:
    return label.replace("/", "_")
