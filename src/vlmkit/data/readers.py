"""Read dataset files into a `Dataset` of rows that become `Sample`s on access.

Files are `.jsonl` (one object per line) or `.json` (a top-level array of objects, a
single object, or JSON Lines saved as .json: detected from the text). Rows stay small
dicts; media are never opened here, only their paths resolved when a row is converted.

Locations in errors: `.jsonl` and JSON Lines rows are `file:LINE` (1-based). Rows of a
JSON array are `file:LINE` with the line where the object starts, or `file:#INDEX`
(0-based array index) when the array puts several objects on one line.

A row that is not valid JSON (or not an object) goes to `Dataset.bad` and the others
load; a row that is valid JSON but cannot be converted raises `DataError` when it is
read (`Dataset.check()` converts all of them up front).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from vlmkit.data.columns import map_row
from vlmkit.data.formats import choose_format, row_to_sample
from vlmkit.data.sources import (
    TABLE_SUFFIXES,
    Row,
    TableRows,
    concat_rows,
    load_table,
    parse_source,
    take_rows,
)
from vlmkit.errors import DataError
from vlmkit.sample import Sample, missing_media

PEEK_ROWS = 20  # rows looked at to detect the format
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}
_WHITESPACE = re.compile(r"[ \t\n\r]*")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # a string (skipped whole) or a bracket
TOO_DEEP = "invalid JSON (nested too deeply: Python's JSON parser reads about 1,000 levels)"
LONE_SURROGATE = (
    "a string holds an unpaired UTF-16 surrogate (an escape \\ud800-\\udfff without its pair), which is no "
    "character; fix or remove that escape"
)


def _invalid_json(error: ValueError | RecursionError) -> str:
    """Why `json.loads` refused a text, in a few words."""
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON ({error.msg} at column {error.colno})"
    if isinstance(error, RecursionError):
        return TOO_DEEP
    return f"invalid JSON ({error})"  # e.g. an integer of more digits than Python converts


def has_lone_surrogate(value: Any) -> bool:
    """Whether a string (or key) of parsed JSON holds an unpaired surrogate: only a `\\u` escape makes one, and
    no tokenizer takes it nor UTF-8 file holds it (`vlmkit infer` could not write the row back)."""
    stack = [value]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            if _LONE_SURROGATE.search(value):
                return True
        elif isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            stack += value
    return False


def _parse_object(text: str, where: str) -> dict | DataError:
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        return DataError(f"{where}: {_invalid_json(e)}")
    if not isinstance(row, dict):
        return DataError(f"{where}: expected a JSON object, got {_JSON_TYPES.get(type(row), 'null')}")
    if "\\u" in text and has_lone_surrogate(row):
        return DataError(f"{where}: {LONE_SURROGATE}")
    return row


def _skip_nested(text: str, index: int) -> int:
    """The index after the array or object that starts at `index`, found by counting brackets outside
    strings: how an array item nested too deeply to parse is stepped over."""
    depth = 0
    for token in _JSON_TOKEN.finditer(text, index):
        depth += 1 if token[0] in ("[", "{") else -1 if token[0] in ("]", "}") else 0
        if depth == 0:
            return token.end()
    return len(text)


def _json_lines(lines: Iterator[bytes | str], name: str) -> Iterator[tuple[str, dict | DataError]]:
    for number, line in enumerate(lines, 1):
        where = f"{name}:{number}"
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, DataError(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})")
                continue
        if number == 1:
            line = line.lstrip("\ufeff")
        if line.strip():
            yield where, _parse_object(line, where)


def _read_jsonl(path: Path, name: str) -> Iterator[tuple[str, dict | DataError]]:
    with open(path, "rb") as f:
        yield from _json_lines(f, name)


def _json_array(text: str, name: str) -> list[tuple[str, dict | DataError]]:
    """Parse a top-level array object by object, keeping where each one starts."""
    decoder = json.JSONDecoder()
    items: list[tuple[int, Any]] = []  # (line where it starts, value, or the reason it is bad)
    index = _WHITESPACE.match(text, text.index("[") + 1).end()
    line, counted = 1, 0
    while text[index : index + 1] != "]":
        line, counted = line + text.count("\n", counted, index), index
        start = index
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{name}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno}); the file is one JSON array, "
                f"so none of it was read"
            ) from None
        except (ValueError, RecursionError) as e:  # the item is bad, and where it ends is known
            value, index = DataError(_invalid_json(e)), _skip_nested(text, start)
        if isinstance(value, dict) and text.find("\\u", start, index) != -1 and has_lone_surrogate(value):
            value = DataError(LONE_SURROGATE)
        items.append((line, value))
        index = _WHITESPACE.match(text, index).end()
        if text[index : index + 1] == ",":
            index = _WHITESPACE.match(text, index + 1).end()
        elif text[index : index + 1] != "]":
            at = text.count("\n", 0, index) + 1
            raise DataError(f"{name}:{at}: expected ',' or ']' after array item {len(items) - 1}")
    if text[index + 1 :].strip():
        raise DataError(f"{name}:{text.count(chr(10), 0, index) + 1}: text after the end of the JSON array")
    distinct_lines = len({line for line, _ in items}) == len(items)
    rows = []
    for i, (line, value) in enumerate(items):
        where = f"{name}:{line}" if distinct_lines else f"{name}:#{i}"
        if isinstance(value, DataError):  # why the item could not be read, to be located
            value = DataError(f"{where}: {value}")
        elif not isinstance(value, dict):
            value = DataError(f"{where}: expected a JSON object, got {_JSON_TYPES.get(type(value), 'null')}")
        rows.append((where, value))
    return rows


def _read_json(path: Path, name: str) -> Iterator[tuple[str, dict | DataError]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    start = text.lstrip()[:1]
    if not start:
        return iter(())
    if start == "[":
        return iter(_json_array(text, name))
    if start != "{":
        raise DataError(
            f"{name}: expected a JSON array of objects or JSON Lines, found {start!r} at the start"
        )
    try:
        row = json.loads(text)
        where = f"{name}:{text.count(chr(10), 0, text.index('{')) + 1}"
        return iter([(where, DataError(f"{where}: {LONE_SURROGATE}") if has_lone_surrogate(row) else row)])
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        lines = text.split("\n")  # not splitlines(): JSON strings may hold U+2028 and friends
        first_lines = [line for line in lines[:5] if line.strip()]
        if getattr(e, "msg", "") == "Extra data" or any(isinstance(_parse_object(s, ""), dict) for s in first_lines):
            return _json_lines(iter(lines), name)
        at = f":{e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise DataError(f"{name}{at}: {_invalid_json(e)}") from None


# ms-swift's names for datasets on ModelScope (seed 000), which ms-swift resolves itself
MS_SWIFT_DATASETS = {
    "latex-ocr-print": "AI-ModelScope/LaTeX_OCR",
    "coco-en-mini": "modelscope/coco_2014_caption",
    "coco-en-2-mini": "modelscope/coco_2014_caption",
    "refcoco-unofficial-grounding": "swift/refcoco",
    "video-chatgpt": "swift/VideoChatGPT",
}


def _not_found_hint(path: Path) -> str:
    """What a missing dataset file may have been meant as: a hub id (ORG/NAME) or a bare name as ms-swift
    and LLaMA-Factory take them (`latex-ocr-print`), which vlmkit does not resolve."""
    name = str(path)
    if name.count("/") == 1 and not path.suffix:
        return f"; for a hub dataset write hf::{name} (or ms::{name})"
    if "/" in name or "\\" in name or path.suffix:
        return ""
    where = f" (ms-swift's {name} is ModelScope's {MS_SWIFT_DATASETS[name]})" if name in MS_SWIFT_DATASETS else ""
    return (
        f"; a bare name is ms-swift's or LLaMA-Factory's way to name a dataset: vlmkit reads files (.jsonl, "
        f".json, .parquet, .arrow, .csv, .tsv, or a folder of them) or hub datasets written hf::ORG/NAME or "
        f"ms::ORG/NAME{where}"
    )


def read_rows(path: str | Path) -> Iterator[tuple[str, dict | DataError]]:
    """(where, row) for every row of a .json / .jsonl file; a row that is not a JSON object
    comes as a `DataError` instead. Lazy for JSON Lines.

    Raises `DataError` for a missing file, another extension, or a JSON array that does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found{_not_found_hint(path)}")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, str(path))
    if suffix == ".json":
        return _read_json(path, str(path))
    raise DataError(
        f"{path}: unsupported dataset file type '{suffix}'; use .json, .jsonl, .parquet, .arrow, .csv or .tsv"
    )


