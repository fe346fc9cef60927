"""GLM-4.1V / GLM-4.5V grounding text: `<|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>`, each coordinate normalised
by the image's width (x) or height (y) and scaled by 1000 (the GLM-V repository's README, "Grounding"); several
boxes of one ref in one pair: `[[x1,y1,x2,y2],[...]]`. The ref is plain text. The README says the bracket
style of replies varies ([], [[]], (), <>): parsing takes any 4 numbers per box between the tokens."""

from vlmkit.media.grounding import BoxFormat, parse_markup

BOX_RE = r"<\|begin_of_box\|>(.*?)<\|end_of_box\|>"


def write_ref(ref: str) -> str:
    return ref


def write_boxes(boxes: list[list[int]], label: str | None = None) -> str:
    inner = ",".join(f"[{x1},{y1},{x2},{y2}]" for x1, y1, x2, y2 in boxes)
    return f"<|begin_of_box|>{inner if len(boxes) == 1 else '[' + inner + ']'}<|end_of_box|>"


def parse(text: str) -> list:
    return parse_markup(text, r"(?!)()", BOX_RE)


BOX_FORMAT = BoxFormat(
    space="norm1000",
    write_ref=write_ref,
    write_boxes=write_boxes,
    parse=parse,
    keep_tokens=("<|begin_of_box|>", "<|end_of_box|>"),
)
