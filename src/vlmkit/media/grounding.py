"""Grounding boxes: one family-neutral form in datasets and answers, written the way each family was trained.

Dataset rows carry `objects` (ms-swift's format)::

    {"ref": ["guy in red"], "bbox": [[138, 136, 235, 359]], "bbox_type": "real", "image_id": [0]}

with `<ref-object>` / `<bbox>` placeholders in the text, filled in order: the k-th `<ref-object>`
becomes the family's text for `ref[k]`, the k-th `<bbox>` the family's text for `bbox[k]` (labelled
with `ref[k]` where the family writes labels, in replies only: a prompt's box carries no label),
measured on image `image_id[k]` (default 0).
`bbox_type` is "real" (pixels of the original, upright image; the default) or "norm1" (0-1).
ms-swift 2.x's list form `[{"caption": .., "bbox": .., "bbox_type": .., "image": 0}, ...]` is read
too, and a `bbox` entry may be a list of boxes (one placeholder, several boxes).

Grounding markup written literally in the text on the 0-1000 grid (Qwen2-VL's
`<|object_ref_start|>REF<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, Qwen-VL's
`<ref>REF</ref><box>(x1,y1),(x2,y2)</box>`, InternVL's `<box>[[x1, y1, x2, y2]]</box>`) is read into
the same neutral form, so a dataset made for one family trains another.

Each family that grounds has a `BoxFormat` (in its own folder): how it writes a ref and boxes, how
it parses them out of a reply, and its coordinate space: "norm1000" (0-1000 of the image) or
"resized_pixels" (pixels of the image as resized for the model). Conversion always goes through
original-image pixels and uses the size after the model's resize, so `--max-pixels` never
misplaces a box.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlmkit.errors import DataError
from vlmkit.sample import Sample

SPACES = ("norm1000", "resized_pixels")
BBOX_TYPES = ("real", "norm1")
REF_PLACEHOLDER = "<ref-object>"
BOX_PLACEHOLDER = "<bbox>"
_PLACEHOLDER_RE = re.compile(r"<ref-object>|<bbox>")
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")

# Literal markup in dataset text, all on the 0-1000 grid: Qwen2-VL's special tokens, Qwen-VL's and
# InternVL's tags (the box inner text is `(x1,y1),(x2,y2)` or `[[x1, y1, x2, y2], ...]`).
LITERAL_REF = r"<\|object_ref_start\|>(?P<ref>.*?)<\|object_ref_end\|>|<ref>(?P<ref2>.*?)</ref>"
LITERAL_BOX = r"<\|box_start\|>(?P<box>.*?)<\|box_end\|>|<box>(?P<box2>.*?)</box>"
_LITERAL_RE = re.compile(rf"(?P<r>{LITERAL_REF})|(?P<b>{LITERAL_BOX})", re.S)
# The tokens of that markup: dataset text may write them (a data convention, rewritten per family).
LITERAL_TOKENS = ("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>")

Box = list[float]  # [x1, y1, x2, y2]
Size = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class BoxFormat:
    """How a family writes and reads grounding text.

    space: "norm1000" or "resized_pixels" (see the module docstring).
    write_ref(ref) -> text of a referring expression on its own (`<ref-object>`).
    write_boxes(boxes, label) -> text of one or more boxes, already in `space` as ints (`<bbox>`);
    `label` is the ref, for formats that write it with the box (JSON), else ignored.
    label_in_box: whether `write_boxes` writes the label (then a literal ref followed by its box is
    written as one `write_boxes` call, not ref text + box text).
    parse(text) -> [(ref or None, box in `space`)] in order of appearance.
    keep_tokens: special tokens of the format that must survive decoding a reply.
    """

    space: str
    write_ref: Callable[[str], str]
    write_boxes: Callable[[list[list[int]], str | None], str]
    parse: Callable[[str], list[tuple[str | None, Box]]]
    label_in_box: bool = False
    keep_tokens: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.space not in SPACES:
            raise ValueError(f"BoxFormat.space must be one of {SPACES}, got {self.space!r}")


@dataclass
class Objects:
    """The neutral objects of one row: parallel lists; `boxes[k]` is the group of boxes of entry k
    (usually one), in `bbox_type` units, on image `image_ids[k]`."""

    refs: list[str]
    boxes: list[list[Box]]
    image_ids: list[int]
    bbox_type: str = "real"


# -- reading `objects` ------------------------------------------------------------------------------


def _box_group(value: Any, where: str) -> list[Box]:
    """[x1, y1, x2, y2] or [[x1, y1, x2, y2], ...] -> a list of boxes (floats), checked."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
        return [b for item in value for b in _box_group(item, where)]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):  # NaN passes every comparison below (JSON readers take NaN and Infinity)
        raise DataError(f"{where}: a bbox must be 4 finite numbers [x1, y1, x2, y2], got {value!r}")
    x1, y1, x2, y2 = (float(v) for v in value)
    if x2 < x1 or y2 < y1 or min(x1, y1) < 0:
        raise DataError(
            f"{where}: bbox {list(value)} is not [x1, y1, x2, y2] with 0 <= x1 <= x2 and 0 <= y1 <= y2"
        )
    return [[x1, y1, x2, y2]]


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _image_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(
            f"{where}: image_id must be a whole number >= 0 (0 = the row's first image), got {value!r}"
        )
    return value


