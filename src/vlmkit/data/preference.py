"""Preference data (`vlmkit dpo`): rows of a prompt with a chosen and a rejected reply, read as they are.

Each format is recognised by its keys and rewritten to two rows of the `messages` format (the chosen and the
rejected conversation, each ending with its assistant reply), which `vlmkit.data.formats.row_to_sample`
turns into `Sample`s exactly as it does for `vlmkit sft`'s rows (media values, placeholders, inline tags):

- "rlaif-v"   (openbmb/RLAIF-V-Dataset): `question`, `chosen`, `rejected` (texts), `image` (a {bytes, path}
              struct or a path);
- "rlhf-v"    (openbmb/RLHF-V-Dataset): `text`, a JSON string holding `question`, `chosen`, `rejected`;
              `image` as above;
- "trl"       (TRL's preference format): `prompt`, `chosen`, `rejected` as message lists (content a string
              or parts such as {"type": "image"}) or as plain texts, and `images`;
- "ms-swift"  (ms-swift's RLHF rows): `messages` ending with the chosen reply, `rejected_response`, `images`,
              and optional `rejected_images` (the rejected conversation's own images);
- "sharegpt"  (LLaMA-Factory's ranking rows): `conversations` (the prompt), `chosen` and `rejected` turns
              ({"from": "gpt", "value": ...}), `images`.

Files are read as `vlmkit sft` reads them (JSON, JSON Lines, Parquet, Arrow, hub ids; SOURCE#N samples).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkit.data.check import BadRow, CheckReport, GoodRow, check_row
from vlmkit.data.formats import row_to_sample
from vlmkit.data.readers import JSON_SUFFIXES, read_rows, sample_indices
from vlmkit.data.sources import Row, TableRows, concat_rows, load_table, parse_source, take_rows
from vlmkit.data.values import jsonable
from vlmkit.errors import DataError, VlmkitError
from vlmkit.sample import Sample

if TYPE_CHECKING:
    from vlmkit.data.unpaired import UnpairedData
    from vlmkit.families.interface import Template

PEEK_ROWS = 20


def _reply(value: Any, where: str, key: str) -> str:
    """A reply given as text, or as one assistant turn ({"from"/"role", "value"/"content"}) or a list of them."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("content", value.get("value"))
    if isinstance(value, list):  # content parts
        value = "".join(p.get("text", "") for p in value if isinstance(p, dict))
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' is {'empty' if value in ('', None) else type(value).__name__}; "
                        "expected the reply's text")  # fmt: skip
    return value


def _pair(prompt: list[dict], chosen: str, rejected: str, row: dict, images: list, rejected_images=None):
    """The chosen and the rejected conversation as `messages` rows."""
    base = {"system": row.get("system"), "videos": row.get("videos") or []}

    def conversation(reply: str, media: list) -> dict:
        return {**base, "messages": [*prompt, {"role": "assistant", "content": reply}], "images": media}

    return conversation(chosen, images), conversation(
        rejected, images if rejected_images is None else rejected_images
    )


def _images(row: dict) -> list:
    value = row.get("images", row.get("image"))
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _from_rlaif_v(row: dict, where: str):
    question = _reply(row["question"], where, "question")
    return _pair([{"role": "user", "content": question}], _reply(row["chosen"], where, "chosen"),
                 _reply(row["rejected"], where, "rejected"), row, _images(row))  # fmt: skip


def _from_rlhf_v(row: dict, where: str):
    text = row["text"]
    try:
        fields = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: 'text' is not JSON ({e.msg} at column {e.colno}); RLHF-V rows hold "
                        '{"question", "chosen", "rejected"} in it') from None  # fmt: skip
    if not isinstance(fields, dict) or not {"question", "chosen", "rejected"} <= set(fields):
        raise DataError(f"{where}: 'text' must hold a JSON object with question, chosen and rejected")
    return _from_rlaif_v({**row, **fields}, where)


def _part_text(part: Any) -> str:
    """TRL's content parts -> text with `<image>` where an image part stands (images come from `images`)."""
    if isinstance(part, dict) and part.get("type") == "image":
        return "<image>"
    return part.get("text") or "" if isinstance(part, dict) else str(part)


