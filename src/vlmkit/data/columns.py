"""Column schemas: rows that are columns (an image and its text, question, answers or boxes), not
conversations, as most hub and Parquet datasets are.

A schema maps vlmkit's fields to a dataset's columns. Recognised without flags, by column name:

    ocr        image + text                      (AI-ModelScope/LaTeX_OCR)
    caption    image + caption/captions/sentences (modelscope/coco_2014_caption, seed 003's CSV)
    vqa        image + question/query + answer/answers/label (DocVQA, ChartQA, VQAv2)
    grounding  image + boxes/bbox + refs/labels  (RefCOCO-style), converted to `objects`

`--columns image=img,query=question,response=answer` names the columns of any other dataset (and
wins over the names above). Fields: image, video, query, response, system, boxes, labels.

Rows without a question column get the user turn `--prompt`, or the schema's default prompt
(`DEFAULT_PROMPTS`; "video" for "image" when the rows have a video and no image). Several answers or captions in one row (a list) are all kept as
`sample.extra["references"]`; training and the reference shown by `infer` use the most frequent of
them (ties: the first), which is the first for DocVQA-style variants and the majority for VQAv2's
ten annotators. Grounding rows become one turn per box: "Find <ref-object>" -> "<bbox>", boxes as
[x1, y1, x2, y2] in pixels of the original image; one box with several refs (RefCOCO's several
expressions for one object) becomes one turn per ref.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from vlmkit.errors import DataError

FIELDS = ("image", "video", "query", "response", "system", "boxes", "labels")
# Column names recognised per field, in order of preference.
ALIASES = {
    "image": ("image", "images", "image_path", "img", "image_file", "picture"),
    "video": ("video", "videos", "video_path"),
    "query": ("question", "query", "prompt"),
    "response": ("answers", "answer", "captions", "caption", "sentences", "text", "response", "label"),
    "system": ("system",),
    "boxes": ("boxes", "bboxes", "bbox"),
    "labels": ("refs", "ref", "labels", "label", "sentences", "captions", "caption", "category"),
}
DEFAULT_PROMPTS = {
    "ocr": "Transcribe the text in the image.",
    "caption": "Describe the image.",
    "grounding": "Find <ref-object>",
}
SCHEMAS = ("ocr", "caption", "vqa", "grounding", "columns")
_TEXT_KEYS = ("answer", "text", "raw", "sent", "caption")  # text inside list items of dicts (VQAv2, RefCOCO)


@dataclass(frozen=True)
class ColumnSchema:
    """Which column holds each field (`columns`: field -> column), the schema's name, and the user
    turn for rows without a query column (`prompt`; None when the query column gives it)."""

    name: str
    columns: dict[str, str]
    prompt: str | None
    prompt_is_default: bool = False

    def describe(self) -> str:
        """One line for people, e.g. `caption schema (image=image, response=caption); prompt: ...`."""
        mapping = ", ".join(f"{f}={c}" for f, c in self.columns.items())
        line = f"{self.name} schema ({mapping})"
        if self.prompt is not None:
            how = "the default; --prompt changes it" if self.prompt_is_default else "from --prompt"
            line += f"; user turn {self.prompt!r} ({how})"
        return line


def parse_columns(text: str | None) -> dict[str, str]:
    """`image=img,query=question` -> {"image": "img", "query": "question"}; raises DataError naming --columns."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    for item in text.split(","):
        field, sep, column = (s.strip() for s in item.partition("="))
        if not sep or not field or not column:
            raise DataError(
                f"--columns {text}: write FIELD=COLUMN pairs separated by commas, e.g. image=img,response=answer"
            )
        if field not in FIELDS:
            raise DataError(f"--columns {text}: unknown field {field!r}; fields: {', '.join(FIELDS)}")
        mapping[field] = column
    return mapping


def detect_schema(
    keys: Iterable[str],
    columns: dict[str, str] | None = None,
    prompt: str | None = None,
    where: str = "dataset",
) -> ColumnSchema | None:
    """The schema of rows with these column names, or None when there is no image or video column
    (and no --columns). `columns` (from --columns) wins; the other fields are found by `ALIASES`.

    Raises DataError naming `where` for a --columns column that does not exist, a row set with
    nothing to learn, a --prompt next to a question column, or a grounding --prompt without
    <ref-object>.
    """
    keys = list(dict.fromkeys(keys))
    columns = dict(columns or {})
    for field, column in columns.items():
        if column not in keys:
            raise DataError(
                f"{where}: --columns {field}={column}: no column {column!r}; columns: {', '.join(keys)}"
            )
    if not columns and not any(name in keys for name in ALIASES["image"] + ALIASES["video"]):
        return None
    used = set(columns.values())
    for field in ("boxes", "image", "video", "query", "system", "labels", "response"):
        if field in columns or (field == "labels" and "boxes" not in columns):
            continue
        if field == "response" and "boxes" in columns:
            continue  # a grounding row's reply is its boxes
        found = next((name for name in ALIASES[field] if name in keys and name not in used), None)
        if found is not None:
            columns[field] = found
            used.add(found)
    ordered = {f: columns[f] for f in FIELDS if f in columns}
    if "boxes" in ordered:
        name = "grounding"
        if "labels" not in ordered:
            raise DataError(
                f"{where}: box column {ordered['boxes']!r} but no refs/labels column; name it with --columns labels=COLUMN"
            )
    elif "query" in ordered and "response" in ordered:
        name = "vqa"
    elif ordered.get("response") in ("caption", "captions", "sentences"):
        name = "caption"
    elif ordered.get("response") == "text":
        name = "ocr"
    else:
        name = "columns"
    if "response" not in ordered and "boxes" not in ordered and "query" not in ordered:
        raise DataError(
            f"{where}: no answer, caption or text column among {', '.join(keys)}; "
            "name one with --columns response=COLUMN"
        )
    if "query" in ordered:
        if prompt is not None:
            raise DataError(
                f"{where}: --prompt is for datasets without a question column, and this one has {ordered['query']!r}"
            )
        return ColumnSchema(name, ordered, None)
    if prompt is None and name not in DEFAULT_PROMPTS:
        raise DataError(f'{where}: no question column; give the user turn with --prompt "..."')
    if name == "grounding" and prompt is not None and "<ref-object>" not in prompt:
        raise DataError(f"--prompt {prompt!r}: a grounding prompt needs <ref-object> where each ref goes")
    if prompt is None:
        prompt = DEFAULT_PROMPTS[name]
        if "video" in ordered and "image" not in ordered:  # a video dataset: "Describe the video."
            prompt = prompt.replace("image", "video")
        return ColumnSchema(name, ordered, prompt, prompt_is_default=True)
    return ColumnSchema(name, ordered, prompt)


