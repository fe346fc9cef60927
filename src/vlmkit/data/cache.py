"""On-disk cache of encoded samples, and encoding a dataset into it with worker processes.

    from vlmkit.data.cache import EncodeCache, encode_dataset
    stats = encode_dataset(dataset, template, workers=2, cache_dir="output/encode_cache")
    cache = EncodeCache("output/encode_cache", template)
    inputs = cache.encode(dataset[0])      # model inputs: read from disk, or encoded and stored

An entry holds one sample as `template.encode(..., patchify=False)` returns it: token ids,
labels, grids and each image decoded and resized to the model's size as (H, W, 3) uint8 (8x
smaller than float32 `pixel_values`; the cheap normalise-and-patchify step runs when it is
read). Files are safetensors (no pickle), one per sample, written to a temporary name and
renamed, so a killed run never leaves half an entry; an entry that does not read back is
re-encoded with a warning.

The key of an entry is a SHA-256 over: the sample (messages, objects, extra; not where it came
from, so moving a row does not invalidate it), each local media file's size and modification
time, the per-sample resolution limit (`limit` of `template.encode`), and the template's
fingerprint (`template_fingerprint`: its class, the code of its family folder and of vlmkit's shared encoding modules, so a new vlmkit
encodes afresh; its tokenizer; and every setting it holds: pixel limits, system prompt, patch
sizes, normalisation ...). Entries live under `<cache_dir>/<fingerprint[:16]>/`, with a
`template.json` describing the settings, so the entries of old settings can be deleted as one
folder. Remote media (http URLs) are keyed by their URL only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmkit.errors import VlmkitError
from vlmkit.sample import is_local_path

# Bump when what `encode` returns changes in a way the template's source code does not show.
ENCODING_VERSION = 1
SUFFIX = ".safetensors"
# vlmkit modules (besides the template's family folder) whose code decides what `encode` returns.
SHARED_ENCODING_MODULES = ("media", "encoding", "video", "grounding", "sample")


def _describe(value: Any, depth: int = 0) -> Any:
    """A JSON-able, process-independent description of a template attribute."""
    if depth > 4:
        return type(value).__qualname__
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return [str(value.dtype), value.shape, hashlib.sha256(value.tobytes()).hexdigest()]
    if isinstance(value, torch.Tensor):
        return _describe(value.detach().cpu().numpy(), depth)
    if isinstance(value, (list, tuple)):
        return [_describe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    if dataclasses.is_dataclass(value):
        return {f.name: _describe(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)}
    if hasattr(value, "__dict__"):
        return {type(value).__qualname__: _describe(vars(value), depth + 1)}
    return repr(value)


def _tokenizer_hash(tokenizer) -> str:
    try:
        text = tokenizer.backend_tokenizer.to_str()  # vocabulary, merges, added tokens, normalizer
    except AttributeError:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    text += str(getattr(tokenizer, "chat_template", ""))
    return hashlib.sha256(text.encode()).hexdigest()


def template_fingerprint(template) -> dict[str, Any]:
    """Everything about `template` that can change what it encodes, as a JSON-able dict: vlmkit's
    encoding version, the template class, the source code of its family folder and of vlmkit's
    shared encoding modules, a hash of the tokenizer, and every attribute (settings such as
    the resolution limits and the system prompt, patch sizes, normalisation, render functions)."""
    import vlmkit

    shared = Path(vlmkit.__file__).parent
    sources = sorted(Path(inspect.getsourcefile(type(template))).parent.glob("*.py"))
    sources += [shared / f"{name}.py" for name in SHARED_ENCODING_MODULES if (shared / f"{name}.py").exists()]
    code = hashlib.sha256()
    for source in sources:
        code.update(source.read_bytes())
    return {
        "encoding_version": ENCODING_VERSION,
        "class": f"{type(template).__module__}.{type(template).__qualname__}",
        "code": code.hexdigest(),
        "attributes": {
            name: _tokenizer_hash(value) if name == "tokenizer" else _describe(value)
            for name, value in sorted(vars(template).items())
        },
    }


def _json_default(value: Any) -> Any:
    """Media that are not text inside a sample (bytes, PIL images, paths) -> a stable description."""
    if isinstance(value, (bytes, bytearray)):
        return "bytes:" + hashlib.sha256(value).hexdigest()
    if isinstance(value, Path):
        return str(value)
    tobytes = getattr(value, "tobytes", None)  # PIL images, numpy arrays
    if tobytes is not None:
        return (
            f"{getattr(value, 'mode', '')}{getattr(value, 'size', '')}:"
            + hashlib.sha256(tobytes()).hexdigest()
        )
    return repr(value)


def _media_stamp(source: Any) -> str:
    """Size and modification time of a local media file; '' for anything else (keyed by its content)."""
    if isinstance(source, Path) or is_local_path(source):
        path = Path(source)
    elif isinstance(source, str) and source.startswith("file://"):
        path = Path(source[len("file://") :])
    else:
        return ""
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def sample_key(sample, fingerprint: str, limit: int | None = None) -> str:
    """The cache key (hex SHA-256) of `sample` encoded for training by the template of `fingerprint` at
    the per-sample resolution `limit` (None: the template's)."""
    content = {
        "messages": sample.messages,
        "objects": sample.objects,
        "extra": sample.extra,
        "limit": limit,
        "media": [_media_stamp(s) for kind in ("image", "video") for s in sample.media(kind)],
    }
    text = json.dumps(content, sort_keys=True, default=_json_default, ensure_ascii=False)
    return hashlib.sha256(f"{fingerprint}\n{text}".encode()).hexdigest()


def _tag_tuples(value: Any) -> Any:
    """JSON keeps lists only; tuples (e.g. image sizes) are written as {"tuple": [...]} to come back as tuples."""
    if isinstance(value, tuple):
        return {"tuple": [_tag_tuples(v) for v in value]}
    if isinstance(value, list):
        return [_tag_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: _tag_tuples(v) for k, v in value.items()}
    return value


def _untag_tuples(value: Any) -> Any:
    if isinstance(value, dict):
        if list(value) == ["tuple"]:
            return tuple(_untag_tuples(v) for v in value["tuple"])
        return {k: _untag_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag_tuples(v) for v in value]
    return value


def _to_file(key: str, stored: dict[str, Any]) -> bytes:
    """An `encode(..., patchify=False)` output -> safetensors bytes (tensors, arrays, lists of arrays,
    and the other values as JSON in the metadata)."""
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}
    layout: dict[str, Any] = {"key": key, "torch": [], "lists": {}, "json": {}}
    for name, value in stored.items():
        if isinstance(value, torch.Tensor):
            arrays[name] = value.numpy()
            layout["torch"].append(name)
        elif isinstance(value, np.ndarray):
            arrays[name] = value
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            for k, v in enumerate(value):
                arrays[f"{name}.{k}"] = v
            layout["lists"][name] = len(value)
        else:
            layout["json"][name] = _tag_tuples(value)
    return save(
        {k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"vlmkit": json.dumps(layout)}
    )


