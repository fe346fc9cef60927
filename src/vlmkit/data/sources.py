"""Dataset sources besides JSON files, read with the `datasets` library (memory-mapped Arrow):

    data.parquet  data.arrow  data.csv  data.tsv      one file
    DIR                                               a folder of shards (Parquet, Arrow, CSV, JSON
                                                      Lines), a local copy of a hub repo, or a
                                                      `Dataset.save_to_disk` folder
    hf::org/name[:subset][@split]                     a Hugging Face Hub dataset
    ms::org/name[:subset][@split]                     a ModelScope dataset (needs `modelscope`)

Each may end in `#N` (N rows sampled, as for JSON files); `@split` also picks a split of a local
folder; without it the `train` split (or the only one) is read. Rows are read from the table one at
a time when they are used (`TableRows`), with media left as stored (`datasets.Image` dicts of bytes
and path), so memory does not grow with the row count. A row is located as `SOURCE:#INDEX`
(0-based row of the table, of the split read).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vlmkit.errors import DataError

TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".tsv": "csv"}
HUB_PREFIXES = ("hf::", "ms::")
ITER_CHUNK = 256  # rows read from the table at a time when iterating


class Row(NamedTuple):
    """One stored row: its location, the row as a dict, its format and media folders; `stored`: the row
    with the dataset's own columns when `data` is their column-schema mapping (else None)."""

    where: str
    data: dict[str, Any]
    format: str
    base_dirs: tuple[Path, ...]
    stored: dict[str, Any] | None = None


@dataclass(frozen=True)
class Source:
    """A parsed --dataset value: `location` is a path, or a hub id when `hub` is "hf" or "ms"."""

    location: str
    hub: str | None = None
    subset: str | None = None
    split: str | None = None
    count: int | None = None