def _trl_turns(value: Any, where: str, key: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user" if key == "prompt" else "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: '{key}' must be a text or a non-empty list of messages")
    turns = []
    for turn in value:
        if not isinstance(turn, dict) or "role" not in turn:
            raise DataError(f"{where}: '{key}' holds {turn!r:.60}; expected messages with role and content")
        content = turn.get("content")
        text = "".join(map(_part_text, content)) if isinstance(content, list) else content
        turns.append({"role": turn["role"], "content": text})
    return turns


def _from_trl(row: dict, where: str):
    prompt = _trl_turns(row["prompt"], where, "prompt")
    return _pair(prompt, _reply(_trl_turns(row["chosen"], where, "chosen")[-1], where, "chosen"),
                 _reply(_trl_turns(row["rejected"], where, "rejected")[-1], where, "rejected"), row,
                 _images(row))  # fmt: skip


def _from_ms_swift(row: dict, where: str):
    messages = row["messages"]
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "assistant":  # fmt: skip
        raise DataError(f"{where}: 'messages' must end with the chosen assistant reply")
    chosen = _reply(messages[-1], where, "messages' last reply")
    rejected = _reply(row["rejected_response"], where, "rejected_response")
    rejected_images = row.get("rejected_images")
    return _pair(
        messages[:-1], chosen, rejected, row, _images(row), rejected_images and list(rejected_images)
    )


def _from_sharegpt(row: dict, where: str):
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of turns")
    return _pair(turns, _reply(row["chosen"], where, "chosen"), _reply(row["rejected"], where, "rejected"), row,
                 _images(row))  # fmt: skip


# format -> (the keys that mark it, checked in this order; its converter: row -> (chosen row, rejected row))
FORMATS: dict[str, tuple[frozenset[str], Callable[[dict, str], tuple[dict, dict]]]] = {
    "ms-swift": (frozenset({"messages", "rejected_response"}), _from_ms_swift),
    "sharegpt": (frozenset({"conversations", "chosen", "rejected"}), _from_sharegpt),
    "trl": (frozenset({"prompt", "chosen", "rejected"}), _from_trl),
    "rlaif-v": (frozenset({"question", "chosen", "rejected"}), _from_rlaif_v),
    "rlhf-v": (frozenset({"text", "image"}), _from_rlhf_v),
}


def preference_format(rows: Sequence[dict]) -> str | None:
    """The preference format of the first rows (the first format whose keys a row has), or None. `text` and
    `image` are also the columns of plain image-caption and OCR sets (LaTeX_OCR): a row is RLHF-V only when its
    `text` holds the pair."""
    for row in rows[:PEEK_ROWS]:
        for name, (keys, _) in FORMATS.items():
            if isinstance(row, dict) and keys <= set(row) and (name != "rlhf-v" or _holds_a_pair(row["text"])):
                return name
    return None


def _holds_a_pair(text: Any) -> bool:
    """Whether an RLHF-V `text` value is (JSON of) an object with a question, a chosen and a rejected reply."""
    if isinstance(text, str):
        try:
            text = json.loads(text)
        except json.JSONDecodeError:
            return False
    return isinstance(text, dict) and {"question", "chosen", "rejected"} <= set(text)


@dataclass
class Pair:
    """One preference row: the chosen and the rejected conversation, each ending with its reply."""

    chosen: Sample
    rejected: Sample
    where: str


@dataclass
class PreferenceData:
    """The rows of one or more preference files; `data[i]` is a `Pair` (or raises `DataError` naming the row)."""

    path: str
    format: str
    rows: Sequence[Row]  # as stored; Row.format is the preference format
    bad: list[tuple[str, str]]  # (where, reason) of lines that are not JSON objects
    unit = "pair"  # what one row is, in messages

    def __len__(self) -> int:
        return len(self.rows)

    def pair_rows(self, index: int) -> tuple[Row, Row]:
        """The chosen and the rejected conversation of row `index`, as `messages` rows."""
        row = self.rows[index]
        if not isinstance(row.data, dict):
            raise DataError(f"{row.where}: expected a JSON object")
        keys, convert = FORMATS[row.format]
        if not keys <= set(row.data):
            raise DataError(f"{row.where}: no {', '.join(sorted(keys - set(row.data)))} key, but this file is in "
                            f"the {row.format} preference format; keys found: {', '.join(row.data)}")  # fmt: skip
        chosen, rejected = convert(row.data, row.where)
        return (
            Row(row.where, chosen, "messages", row.base_dirs),
            Row(row.where, rejected, "messages", row.base_dirs),
        )

    def stored(self, index: int) -> Row:
        """The stored row that `data[index]` is read from."""
        return self.rows[index]

    def sides(self, index: int) -> list[tuple[str, Row]]:
        """The conversations `check_pairs` checks for row `index`, each named."""
        return list(zip(("chosen", "rejected"), self.pair_rows(index), strict=True))

    def __getitem__(self, index: int) -> Pair:
        chosen, rejected = self.pair_rows(index)
        where = chosen.where
        return Pair(row_to_sample(chosen.data, "messages", where, chosen.base_dirs),
                    row_to_sample(rejected.data, "messages", where, rejected.base_dirs), where)  # fmt: skip

    def select(self, indices: Sequence[int]) -> PreferenceData:
        return PreferenceData(self.path, self.format, take_rows(self.rows, indices), list(self.bad))


def _stored_rows(spec: str, extra_dirs: tuple[Path, ...]) -> tuple[str, list[Row] | TableRows, list]:
    """(name, rows with an empty format, bad lines) of one source, read as `vlmkit sft` reads it."""
    source = parse_source(spec)
    path = Path(source.location)
    if source.hub is None and (path.suffix.lower() in JSON_SUFFIXES or not path.exists()):
        rows, bad = [], []
        for where, row in read_rows(path):
            if isinstance(row, DataError):
                bad.append((where, str(row).removeprefix(f"{where}: ")))
            else:
                rows.append(Row(where, row, "", (path.parent, *extra_dirs)))
        return str(path), rows, bad
    table, base_dirs, shards = load_table(source, spec)
    name = f"{source.hub}::{source.location}" if source.hub else source.location
    return name, TableRows(table, name, "", base_dirs + extra_dirs, shards=shards), []


def load_preference_data(spec: str, media_root: str | None = None, seed: int = 42) -> PreferenceData:
    """Read one preference source; raises `DataError` naming it when its rows are in no preference format."""
    extra = (Path(media_root),) if media_root else ()
    name, rows, bad = _stored_rows(spec, extra)
    first = [r.data for r in (rows[i] for i in range(min(PEEK_ROWS, len(rows))))]
    fmt = preference_format(first)
    if fmt is None:
        keys = ", ".join(dict.fromkeys(k for row in first for k in row)) or "none"
        known = "; ".join(f"{n} ({', '.join(sorted(k))})" for n, (k, _) in FORMATS.items())
        raise DataError(
            f"{name}: not a preference dataset; keys found: {keys}; preference formats (keys): {known}"
        )
    if isinstance(rows, TableRows):
        rows.format = fmt
    else:
        rows = [r._replace(format=fmt) for r in rows]
    data = PreferenceData(name, fmt, rows, bad)
    count = parse_source(spec).count
    return data if count is None else data.select(sample_indices(len(data), count, seed))


def load_preference_datasets(
    specs: list[str], media_root: str | None = None, seed: int = 42
) -> PreferenceData:
    """Several sources read with `load_preference_data`, concatenated in order."""
    if not specs:
        raise DataError("no dataset given; pass one or more PATH or PATH#N")
    parts = [load_preference_data(spec, media_root, seed) for spec in specs]
    if len(parts) == 1:
        return parts[0]
    return PreferenceData(" + ".join(p.path for p in parts), "+".join(dict.fromkeys(p.format for p in parts)),
                          concat_rows([p.rows for p in parts]), [b for p in parts for b in p.bad])  # fmt: skip


def is_preference_source(spec: str) -> bool:
    """Whether `spec`'s first rows are in a preference format (for `vlmkit data check`)."""
    from vlmkit.data.streaming import first_stored_rows

    if parse_source(spec).hub is None:
        try:
            return preference_format(first_stored_rows(spec)) is not None
        except VlmkitError:  # unreadable: the reader that follows says why
            return False
    _, rows, _ = _stored_rows(spec, ())  # a hub id without a network: its one line, now
    return preference_format([rows[i].data for i in range(min(PEEK_ROWS, len(rows)))]) is not None


def check_pairs(
    data: PreferenceData | UnpairedData,
    template: Template,
    max_length: int,
    progress: bool = False,
    decode_images: bool = True,
) -> CheckReport:
    """Check every pair as `vlmkit dpo` trains it (or every row of `vlmkit kto`'s `UnpairedData`, a
    conversation each): its conversations (`data.sides(i)`) must be good rows (`check_row`: format, media, a
    reply) of at most `max_length` tokens each. Nothing is ever cut: a row longer than that would lose tokens
    (its image tokens, or the end of a reply) and is refused (bad, "too long"), never trained on."""
    from tqdm import tqdm

    report = CheckReport(
        formats={}, max_length=max_length, truncation="delete", limit_option=template.limit_option
    )
    for index in tqdm(
        range(len(data)), desc="checking pairs", unit="row", file=sys.stderr, disable=not progress
    ):
        row = data.stored(index)
        report.formats.setdefault(row.where.rpartition(":")[0], f"{data.format} preference")
        try:
            sides = data.sides(index)
        except DataError as e:
            report.bad.append(
                BadRow(row.where, str(e).removeprefix(f"{row.where}: "), "bad row", jsonable(row.data))
            )
            continue
        results = []
        for side, side_row in sides:
            result, length = check_row(
                index, side_row, template, max_length, False, report, None, decode_images
            )
            if length is not None:
                report.lengths.append(length)
            results.append((side, result))
        failed = [(side, r) for side, r in results if isinstance(r, BadRow)]
        if failed:
            side, first = failed[0]
            reason = f"{side} conversation: {first.reason}"
            if first.kind == "too long":
                reason += f" (vlmkit never cuts a {data.unit}: its image tokens or reply would be lost)"
            report.bad.append(BadRow(row.where, reason, first.kind, jsonable(row.data)))
        else:
            goods = [r for _, r in results]
            report.good.append(GoodRow(index, row.where, max(g.length for g in goods), None,
                                       any(g.has_video for g in goods)))  # fmt: skip
    report.bad += [BadRow(where, reason, "invalid JSON", None) for where, reason in data.bad]
    return report
