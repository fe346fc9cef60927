"""The one sample format every reader, chat turn and request is normalised to.

A `Sample` holds `messages`, each `{"role": str, "content": [part, ...]}` where a part
is one of

    {"type": "text", "text": str}
    {"type": "image", "image": SOURCE}
    {"type": "video", "video": SOURCE}

and SOURCE is whatever `vlmkit.media.images` can open (a path, an http(s) or `data:` URL,
bytes, or a PIL image). Media sit in the content exactly where the model sees them,
so the family templates never have to match placeholders against lists.

`to_sample` accepts the two shapes users write by hand:

- ms-swift / LLaMA-Factory rows: string contents with `<image>` / `<video>`
  placeholders, the media listed in order under `images` / `videos`, an optional
  top-level `system`;
- OpenAI-style content parts (`text`, `image_url`, `video_url`, `image`, `video`).

Inline media, one rule everywhere a person writes text for vlmkit (dataset rows, the chat, `chat.send`,
`vlm.generate`): `<img>SRC</img>` (also `Picture N: <img>SRC</img>`) and `<|vision_start|>SRC<|vision_end|>`
in a text are the image or video SRC at that place, as `vlmkit.sample.inline` reads them. Only the OpenAI
API (`vlmkit serve`) passes `media_tags=False`: its text parts are text, and its media come as parts.

Other dataset formats (query/response, ShareGPT, ...) are converted to these by
`vlmkit.data` before they get here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmkit.errors import DataError, PlaceholderError

ROLES = ("system", "user", "assistant", "tool")
PLACEHOLDERS = {"<image>": "image", "<video>": "video"}
_PLACEHOLDER_RE = re.compile(r"(<image>|<video>)")


@dataclass
class Sample:
    """A normalised conversation. `where` names its origin (file:line, request) for errors."""

    messages: list[dict[str, Any]]
    objects: dict[str, Any] | None = None
    where: str = "sample"
    extra: dict[str, Any] = field(default_factory=dict)

    def media(self, kind: str) -> list[Any]:
        """The sources of all parts of `kind` ("image" or "video"), in order of appearance."""
        return [p[kind] for m in self.messages for p in m["content"] if p["type"] == kind]

    def requested_sizes(self) -> list[tuple[int, int] | None]:
        """Per image, in `media("image")` order: the (height, width) its part asks for with qwen-vl-utils'
        `resized_height` / `resized_width`, or None. Families that resize by pixel limits honour it
        (rounded to their factor within the limits); the others refuse it (`refuse_requested_sizes`)."""
        return [
            (p["resized_height"], p["resized_width"]) if "resized_height" in p else None
            for m in self.messages
            for p in m["content"]
            if p["type"] == "image"
        ]

    def text(self, role: str | None = None) -> str:
        """The text of all messages (of one role if given), media parts left out."""
        return "".join(
            p["text"]
            for m in self.messages
            if role in (None, m["role"])
            for p in m["content"]
            if p["type"] == "text"
        )

    @property
    def ends_with_assistant(self) -> bool:
        return bool(self.messages) and self.messages[-1]["role"] == "assistant"


def refuse_requested_sizes(sample: Sample, family: str) -> None:
    """A DataError when an image of `sample` asks for its own size, which `family` cannot give it."""
    if any(size is not None for size in sample.requested_sizes()):
        raise DataError(
            f"{sample.where}: resized_height/resized_width on an image apply to the Qwen2-VL families only; "
            f"{family} sizes images itself, remove them"
        )


def _requested_size(part: dict, where: str) -> dict:
    """qwen-vl-utils' per-image `resized_height` / `resized_width` (both, whole numbers > 0), checked;
    its per-image pixel limits are refused rather than ignored."""
    for key in ("min_pixels", "max_pixels"):
        if key in part:
            raise DataError(
                f"{where}: a per-image {key} is not supported; use --{key.replace('_', '-')} "
                "(or resized_height/resized_width for one image)"
            )
    given = {k: part[k] for k in ("resized_height", "resized_width") if k in part}
    if not given:
        return {}
    if len(given) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in given.values()):
        raise DataError(f"{where}: resized_height and resized_width must both be given, as whole numbers above 0")
    return given


def is_local_path(source: Any) -> bool:
    """Whether a media source names a file of this machine: a non-empty string that is neither a URL
    (`scheme://...`) nor a `data:` URL. Bytes, PIL images and URLs are not."""
    return isinstance(source, str) and bool(source) and "://" not in source and not source.startswith("data:")


def missing_media(sample: Sample, base_dirs: tuple[Path, ...] = ()) -> tuple[str, str] | None:
    """(kind of the first missing file, reason naming every missing one) for the local media files of
    `sample` that do not exist; None when all are there. `base_dirs`: where relative paths were looked up
    (named in the reason). Nothing is opened."""
    missing = [
        (kind, f"{kind} {k} not found: {source}")
        for kind in ("image", "video")
        for k, source in enumerate(sample.media(kind), 1)
        if is_local_path(source) and not Path(source).is_file()
    ]
    if not missing:
        return None
    hint = ""
    if base_dirs:  # annotations kept apart from their images (PaddleMIX: opensource_json/ beside data/)
        tried = " then ".join(str(d) for d in base_dirs)
        hint = f" (relative paths are looked up in {tried}; name the folder they are relative to with --media-root)"
    return missing[0][0], "; ".join(reason for _, reason in missing) + hint


def resolve_path(source: Any, base_dirs: tuple[Path, ...]) -> Any:
    """Relative local paths resolve against the first base folder that holds them (else the first), made
    absolute, so that resolving a resolved path again (readers, then `to_sample`) changes nothing."""
    if not is_local_path(source):
        return source
    path = Path(source).expanduser()
    if path.is_absolute() or not base_dirs:
        return str(path)
    for base in base_dirs:
        if (base / path).exists():
            return str((base / path).absolute())
    return str((base_dirs[0] / path).absolute())


def _media_list(row: dict, key: str, where: str) -> list[Any]:
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        return [value]
    return list(value)


def _split_placeholders(text: str, queues: dict[str, list], counts: dict[str, int], where: str) -> list[dict]:
    parts: list[dict] = []
    for piece in _PLACEHOLDER_RE.split(text):
        if piece in PLACEHOLDERS:
            kind = PLACEHOLDERS[piece]
            counts[kind] += 1
            if not queues[kind]:
                continue  # counted; the mismatch is reported once all messages are read
            parts.append({"type": kind, kind: queues[kind].pop(0)})
        elif piece:
            parts.append({"type": "text", "text": piece})
    return parts


def not_text(value: Any) -> str:
    """What a value that should be text is, for an error: "a number (nan)", "true/false", "an object"."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    return {dict: "an object", list: "a list", type(None): "null"}.get(type(value), type(value).__name__)


