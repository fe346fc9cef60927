"""Unpaired preference data (`vlmkit kto`): rows of one conversation ending with a reply and a label saying
whether that reply is desirable, read as they are stored:

- "trl"       (TRL's unpaired preference format): `prompt` and `completion` (message lists, content a string
              or parts such as {"type": "image"}, or plain texts), `label` (true: desirable), `images`;
- "ms-swift"  (ms-swift's KTO rows, also LLaMA-Factory's `kto_en_demo`): `messages` ending with the reply,
              `label`, `images`;
- "sharegpt"  (LLaMA-Factory's sharegpt KTO rows): `conversations` ({"from", "value"} turns) ending with the
              reply, `kto_tag`, `images`;
- every paired format `vlmkit dpo` reads (`vlmkit.data.preference`): each pair becomes two rows, its chosen
  conversation desirable and its rejected one undesirable, as TRL's `unpair_preference_dataset` makes them.

Each row becomes a `messages` (or `sharegpt`) row that `vlmkit.data.formats.row_to_sample` turns into a
`Sample` as it does for `vlmkit sft`'s rows, so the reply is encoded as sft trains it and infer answers it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmkit.data.formats import row_to_sample
from vlmkit.data.preference import (
    PEEK_ROWS,
    PreferenceData,
    _images,
    _reply,
    _stored_rows,
    _trl_turns,
    preference_format,
)
from vlmkit.data.readers import sample_indices
from vlmkit.data.sources import Row, TableRows, concat_rows, parse_source, take_rows
from vlmkit.errors import DataError, VlmkitError
from vlmkit.sample import Sample

SIDES = ("desirable", "undesirable")


def _label(row: dict, key: str, where: str) -> bool:
    value = row[key]
    if isinstance(value, bool):
        return value
    raise DataError(
        f"{where}: '{key}' is {value!r:.40}; expected true (a desirable reply) or false (undesirable)"
    )


def _ends_with_reply(turns: Any, key: str, where: str) -> None:
    last = turns[-1] if isinstance(turns, list) and turns and isinstance(turns[-1], dict) else {}
    if last.get("role", last.get("from")) not in ("assistant", "gpt"):
        raise DataError(f"{where}: '{key}' must end with the assistant reply that the label judges")
    _reply(last, where, f"{key}' last reply")


def _from_trl(row: dict, where: str) -> tuple[dict, str, bool]:
    prompt = _trl_turns(row["prompt"], where, "prompt")
    reply = _reply(_trl_turns(row["completion"], where, "completion")[-1], where, "completion")
    conversation = {"system": row.get("system"), "videos": row.get("videos") or [], "images": _images(row),
                    "messages": [*prompt, {"role": "assistant", "content": reply}]}  # fmt: skip
    return conversation, "messages", _label(row, "label", where)


def _as_stored(key: str, label_key: str, fmt: str) -> Callable[[dict, str], tuple[dict, str, bool]]:
    """A converter for rows that are already a conversation in `fmt` (`key` holds it) plus a label column."""

    def convert(row: dict, where: str) -> tuple[dict, str, bool]:
        _ends_with_reply(row[key], key, where)
        return {k: v for k, v in row.items() if k != label_key}, fmt, _label(row, label_key, where)

    return convert


# format -> (the keys that mark it; its converter: row -> (conversation row, its format, desirable?))
FORMATS: dict[str, tuple[frozenset[str], Callable[[dict, str], tuple[dict, str, bool]]]] = {
    "trl": (frozenset({"prompt", "completion", "label"}), _from_trl),
    "ms-swift": (frozenset({"messages", "label"}), _as_stored("messages", "label", "messages")),
    "sharegpt": (frozenset({"conversations", "kto_tag"}), _as_stored("conversations", "kto_tag", "sharegpt")),
}

LABEL_KEYS = {"trl": "label", "ms-swift": "label", "sharegpt": "kto_tag"}


def unpaired_format(rows: Sequence[dict]) -> str | None:
    """The unpaired format of the first rows (the first format whose keys a row has, its label a boolean), or
    None. `label` is also a column of sft's VQA rows (an answer): only a true/false label makes a KTO row."""
    for row in rows[:PEEK_ROWS]:
        for name, (keys, _) in FORMATS.items():
            if isinstance(row, dict) and keys <= set(row) and isinstance(row[LABEL_KEYS[name]], bool):
                return name
    return None


