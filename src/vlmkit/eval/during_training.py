"""`vlmkit sft --eval-metric NAME`: at each evaluation, greedy answers to validation rows scored with the
metrics of `vlmkit eval`, logged as `eval_NAME` (train_log.jsonl, the progress line, every tracker).

Rows are asked as `vlmkit eval` asks them (`vlmkit.eval.rows.asked_turns`: grounding one box at a time),
answered in batches by `VLM.generate`, and scored with the same metric functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmkit.eval.metrics import CORPUS_METRICS, METRICS, Row, aggregate, scores_row
from vlmkit.sample import Sample


@dataclass
class Example:
    """One answered validation row, for the prediction table logged to trackers."""

    image: Any  # the prompt's last image source, or None
    question: str
    prediction: str
    references: list[str]


def _asked(sample: Sample) -> list[tuple[dict, Sample]]:
    """The turns `vlmkit eval` asks of a validation row; none for a row whose answer cannot be read (its
    boxes), which `eval_generated_rows` then leaves out."""
    from vlmkit.errors import DataError
    from vlmkit.eval.rows import asked_turns

    try:
        return [(raw, turn) for raw, turn in asked_turns({}, sample) if isinstance(turn, Sample)]
    except DataError:
        return []


def score_generated(
    vlm: Any,
    samples: list[Sample],
    names: list[str],
    batch_size: int = 8,
    max_new_tokens: int = 64,
    examples: list[Example] | None = None,
) -> dict[str, float]:
    """Answer `samples` (each ending with its reference reply) and score them: {"eval_NAME": value}.
    A row that cannot be encoded or generated is left out; `eval_generated_rows` says how many counted.
    Each answered row is appended to `examples` when given."""
    from vlmkit.backends.transformers_backend import GenerationOptions
    from vlmkit.errors import VlmkitError
    from vlmkit.infer.batch import split_reference
    from vlmkit.media.grounding import objects_in_reply

    asked = [turn for sample in samples for turn in _asked(sample)]
    rows: list[Row] = []
    options = GenerationOptions(max_new_tokens=max_new_tokens)
    for start in range(0, len(asked), batch_size):
        chunk = [(raw, sample, *split_reference(sample)) for raw, sample in asked[start : start + batch_size]]
        try:
            replies = vlm.generate([prompt for _, _, prompt, _ in chunk], options)
        except VlmkitError:
            continue  # a row the model cannot take; eval_generated_rows shows it
        for (raw, sample, prompt, reference), reply in zip(chunk, replies, strict=True):
            # a grounding turn answered with text (reverse grounding) has its caption in `references`
            given = raw.get("references") or sample.extra.get("references")
            references = given or ([reference] if reference is not None else [])
            boxes = [o["bbox"] for o in objects_in_reply(vlm.template, prompt, reply)]
            rows.append(Row(reply, list(references), boxes, raw.get("reference_boxes", [])))
            if examples is not None:
                images = prompt.media("image")
                examples.append(
                    Example(images[-1] if images else None, prompt.text("user"), reply, list(references))
                )
    scores: dict[str, float] = {"eval_generated_rows": float(len(rows))}
    for name in names:
        scored = [row for row in rows if scores_row(name, row)]  # box metrics: box answers; text: the rest
        if name in CORPUS_METRICS:
            row_scores = CORPUS_METRICS[name](scored)
        else:
            row_scores = [METRICS[name](row) for row in scored]
        stats = np.array([s.stats for s in row_scores], dtype=float)
        scores[f"eval_{name}"] = aggregate(name, stats)
    return scores