class Dataset:
    """Rows of one or more files; `dataset[i]` converts row i to a `Sample` (or raises `DataError`).

    Attributes: `path` (the file, or "a + b" for several), `format` (the detected format
    name, "a+b" when files differ), `rows` (a sequence of `Row`: a list for JSON files, read on
    access for tables), `bad` (list of (where, reason) for rows that were not JSON objects and
    so were left out), `schemas` (source -> one line on its column schema, for sources that have one).
    """

    def __init__(
        self,
        path: str,
        format: str,
        rows: Sequence[Row],
        bad: list[tuple[str, str]] | None = None,
        schemas: dict[str, str] | None = None,
    ):
        self.path = path
        self.format = format
        self.rows = rows
        self.bad = bad if bad is not None else []
        self.schemas = schemas if schemas is not None else {}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int | slice) -> Sample | Dataset:
        if isinstance(index, slice):
            return self.select(range(len(self))[index])
        row = self.rows[index]
        return row_to_sample(row.data, row.format, row.where, row.base_dirs)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"Dataset({self.path!r}, format={self.format!r}, rows={len(self)}, bad={len(self.bad)})"

    def select(self, indices: Sequence[int], keep_bad: bool = True) -> Dataset:
        """A dataset of the rows at `indices`, in that order (repeats allowed)."""
        return Dataset(
            self.path, self.format, take_rows(self.rows, indices), list(self.bad) if keep_bad else [], self.schemas
        )

    def check(self) -> list[tuple[str, str]]:
        """(where, reason) for every row that cannot be converted, after the bad rows.

        Media are not opened; local paths that do not exist are reported too.
        """
        problems = list(self.bad)
        for row in self.rows:
            try:
                sample = row_to_sample(row.data, row.format, row.where, row.base_dirs)
            except DataError as e:
                problems.append((row.where, str(e).removeprefix(f"{row.where}: ")))
                continue
            missing = missing_media(sample, row.base_dirs)
            if missing is not None:
                problems.append((row.where, missing[1]))
        return problems


