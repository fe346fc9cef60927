"""Qwen-VL (first generation) grounding text: `<ref>REF</ref><box>(x1,y1),(x2,y2)</box>` on a 0-1000 grid."""

from vlmkit.media.grounding import BoxFormat, parse_markup

REF_RE = r"<ref>(.*?)</ref>"
BOX_RE = r"<box>(.*?)</box>"


def write_ref(ref: str) -> str:
    return f"<ref>{ref}</ref>"


def write_boxes(boxes: list[list[int]], label: str | None = None) -> str:
    return "".join(f"<box>({x1},{y1}),({x2},{y2})</box>" for x1, y1, x2, y2 in boxes)


def parse(text: str) -> list:
    return parse_markup(text, REF_RE, BOX_RE)


BOX_FORMAT = BoxFormat(space="norm1000", write_ref=write_ref, write_boxes=write_boxes, parse=parse)
