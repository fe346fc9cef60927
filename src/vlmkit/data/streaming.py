"""Dataset rows read as a stream (`vlmkit sft --streaming`): nothing is loaded, counted or decoded up front.

    stream = open_stream(["big.parquet", "hf::org/name@train#5000"])
    for index, row in stream.rows(start=1000, step=4, offset=1):   # rows 1001, 1005, 1009, ...
        row.where, row.data                                          # "big.parquet:#1001", {...}

Sources are the `--dataset` values of `vlmkit.data.sources` and JSON/JSONL files (or folders of them).
JSON files are read line by line by vlmkit's own reader; tables, folders of shards and hub datasets
through `datasets` streaming (`IterableDataset`, read as Arrow batches, media left as stored), a
`save_to_disk` folder or `.arrow` file memory-mapped. Rows come in stored order; `index` counts across
the sources one after another. `SOURCE#N` streams the first N rows (not N sampled at random: a stream
has no length to sample from). A row that is not a JSON object comes with a `DataError` as its data.

`rows(start, step, offset)` gives reader `offset` of `step` (a process or DataLoader worker) its share,
numbered from 0 and from row `start` of it on. A source stored in shards (the files of a hub dataset or of a
local folder) whose shard count is a multiple of `step` is split by shard, as `datasets`'
`split_dataset_by_node` does: shard s is read by reader s % step alone, so a hub stream is downloaded once
over all readers, not once per reader. Any other source is read by every reader, each keeping its rows
`j % step == offset` (j: the row's place in the source); the other readers' rows, and the reader's rows
before `start`, are skipped as whole Arrow batches or parsed lines, never converted or decoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from vlmkit.data.columns import ColumnSchema, map_row
from vlmkit.data.formats import choose_format
from vlmkit.data.readers import JSON_SUFFIXES, PEEK_ROWS, _json_folder, read_rows
from vlmkit.data.sources import (
    ITER_CHUNK,
    TABLE_SUFFIXES,
    Row,
    Source,
    _datasets,
    _first_line,
    _one_split,
    offline_unless_hub_answers,
    parse_source,
)
from vlmkit.errors import DataError

# Bytes of a Parquet column chunk read at a time: a row group is read page by page, not whole (a file written as one
# row group of 8,000 embedded images otherwise held all of them at once).
READ_BUFFER = 1 << 20
# Stored batches: (index of the batch's first row in the part, its row count, take), where take(offsets) reads
# those rows of the batch as [(where, raw row or DataError), ...].
Batches = Iterator[tuple[int, int, Callable[[list[int]], list[tuple[str, Any]]]]]


@dataclass(frozen=True)
class StreamPart:
    """One source: its name, detected format and column schema, media folders, row limit (#N),
    `batches()`, which yields (first row, row count, take) per stored batch (take(offsets) reads rows), and
    `shards`: the same rows as one `batches` per stored shard, in order."""

    name: str
    format: str
    schema: ColumnSchema | None
    base_dirs: tuple[Path, ...]
    count: int | None
    batches: Callable[[], Batches]
    shards: tuple[Callable[[], Batches], ...]

    def split_by_shard(self, readers: int) -> bool:
        """Whether `readers` readers split this source by shard (each reads only its own shards): more than
        one reader, shards a multiple of them (even shares, as `datasets` requires), and no #N (its first
        N rows cross shards that other readers read)."""
        return readers > 1 and self.count is None and len(self.shards) % readers == 0


def _json_batches(path: Path) -> Batches:
    rows, start = read_rows(path), 0
    while chunk := list(islice(rows, ITER_CHUNK)):
        yield start, len(chunk), partial(_pick, chunk)
        start += len(chunk)


def _pick(chunk: list, offsets: list[int]) -> list:
    return [chunk[i] for i in offsets]


def _table_batches(table: Any, name: str) -> Batches:
    """Arrow batches of a `datasets.IterableDataset`; take(offsets) converts only the rows asked for."""
    start = 0
    batches = table.with_format("arrow").iter(batch_size=ITER_CHUNK)
    try:
        for batch in batches:
            yield start, batch.num_rows, partial(_take_arrow, batch, name, start)
            start += batch.num_rows
    finally:
        batches.close()  # a stream stopped early: let `datasets` close its files now, not at exit


def _take_arrow(batch: Any, name: str, start: int, offsets: list[int]) -> list[tuple[str, Any]]:
    raws = batch.take(offsets).to_pylist()
    return [(f"{name}:#{start + i}", raw) for i, raw in zip(offsets, raws, strict=True)]


def _parquet_batches(files: list[Path], names: list[str]) -> Batches:
    """Batches of local Parquet files read by pyarrow itself, rows named by file (`FILE:#INDEX_IN_FILE`).
    Not through `datasets`: its Parquet reader (pyarrow's dataset scanner) reads row groups ahead in the
    background whether they are asked for or not (a 600 MB file's stream grew to 1 GB of heap in 8 s while
    training had read 300 rows), and pyarrow's pre-buffering keeps what it read; neither is used here, and
    column chunks are read through a buffer (`READ_BUFFER`)."""
    import pyarrow.parquet as pq

    start = 0
    for file, name in zip(files, names, strict=True):
        with pq.ParquetFile(file, pre_buffer=False, buffer_size=READ_BUFFER) as reader:
            offset = 0
            for batch in reader.iter_batches(batch_size=ITER_CHUNK):
                yield start, batch.num_rows, partial(_take_arrow, batch, name, offset)
                start += batch.num_rows
                offset += batch.num_rows


def _local_parquet(source: Source, spec: str) -> tuple[list[Path], list[str]] | None:
    """(files, row-location names) when `source` is a local Parquet file or a folder of Parquet shards (in
    the order `datasets` reads them, as without --streaming); None for anything else."""
    path = Path(source.location)
    if source.hub is not None:
        return None
    if path.is_file():
        return ([path], [source.location]) if TABLE_SUFFIXES.get(path.suffix.lower()) == "parquet" else None
    if any((path / f).is_file() for f in ("state.json", "dataset_dict.json")):
        return None
    try:
        builder = _datasets(spec).load_dataset_builder(str(path), source.subset)
    except Exception as e:
        raise DataError(f"{spec}: cannot read it as a dataset ({_first_line(e)})") from None
    if builder.name != "parquet":
        return None
    files_by_split = builder.config.data_files
    files = [Path(str(f)) for f in _one_split(dict(files_by_split), source.split, spec)]
    if len(files) == 1:
        return files, [source.location]
    return files, [str(path / f.relative_to(path.resolve())) for f in files]


def _parquet_scan_options() -> Any:
    """Hub Parquet read by `datasets` without pyarrow's pre-buffering, which keeps every row group it read
    (streaming a local 600 MB file held 1.4 GB with it)."""
    import pyarrow.dataset

    return pyarrow.dataset.ParquetFragmentScanOptions(pre_buffer=False)


def _stream_table(source: Source, spec: str) -> Any:
    """The `datasets.IterableDataset` of a table source (one split), read lazily."""
    datasets = _datasets(spec)
    if source.hub == "ms":
        raise DataError(
            f"{spec}: ModelScope datasets are not streamed; download it and pass the folder, or drop --streaming"
        )
    unreachable = offline_unless_hub_answers(datasets, source.location) if source.hub else None
    try:
        path = Path(source.location)
        if (
            source.hub is None
            and path.is_dir()
            and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))
        ):
            return _one_split(datasets.load_from_disk(str(path)), source.split, spec).to_iterable_dataset()
        if source.hub or path.is_dir():
            builder = datasets.load_dataset_builder(source.location, source.subset)
            if builder.name == "parquet":
                builder.config.fragment_scan_options = _parquet_scan_options()
            split = source.split or ("train" if source.hub else None)
            return _one_split(builder.as_streaming_dataset(split=split), source.split, spec)
        kind, options = TABLE_SUFFIXES[path.suffix.lower()], {}
        if kind == "csv" and path.suffix.lower() == ".tsv":
            options = {"delimiter": "\t"}
        elif kind == "arrow":
            try:
                return datasets.Dataset.from_file(str(path)).to_iterable_dataset()  # memory-mapped
            except Exception:  # an Arrow IPC *file* rather than the stream datasets writes
                pass
        return datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True, **options)
    except DataError:
        raise
    except Exception as e:  # offline, unknown name, a corrupt file: one line that says what to do
        if source.hub:
            raise DataError(
                f"{spec}: cannot stream from the Hugging Face Hub ({unreachable or _first_line(e)}); without a network, copy it "
                f"where there is one (hf download {source.location} --repo-type dataset --local-dir DIR) and "
                "pass --dataset DIR"
            ) from None
        raise DataError(f"{spec}: cannot read it as a dataset ({_first_line(e)})") from None


def _peek(batches: Batches) -> list[Any]:
    """The first PEEK_ROWS stored rows (JSON objects only), to detect the format."""
    found: list[Any] = []
    for _, n, take in batches:
        found += [raw for _, raw in take(list(range(n))) if isinstance(raw, dict)]
        if len(found) >= PEEK_ROWS:
            break
    if hasattr(batches, "close"):
        batches.close()
    return found[:PEEK_ROWS]


def _table_shards(table: Any, name: str) -> tuple[Callable[[], Batches], ...]:
    """One `batches` per shard of a `datasets.IterableDataset` (its data files), rows named by shard."""
    n = table.num_shards
    return tuple(
        partial(_table_batches, table.shard(num_shards=n, index=k), f"{name} (shard {k + 1} of {n})") for k in range(n)
    )


def _part(name, batches, count, base_dirs, columns, prompt, shards=None) -> StreamPart:
    first = _peek(batches())
    if not first:
        raise DataError(f"{name}: no dataset rows found")
    fmt, schema = choose_format(first, columns, prompt, name)
    return StreamPart(name, fmt, schema, base_dirs, count, batches, shards or (batches,))


def first_stored_rows(spec: str) -> list[Any]:
    """The first rows of one local source as stored (JSON objects only), reading no more of it than a stream's
    format detection does: a parquet of embedded images is not loaded whole to look at its first rows. A
    missing or unsupported file gives no rows (the reader that follows says why)."""
    source = parse_source(spec)
    path = Path(source.location)
    if source.hub is None and path.suffix.lower() in JSON_SUFFIXES:
        return _peek(_json_batches(path)) if path.is_file() else []
    json_files = _json_folder(path) if source.hub is None and path.is_dir() else []
    if json_files:
        return _peek(_json_batches(json_files[0]))
    if source.hub is None and not (path.is_dir() or path.suffix.lower() in TABLE_SUFFIXES and path.is_file()):
        return []
    parquet = _local_parquet(source, spec)
    if parquet is not None:
        return _peek(_parquet_batches(*parquet))
    return _peek(_table_batches(_stream_table(source, spec), spec))


def open_stream(
    specs: list[str],
    media_root: str | Path | None = None,
    columns: dict[str, str] | None = None,
    prompt: str | None = None,
) -> RowStream:
    """A `RowStream` of `specs` (as `--dataset` takes them); the first rows of each are read to detect its
    format. Raises `DataError` for a source that cannot be opened or has no rows."""
    if not specs:
        raise DataError("no dataset given; pass one or more PATH or PATH#N")
    extra: tuple[Path, ...] = ()
    if media_root is not None:
        if not Path(media_root).is_dir():
            raise DataError(f"media root {media_root}: not a folder")
        extra = (Path(media_root),)
    parts = []
    for spec in specs:
        source = parse_source(str(spec))
        path = Path(source.location)
        json_files = _json_folder(path) if source.hub is None and path.is_dir() else []
        if source.hub is None and (path.suffix.lower() in JSON_SUFFIXES or not path.exists()):
            read_rows(path)  # a missing file or another type: the reader's one-line error, now
            json_files = [path]
        if json_files:
            if source.count is not None and len(json_files) > 1:
                raise DataError(
                    f"{spec}: #N on a folder of JSON files is not streamed; give the files one by one"
                )
            for file in json_files:
                batches = partial(_json_batches, file)
                parts.append(_part(str(file), batches, source.count, (file.parent, *extra), columns, prompt))
            continue
        if source.hub is None and path.is_file() and path.suffix.lower() not in TABLE_SUFFIXES:
            read_rows(path)  # raises the unsupported-type error
        name = f"{source.hub}::{source.location}" if source.hub else source.location
        dirs = () if source.hub else ((path if path.is_dir() else path.parent),)
        parquet = _local_parquet(source, str(spec))
        if parquet is not None:
            batches = partial(_parquet_batches, *parquet)
            shards = tuple(partial(_parquet_batches, [f], [n]) for f, n in zip(*parquet, strict=True))
        else:
            table = _stream_table(source, str(spec))
            batches, shards = partial(_table_batches, table, name), _table_shards(table, name)
        parts.append(_part(name, batches, source.count, dirs + extra, columns, prompt, shards))
    return RowStream(parts)


class RowStream:
    """Rows of several `StreamPart`s one after another, read on demand (see the module docstring)."""

    def __init__(self, parts: list[StreamPart]):
        self.parts = parts

    @property
    def schemas(self) -> dict[str, str]:
        return {p.name: p.schema.describe() for p in self.parts if p.schema is not None}

    def describe(self) -> str:
        return " + ".join(
            f"{p.name}{f' (first {p.count} rows)' if p.count else ''}: {p.format}" for p in self.parts
        )

    def split_notes(self, readers: int) -> list[str]:
        """One line per source on how `readers` readers share it."""
        notes = []
        for part in self.parts:
            n = len(part.shards)
            if part.split_by_shard(readers):
                notes.append(f"{part.name}: {n} shards, {n // readers} read by each reader")
            elif readers > 1:
                why = "#N is given" if part.count is not None else f"its {n} shard(s) do not divide among {readers} readers"
                notes.append(f"{part.name}: read whole by each of the {readers} readers ({why}), each keeping "
                             f"1 row in {readers}")  # fmt: skip
        return notes

    def rows(self, start: int = 0, step: int = 1, offset: int = 0) -> Iterator[tuple[int, Row]]:
        """(k, Row) for reader `offset` of `step`: its k-th row (k >= start) in stored order (see the module
        docstring for each reader's share); a row that is not a JSON object has a `DataError` as its data."""
        k = 0  # rows of this reader's share before the batch
        for part in self.parts:
            convert = partial(map_row, schema=part.schema) if part.schema is not None else None
            by_shard = part.split_by_shard(step)
            for shard in part.shards[offset::step] if by_shard else (part.batches,):
                batches = shard()
                for first, n, take in batches:
                    if part.count is not None:
                        n = min(n, part.count - first)
                    mine = list(range(n)) if by_shard else [i for i in range(n) if (first + i) % step == offset]
                    wanted = mine[max(0, start - k) :]
                    for i, (where, raw) in zip(range(k + len(mine) - len(wanted), k + len(mine)),
                                               take(wanted) if wanted else [], strict=True):  # fmt: skip
                        data = convert(raw) if convert is not None and isinstance(raw, dict) else raw
                        yield i, Row(where, data, part.format, part.base_dirs)
                    k += len(mine)
                    if part.count is not None and first + n >= part.count:
                        break
                if hasattr(batches, "close"):
                    batches.close()