def file_position(where: str, files: dict[str, int]) -> tuple[int, int]:
    """Sort key in file order for `file:LINE` and `file:#INDEX` locations; `files`: file -> its order."""
    path, _, line = where.rpartition(":")
    line = line.removeprefix("#")
    return files.get(path, len(files)), int(line) if line.isdigit() else 0


def samples_in_order(dataset: Dataset) -> Iterator[tuple[dict, Sample | DataError]]:
    """Every row of `dataset` as (the row with the dataset's own columns, its Sample or the DataError it
    raises), converted one at a time (a table is read as it goes) and in file order: a row that is not a
    JSON object (`dataset.bad`) comes at its place, as ({}, its DataError). The rows that batch inference
    (`vlmkit infer --input`) and `vlmkit eval` answer, one output row each."""
    if not dataset.bad:
        yield from map(_converted, dataset.rows)
        return
    files: dict[str, int] = {}
    for row in dataset.rows:  # rows with bad lines are JSON files: a list, in memory
        files.setdefault(row.where.rpartition(":")[0], len(files))
    located = [(row.where, row) for row in dataset.rows] + [
        (where, ({}, DataError(f"{where}: {reason}"))) for where, reason in dataset.bad
    ]
    located.sort(key=lambda item: file_position(item[0], files))
    for _, item in located:
        yield _converted(item) if isinstance(item, Row) else item