def parse_objects(value: Any, where: str = "row") -> Objects | None:
    """A row's `objects` (dict form, ms-swift 2.x list form, either as a JSON string, or None) -> `Objects`;
    DataError naming `where`."""
    where = f"{where}: objects"
    if isinstance(value, str):  # ms-swift writes it as a JSON string
        try:
            value = json.loads(value) if value.strip() else None
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: a string but not valid JSON ({e.msg} at column {e.colno})") from None
    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, list):  # ms-swift 2.x: one dict per object
        if not all(isinstance(item, dict) for item in value):
            raise DataError(f"{where}: expected a list of objects with 'bbox', got {value!r}")
        types = {item.get("bbox_type", "real") for item in value}
        if len(types) > 1:
            raise DataError(f"{where}: mixed bbox_type values {sorted(map(str, types))}; use one per row")
        value = {
            "ref": [str(item.get("caption", item.get("ref", ""))) for item in value],
            "bbox": [item.get("bbox") for item in value],
            "bbox_type": types.pop(),
            "image_id": [item.get("image", item.get("image_id", 0)) for item in value],
        }
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: expected an object with 'ref', 'bbox', 'bbox_type', 'image_id', got {value!r}"
        )
    unknown = set(value) - {"ref", "bbox", "bbox_type", "image_id", "image"}
    if unknown:
        raise DataError(
            f"{where}: unknown key(s) {', '.join(sorted(unknown))}; expected ref, bbox, bbox_type, image_id"
        )
    bbox_type = value.get("bbox_type") or "real"
    if bbox_type not in BBOX_TYPES:
        raise DataError(f"{where}: bbox_type {bbox_type!r} is not one of {', '.join(BBOX_TYPES)}")
    raw_boxes = value.get("bbox")
    if raw_boxes is None:
        raw_boxes = []
    if not isinstance(raw_boxes, (list, tuple)):
        raise DataError(f"{where}: 'bbox' must be a list of [x1, y1, x2, y2] boxes, got {raw_boxes!r}")
    if len(raw_boxes) == 4 and all(isinstance(v, (int, float)) for v in raw_boxes):
        raw_boxes = [raw_boxes]  # a single box written without the outer list
    boxes = [_box_group(b, f"{where}: bbox {k}") for k, b in enumerate(raw_boxes)]
    if bbox_type == "norm1":
        for k, group in enumerate(boxes):
            if any(v > 1 for box in group for v in box):
                raise DataError(
                    f"{where}: bbox {k} has values over 1 but bbox_type is norm1 (0-1); use real for pixels"
                )
    refs = [str(r) for r in _as_list(value.get("ref"))]
    ids = _as_list(value.get("image_id", value.get("image")))
    if len(ids) == 1 and len(boxes) > 1:
        ids = ids * len(boxes)
    if ids and len(ids) != len(boxes):
        raise DataError(
            f"{where}: {len(ids)} image_id values for {len(boxes)} bbox entries; give one per bbox"
        )
    image_ids = [_image_id(i, where) for i in ids] or [0] * len(boxes)
    return Objects(refs=refs, boxes=boxes, image_ids=image_ids, bbox_type=bbox_type)


# -- coordinates ------------------------------------------------------------------------------------


