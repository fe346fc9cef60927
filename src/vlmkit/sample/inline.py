"""Media written inline in message text -> `<image>` / `<video>` placeholders plus listed paths.

Recognised by `vlmkit.sample.to_sample` in every text a person writes for vlmkit (rows of every dataset
format, chat messages, `chat.send`, `vlm.generate`; not OpenAI API requests, whose media come as parts), in
order of appearance:

- Qwen-VL / MindFormers `Picture 1: <img>PATH</img>`: an image; the `Picture N: `
  label is dropped (it is how Qwen-VL numbers images, not content);
- the self-llm tutorial's `<|vision_start|>PATH<|vision_end|>`: an image, or a video
  when PATH has a video extension; with `<|image_pad|>` / `<|video_pad|>` inside (an
  already rendered prompt) it is a placeholder for the next listed item;
- plain `<image>` / `<video>` placeholders, which take the next item of `images` / `videos`.

Other text, such as Qwen-VL `<ref>..</ref><box>(x1,y1),(x2,y2)</box>`, is left as it is.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError, PlaceholderError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".flv", ".wmv", ".m4v", ".mpeg", ".mpg", ".ts"}
_INLINE_RE = re.compile(
    r"(?:Picture \d+:\s*)?<img>(?P<img>.*?)</img>"  # Qwen-VL, MindFormers
    r"|<\|vision_start\|>(?P<vision>.*?)<\|vision_end\|>"  # self-llm tutorial (Qwen2-VL markers)
    r"|(?P<placeholder><image>|<video>)"
)


def message_texts(messages: list[dict]) -> list[str]:
    """Every text of role/content messages (string contents and text parts), in order."""
    out = []
    for m in messages:
        parts = m["content"] if isinstance(m["content"], list) else [m["content"]]
        out += [p if isinstance(p, str) else p.get("text", "") for p in parts if isinstance(p, (str, dict))]
    return [t for t in out if isinstance(t, str)]


def has_media_tag(text: str, kind: str) -> bool:
    """Whether `text` holds a placeholder or inline tag of `kind` ("image" or "video")."""
    for match in _INLINE_RE.finditer(text):
        if _tag_kind(match)[0] == kind:
            return True
    return False


def _tag_kind(match: re.Match) -> tuple[str, str | None]:
    """(kind, path) of one tag; path None for a placeholder that takes the next listed item."""
    if match["placeholder"]:
        return match["placeholder"][1:-1], None
    if match["img"] is not None:
        return "image", match["img"].strip()
    inner = match["vision"].strip()
    if inner in ("<|image_pad|>", "<|video_pad|>"):  # an already rendered placeholder
        return inner[2:7], None
    suffix = Path(inner.split("?", 1)[0]).suffix.lower()  # URLs may carry a query string
    return ("video" if suffix in VIDEO_SUFFIXES else "image"), inner


def inline_media(row: dict, where: str) -> dict:
    """A `messages` row with inline tags rewritten as placeholders and their paths merged, in
    order of appearance, with the listed `images` / `videos` (both lists). Rows without
    inline tags come back unchanged. Raises `DataError` when placeholders and lists disagree."""
    if not any(
        m[0] not in ("<image>", "<video>")
        for t in message_texts(row["messages"])
        for m in _INLINE_RE.finditer(t)
    ):
        return row
    queues = {"image": list(row["images"]), "video": list(row["videos"])}
    listed = {kind: len(q) for kind, q in queues.items()}
    placeholders = {"image": 0, "video": 0}
    ordered: dict[str, list] = {"image": [], "video": []}

    def replace(match: re.Match) -> str:
        kind, path = _tag_kind(match)
        if path is None:
            placeholders[kind] += 1
            if queues[kind]:
                ordered[kind].append(queues[kind].pop(0))
        elif not path:
            raise DataError(f"{where}: empty inline {kind} tag {match[0]!r}; put a path or URL inside it")
        else:
            ordered[kind].append(path)
        return f"<{kind}>"

    def rewrite(content: Any) -> Any:
        if isinstance(content, str):
            return _INLINE_RE.sub(replace, content)
        if isinstance(content, list):
            return [
                rewrite(p) if isinstance(p, str) else {**p, "text": rewrite(p["text"])}
                if isinstance(p, dict) and isinstance(p.get("text"), str) else p
                for p in content
            ]  # fmt: skip
        return content

    messages = [{**m, "content": rewrite(m["content"])} for m in row["messages"]]
    for kind in ("image", "video"):
        if placeholders[kind] != listed[kind]:
            raise PlaceholderError(
                f"{where}: {placeholders[kind]} <{kind}> placeholder(s) in the messages but {listed[kind]} "
                f"{kind}(s) listed in '{kind}s' (inline tags aside); make them match"
            )
    return {**row, "messages": messages, "images": ordered["image"], "videos": ordered["video"]}
