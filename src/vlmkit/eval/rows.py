"""The rows `vlmkit eval` asks and scores: dataset rows as prompts with their references, and prediction
lines (as `vlmkit infer --input` writes them) as metric `Row`s.

A grounding row asks several boxes in turns ("Find <ref-object>" -> "<bbox>", one turn per box or per
referring expression). Answered as one conversation, the model would see the earlier reference boxes in
its history, so eval asks each turn alone (the row's images, that turn's question) and keeps that turn's
boxes as `reference_boxes`, in pixels of the original image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkit.errors import DataError, VlmkitError
from vlmkit.eval.metrics import Row
from vlmkit.media.grounding import BOX_PLACEHOLDER, REF_PLACEHOLDER, parse_objects
from vlmkit.sample import Sample

ReadRow = tuple[dict, Sample | DataError]


def read_dataset(
    spec: str, media_root: str | Path | None, columns: dict[str, str] | None, prompt: str | None
) -> tuple[list[ReadRow], str | None]:
    """(rows in file order, one per asked turn, as `vlmkit.infer.batch.run_batch` takes them; the column schema
    line of the dataset or None)."""
    from vlmkit.data import load_dataset
    from vlmkit.data.readers import samples_in_order

    data = load_dataset(spec, media_root=media_root, columns=columns, prompt=prompt)
    out: list[ReadRow] = []
    for raw, sample in samples_in_order(data):
        try:
            out.extend([(raw, sample)] if isinstance(sample, DataError) else asked_turns(raw, sample))
        except DataError as e:  # boxes that do not parse
            out.append((raw, e))
    schema = next(iter(data.schemas.values()), None)
    return out, schema


def _text(message: dict) -> str:
    return "".join(p.get("text", "") for p in message["content"] if p["type"] == "text")


def asked_turns(raw: dict, sample: Sample) -> list[ReadRow]:
    """A row with grounding `objects` -> one (raw row + `reference_boxes`, single-turn sample) per
    assistant turn; any other row is returned as it is (the model answers its last turn)."""
    objects = parse_objects(sample.objects, sample.where) if sample.objects else None
    if objects is None:
        return [(raw, sample)]
    system = [m for m in sample.messages if m["role"] == "system"]
    earlier_media: list[dict] = []
    refs_seen = boxes_seen = 0
    user: dict | None = None
    out: list[ReadRow] = []
    for message in (m for m in sample.messages if m["role"] != "system"):
        text = _text(message)
        if message["role"] == "user":
            user, user_refs, user_boxes = message, refs_seen, boxes_seen
            media_before = list(earlier_media)
            earlier_media += [p for p in message["content"] if p["type"] in ("image", "video")]
        refs_seen += text.count(REF_PLACEHOLDER)
        boxes_seen += text.count(BOX_PLACEHOLDER)
        if message["role"] != "assistant" or user is None:
            continue
        answer_boxes = range(boxes_seen - text.count(BOX_PLACEHOLDER), boxes_seen)
        if objects.bbox_type != "real" and len(answer_boxes):
            return [
                (
                    raw,
                    DataError(
                        f"{sample.where}: eval reads reference boxes in pixels (bbox_type real), not {objects.bbox_type}"
                    ),
                )
            ]
        turn_objects = {
            "ref": objects.refs[user_refs:refs_seen],
            "bbox": objects.boxes[user_boxes:boxes_seen],
            "bbox_type": objects.bbox_type,
            "image_id": objects.image_ids[user_boxes:boxes_seen],
        }
        asked = Sample(
            messages=[*system, {"role": "user", "content": media_before + user["content"]}, message],
            objects=turn_objects,
            where=f"{sample.where} turn {len(out) + 1}",
            extra=sample.extra,
        )
        reference_boxes = [box for k in answer_boxes for box in objects.boxes[k]]
        out.append(({**raw, "turn": len(out) + 1, "reference_boxes": reference_boxes}, asked))
        user = None
    return out or [(raw, sample)]


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a predictions file (JSON Lines as `vlmkit infer --input` writes, or a JSON array), read by
    the dataset readers; VlmkitError naming the file and line of one that is not a JSON object."""
    from vlmkit.data import read_rows

    if not path.is_file():
        raise VlmkitError(f"--predictions {path} not found")
    rows = []
    for _, row in read_rows(path):
        if isinstance(row, DataError):
            raise VlmkitError(f"{row}; expected one prediction (a JSON object with response and "
                              "references/labels) per line") from None  # fmt: skip
        rows.append(row)
    return rows


def references_of(prediction: dict[str, Any]) -> list[str]:
    """A prediction line's reference answers: `references` (all answers of a column dataset) or `labels`."""
    references = prediction.get("references")
    if isinstance(references, list) and references:
        return [str(r) for r in references]
    labels = prediction.get("labels")
    return [str(labels)] if isinstance(labels, str) else []


def reference_boxes_of(prediction: dict[str, Any]) -> list[list[float]]:
    """`reference_boxes` (written by eval), else the boxes of the answered turn in the input's `objects`
    (`labels_objects`, as `vlmkit infer --input` keeps them)."""
    if prediction.get("reference_boxes"):
        return [list(map(float, b)) for b in prediction["reference_boxes"]]
    objects = parse_objects(prediction.get("labels_objects")) if prediction.get("labels_objects") else None
    if objects is None or objects.bbox_type != "real":
        return []
    # the answered turn is the last: its boxes are the last `<bbox>`es of the row (as many as in `labels`)
    asked = str(prediction.get("labels", "")).count(BOX_PLACEHOLDER)
    groups = objects.boxes[-asked:] if asked else objects.boxes
    return [box for group in groups for box in group]


def metric_row(prediction: dict[str, Any]) -> Row | str:
    """A prediction line -> a metric `Row`, or why it cannot be scored (an `error`, no response/reference)."""
    if "error" in prediction:
        return str(prediction["error"])
    if not isinstance(prediction.get("response"), str):
        return "no response"
    reference_boxes = reference_boxes_of(prediction)
    references = references_of(prediction)
    if not references and not reference_boxes:
        return "no reference (references, labels or reference_boxes)"
    predicted = [o["bbox"] for o in prediction.get("objects") or [] if isinstance(o, dict) and "bbox" in o]
    return Row(prediction["response"], references, predicted_boxes=predicted, reference_boxes=reference_boxes)