def to_family(box: Box, space: str, original: Size, resized: Size) -> list[int]:
    """A box in original-image pixels -> ints in `space`, clamped to the image (as Qwen's process_bbox)."""
    (h, w), (rh, rw) = original, resized
    if space == "norm1000":
        sx, sy, top_x, top_y = 1000 / w, 1000 / h, 1000, 1000
    else:
        sx, sy, top_x, top_y = rw / w, rh / h, rw - 1, rh - 1
    x1, y1, x2, y2 = box
    return [
        max(0, min(round(x1 * sx), top_x)),
        max(0, min(round(y1 * sy), top_y)),
        max(0, min(round(x2 * sx), top_x)),
        max(0, min(round(y2 * sy), top_y)),
    ]


def _from_family(box: Box, space: str, original: Size, resized: Size) -> Box:
    sx, sy = grid_unit(space, original, resized)
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def from_family(box: Box, space: str, original: Size, resized: Size) -> Box:
    """A box in `space` -> original-image pixels (floats, 2 decimals)."""
    return [round(v, 2) for v in _from_family(box, space, original, resized)]


def grid_unit(space: str, original: Size, resized: Size) -> tuple[float, float]:
    """(x, y) size in original pixels of one step of `space`: how exact a written box can be."""
    (h, w), (rh, rw) = original, resized
    return (w / 1000, h / 1000) if space == "norm1000" else (w / rw, h / rh)


def _to_pixels(box: Box, bbox_type: str, original: Size) -> Box:
    if bbox_type == "norm1":
        return [box[0] * original[1], box[1] * original[0], box[2] * original[1], box[3] * original[0]]
    return box


# -- markup -----------------------------------------------------------------------------------------


def boxes_in(inner: str, where: str = "text") -> list[Box]:
    """All boxes of a box tag's inner text: `(x1,y1),(x2,y2)` or `[[x1, y1, x2, y2], ...]`."""
    numbers = [float(n) for n in _NUMBER_RE.findall(inner)]
    if not numbers or len(numbers) % 4:
        raise DataError(f"{where}: box text {inner!r} does not hold x1, y1, x2, y2 numbers")
    return [numbers[i : i + 4] for i in range(0, len(numbers), 4)]


def parse_markup(text: str, ref_re: str, box_re: str) -> list[tuple[str | None, Box]]:
    """[(ref or None, box)] from tagged text: `ref_re` captures the ref in its first group, `box_re` the
    box inner text; a box takes the ref written just before it (only spaces between, or other boxes)."""
    pattern = re.compile(rf"(?P<r>{ref_re})|(?P<b>{box_re})", re.S)
    out: list[tuple[str | None, Box]] = []
    ref, last_end = None, 0
    for match in pattern.finditer(text):
        if text[last_end : match.start()].strip(" ,\n"):
            ref = None  # other words in between: the ref does not name this box
        if match["r"] is not None:
            ref = re.fullmatch(ref_re, match[0], re.S).group(1)
        else:
            inner = re.fullmatch(box_re, match[0], re.S).group(1)
            try:
                out += [(ref, box) for box in boxes_in(inner)]
            except DataError:
                pass  # a reply with malformed box text: skip it, keep the rest
        last_end = match.end()
    return out


def literal_boxes(text: str, where: str = "text", strict: bool = True) -> list[Box]:
    """The boxes of literal grounding markup in `text` (every syntax dataset text may use: Qwen2-VL's box
    tokens, Qwen-VL's and InternVL's `<box>` tags), on the 0-1000 grid, in order. A box tag whose text is
    not 4 numbers per box raises DataError naming `where`, or is skipped when not `strict` (a reply)."""
    out: list[Box] = []
    for match in _LITERAL_RE.finditer(text):
        if match["b"] is None:
            continue
        try:
            out += boxes_in(match["box"] if match["box"] is not None else match["box2"], where)
        except DataError:
            if strict:
                raise
    return out


