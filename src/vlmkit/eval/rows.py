"""The rows `vlmkit eval` asks and scores: dataset rows as prompts with their references, and prediction
lines (as `vlmkit infer --input` writes them) as metric `Row`s.

A grounding row asks several boxes in turns ("Find <ref-object>" -> "<bbox>", one turn per box or per
referring expression). Answered as one conversation, the model would see the earlier reference boxes in
its history, so eval asks each turn alone (the row's images, that turn's question) and keeps that turn's
boxes as `reference_boxes`, in pixels of the original image. Each turn is scored by what its answer is:
boxes (`<bbox>`, or box markup written in the text: `reference_boxes`) or text (reverse grounding,
"Find <bbox>" -> "<ref-object>": `references` holds the answer with its refs filled in, and
`reference_boxes` is empty).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmkit.data.columns import answer_texts
from vlmkit.errors import DataError, VlmkitError
from vlmkit.eval.metrics import Row, normalize_text
from vlmkit.media.grounding import (
    BOX_PLACEHOLDER,
    REF_PLACEHOLDER,
    Objects,
    answer_text,
    literal_boxes,
    needs_boxes,
    norm1000_to_pixels,
    parse_objects,
)
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
    """A row with grounding `objects` or box markup in its text -> one (raw row + `reference_boxes`, and
    `references` for a text answer; single-turn sample) per assistant turn; any other row is returned as
    it is (the model answers its last turn)."""
    objects = parse_objects(sample.objects, sample.where) if sample.objects else None
    if objects is None and not needs_boxes(sample):
        return [(raw, sample)]
    objects = objects or Objects(refs=[], boxes=[], image_ids=[])
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
        if boxes_seen > len(objects.boxes):
            raise DataError(f"{sample.where}: {boxes_seen} <bbox> placeholders but {len(objects.boxes)} bbox(es) in objects")
        if objects.bbox_type != "real" and len(answer_boxes):
            return [
                (
                    raw,
                    DataError(
                        f"{sample.where}: eval reads reference boxes in pixels (bbox_type real), not {objects.bbox_type}"
                    ),
                )
            ]
        where = f"{sample.where} turn {len(out) + 1}"
        turn_objects = {
            "ref": objects.refs[user_refs:refs_seen],
            "bbox": objects.boxes[user_boxes:boxes_seen],
            "bbox_type": objects.bbox_type,
            "image_id": objects.image_ids[user_boxes:boxes_seen],
        }
        asked = Sample(
            messages=[*system, {"role": "user", "content": media_before + user["content"]}, message],
            objects=turn_objects,
            where=where,
            extra=sample.extra,
        )
        reference_boxes = [box for k in answer_boxes for box in objects.boxes[k]]
        written = literal_boxes(text, where)
        if written:  # box markup in the answer's text, on the 0-1000 grid of the turn's last image
            original = _last_image_size(asked, where)
            reference_boxes += [norm1000_to_pixels(box, original) for box in written]
        answer: dict[str, Any] = {"reference_boxes": reference_boxes}
        if not reference_boxes:  # a text answer (reverse grounding: "Find <bbox>" -> "<ref-object>")
            answer_refs = objects.refs[refs_seen - text.count(REF_PLACEHOLDER) : refs_seen]
            answer["references"] = [answer_text(text, answer_refs, where)]
        out.append(({**raw, "turn": len(out) + 1, **answer}, asked))
        user = None
    return out or [(raw, sample)]


def _last_image_size(sample: Sample, where: str) -> tuple[int, int]:
    from vlmkit.media.images import read_image_size

    images = sample.media("image")
    if not images:
        raise DataError(f"{where}: box markup in the answer but no image to place it on")
    return read_image_size(images[-1], where=f"{where}: image {len(images)}")


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
    """A prediction line's reference answers: `references` (written by vlmkit: every answer of a column
    dataset, a grounding turn's text answer), else `answers` (VQAv2's ten `{"answer": ...}`, TextVQA's and
    DocVQA's strings), else `labels` (its `<ref-object>`s filled from `labels_objects`). DataError for
    `answers` that hold no text, or `labels` that are not among the `answers`."""
    references = prediction.get("references")
    if isinstance(references, list) and references:
        return [str(r) for r in references]
    labels = prediction.get("labels")
    if "answers" in prediction:
        answers = answer_texts(prediction["answers"])
        if not answers:
            raise DataError(
                f"answers {prediction['answers']!r} holds no answer text; expected a list of "
                'strings (TextVQA, DocVQA) or of {"answer": ...} (VQAv2)'
            )
        if isinstance(labels, str) and normalize_text(labels) not in {normalize_text(a) for a in answers}:
            raise DataError(
                f"labels {labels!r} is not one of its answers {answers[:10]}; which is the reference? "
                "keep one of the two fields"
            )
        return answers
    if not isinstance(labels, str):
        return []
    objects = _labels_objects(prediction)
    asked = labels.count(REF_PLACEHOLDER)  # the last `<ref-object>`s of the row, as for boxes below
    refs = objects.refs[len(objects.refs) - asked :] if asked else []
    return [answer_text(labels, refs, "labels")]


def _labels_objects(prediction: dict[str, Any]) -> Objects:
    """The input row's `objects` (kept as `labels_objects` by `vlmkit infer`), or none."""
    value = prediction.get("labels_objects")
    objects = parse_objects(value, "labels_objects") if value else None
    return objects or Objects(refs=[], boxes=[], image_ids=[])