def _converted(row: Row) -> tuple[dict, Sample | DataError]:
    stored = row.data
    if row.stored is not None:  # a column row: its columns, and the question asked unless a column holds it
        query = row.data.get("query")
        asked = {"query": query} if query is not None and query not in row.stored.values() else {}
        stored = {**row.stored, **asked}
    try:
        return stored, row_to_sample(row.data, row.format, row.where, row.base_dirs)
    except DataError as e:
        return stored, e


def parse_spec(spec: str) -> tuple[Path, int | None]:
    """`path` or `path#N` -> (path, N or None). A file whose name holds '#' is taken as is."""
    if "#" not in spec or Path(spec).exists():
        return Path(spec), None
    name, _, count = spec.rpartition("#")
    if not count.isdigit() or int(count) == 0:
        raise DataError(f"{spec}: '#{count}' is not a row count; write PATH#N with N a positive integer")
    return Path(name), int(count)


def sample_indices(n_rows: int, n: int, seed: int = 42) -> list[int]:
    """N row indices: a random subset without replacement when n <= n_rows, else every row
    n // n_rows times in file order followed by a random subset for the remainder."""
    rng = random.Random(seed)
    if n <= n_rows:
        return rng.sample(range(n_rows), n)
    return list(range(n_rows)) * (n // n_rows) + rng.sample(range(n_rows), n % n_rows)


JSON_SUFFIXES = (".json", ".jsonl")


def _json_dataset(path: Path, base_dirs: tuple[Path, ...], columns: dict | None, prompt: str | None) -> Dataset:
    rows: list[tuple[str, dict]] = []
    bad: list[tuple[str, str]] = []
    for where, row in read_rows(path):
        if isinstance(row, DataError):
            bad.append((where, str(row).removeprefix(f"{where}: ")))
        else:
            rows.append((where, row))
    if not rows:
        first = f"; {len(bad)} bad row(s), the first: {bad[0][0]}: {bad[0][1]}" if bad else ""
        raise DataError(f"{path}: no dataset rows found{first}")
    fmt, schema = choose_format([row for _, row in rows[:PEEK_ROWS]], columns, prompt, where=str(path))
    if schema is None:
        return Dataset(str(path), fmt, [Row(where, row, fmt, base_dirs) for where, row in rows], bad)
    mapped = [Row(where, map_row(row, schema), fmt, base_dirs, row) for where, row in rows]
    return Dataset(str(path), fmt, mapped, bad, {str(path): schema.describe()})


def _table_dataset(spec: str, source, extra_dirs: tuple[Path, ...], columns: dict | None, prompt: str | None) -> Dataset:
    table, base_dirs, shards = load_table(source, spec)
    name = f"{source.hub}::{source.location}" if source.hub else source.location
    if table.num_rows == 0:
        raise DataError(f"{name}: no dataset rows found")
    dirs = base_dirs + extra_dirs
    stored = TableRows(table, name, "", dirs)
    first = [stored.raw(i) for i in range(min(PEEK_ROWS, len(stored)))]
    fmt, schema = choose_format(first, columns, prompt, name)
    convert = partial(map_row, schema=schema) if schema is not None else None
    rows = TableRows(table, name, fmt, dirs, convert, shards)
    return Dataset(name, fmt, rows, [], {name: schema.describe()} if schema is not None else {})


def _json_folder(path: Path) -> list[Path]:
    """The JSON / JSON Lines shards of a folder that holds no other dataset files, sorted; else []."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    data = [p for p in files if p.suffix.lower() in JSON_SUFFIXES + tuple(TABLE_SUFFIXES)]
    if data and all(p.suffix.lower() in JSON_SUFFIXES for p in data):
        return data
    return []


def load_dataset(
    spec: str | Path,
    media_root: str | Path | None = None,
    seed: int = 42,
    columns: dict[str, str] | None = None,
    prompt: str | None = None,
) -> Dataset:
    """Read `spec` into a `Dataset`: a .json/.jsonl file, a table file (.parquet, .arrow, .csv,
    .tsv), a folder of shards or a `save_to_disk` folder, or a hub id (`hf::org/name`); see
    `vlmkit.data.sources` for `:subset`, `@split`, and `#N` (N rows sampled with `seed`).

    Relative media paths resolve against the file's folder, then against `media_root`.
    `columns` (from --columns) and `prompt` (from --prompt) describe column datasets
    (`vlmkit.data.columns`). Raises `DataError` when the source cannot be read, has no valid
    rows, or its format is unknown.
    """
    source = parse_source(str(spec))
    path = Path(source.location)
    extra_dirs: tuple[Path, ...] = ()
    if media_root is not None:
        if not Path(media_root).is_dir():
            raise DataError(f"media root {media_root}: not a folder")
        extra_dirs = (Path(media_root),)
    shards = _json_folder(path) if source.hub is None and path.is_dir() else []
    if source.hub is None and path.suffix.lower() in JSON_SUFFIXES or not (source.hub or path.exists()):
        dataset = _json_dataset(path, (path.parent, *extra_dirs), columns, prompt)
    elif shards:
        parts = [_json_dataset(shard, (shard.parent, *extra_dirs), columns, prompt) for shard in shards]
        dataset = _concat(parts)
    elif source.hub is None and path.is_file() and path.suffix.lower() not in TABLE_SUFFIXES:
        read_rows(path)  # raises the unsupported-type error
        raise AssertionError(path)
    else:
        dataset = _table_dataset(str(spec), source, extra_dirs, columns, prompt)
    n = source.count
    return dataset if n is None else dataset.select(sample_indices(len(dataset), n, seed))


def _concat(parts: list[Dataset]) -> Dataset:
    if len(parts) == 1:
        return parts[0]
    return Dataset(
        " + ".join(p.path for p in parts),
        "+".join(dict.fromkeys(p.format for p in parts)),
        concat_rows([p.rows for p in parts]),
        [b for p in parts for b in p.bad],
        {k: v for p in parts for k, v in p.schemas.items()},
    )


def load_datasets(
    specs: list[str],
    media_root: str | Path | None = None,
    seed: int = 42,
    columns: dict[str, str] | None = None,
    prompt: str | None = None,
) -> Dataset:
    """Several specs read with `load_dataset` and concatenated in order."""
    if not specs:
        raise DataError("no dataset given; pass one or more PATH or PATH#N")
    return _concat([load_dataset(spec, media_root, seed, columns, prompt) for spec in specs])


def split_dataset(dataset: Dataset, ratio: float, seed: int = 42) -> tuple[Dataset, Dataset]:
    """(train, val): `ratio` of the rows (rounded up, at least 1 when ratio > 0) drawn at random
    with `seed` for validation, the rest for training; both keep file order. `bad` stays on train."""
    if not 0 <= ratio < 1:
        raise DataError(f"--split-ratio {ratio}: expected a fraction in [0, 1), e.g. 0.05")
    n_val = min(max(1, math.ceil(ratio * len(dataset))), len(dataset) - 1) if ratio > 0 else 0
    if ratio > 0 and n_val < 1:
        raise DataError(f"{dataset.path}: {len(dataset)} row(s) cannot be split into train and validation")
    val = sorted(random.Random(seed).sample(range(len(dataset)), n_val))
    chosen = set(val)
    train = [i for i in range(len(dataset)) if i not in chosen]
    return dataset.select(train), dataset.select(val, keep_bad=False)