def answer_text(text: str, refs: list[str], where: str = "text") -> str:
    """A text answer as the model is taught to write it: each `<ref-object>` filled with the next of
    `refs`, literal ref markup (`<ref>cat</ref>`) as its ref text. DataError naming `where` when there are
    more placeholders than refs."""
    if text.count(REF_PLACEHOLDER) > len(refs):
        raise DataError(
            f"{where}: {text.count(REF_PLACEHOLDER)} <ref-object> placeholder(s) in the answer but "
            f"{len(refs)} ref(s) in its objects to fill them"
        )
    filled = iter(refs)
    text = re.sub(re.escape(REF_PLACEHOLDER), lambda _: next(filled), text)
    return _LITERAL_RE.sub(lambda m: m["ref"] if m["ref"] is not None else (m["ref2"] or ""), text)


def norm1000_to_pixels(box: Box, original: Size) -> Box:
    """A box on the 0-1000 grid -> pixels of the `original` (height, width) image (2 decimals)."""
    return from_family(box, "norm1000", original, original)


# -- writing a sample for a family -----------------------------------------------------------------


def needs_boxes(sample: Sample) -> bool:
    """Whether any text of `sample` holds a grounding placeholder or literal box markup (cheap)."""
    return any(
        p["type"] == "text" and (_PLACEHOLDER_RE.search(p["text"]) or _LITERAL_RE.search(p["text"]))
        for m in sample.messages
        for p in m["content"]
    )


def _image_before(index_of_part: list[int], position: int) -> int:
    """Index of the last image seen before `position` in the conversation (0 when none)."""
    before = [k for k, pos in enumerate(index_of_part) if pos < position]
    return before[-1] if before else 0


def write_for_family(sample: Sample, box_format: BoxFormat, sizes: list[tuple[Size, Size]]) -> Sample:
    """`sample` with `<ref-object>` / `<bbox>` placeholders and literal grounding markup rewritten in
    `box_format`'s text; `sizes[k]` is ((orig_h, orig_w), (resized_h, resized_w)) of image k.

    Returns the sample unchanged when it has neither objects nor grounding text.
    """
    objects = parse_objects(sample.objects, sample.where)
    if not needs_boxes(sample):
        return sample
    counters = {"ref": 0, "box": 0}
    image_positions: list[int] = []

    def family_boxes(group: list[Box], image_id: int, bbox_type: str, what: str) -> list[list[int]]:
        if image_id >= len(sizes):
            raise DataError(
                f"{sample.where}: {what} is on image {image_id} (0-based) but the row has {len(sizes)} image(s)"
            )
        original, resized = sizes[image_id]
        return [
            to_family(_to_pixels(b, bbox_type, original), box_format.space, original, resized) for b in group
        ]

    def placeholder(match: re.Match, role: str) -> str:
        if objects is None:
            raise DataError(f"{sample.where}: {match[0]} in the text but the row has no 'objects'")
        if match[0] == REF_PLACEHOLDER:
            k = counters["ref"]
            counters["ref"] += 1
            if k >= len(objects.refs):
                raise DataError(
                    f"{sample.where}: {k + 1} <ref-object> placeholders but {len(objects.refs)} ref(s) in objects"
                )
            return box_format.write_ref(objects.refs[k])
        k = counters["box"]
        counters["box"] += 1
        if k >= len(objects.boxes):
            raise DataError(
                f"{sample.where}: {k + 1} <bbox> placeholders but {len(objects.boxes)} bbox(es) in objects"
            )
        # Only a reply names what it boxes: a `<bbox>` in a prompt ("Find <bbox>" -> "<ref-object>")
        # carries the box alone, or the model learns to copy the answer from the question.
        label = objects.refs[k] if k < len(objects.refs) and role == "assistant" else None
        boxes = family_boxes(objects.boxes[k], objects.image_ids[k], objects.bbox_type, f"bbox {k}")
        return box_format.write_boxes(boxes, label)

    def literal(text: str, image_id: int) -> str:
        out, last, pending_ref = [], 0, None
        for match in _LITERAL_RE.finditer(text):
            between = text[last : match.start()]
            if pending_ref is not None and (between.strip() or match["r"] is not None):
                out.append(box_format.write_ref(pending_ref))  # a ref with no box right after it
                pending_ref = None
            out.append(between)
            if match["r"] is not None:
                pending_ref = match["ref"] if match["ref"] is not None else match["ref2"]
            else:
                inner = match["box"] if match["box"] is not None else match["box2"]
                norm = boxes_in(inner, f"{sample.where}: {match[0]!r}")
                original, resized = sizes[image_id] if image_id < len(sizes) else (None, None)
                if original is None:
                    raise DataError(f"{sample.where}: box {match[0]!r} in a row with no image to place it on")
                group = [_from_family(b, "norm1000", original, resized) for b in norm]
                boxes = [to_family(b, box_format.space, original, resized) for b in group]
                if box_format.label_in_box:
                    out.append(box_format.write_boxes(boxes, pending_ref))
                else:
                    if pending_ref is not None:
                        out.append(box_format.write_ref(pending_ref))
                    out.append(box_format.write_boxes(boxes, None))
                pending_ref = None
            last = match.end()
        if pending_ref is not None:
            out.append(box_format.write_ref(pending_ref))
        out.append(text[last:])
        return "".join(out)

    messages = []
    position = 0
    for message in sample.messages:
        content = []
        for part in message["content"]:
            position += 1
            if part["type"] == "image":
                image_positions.append(position)
            if part["type"] == "text":
                image_id = _image_before(image_positions, position)
                text = part["text"]
                if _LITERAL_RE.search(text):  # literal markup first: the placeholders' text may hold tags
                    text = literal(text, image_id)
                text = _PLACEHOLDER_RE.sub(lambda m, role=message["role"]: placeholder(m, role), text)
                part = {"type": "text", "text": text}
            content.append(part)
        messages.append({**message, "content": content})
    return Sample(messages=messages, objects=sample.objects, where=sample.where, extra=sample.extra)


