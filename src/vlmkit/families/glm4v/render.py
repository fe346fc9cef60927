"""The GLM-4.1V prompt format as text segments, following the checkpoint's chat template (`chat_template.jinja`:
zai-org/GLM-4.1V-9B-Thinking at revision 3c1471e5, its sha256 as a JSON string 5232dbe7...):

    [gMASK]<sop><|system|>\\nSYSTEM<|user|>\\nQUESTION<|assistant|>\\nREPLY<|user|>\\n...<|assistant|>\\n

An image is `<|begin_of_image|><|image|><|end_of_image|>` (the `<|image|>` expanded to the image's tokens).
No token closes a turn: the model ends a reply with `<|user|>` (or `<|observation|>`, `<|endoftext|>`: the
checkpoint's stop tokens). So a reply is supervised together with the `<|user|>` after it, which the
template writes as the start of the next user turn, and which vlmkit adds after the last reply of a
training row (the template writes nothing there): the model learns to stop as it stops at inference.
"""

from __future__ import annotations

from vlmkit.errors import DataError
from vlmkit.families.encoding import Segment

IMAGE = "<|begin_of_image|><|image|><|end_of_image|>"
END_OF_REPLY = "<|user|>"


def message_text(content: list[dict], where: str, role: str, model: str = "GLM-4.1V") -> str:
    """A message's text with each image's placeholder; `model` names the checkpoints in the refusals."""
    parts = []
    for part in content:
        if part["type"] == "text":
            parts.append(part["text"])
        elif role != "user":
            raise DataError(f"{where}: {model}'s template cannot place an {part['type']} in a {role} message")
        elif part["type"] == "image":
            parts.append(IMAGE)
        else:
            raise DataError(f"{where}: {model} in vlmkit takes images only; video input is not supported")
    return "".join(parts)


def render_glm4v(messages: list[dict], add_generation_prompt: bool, where: str = "sample") -> list[Segment]:
    """GLM-4.1V's chat template as segments; each assistant reply and the `<|user|>` after it supervised."""
    if not messages:
        raise DataError(f"{where}: no messages")
    segments = [Segment("[gMASK]<sop>")]
    for i, message in enumerate(messages):
        role, text = message["role"], message_text(message["content"], where, message["role"])
        after_reply = i > 0 and messages[i - 1]["role"] == "assistant"
        if role == "system":
            if i != 0:
                raise DataError(f"{where}: GLM-4.1V accepts a system message only as the first message")
            segments.append(Segment("<|system|>\n" + text))
        elif role == "user":  # after a reply, its `<|user|>` is the reply's supervised end
            segments.append(Segment(("" if after_reply else "<|user|>") + "\n" + text))
        elif role == "assistant":
            if after_reply:
                raise DataError(f"{where}: GLM-4.1V's template needs a user turn between two assistant replies")
            segments += [Segment("<|assistant|>\n"), Segment(text + END_OF_REPLY, True)]
        else:
            raise DataError(f"{where}: GLM-4.1V's template has no {role!r} role")
    if add_generation_prompt:
        segments.append(Segment("<|assistant|>\n"))
    return segments
