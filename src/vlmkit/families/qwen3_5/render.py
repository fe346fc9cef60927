"""The Qwen3.5 prompt format as text segments, following the checkpoints' chat template (`chat_template.jinja`,
byte-identical in Qwen3.5-9B, -27B and -35B-A3B: sha256 a4aee8af...) rendered with `enable_thinking=False`.

What the template does that Qwen3-VL's does not, and vlmkit follows:
- every message's content is trimmed (`|trim`);
- an assistant turn after the last user query is written `<think>\\nREASONING\\n</think>\\n\\nREPLY`
  (reasoning from `<think>...</think>` at the start of the reply; empty when there is none); earlier
  assistant turns keep only their reply;
- the generation prompt is `<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n` (non-thinking mode).

vlmkit runs Qwen3.5 in non-thinking mode by default: replies come without reasoning (what chat, grounding and
eval read), and a training row is its prompt followed by the reply, token for token. An empty think block is
part of the prompt (unsupervised), as at inference; a reply that brings its own reasoning supervises it.
With `--enable-thinking` (saved with a run, `EncodingSettings.enable_thinking`) the prompt ends with
`<think>\n`, as the template's thinking mode writes it, and the last turns' reasoning (`<think>...</think>`
at the start of a dataset reply) is supervised after it; a reply without reasoning then trains an empty think
block.
"""

from __future__ import annotations

import re

from vlmkit.errors import DataError
from vlmkit.families.encoding import TEXT_END, TEXT_START, Segment
from vlmkit.families.qwen2_vl.render import IMAGE, VIDEO

EMPTY_THINK = "<think>\n\n</think>\n\n"
GENERATION_PROMPT = "<|im_start|>assistant\n" + EMPTY_THINK
THINKING_PROMPT = "<|im_start|>assistant\n<think>\n"  # with --enable-thinking
_MARKS = f"[{TEXT_START}{TEXT_END}]"
_LEADING = re.compile(rf"^(?:{_MARKS}|\s)+")
_TRAILING = re.compile(rf"(?:{_MARKS}|\s)+$")


def _trim(text: str) -> str:
    """Jinja's `|trim` of the rendered content, keeping the user-text marks (`encoding.mark_text`) it passes."""

    def keep_marks(match: re.Match) -> str:
        return re.sub(r"\s", "", match[0])

    return _TRAILING.sub(keep_marks, _LEADING.sub(keep_marks, text))


def _content(content: list[dict], where: str, role: str) -> str:
    parts = []
    for part in content:
        if part["type"] == "text":
            parts.append(part["text"])
        elif role in ("system", "assistant"):
            raise DataError(f"{where}: Qwen3.5's template cannot place an {part['type']} in a {role} message")
        else:
            parts.append(IMAGE if part["type"] == "image" else VIDEO)
    return _trim("".join(parts))


def _plain(text: str) -> str:
    return re.sub(_MARKS, "", text)


def _last_query(messages: list[dict], where: str) -> int:
    """Index of the last user message that is not a tool response (the template's `last_query_index`)."""
    for index in range(len(messages) - 1, -1, -1):
        if messages[index]["role"] == "user":
            text = _plain(_content(messages[index]["content"], where, "user"))
            if not (text.startswith("<tool_response>") and text.endswith("</tool_response>")):
                return index
    raise DataError(f"{where}: Qwen3.5's template needs a user message")


def _reply(text: str) -> tuple[str, str]:
    """(reasoning, reply) of an assistant text, split as the template splits it."""
    if "</think>" not in text:
        return "", text
    reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning.strip(), text.split("</think>")[-1].lstrip("\n")


def _assistant(content: list[dict], where: str, thinks: bool, enable_thinking: bool) -> list[Segment]:
    text = _content(content, where, "assistant")
    reasoning, reply = _reply(_plain(text))
    if TEXT_START in text:  # marked as dataset text (encoding.mark_text): keep the split pieces marked
        reasoning, reply = (TEXT_START + part + TEXT_END if part else part for part in (reasoning, reply))
    head = Segment("<|im_start|>assistant\n")
    if not thinks:
        return [head, Segment(reply + "<|im_end|>", True), Segment("\n")]
    if enable_thinking:  # the prompt ends with "<think>\n": the reasoning (empty or not) is the model's
        think = reasoning + "\n</think>\n\n"
        return [head, Segment("<think>\n"), Segment(think + reply + "<|im_end|>", True), Segment("\n")]
    if not reasoning:  # the empty think block the generation prompt ends with
        return [head, Segment(EMPTY_THINK), Segment(reply + "<|im_end|>", True), Segment("\n")]
    think = "<think>\n" + reasoning + "\n</think>\n\n"
    return [head, Segment(think + reply + "<|im_end|>", True), Segment("\n")]


def render_qwen3_5(
    messages: list[dict], add_generation_prompt: bool, where: str = "sample", enable_thinking: bool = False
) -> list[Segment]:
    """Qwen3.5's chat template as segments (rendered with `enable_thinking`); assistant replies and
    `<|im_end|>` supervised, with the reasoning of the last turns when thinking."""
    if not messages:
        raise DataError(f"{where}: no messages")
    last_query = _last_query(messages, where)
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system":
            if i != 0:
                raise DataError(f"{where}: Qwen3.5 accepts a system message only as the first message")
            segments.append(
                Segment("<|im_start|>system\n" + _content(message["content"], where, role) + "<|im_end|>\n")
            )
        elif role == "user":
            segments.append(
                Segment("<|im_start|>user\n" + _content(message["content"], where, role) + "<|im_end|>\n")
            )
        elif role == "assistant":
            segments += _assistant(message["content"], where, i > last_query, enable_thinking)
        elif role == "tool":
            first = (
                i > 0 and messages[i - 1]["role"] != "tool"
            )  # the template's `loop.previtem.role != "tool"`
            last = i == len(messages) - 1 or messages[i + 1]["role"] != "tool"
            body = "\n<tool_response>\n" + _content(message["content"], where, role) + "\n</tool_response>"
            segments.append(
                Segment(("<|im_start|>user" if first else "") + body + ("<|im_end|>\n" if last else ""))
            )
        else:
            raise DataError(f"{where}: Qwen3.5's template has no {role!r} role")
    if add_generation_prompt:
        segments.append(Segment(THINKING_PROMPT if enable_thinking else GENERATION_PROMPT))
    return segments


# vLLM and exports render requests with this: the checkpoint's template, in the run's mode unless a request asks
_DEFAULT_MODE = "{%- if enable_thinking is not defined %}{%- set enable_thinking = MODE %}{%- endif %}\n"


def chat_template_in_mode(chat_template: str, enable_thinking: bool = False) -> str:
    """`chat_template` (the checkpoint's) with `enable_thinking` defaulting to the run's mode (a request may
    still set it): what vlmkit encodes, for vLLM and for an export's users (`Family.chat_template_for`)."""
    return _DEFAULT_MODE.replace("MODE", "true" if enable_thinking else "false") + chat_template


def non_thinking_chat_template(chat_template: str) -> str:
    """`chat_template` with `enable_thinking` false unless a request sets it (vlmkit's default mode)."""
    return chat_template_in_mode(chat_template, False)