# -- replies ----------------------------------------------------------------------------------------


def parse_reply(
    text: str, box_format: BoxFormat, sizes: list[tuple[Size, Size]], image_id: int | None = None
) -> list[dict[str, Any]]:
    """Boxes in a model's reply -> `[{"ref": str | None, "bbox": [x1, y1, x2, y2], "image_id": k}]` in
    original-image pixels. `sizes` as for `write_for_family`; the boxes are taken to be on image
    `image_id` (default: the prompt's last image, the one a reply usually talks about). [] without images."""
    if not sizes:
        return []
    k = len(sizes) - 1 if image_id is None else image_id
    original, resized = sizes[k]
    return [
        {"ref": ref, "bbox": from_family(box, box_format.space, original, resized), "image_id": k}
        for ref, box in box_format.parse(text)
    ]


def reference_objects(template, sample: Sample) -> list[dict[str, Any]]:
    """The row's own `objects` (the reference answer) as `parse_reply` gives a reply's boxes:
    `[{"ref", "bbox": [x1, y1, x2, y2] in original-image pixels, "image_id"}]`, one per box; [] for a
    row without objects or images, or a family without grounding."""
    objects = parse_objects(sample.objects, sample.where)
    if objects is None or template.box_format is None or not sample.media("image"):
        return []
    originals = [original for original, _ in template.image_sizes(sample)]
    out = []
    for k, (group, image_id) in enumerate(zip(objects.boxes, objects.image_ids, strict=True)):
        if image_id < len(originals):
            ref = objects.refs[k] if k < len(objects.refs) else None
            for box in group:
                pixels = _to_pixels(box, objects.bbox_type, originals[image_id])
                out.append({"ref": ref, "bbox": [round(v, 2) for v in pixels], "image_id": image_id})
    return out


def decode_reply(tokenizer, ids, keep_tokens: tuple[str, ...]) -> str:
    """Decode generated ids as `skip_special_tokens=True` does, but keep `keep_tokens` (grounding markup
    such as `<|box_start|>`, which the real tokenizers mark special)."""
    keep = {tokenizer.convert_tokens_to_ids(t) for t in keep_tokens}
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special} | set(
        tokenizer.all_special_ids
    )
    ids = [int(i) for i in ids if int(i) in keep or int(i) not in special]
    return tokenizer.decode(ids, skip_special_tokens=False)


def objects_in_reply(
    template, sample: Sample, reply: str, limit: int | None = None
) -> list[dict[str, Any]]:
    """The boxes of a reply to `sample` (the prompt) as `parse_reply` gives them, using the family
    template's box format and its resize of the sample's images (at the resolution `limit` the prompt
    was encoded with; None: the template's); [] for a family without grounding."""
    box_format = template.box_format  # None for a family without grounding
    if box_format is None or not sample.media("image"):
        return []
    return parse_reply(reply, box_format, template.image_sizes(sample, limit))