def _count(spec: str, text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise DataError(f"{spec}: '#{text}' is not a row count; write SOURCE#N with N a positive integer")
    return int(text)


def parse_source(spec: str) -> Source:
    """`hf::org/name:subset@split#N`, `PATH@split#N`, `PATH#N` or `PATH` -> Source. A path that
    exists as written is taken as it is (its name may hold '#' or '@')."""
    if spec.startswith(HUB_PREFIXES):
        hub, rest = spec[:2], spec[4:]
        rest, _, count = rest.partition("#")
        rest, _, split = rest.partition("@")
        name, _, subset = rest.partition(":")
        if name.count("/") > 1 or not name.strip("/"):
            raise DataError(f"{spec}: expected {hub}::ORG/NAME[:SUBSET][@SPLIT][#N]")
        return Source(name, hub, subset or None, split or None, _count(spec, count) if count else None)
    if Path(spec).exists():
        return Source(spec)
    rest, count = spec, None
    if "#" in rest:
        rest, _, text = rest.rpartition("#")
        count = _count(spec, text)
    split = None
    if "@" in rest and not Path(rest).exists():
        head, _, tail = rest.rpartition("@")
        if tail and "/" not in tail and "." not in tail:  # a split name, not part of a file name
            rest, split = head, tail
    return Source(rest, None, None, split, count)


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{what}: reading it needs the datasets library: pip install 'vlmkit[datasets]'"
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def offline_unless_hub_answers(datasets: Any, location: str) -> str | None:
    """Hub requests made offline from here on when one request for `location`'s info gets no answer at all
    (no network, a firewall): `datasets` would retry each of its requests 5 times over about 25 s, printing
    every retry, before failing. Offline, a cached copy still loads and anything else fails at once. An
    HTTP answer (unknown name, gated, rate limit) means the hub is reachable: nothing changes.
    Returns why the hub is taken as unreachable (for the error line), else None."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return None
    try:
        huggingface_hub.dataset_info(location, timeout=10)
    except HfHubHTTPError:
        return None
    except Exception as e:  # no answer: a connection refused, a name that does not resolve, a timeout
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True
        return f"no answer from {huggingface_hub.constants.ENDPOINT}: {_first_line(e)}"
    return None


def _one_split(loaded: Any, split: str | None, name: str) -> Any:
    """A Dataset out of what `datasets` returned: the given split, else `train` or the only one."""
    if not isinstance(loaded, dict):  # a Dataset (DatasetDict is a dict)
        return loaded
    if split is None:
        split = "train" if "train" in loaded or len(loaded) != 1 else next(iter(loaded))
    if split not in loaded:
        raise DataError(f"{name}: no split {split!r}; splits: {', '.join(loaded)}; pick one with @SPLIT")
    return loaded[split]


def _load_split(datasets: Any, location: str, source: Source) -> Any:
    """`datasets.load_dataset` of one split: the given one, else `train` (only that split is
    downloaded and converted), else, for a dataset without a train split, all of them."""
    if source.split is not None:
        return datasets.load_dataset(location, source.subset, split=source.split)
    try:
        return datasets.load_dataset(location, source.subset, split="train")
    except ValueError as e:
        if "Unknown split" not in str(e):
            raise
    return datasets.load_dataset(location, source.subset)


def _load_hub(source: Source, spec: str) -> Any:
    if source.hub == "ms":
        try:
            from modelscope.msdatasets import MsDataset
        except ImportError:
            raise DataError(f"{spec}: ModelScope datasets need modelscope: pip install modelscope") from None
        try:
            loaded = MsDataset.load(source.location, subset_name=source.subset, split=source.split or "train")
            return loaded.to_hf_dataset()
        except Exception as e:  # network, auth, unknown name: one line for people
            raise DataError(f"{spec}: cannot load from ModelScope ({_first_line(e)})") from None
    datasets = _datasets(spec)
    unreachable = offline_unless_hub_answers(datasets, source.location)
    try:
        loaded = _load_split(datasets, source.location, source)
    except Exception as e:  # offline, unknown name, gated: one line that says what to do
        raise DataError(
            f"{spec}: cannot load from the Hugging Face Hub ({unreachable or _first_line(e)}); without a network, copy it "
            f"where there is one (hf download {source.location} --repo-type dataset --local-dir DIR) and "
            "pass --dataset DIR"
        ) from None
    return _one_split(loaded, source.split, spec)


def _load_local(path: Path, source: Source, spec: str) -> Any:
    datasets = _datasets(spec)
    try:
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            return _one_split(datasets.load_from_disk(str(path)), source.split, spec)
        if path.is_dir():
            loaded = _load_split(datasets, str(path), source)
            return _one_split(loaded, source.split, spec)
        kind = TABLE_SUFFIXES[path.suffix.lower()]
        if kind == "arrow":
            try:
                return datasets.Dataset.from_file(str(path))  # memory-mapped in place, no copy
            except Exception:  # an Arrow IPC *file* rather than the stream datasets writes
                pass
        options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return datasets.load_dataset(kind, data_files=str(path), split="train", **options)
    except DataError:
        raise
    except Exception as e:  # a corrupt file, a folder with nothing readable
        if "corresponds to no data" in str(e):  # datasets' words for a table without rows
            raise DataError(f"{spec}: no dataset rows found") from None
        raise DataError(f"{spec}: cannot read it as a dataset ({_first_line(e)})") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _parquet_shards(path: Path, source: Source, table: Any) -> tuple[tuple[str, int], ...]:
    """(file, row count) of each Parquet shard of the folder `path`, in the order `datasets` read
    them, so a row can be named by its shard; () when that cannot be known for sure."""
    import pyarrow.parquet as pq

    datasets = _datasets(str(path))
    try:
        files = datasets.load_dataset_builder(str(path), source.subset).config.data_files[str(table.split)]
        files = [Path(str(f)) for f in files]
        if not all(f.suffix == ".parquet" and f.is_file() for f in files):
            return ()
        counts = [pq.ParquetFile(f).metadata.num_rows for f in files]
    except Exception:  # any doubt: rows are named by their index in the split
        return ()
    if sum(counts) != table.num_rows:
        return ()
    return tuple((str(path / f.relative_to(path.resolve())), n) for f, n in zip(files, counts, strict=True))


def load_table(source: Source, spec: str) -> tuple[Any, tuple[Path, ...], tuple[tuple[str, int], ...]]:
    """(the `datasets.Dataset` of `source`, the folders its relative media paths resolve against,
    the (file, rows) of its Parquet shards when it is a folder of them, else ())."""
    if source.hub:
        return _load_hub(source, spec), (), ()
    path = Path(source.location)
    table = _load_local(path, source, spec)
    shards = _parquet_shards(path, source, table) if path.is_dir() and table.split is not None else ()
    return table, ((path if path.is_dir() else path.parent),), shards if len(shards) > 1 else ()


class TableRows(Sequence):
    """The rows of a `datasets.Dataset` as `Row`s, read on access; `convert(raw)` turns a stored
    row into `Row.data` (a column mapping; it must not raise). Rows are located `name:#INDEX`, or
    `SHARD_FILE:#INDEX_IN_SHARD` with `shards` ((file, rows) in table order)."""

    def __init__(
        self,
        table: Any,
        name: str,
        format: str,
        base_dirs: tuple[Path, ...],
        convert: Any = None,
        shards: tuple[tuple[str, int], ...] = (),
    ):
        self.table = table
        self.name = name
        self.format = format
        self.base_dirs = base_dirs
        self.convert = convert
        self.shards = shards
        self.shard_starts = list(np.cumsum([0] + [n for _, n in shards]))

    def where(self, index: int) -> str:
        if not self.shards:
            return f"{self.name}:#{index}"
        shard = bisect.bisect_right(self.shard_starts, index) - 1
        return f"{self.shards[shard][0]}:#{index - int(self.shard_starts[shard])}"

    def __len__(self) -> int:
        return self.table.num_rows

    def raw(self, index: int) -> dict[str, Any]:
        """Row `index` as stored (images as {"bytes", "path"} dicts, not decoded)."""
        return self.table.with_format("arrow")[index].to_pylist()[0]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return IndexedRows(self, np.arange(len(self))[index])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._row(index, self.raw(index))

    def __iter__(self) -> Iterator[Row]:
        arrow = self.table.with_format("arrow")
        for start in range(0, len(self), ITER_CHUNK):  # one Arrow read per chunk: ~30x faster than per row
            for offset, raw in enumerate(arrow[start : start + ITER_CHUNK].to_pylist()):
                yield self._row(start + offset, raw)

    def _row(self, index: int, raw: dict[str, Any]) -> Row:
        if self.convert is None:
            return Row(self.where(index), raw, self.format, self.base_dirs)
        return Row(self.where(index), self.convert(raw), self.format, self.base_dirs, raw)


class IndexedRows(Sequence):
    """Rows `indices` (in that order, repeats allowed) of another row sequence, without reading them."""

    def __init__(self, base: Sequence, indices: np.ndarray):
        if isinstance(base, IndexedRows):
            base, indices = base.base, base.indices[indices]
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return IndexedRows(self.base, self.indices[index])
        return self.base[int(self.indices[index])]


class ConcatRows(Sequence):
    """Several row sequences one after another."""

    def __init__(self, parts: list[Sequence]):
        self.parts = parts
        self.starts = list(np.cumsum([0] + [len(p) for p in parts]))

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, index):
        if isinstance(index, slice):
            return IndexedRows(self, np.arange(len(self))[index])
        if index < 0:
            index += len(self)
        part = bisect.bisect_right(self.starts, index) - 1
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.parts[part][index - int(self.starts[part])]

    def __iter__(self) -> Iterator:
        for part in self.parts:
            yield from part


def take_rows(rows: Sequence, indices: Sequence[int]) -> Sequence:
    """Rows at `indices`: a list for a list, else a lazy view."""
    if isinstance(rows, list):
        return [rows[i] for i in indices]
    return IndexedRows(rows, np.asarray(list(indices), dtype=np.int64))


def concat_rows(parts: list[Sequence]) -> Sequence:
    if all(isinstance(p, list) for p in parts):
        return [row for p in parts for row in p]
    return ConcatRows(parts)


def absolute_source(value: str | None) -> str | None:
    """A local dataset path (or PATH#N) made absolute; anything else (a hub id) as given."""
    if not value:
        return value
    path, hash_, count = value.rpartition("#") if "#" in value else (value, "", "")
    if Path(path).expanduser().exists():
        return str(Path(path).expanduser().resolve()) + hash_ + count
    return value
