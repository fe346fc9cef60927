"""The GLM-4.5V / GLM-4.6V prompt format as text segments, following `chat_template.jinja` (see `__init__.py` for
where it comes from) rendered as `apply_chat_template` renders it by default (no `enable_thinking` given: the
model decides whether to reason):

    [gMASK]<sop><|system|>\\nSYSTEM<|user|>\\nQUESTION<|assistant|>\\n<think></think>\\nREPLY<|user|>\\n...<|assistant|>\\n

What differs from GLM-4.1V's template (`vlmkit.families.glm4v.render`), and vlmkit follows:
- every assistant turn opens with a think block: `<think>REASONING</think>` for a turn after the last user
  message whose reply brings `<think>...</think>`, else `<think></think>` (earlier turns lose their reasoning);
- a reply is written stripped (`content.strip()`), after a newline; an empty reply writes nothing;
- the generation prompt is `<|assistant|>\\n`: the model writes the think block itself.

As for GLM-4.1V, no token closes a turn (the model stops with `<|user|>`), so a reply is supervised with the think
block and the `<|user|>` after it; the `\\n` after `<|assistant|>` is prompt, as at inference.
"""

from __future__ import annotations

import re

from vlmkit.errors import DataError
from vlmkit.families.encoding import TEXT_END, TEXT_START, Segment
from vlmkit.families.glm4v.render import END_OF_REPLY, message_text

MODEL = "GLM-4.5V/4.6V"


def _reasoning_and_reply(text: str) -> tuple[str, str]:
    """(reasoning, reply) of an assistant text, split as the template splits it (both stripped)."""
    if "</think>" not in text:
        return "", text.strip()
    reasoning = text.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
    return reasoning.strip(), text.split("</think>")[-1].lstrip("\n").strip()


def _marked(text: str, dataset_text: bool) -> str:
    return TEXT_START + text + TEXT_END if dataset_text and text else text


def _assistant(content: list[dict], where: str, after_last_user: bool) -> list[Segment]:
    """`<|assistant|>\\n` (prompt), then the think block, the stripped reply and `<|user|>` (supervised)."""
    text = message_text(content, where, "assistant", MODEL)
    reasoning, reply = _reasoning_and_reply(re.sub(f"[{TEXT_START}{TEXT_END}]", "", text))
    dataset_text = TEXT_START in text  # marked as dataset text (encoding.mark_text): keep the pieces marked
    think = (
        "<think>" + _marked(reasoning, dataset_text) + "</think>"
        if after_last_user and reasoning
        else "<think></think>"
    )
    body = "\n" + _marked(reply, dataset_text) if reply else ""
    return [Segment("<|assistant|>\n"), Segment(think + body + END_OF_REPLY, True)]


def render_glm46v(messages: list[dict], add_generation_prompt: bool, where: str = "sample") -> list[Segment]:
    """GLM-4.5V/4.6V's chat template as segments; each reply, its think block and the `<|user|>` after it
    supervised."""
    if not messages:
        raise DataError(f"{where}: no messages")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    segments = [Segment("[gMASK]<sop>")]
    for i, message in enumerate(messages):
        role = message["role"]
        after_reply = i > 0 and messages[i - 1]["role"] == "assistant"
        if role == "system":
            if i != 0:
                raise DataError(f"{where}: {MODEL} accepts a system message only as the first message")
            segments.append(Segment("<|system|>\n" + message_text(message["content"], where, role, MODEL)))
        elif role == "user":  # after a reply, its `<|user|>` is the reply's supervised end
            text = message_text(message["content"], where, role, MODEL)
            segments.append(Segment(("" if after_reply else "<|user|>") + "\n" + text))
        elif role == "assistant":
            if after_reply:
                raise DataError(
                    f"{where}: {MODEL}'s template needs a user turn between two assistant replies"
                )
            segments += _assistant(message["content"], where, i > last_user)
        else:
            raise DataError(
                f"{where}: {MODEL}'s template in vlmkit has no {role!r} role (tools are not supported)"
            )
    if add_generation_prompt:
        segments.append(Segment("<|assistant|>\n"))
    return segments