def _from_file(key: str, data: bytes) -> dict[str, Any]:
    """The inverse of `_to_file`; ValueError when the bytes are not a complete entry for `key`."""
    from safetensors.numpy import load

    arrays = load(data)  # raises on a truncated or garbled file
    header_size = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, then JSON header
    layout = json.loads(json.loads(data[8 : 8 + header_size])["__metadata__"]["vlmkit"])
    if layout.get("key") != key:
        raise ValueError("the entry belongs to another key")
    out: dict[str, Any] = {name: _untag_tuples(value) for name, value in layout["json"].items()}
    for name in layout["torch"]:
        out[name] = torch.from_numpy(arrays[name])
    for name, count in layout["lists"].items():
        out[name] = [arrays[f"{name}.{k}"] for k in range(count)]
    for name, value in arrays.items():
        if name not in out and name.rpartition(".")[0] not in layout["lists"]:
            out[name] = value
    return out


class EncodeCache:
    """Encoded samples of one template under `cache_dir`; see the module docstring.

    `encode(sample, limit)` returns what `template.encode(sample, limit=limit)`
    returns, reading the entry when there is one and writing it when not. `hits` and `misses`
    count this process's lookups.
    """

    def __init__(self, cache_dir: str | Path, template):
        self.template = template
        fingerprint = template_fingerprint(template)
        self.fingerprint = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
        self.root = Path(cache_dir) / self.fingerprint[:16]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            description = self.root / "template.json"
            if not description.exists():
                tmp = description.with_name(f"template.json.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(fingerprint, indent=1, sort_keys=True) + "\n")
                tmp.replace(description)
        except OSError as e:
            raise VlmkitError(f"--cache-dir {cache_dir}: cannot write the encode cache there ({e})") from None
        self.hits = 0
        self.misses = 0
        self.write_failed = False
        # Templates with a compact stored form (resized uint8 images, patchified on read) use it; others
        # (e.g. tiling families) are stored as their `encode` output, float pixel values included.
        self.compact = template.compact_images

    def key(self, sample, limit: int | None = None) -> str:
        return sample_key(sample, self.fingerprint, limit)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / (key + SUFFIX)

    def read(self, key: str) -> dict[str, Any] | None:
        """The stored (not yet patchified) entry of `key`; None when absent or unreadable (then removed)."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:  # absent (or the cache folder is unusable: `write` says so)
            return None
        try:
            return _from_file(key, data)
        except Exception as e:  # a truncated or foreign file: encode again rather than fail the run
            warnings.warn(
                f"{path}: unreadable encode-cache entry ({type(e).__name__}: {e}); re-encoding it",
                stacklevel=2,
            )
            path.unlink(missing_ok=True)
            return None

    def write(self, key: str, stored: dict[str, Any]) -> None:
        """Store an entry; a full disk or a read-only folder warns (once) and training goes on uncached."""
        path = self.path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(exist_ok=True)
            tmp.write_bytes(_to_file(key, stored))
            tmp.replace(path)  # atomic: readers see the whole entry or none
        except (
            OSError,
            TypeError,
            ValueError,
        ) as e:  # disk full, read-only, or a value safetensors cannot hold
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self.write_failed:
                warnings.warn(
                    f"{self.root}: cannot write to the encode cache ({e}); going on without it", stacklevel=2
                )
            self.write_failed = True

    def stored(self, sample, limit: int | None = None) -> tuple[dict[str, Any], bool]:
        """(the stored form of `sample`, whether it came from the cache)."""
        key = self.key(sample, limit)
        stored = self.read(key)
        if stored is not None:
            self.hits += 1
            return stored, True
        self.misses += 1
        stored = self.encode_fresh(sample, limit)
        self.write(key, stored)
        return stored, False

    def encode_fresh(self, sample, limit: int | None = None) -> dict[str, Any]:
        """The stored form of `sample`, encoded now (no cache lookup)."""
        if self.compact:
            return self.template.encode(sample, limit=limit, patchify=False)
        return self.template.encode(sample, limit=limit)

    def encode(self, sample, limit: int | None = None) -> dict[str, Any]:
        """Model inputs of `sample` (as `template.encode(sample, limit=...)`), via the cache."""
        stored = self.stored(sample, limit)[0]
        return self.template.patchify_images(stored) if self.compact else stored


@dataclass
class EncodeStats:
    """What `encode_dataset` did: rows asked for, newly encoded, found in the cache, and failed."""

    rows: int = 0
    encoded: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        failed = (
            f", {len(self.failed)} failed (first: {self.failed[0][0]}: {self.failed[0][1]})"
            if self.failed
            else ""
        )
        return (
            f"{self.rows} rows in {self.seconds:.1f} s ({self.samples_per_second:.1f} rows/s): "
            f"{self.encoded} encoded, {self.cached} already cached{failed}"
        )


# Worker state, set once per process by `_start_worker` (the dataset and template are inherited or
# pickled once per worker, never per row).
_WORK: dict[str, Any] = {}


def _start_worker(dataset, template, cache_dir: str | None, limits: dict[int, int]) -> None:
    torch.set_num_threads(1)  # one core per worker process; the pool is the parallelism
    _WORK.update(
        dataset=dataset,
        template=template,
        cache=EncodeCache(cache_dir, template) if cache_dir is not None else None,
        limits=limits,
    )


def _encode_row(row: int) -> tuple[str, str | None]:
    """('encoded' | 'cached' | 'failed', reason) for one row; nothing large crosses back to the parent."""
    from vlmkit.errors import VlmkitError

    dataset, template, cache = _WORK["dataset"], _WORK["template"], _WORK["cache"]
    limit = _WORK["limits"].get(row)
    try:
        sample = dataset[row]
        if cache is None:
            template.encode(sample, limit=limit)
            return "encoded", None
        key = cache.key(sample, limit)
        if cache.path(key).exists():  # read back (and re-encoded if corrupt) when training uses it
            return "cached", None
        cache.write(key, cache.encode_fresh(sample, limit))
        return "encoded", None
    except VlmkitError as e:
        return "failed", str(e)


def encode_dataset(
    dataset,
    template,
    rows: list[int] | None = None,
    limits: dict[int, int] | None = None,
    workers: int = 1,
    cache_dir: str | Path | None = None,
    chunksize: int = 4,
    progress: bool = False,
) -> EncodeStats:
    """Encode `rows` (default: all) of a `vlmkit.data.Dataset` with `workers` processes.

    With `cache_dir`, each row missing from the cache is encoded and stored (rows already there
    are only looked up); without it, rows are encoded to model inputs and dropped (a throughput
    measurement). `limits` maps a row to its own resolution limit (`GoodRow.limit`, from
    `--truncation shrink`). Memory stays flat: workers take row indices and send back only a
    status. Rows that fail (bad data, missing image) are listed in `failed` as (where, reason)
    and do not stop the others.
    """
    rows = list(range(len(dataset))) if rows is None else list(rows)
    limits = limits or {}
    cache = str(cache_dir) if cache_dir is not None else None
    stats = EncodeStats(rows=len(rows))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="encoding", unit="row")
    start = time.perf_counter()
    if workers <= 1:
        threads = torch.get_num_threads()
        _start_worker(dataset, template, cache, limits)
        try:
            results = map(_encode_row, rows)
            _tally(stats, rows, results, dataset, bar)
        finally:
            torch.set_num_threads(threads)
            _WORK.clear()
    else:
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers, _start_worker, (dataset, template, cache, limits)) as pool:
            _tally(stats, rows, pool.imap(_encode_row, rows, chunksize=chunksize), dataset, bar)
    stats.seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    return stats


def _tally(stats: EncodeStats, rows: list[int], results, dataset, bar) -> None:
    for row, (status, reason) in zip(rows, results, strict=True):
        if status == "failed":
            stats.failed.append((dataset.rows[row].where, reason))
        elif status == "cached":
            stats.cached += 1
        else:
            stats.encoded += 1
        if bar is not None:
            bar.update(1)


def open_training_cache(
    cache_dir: str | Path,
    template,
    dataset,
    rows: list[int],
    limits: dict[int, int],
    workers: int = 0,
    is_main: bool = True,
) -> EncodeCache:
    """The cache a training run reads from; with `workers` > 0 the main process first fills it for
    `rows` with that many processes (other processes of a distributed run go on and encode
    whatever is still missing themselves; entries are written atomically, so both are safe)."""
    cache = EncodeCache(cache_dir, template)
    if is_main:
        print(f"encode cache: {cache.root}")
    if workers > 0 and is_main:
        stats = encode_dataset(dataset, template, rows, limits, workers=workers, cache_dir=cache_dir)
        print(f"encode cache filled: {stats.summary()}")
    return cache
