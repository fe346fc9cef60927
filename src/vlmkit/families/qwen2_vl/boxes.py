"""Qwen2-VL grounding text: `<|object_ref_start|>REF<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`,
coordinates on a 0-1000 grid of the image (Qwen's process_bbox notebook, ms-swift's qwen2_vl template)."""

from vlmkit.media.grounding import BoxFormat, parse_markup

REF_RE = r"<\|object_ref_start\|>(.*?)<\|object_ref_end\|>"
BOX_RE = r"<\|box_start\|>(.*?)<\|box_end\|>"
# as shown when a reply is decoded with the special tokens skipped: "the man(123,235),(324,546)"
BARE_BOX_RE = r"(\(\s*\d+\s*,\s*\d+\s*\)\s*,\s*\(\s*\d+\s*,\s*\d+\s*\))"


def write_ref(ref: str) -> str:
    return f"<|object_ref_start|>{ref}<|object_ref_end|>"


def write_boxes(boxes: list[list[int]], label: str | None = None) -> str:
    return "".join(f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>" for x1, y1, x2, y2 in boxes)


def parse(text: str) -> list:
    found = parse_markup(text, REF_RE, BOX_RE)
    return found or parse_markup(text, r"(?!)()", BARE_BOX_RE)


BOX_FORMAT = BoxFormat(
    space="norm1000",
    write_ref=write_ref,
    write_boxes=write_boxes,
    parse=parse,
    keep_tokens=("<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"),
)
