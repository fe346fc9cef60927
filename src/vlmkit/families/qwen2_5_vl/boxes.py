"""Qwen2.5-VL grounding text: JSON `{"bbox_2d": [x1, y1, x2, y2], "label": REF}` in absolute pixels of the
image as resized for the model (Qwen's process_bbox notebook and Qwen2.5-VL cookbooks). Qwen3-VL writes
the same JSON on a 0-1000 grid and reuses these functions."""

import json
import re

from vlmkit.media.grounding import BoxFormat

_OBJECT_RE = re.compile(r"\{[^{}]*\"bbox_2d\"[^{}]*\}", re.S)
_BOX_RE = re.compile(r"\"bbox_2d\"\s*:\s*\[([^\[\]]*)\]")
_LABEL_RE = re.compile(r'"label"\s*:\s*"((?:[^"\\]|\\.)*)"')


def write_ref(ref: str) -> str:
    return ref


def _one(box: list[int], label: str | None) -> str:
    item = {"bbox_2d": list(box)} | ({"label": label} if label is not None else {})
    return json.dumps(item, ensure_ascii=False)


def write_boxes(boxes: list[list[int]], label: str | None = None) -> str:
    """One box: `{"bbox_2d": [...], "label": ...}`; several: a JSON list of them."""
    if len(boxes) == 1:
        return _one(boxes[0], label)
    return "[" + ", ".join(_one(b, label) for b in boxes) + "]"


def parse(text: str) -> list:
    """Every `{"bbox_2d": [4 numbers], "label": ...}` object in the text (inside ```json fences or not)."""
    out = []
    for match in _OBJECT_RE.finditer(text):
        box = _BOX_RE.search(match[0])
        numbers = re.findall(r"-?\d+(?:\.\d+)?", box[1]) if box else []
        if len(numbers) != 4:
            continue
        label = _LABEL_RE.search(match[0])
        try:
            label = json.loads(f'"{label[1]}"') if label else None
        except json.JSONDecodeError:
            label = label[1]
        out.append((label, [float(n) for n in numbers]))
    return out


BOX_FORMAT = BoxFormat(
    space="resized_pixels", write_ref=write_ref, write_boxes=write_boxes, parse=parse, label_in_box=True
)