def _url_of(value: Any) -> Any:
    return value.get("url") if isinstance(value, dict) else value


def to_content_part(part: Any, where: str, index: int) -> dict:
    """One OpenAI-style or vlmkit content part -> a vlmkit part."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        raise DataError(
            f"{where}: content part {index} is {type(part).__name__}; expected an object with a 'type'"
        )
    kind = part.get("type")
    if kind == "text" or (kind is None and "text" in part):
        text = part.get("text", "")
        if not isinstance(text, str):  # never str(): NaN would become the text "nan"
            raise DataError(f"{where}: content part {index} text is {not_text(text)}; expected a string")
        return {"type": "text", "text": text}
    if kind == "image_url" or (kind is None and "image_url" in part):
        return {"type": "image", "image": _url_of(part.get("image_url"))}
    if kind == "video_url" or (kind is None and "video_url" in part):
        return {"type": "video", "video": _url_of(part.get("video_url"))}
    if kind in ("image", "video") or (kind is None and ("image" in part or "video" in part)):
        kind = kind or ("image" if "image" in part else "video")
        source = part.get(kind, part.get("url", part.get("path")))
        if source is None:
            raise DataError(f"{where}: content part {index} of type '{kind}' has no '{kind}' source")
        size = _requested_size(part, f"{where}: content part {index}")
        if size and kind == "video":
            raise DataError(
                f"{where}: content part {index}: resized_height/resized_width are not supported on a video; "
                "use --video-max-pixels"
            )
        return {"type": kind, kind: source, **size}
    raise DataError(
        f"{where}: content part {index} has unsupported type {kind!r}; use text, image_url or video_url"
    )


def to_sample(
    row: dict[str, Any],
    where: str = "sample",
    base_dirs: tuple[Path, ...] | list[Path] = (),
    objects: dict[str, Any] | None = None,
    media_tags: bool = True,
) -> Sample:
    """Normalise a `messages` row (placeholders or content parts) to a `Sample`.

    With `media_tags` (the default), `<image>` / `<video>` placeholders and inline media tags in the text
    are media (the module docstring); without, all text is text.
    Raises `DataError` naming `where` for unknown roles, empty conversations, and
    placeholder/media count mismatches.
    """
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    base_dirs = tuple(Path(b) for b in base_dirs)
    raw_messages = row.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise DataError(f"{where}: no 'messages' list (or it is empty)")
    if media_tags:
        from vlmkit.sample.inline import inline_media  # here: vlmkit.data imports this module

        lists = {key: _media_list(row, key, where) for key in ("images", "videos")}
        row = inline_media({**row, **lists}, where)
        raw_messages = row["messages"]

    queues = {kind: _media_list(row, kind + "s", where) for kind in ("image", "video")}
    listed = {kind: len(q) for kind, q in queues.items()}
    counts = {"image": 0, "video": 0}
    messages: list[dict] = []
    if row.get("system"):
        if not isinstance(row["system"], str):
            raise DataError(f"{where}: 'system' is {not_text(row['system'])}; expected text")
        messages.append({"role": "system", "content": [{"type": "text", "text": row["system"]}]})

    for i, message in enumerate(raw_messages):
        if not isinstance(message, dict) or "role" not in message:
            raise DataError(f"{where}: message {i} has no 'role'")
        role = message["role"]
        if role not in ROLES:
            raise DataError(f"{where}: message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        content = message.get("content")
        if content is None:
            content = ""
        if isinstance(content, str):
            content = [content]
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                new = to_content_part(part, f"{where}: message {i}", j)
                if new["type"] == "text" and media_tags:
                    parts.extend(_split_placeholders(new["text"], queues, counts, where))
                elif new["type"] == "text":
                    parts.extend([new] if new["text"] else [])
                else:
                    parts.append(new)
        else:
            raise DataError(
                f"{where}: message {i} content is {type(content).__name__}; expected text or a list of parts"
            )
        messages.append({"role": role, "content": parts})

    for kind in ("image", "video"):
        if counts[kind] != listed[kind]:
            raise PlaceholderError(
                f"{where}: {counts[kind]} <{kind}> placeholder(s) in the messages but {listed[kind]} "
                f"{kind}(s) listed in '{kind}s'; make them match"
            )
    for message in messages:
        for part in message["content"]:
            if part["type"] in ("image", "video"):
                part[part["type"]] = resolve_path(part[part["type"]], base_dirs)
    if not any(m["role"] != "system" for m in messages):
        raise DataError(f"{where}: the conversation has no user or assistant message")
    return Sample(
        messages=messages, objects=objects if objects is not None else row.get("objects"), where=where
    )


def as_sample(sample: Sample | Mapping[str, Any], where: str = "sample") -> Sample:
    """`sample` itself, or a row dict (`messages` with placeholders or content parts) read by `to_sample`, so
    that every method taking a `Sample` (templates' `encode`, `count_tokens`, `render_text`; `VLM.encode`) takes
    the dicts `VLM.generate` takes. Anything else is a TypeError naming `vlmkit.to_sample`."""
    if isinstance(sample, Sample):
        return sample
    if isinstance(sample, Mapping):
        return to_sample(dict(sample), where=where)
    raise TypeError(
        f"expected a vlmkit Sample or a row dict with 'messages', got {type(sample).__name__}; "
        "build a Sample with vlmkit.to_sample(row)"
    )
