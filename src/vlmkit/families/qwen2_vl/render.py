"""The Qwen-VL prompt format as text segments: Qwen2-VL / Qwen2.5-VL (`render_qwen2_vl`) and Qwen3-VL
(`render_qwen3_vl`), following the checkpoints' chat templates (`chat_template.jinja` in each family
folder; tests/parity compares the two). Assistant replies and their end token are the supervised segments.
"""

from __future__ import annotations

from vlmkit.errors import DataError
from vlmkit.families.encoding import Segment

IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."


def _content_text(content: list[dict], where: str, media: bool = True) -> str:
    out = []
    for part in content:
        if part["type"] == "text":
            out.append(part["text"])
        elif not media:
            raise DataError(f"{where}: this family's template cannot place an {part['type']} in this message")
        else:
            out.append(IMAGE if part["type"] == "image" else VIDEO)
    return "".join(out)


def _turn(role: str, body: str) -> list[Segment]:
    """One `<|im_start|>role\\n...<|im_end|>\\n` block; assistant text and its end token are supervised."""
    supervised = role == "assistant"
    return [
        Segment(f"<|im_start|>{role}\n"),
        Segment(body + "<|im_end|>", supervised),
        Segment("\n"),
    ]


def render_qwen2_vl(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample"
) -> list[Segment]:
    """Qwen2-VL / Qwen2.5-VL: a default system prompt when the first message is not a system one."""
    segments: list[Segment] = []
    if messages and messages[0]["role"] != "system":
        segments += _turn("system", DEFAULT_SYSTEM)
    for message in messages:
        segments += _turn(message["role"], _content_text(message["content"], where))
    if add_generation_prompt:
        segments.append(Segment("<|im_start|>assistant\n"))
    return segments


def render_qwen3_vl(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample"
) -> list[Segment]:
    """Qwen3-VL Instruct: no default system prompt; assistant turns carry text only; tool results as user turns."""
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if i != 0:
                raise DataError(f"{where}: Qwen3-VL accepts a system message only as the first message")
            segments += _turn("system", _content_text(message["content"], where, media=False))
        elif role == "tool":
            first = i == 0 or messages[i - 1]["role"] != "tool"
            last = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
            body = "\n<tool_response>\n" + _content_text(message["content"], where) + "\n</tool_response>"
            segments.append(
                Segment(("<|im_start|>user" if first else "") + body + ("<|im_end|>\n" if last else ""))
            )
        else:
            segments += _turn(role, _content_text(message["content"], where, media=role != "assistant"))
    if add_generation_prompt:
        segments.append(Segment("<|im_start|>assistant\n"))
    return segments