@dataclass
class UnpairedData:
    """Labelled conversations; `data[i]` is (Sample, desirable) or raises `DataError` naming the row. Rows of a
    paired source (`paired` set) give two entries each: entry 2k is row k's chosen conversation (desirable),
    entry 2k+1 its rejected one."""

    path: str
    format: str
    rows: Sequence[Row]  # as stored; Row.format is the unpaired (or paired) format
    bad: list[tuple[str, str]]
    paired: PreferenceData | None = None
    unit = "row"

    def __len__(self) -> int:
        return 2 * len(self.rows) if self.paired is not None else len(self.rows)

    def stored(self, index: int) -> Row:
        return self.rows[index // 2] if self.paired is not None else self.rows[index]

    def labelled_row(self, index: int) -> tuple[Row, bool]:
        """(entry `index` as a `messages`/`sharegpt` row, whether its reply is desirable)."""
        if self.paired is not None:
            return self.paired.pair_rows(index // 2)[index % 2], index % 2 == 0
        row = self.rows[index]
        if not isinstance(row.data, dict):
            raise DataError(f"{row.where}: expected a JSON object")
        keys, convert = FORMATS[row.format]
        if not keys <= set(row.data):
            raise DataError(f"{row.where}: no {', '.join(sorted(keys - set(row.data)))} key, but this file is in "
                            f"the {row.format} KTO format; keys found: {', '.join(row.data)}")  # fmt: skip
        conversation, fmt, desirable = convert(row.data, row.where)
        return Row(row.where, conversation, fmt, row.base_dirs), desirable

    def sides(self, index: int) -> list[tuple[str, Row]]:
        """The one conversation `check_pairs` checks for entry `index`, named by its label."""
        row, desirable = self.labelled_row(index)
        return [(SIDES[not desirable], row)]

    def __getitem__(self, index: int) -> tuple[Sample, bool]:
        row, desirable = self.labelled_row(index)
        return row_to_sample(row.data, row.format, row.where, row.base_dirs), desirable

    def labels(self, indices: Sequence[int]) -> list[bool]:
        """The labels of the entries `indices` (read without their media)."""
        return [self.labelled_row(i)[1] for i in indices]


def load_unpaired_data(spec: str, media_root: str | None = None, seed: int = 42) -> UnpairedData:
    """Read one KTO source (unpaired rows, or pairs unpaired); raises `DataError` naming it otherwise."""
    extra = (Path(media_root),) if media_root else ()
    name, rows, bad = _stored_rows(spec, extra)
    first = [r.data for r in (rows[i] for i in range(min(PEEK_ROWS, len(rows))))]
    fmt = unpaired_format(first)
    paired_fmt = preference_format(first) if fmt is None else None
    if fmt is None and paired_fmt is None:
        keys = ", ".join(dict.fromkeys(k for row in first for k in row)) or "none"
        known = "; ".join(f"{n} ({', '.join(sorted(k))})" for n, (k, _) in FORMATS.items())
        raise DataError(f"{name}: not a KTO dataset; keys found: {keys}; KTO formats (keys): {known}; or any "
                        "preference pair format of vlmkit dpo")  # fmt: skip
    fmt = fmt or paired_fmt
    if isinstance(rows, TableRows):
        rows.format = fmt
    else:
        rows = [r._replace(format=fmt) for r in rows]
    count = parse_source(spec).count
    if count is not None:
        rows = take_rows(rows, sample_indices(len(rows), count, seed))
    paired = PreferenceData(name, fmt, rows, bad) if paired_fmt else None
    return UnpairedData(name, f"{fmt} pairs" if paired else fmt, rows, bad, paired)


def load_unpaired_datasets(specs: list[str], media_root: str | None = None, seed: int = 42) -> UnpairedData:
    """Several sources read with `load_unpaired_data`; their entries concatenated in order."""
    if not specs:
        raise DataError("no dataset given; pass one or more PATH or PATH#N")
    parts = [load_unpaired_data(spec, media_root, seed) for spec in specs]
    if len(parts) == 1:
        return parts[0]
    if len({p.paired is None for p in parts}) > 1:
        raise VlmkitError(
            "--dataset: give vlmkit kto either unpaired (labelled) rows or pairs, not both in one run"
        )
    paired = None
    if parts[0].paired is not None:
        paired = PreferenceData(" + ".join(p.path for p in parts), "+".join(p.paired.format for p in parts),
                                concat_rows([p.rows for p in parts]), [])  # fmt: skip
    return UnpairedData(" + ".join(p.path for p in parts), "+".join(dict.fromkeys(p.format for p in parts)),
                        concat_rows([p.rows for p in parts]), [b for p in parts for b in p.bad], paired)  # fmt: skip


def is_unpaired_source(spec: str) -> bool:
    """Whether `spec`'s first rows are in an unpaired (KTO) format (for `vlmkit data check`)."""
    from vlmkit.data.streaming import first_stored_rows

    if parse_source(spec).hub is not None:
        return False  # a hub id is checked as what `is_preference_source` or the sft reader finds
    try:
        return unpaired_format(first_stored_rows(spec)) is not None
    except VlmkitError:
        return False