def map_row(raw: dict[str, Any], schema: ColumnSchema) -> dict[str, Any]:
    """A raw row -> the schema's fields by name (`query` filled from the prompt); never raises, so
    bad values are reported by `to_query_response` with the row's location."""
    row = {field: raw.get(column) for field, column in schema.columns.items()}
    if schema.prompt is not None:
        row["query"] = schema.prompt
    return row


def answer_texts(value: Any) -> list[str]:
    """An answer/caption value -> its texts: a string, a list of strings, or dicts holding one."""
    items = value if isinstance(value, (list, tuple)) else [value]
    texts = []
    for item in items:
        if isinstance(item, dict):
            item = next((item[k] for k in _TEXT_KEYS if isinstance(item.get(k), str)), None)
        if isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
            item = str(item)  # a numeric answer column; NaN is a missing value (pandas), never the text "nan"
        if isinstance(item, str):
            texts.append(item)
    return texts


def _media(value: Any, field: str, where: str) -> list[Any]:
    if value is None:
        raise DataError(f"{where}: the {field} is empty (null)")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for k, item in enumerate(items):
        if item is None or (isinstance(item, dict) and not item.get("bytes") and not item.get("path")):
            raise DataError(f"{where}: {field} {k + 1} is empty (null, or no bytes and no path)")
    return items


def _grounding(row: dict[str, Any], prompt: str, where: str) -> tuple[list[list[str]], dict[str, Any]]:
    """(turns as [query, response] pairs, objects) of a grounding row."""
    boxes, labels = row.get("boxes"), row.get("labels")
    if not isinstance(boxes, (list, tuple)) or not boxes:
        raise DataError(
            f"{where}: boxes is {'empty' if boxes in (None, [], ()) else type(boxes).__name__}; expected [x1, y1, x2, y2] or a list of them"
        )
    if all(isinstance(v, (int, float)) for v in boxes):
        boxes = [list(boxes)]
    refs = answer_texts(labels)
    if not refs:
        raise DataError(f"{where}: no ref/label text for the boxes")
    if len(boxes) == 1 and len(refs) > 1:
        boxes = [boxes[0]] * len(refs)  # several expressions for one object
    if len(boxes) != len(refs):
        raise DataError(f"{where}: {len(boxes)} boxes but {len(refs)} refs/labels; give one per box")
    for box in boxes:
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) for v in box)
        ):
            raise DataError(f"{where}: box {box!r} is not [x1, y1, x2, y2]")
        if box[2] <= box[0] or box[3] <= box[1]:  # COCO's [x, y, width, height] often fails this
            raise DataError(
                f"{where}: box {list(box)} has x2 <= x1 or y2 <= y1; boxes are [x1, y1, x2, y2] in pixels "
                "(convert COCO-style [x, y, width, height] first)"
            )
    turns = [[prompt, "<bbox>"] for _ in boxes]
    return turns, {"ref": refs, "bbox": [list(b) for b in boxes], "bbox_type": "real"}


def to_query_response(row: dict[str, Any], where: str) -> dict[str, Any]:
    """A row of schema fields (`map_row`) -> an ms-swift query/response row (with `history`,
    `objects` and `references` where they apply). Raises DataError naming `where`."""
    out: dict[str, Any] = {"system": row.get("system")}
    if "image" in row:
        out["images"] = _media(row["image"], "image", where)
    if "video" in row:
        out["videos"] = _media(row["video"], "video", where)
    query = row.get("query")
    if not isinstance(query, str) or not query.strip():
        raise DataError(f"{where}: the question is {'empty' if not query else type(query).__name__}")
    if "boxes" in row:
        turns, out["objects"] = _grounding(row, query, where)
        out["history"], (out["query"], out["response"]) = turns[:-1], turns[-1]
        return out
    out["query"] = query
    references = answer_texts(row.get("response"))
    if references:
        out["response"] = Counter(references).most_common(1)[0][0]  # ties: the first seen
        if isinstance(row.get("response"), (list, tuple)):
            out["references"] = references
    return out