def reference_boxes_of(prediction: dict[str, Any], folder: Path | None = None) -> list[list[float]]:
    """`reference_boxes` (written by eval for each asked turn; [] for a text answer), else the boxes of the
    answered turn: its `<bbox>`es in `labels_objects` (as `vlmkit infer --input` keeps the input's
    `objects`) and the box markup written in `labels` (0-1000 of the line's image, under `folder`)."""
    if "reference_boxes" in prediction:
        return [list(map(float, b)) for b in prediction["reference_boxes"] or []]
    labels = prediction.get("labels")
    objects = _labels_objects(prediction)
    # the answered turn is the last: its boxes are the last `<bbox>`es of the row (as many as in `labels`);
    # a line without `labels` (the input had no answer) takes all of them
    asked = len(objects.boxes) if not isinstance(labels, str) else labels.count(BOX_PLACEHOLDER)
    groups = objects.boxes[len(objects.boxes) - asked :] if asked else []
    if groups and objects.bbox_type != "real":
        original = _line_image_size(prediction, folder, f"labels_objects (bbox_type {objects.bbox_type})")
        groups = [[_norm1_to_pixels(box, original) for box in group] for group in groups]
    boxes = [box for group in groups for box in group]
    written = literal_boxes(labels, "labels") if isinstance(labels, str) else []
    if written:
        original = _line_image_size(prediction, folder, "box markup in labels")
        boxes += [norm1000_to_pixels(box, original) for box in written]
    return boxes


def predicted_boxes_of(prediction: dict[str, Any], folder: Path | None = None) -> list[list[float]]:
    """The reply's boxes: `objects` as `vlmkit infer` parsed them with the model family's own box format;
    for a line without it (predictions made elsewhere), the box markup of every syntax vlmkit reads in
    training data (0-1000 of the line's image). DataError for boxes whose grid the line does not say
    (JSON `bbox_2d`: pixels of the resized image for Qwen2.5-VL, 0-1000 for Qwen3-VL)."""
    if isinstance(prediction.get("objects"), list):
        return [o["bbox"] for o in prediction["objects"] if isinstance(o, dict) and "bbox" in o]
    response = prediction["response"]
    written = literal_boxes(response, strict=False)
    if written:
        original = _line_image_size(prediction, folder, "box markup in the response")
        return [norm1000_to_pixels(box, original) for box in written]
    if '"bbox_2d"' in response:
        raise DataError(
            "the response writes JSON bbox_2d boxes, whose grid depends on the model (Qwen2.5-VL: pixels "
            "of the resized image, Qwen3-VL: 0-1000); score `vlmkit infer` output (objects) or use vlmkit eval --model"
        )
    return []


def _norm1_to_pixels(box: list[float], original: tuple[int, int]) -> list[float]:
    (h, w) = original
    return [box[0] * w, box[1] * h, box[2] * w, box[3] * h]


def _line_image_size(prediction: dict[str, Any], folder: Path | None, what: str) -> tuple[int, int]:
    """(height, width) of a prediction line's last image (`images` or `image`: a path, relative to the
    predictions file's `folder`, or {"path": ...}); DataError saying `what` needs it."""
    from vlmkit.media.images import read_image_size

    found = prediction.get("images", prediction.get("image"))
    last = found[-1] if isinstance(found, list) and found else found
    if isinstance(last, dict):
        last = last.get("path")
    if not isinstance(last, str) or not last:
        raise DataError(f"{what} needs the line's image (images or image) to measure them on; it has none")
    local = Path(last)
    if folder is not None and not local.is_absolute() and "://" not in last and not last.startswith("data:"):
        local = folder / local
    return read_image_size(str(local) if local.exists() else last, where=f"{what}: image {last}")


def metric_row(prediction: dict[str, Any], folder: Path | None = None) -> Row | str:
    """A prediction line -> a metric `Row`, or why it cannot be scored (an `error`, no response/reference,
    a reference that cannot be read). A row whose answer is boxes has `reference_boxes` and no text
    references; a text answer the reverse. `folder`: where the line's relative image paths start."""
    if "error" in prediction:
        return str(prediction["error"])
    if not isinstance(prediction.get("response"), str):
        return "no response"
    try:
        reference_boxes = reference_boxes_of(prediction, folder)
        if reference_boxes:
            return Row(prediction["response"], [], predicted_boxes_of(prediction, folder), reference_boxes)
        references = references_of(prediction)
    except VlmkitError as e:
        return str(e)
    if not references:
        return "no reference (references, answers, labels or reference_boxes)"
    return Row(prediction["response"], references)
