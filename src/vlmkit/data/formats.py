"""Dataset row formats: detect which one a file uses and turn its rows into `Sample`s.

Every format is rewritten to the `messages` row that `vlmkit.sample.to_sample` takes
(role/content messages with `<image>` / `<video>` placeholders, `images` / `videos`
lists, optional `system`), then handed to it. Formats, by the key that marks them:

- "messages" (`messages`): ms-swift 3 / LLaMA-Factory; OpenAI-style content parts
  also pass through. `from`/`value` turns are accepted here too.
- "sharegpt" (`conversations`): turns with `from` (human/user, gpt/assistant, system,
  function_call, observation) and `value`, or `role`/`content`; optional `system`.
  Media come from `images` / `videos` lists or from LLaVA / Qwen-finetune `image` /
  `video` fields (a string or a list).
- "query-response" (`query`): ms-swift 2.x `query`, `response`, `history` (a list of
  [query, response] pairs), `system`, `images`, `videos`, `objects`.
- "alpaca" (`instruction`): LLaMA-Factory `instruction`, `input`, `output`, `system`,
  `history`, `images`, `videos`.

In every format, media written inline in the text (Qwen-VL `Picture 1: <img>PATH</img>`,
the self-llm tutorial's `<|vision_start|>PATH<|vision_end|>`) become a placeholder plus
that path, in order of appearance (see `vlmkit.sample.inline`). `objects` (grounding
boxes; a JSON string in ms-swift rows) is parsed and kept on the Sample as given.

A row that lists media but has no placeholder (or inline tag) of that kind at all gets
one per item prepended to its first user turn: `<image>\\n` for ShareGPT rows (the LLaVA
convention), a bare `<image>` for the others (as ms-swift's `_add_default_tags` does;
seed-000 grounding rows such as `{"query": "Find <bbox>", "images": [...]}` rely on it).
A row with some placeholders but not as many as listed media is an error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vlmkit.data.columns import SCHEMAS, ColumnSchema, detect_schema, to_query_response
from vlmkit.data.values import media_source
from vlmkit.errors import DataError
from vlmkit.sample import Sample, not_text, to_sample
from vlmkit.sample.inline import has_media_tag, message_texts

# format name -> the key that marks a row as that format, checked in this order
FORMAT_KEYS = {
    "messages": "messages",
    "sharegpt": "conversations",
    "query-response": "query",
    "alpaca": "instruction",
}
ROLE_NAMES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "observation": "tool",
}  # fmt: skip


def row_format(row: Any) -> str | None:
    """The format of one row by its marking key, or None."""
    if isinstance(row, dict):
        for name, key in FORMAT_KEYS.items():
            if key in row:
                return name
    return None


def detect_format(rows: Iterable[dict], where: str = "dataset", peek: int = 20) -> str:
    """The most common format among the first `peek` rows (ties: the earliest).

    Raises `DataError` naming `where`, the keys found and the supported formats when no
    row matches. Rows of another format later in the file fail one by one in
    `row_to_sample`, naming their line.
    """
    found: Counter[str] = Counter()
    keys: dict[str, None] = {}
    for i, row in enumerate(rows):
        if i >= peek:
            break
        if isinstance(row, dict):
            keys.update(dict.fromkeys(row))
            if (name := row_format(row)) is not None:
                found[name] += 1
    if not found:
        supported = ", ".join(f"{name} ('{key}')" for name, key in FORMAT_KEYS.items())
        raise DataError(
            f"{where}: unknown dataset format; keys found in the first rows: {', '.join(keys) or 'none'}; "
            f"supported formats (marking key): {supported}; or an image column with text/caption/answers/"
            "boxes (name other columns with --columns image=COL,response=COL)"
        )
    return found.most_common(1)[0][0]


def choose_format(
    rows: list[dict], columns: dict[str, str] | None = None, prompt: str | None = None, where: str = "dataset"
) -> tuple[str, ColumnSchema | None]:
    """(format name, column schema or None) of a dataset from its first rows.

    A conversation format (`FORMAT_KEYS`) wins unless --columns is given, or the rows are a question
    column next to an image column (ChartQA's `query`, `label`, `image`: no ms-swift `response` or
    `images`). Otherwise a column schema (`vlmkit.data.columns`); raises DataError when neither fits.
    """
    keys = list(dict.fromkeys(k for row in rows if isinstance(row, dict) for k in row))
    conversation = None
    if not columns:
        found = [f for f in (row_format(r) for r in rows) if f is not None]
        if found:
            conversation = Counter(found).most_common(1)[0][0]
        if conversation == "query-response" and not {"response", "images", "history"} & set(keys):
            conversation = None if detect_schema(keys, where=where) is not None else conversation
    if conversation is not None:
        if prompt is not None:
            raise DataError(f"{where}: --prompt is for datasets without a question column; this one is in the {conversation} format")
        return conversation, None
    schema = detect_schema(keys, columns, prompt, where)
    if schema is None:
        detect_format(rows, where)  # raises the unknown-format error
    return schema.name, schema


def _text(value: Any, where: str, what: str) -> Any:
    """A turn's content: text, a list of content parts, or '' for null. A number is refused rather than
    written out: `"content": NaN` would train on the text "nan", `5` on "5", where a string was meant."""
    if value is None:
        return ""
    if isinstance(value, (str, list)):
        return value
    raise DataError(f"{where}: {what} is {not_text(value)}; expected text (a JSON string, in quotes)")


def _media(row: dict, plural: str, singular: str | None, where: str) -> list[Any]:
    if singular and plural in row and singular in row:
        raise DataError(f"{where}: both '{singular}' and '{plural}' are given; keep one")
    value = row.get(plural, row.get(singular) if singular else None)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _turns(turns: Any, key: str, where: str) -> list[dict]:
    """role/content or from/value turns -> role/content messages."""
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: '{key}' must be a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"{where}: {key} turn {i} is {type(turn).__name__}; expected an object")
        speaker = turn.get("role", turn.get("from"))
        role = ROLE_NAMES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise DataError(
                f"{where}: {key} turn {i} is from {speaker!r}; expected one of {', '.join(ROLE_NAMES)}"
            )
        content = turn["content"] if "content" in turn else turn.get("value")
        messages.append({"role": role, "content": _text(content, where, f"{key} turn {i}")})
    return messages


def _pairs(history: Any, where: str) -> list[dict]:
    """ms-swift / alpaca `history`: [[query, response], ...] -> user/assistant messages."""
    messages = []
    for i, pair in enumerate(history or []):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise DataError(f"{where}: history item {i} is not a [query, response] pair")
        messages.append({"role": "user", "content": _text(pair[0], where, f"history item {i} query")})
        messages.append({"role": "assistant", "content": _text(pair[1], where, f"history item {i} response")})
    return messages


def _prompt_and_reply(row: dict, prompt: Any, reply_key: str, where: str) -> dict:
    messages = _pairs(row.get("history"), where)
    messages.append({"role": "user", "content": prompt})
    if row.get(reply_key) is not None:  # absent for inference-only rows
        messages.append({"role": "assistant", "content": _text(row[reply_key], where, f"'{reply_key}'")})
    return {
        "messages": messages,
        "system": row.get("system"),
        "images": _media(row, "images", None, where),
        "videos": _media(row, "videos", None, where),
    }


def _from_query_response(row: dict, where: str) -> dict:
    return _prompt_and_reply(row, _text(row["query"], where, "'query'"), "response", where)


def _from_alpaca(row: dict, where: str) -> dict:
    prompt = _text(row["instruction"], where, "'instruction'")
    if row.get("input"):
        prompt = f"{prompt}\n{_text(row['input'], where, 'input')}"
    return _prompt_and_reply(row, prompt, "output", where)


def _from_messages(row: dict, where: str) -> dict:
    return {
        "messages": _turns(row["messages"], "messages", where),
        "system": row.get("system"),
        "images": _media(row, "images", None, where),
        "videos": _media(row, "videos", None, where),
    }


def _from_sharegpt(row: dict, where: str) -> dict:
    return {
        "messages": _turns(row["conversations"], "conversations", where),
        "system": row.get("system"),
        "images": _media(row, "images", "image", where),
        "videos": _media(row, "videos", "video", where),
    }


CONVERTERS = {
    "messages": _from_messages,
    "sharegpt": _from_sharegpt,
    "query-response": _from_query_response,
    "alpaca": _from_alpaca,
}


# what follows each placeholder added to a row without any: LLaVA data writes "<image>\n",
# ms-swift's _add_default_tags adds bare "<image>"
TAG_SEPARATOR = {"messages": "", "sharegpt": "\n", "query-response": "", "alpaca": ""}


def _add_missing_tags(row: dict, separator: str, where: str) -> dict:
    """Prepend one placeholder per listed item to the first user turn, for each kind that
    has listed media but no placeholder or inline tag at all. Partial mismatches stay errors."""
    texts = " ".join(message_texts(row["messages"]))
    missing = "".join(
        f"<{kind}>{separator}" * len(row[kind + "s"])
        for kind in ("image", "video")
        if row[kind + "s"] and not has_media_tag(texts, kind)
    )
    if not missing:
        return row
    messages = list(row["messages"])
    for i, m in enumerate(messages):
        if m["role"] == "user":
            content = m["content"]
            content = (
                [{"type": "text", "text": missing}, *content]
                if isinstance(content, list)
                else missing + content
            )
            messages[i] = {**m, "content": content}
            return {**row, "messages": messages}
    raise DataError(f"{where}: the row lists media but has no user turn to put them in")


def _objects(row: dict, where: str) -> Any:
    """`objects` as given, parsed when it is a JSON string (ms-swift); None when absent or empty."""
    value = row.get("objects")
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{where}: 'objects' is a string but not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        except (ValueError, RecursionError):  # nested too deeply, an integer too long to convert
            raise DataError(f"{where}: 'objects' is a string but not JSON that Python reads") from None
    return value if value else None


def row_to_sample(
    row: Any, fmt: str, where: str = "row", base_dirs: tuple[Path, ...] | list[Path] = ()
) -> Sample:
    """One dataset row in format `fmt` -> `Sample`; relative media paths resolve against `base_dirs`.

    Raises `DataError` naming `where` (file:line) with the reason. A top-level `id`
    is kept in `sample.extra["id"]`.
    """
    if fmt not in CONVERTERS and fmt not in SCHEMAS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(CONVERTERS)}, {', '.join(SCHEMAS)}")
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if fmt in SCHEMAS:  # a row of schema fields (`columns.map_row`): an ms-swift row from here on
        row, fmt = to_query_response(row, where), "query-response"
    key = FORMAT_KEYS[fmt]
    if key not in row:
        raise DataError(
            f"{where}: no '{key}' key, but this file is in the {fmt} format (detected from its first rows); "
            f"keys found: {', '.join(row) or 'none'}; use one format per file"
        )
    messages_row = _add_missing_tags(CONVERTERS[fmt](row, where), TAG_SEPARATOR[fmt], where)
    for kind in ("images", "videos"):  # dataset values (Image dicts, bytes, base64) -> media sources
        if isinstance(messages_row.get(kind), list):
            messages_row[kind] = [media_source(v, tuple(base_dirs)) for v in messages_row[kind]]
    sample = to_sample(messages_row, where, tuple(base_dirs), objects=_objects(row, where))
    counts = {"image": 0, "video": 0}
    for message in sample.messages:  # and media given as content parts
        for part in message["content"]:
            if (kind := part["type"]) in counts:
                counts[kind] += 1
                part[kind] = media_source(part[kind], tuple(base_dirs))
                if part[kind] is None or part[kind] == "":
                    raise DataError(f"{where}: {kind} {counts[kind]} is empty (null); give bytes or a path")
    if "id" in row:
        sample.extra["id"] = row["id"]
    if "references" in row:  # several answers of a column dataset, kept for scoring
        sample.extra["references"] = row["references"]
    return sample
