"""What `sft --resume` checks before it trains: that the checkpoint's files load, and that the data is the
data the run started with.

    checkpoint, notes = loadable_checkpoint(run / "checkpoint-6", latest=True)  # or an earlier one that loads
    prints = data_fingerprint(train_data)    # {source: "4 rows, sha256 1a2b3c4d5e6f"}, as the rows were read

A checkpoint is checked by structure, not byte by byte (safetensors headers against the file size, the zip
directory of torch files, JSON that parses), so a 100 GB optimizer state costs a few reads: that finds files
cut short or zeroed, which is what a crash, a full disk or a bad copy leaves.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path
from typing import Any

from vlmkit.errors import VlmkitError
from vlmkit.models.loader import CHECKPOINT_RE, checkpoints, safetensors_problem

# Files the Trainer reads when it resumes; without trainer_state.json it would silently start again at step 0,
# without optimizer.pt / scheduler.pt with a fresh optimizer (DeepSpeed and FSDP keep theirs elsewhere).
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")
JSON_FILES = (STATE_FILE, "adapter_config.json", "config.json", "stream_position.json")
TORCH_PATTERNS = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")


def _zip_problem(file: Path) -> str | None:
    """torch.save writes a zip archive: its directory sits at the end, so a file cut short or zeroed has none."""
    try:
        with zipfile.ZipFile(file) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return "truncated or corrupt (not a whole torch archive)"
    size = file.stat().st_size
    if any(member.header_offset + member.compress_size > size for member in members):
        return "truncated (its archive directory points past its end)"
    return None


def _json_problem(file: Path) -> str | None:
    try:
        json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError):
        return "truncated or corrupt (not valid JSON)"
    return None


def damaged_file(checkpoint: Path, optimizer_files: bool = True) -> tuple[Path, str] | None:
    """(the first file that resuming from `checkpoint` loads and that is missing, cut short or corrupt, what is
    wrong), or None. `optimizer_files`: the optimizer and scheduler states are plain files (not DeepSpeed/FSDP)."""
    required = [STATE_FILE, *(OPTIMIZER_FILES if optimizer_files else ())]
    for name in required:
        if not (checkpoint / name).is_file():
            return checkpoint / name, "missing"
    weights = sorted(checkpoint.glob("*.safetensors"))
    if optimizer_files and not weights:
        return checkpoint / "adapter_model.safetensors", "missing (no *.safetensors weights)"
    checks = [(file, safetensors_problem) for file in weights]
    checks += [(checkpoint / name, _json_problem) for name in JSON_FILES if (checkpoint / name).is_file()]
    checks += [
        (file, _zip_problem) for pattern in TORCH_PATTERNS for file in sorted(checkpoint.glob(pattern))
    ]
    for file, problem_of in checks:
        problem = problem_of(file)
        if problem is not None:
            return file, problem
    return None


def loadable_checkpoint(
    checkpoint: Path, latest: bool, optimizer_files: bool = True
) -> tuple[Path, list[str]]:
    """(the checkpoint to resume from, lines to print). `checkpoint` when its files load; with `latest` (it was
    picked by `--resume latest`) the newest earlier complete checkpoint of its run that loads, naming the file
    that ruled out each newer one. One clear line when none loads, or when a checkpoint named by path does not."""
    damage = damaged_file(checkpoint, optimizer_files)
    if damage is None:
        return checkpoint, _rng_notes(checkpoint)
    skipped = [f"{damage[0]} is {damage[1]}"]
    found = None
    for earlier in reversed(checkpoints(checkpoint.parent)):
        if _step(earlier) >= _step(checkpoint):
            continue
        damage = damaged_file(earlier, optimizer_files)
        if damage is None:
            found = earlier
            break
        skipped.append(f"{damage[0]} is {damage[1]}")
    if not latest:
        advice = (
            f"resume from {found}, the newest checkpoint of this run that loads"
            if found
            else "start a new run"
        )
        raise VlmkitError(f"--resume {checkpoint}: {skipped[0]}; {advice}")
    if found is None:
        raise VlmkitError(
            f"--resume latest: {'; '.join(skipped)}; no checkpoint of this run loads; start a new run"
        )
    line = f"--resume latest: {'; '.join(skipped)}; resuming from {found}, the newest checkpoint that loads"
    return found, [line, *_rng_notes(found)]


def _step(checkpoint: Path) -> int:
    """checkpoint-N -> N; a folder named otherwise (given by path) has no earlier checkpoints: -1."""
    found = CHECKPOINT_RE.match(checkpoint.name)
    return int(found.group(1)) if found else -1


def _rng_notes(checkpoint: Path) -> list[str]:
    """A checkpoint saved without its random state resumes, but not as the uninterrupted run would go on."""
    if any(checkpoint.glob("rng_state*.pth")):
        return []
    return [
        f"warning: {checkpoint} has no rng_state.pth: resuming without the saved random state, so dropout and "
        "other random draws differ from an uninterrupted run (it is not reproducible from here)"
    ]


# -- the data a run trains on -------------------------------------------------------------------------------


def _digest_value(value: Any) -> str:
    """json.dumps' fallback for what a table row holds besides JSON: image bytes by their hash, the rest as text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(value).hexdigest()
    return str(value)


def data_fingerprint(dataset) -> dict[str, str]:
    """{source file (absolute) or hub id: "N rows, sha256 X"} of a `vlmkit.data.Dataset` as its rows were read:
    each row's place and content, in order. Edited, added, removed or reordered rows change it; copying or
    touching the file does not. Costs one pass over the rows' data (their images are hashed as stored in a
    table, not opened when they are files): the run checks every row up front anyway."""
    from vlmkit.data.sources import absolute_source

    hashes: dict[str, Any] = {}
    counts: dict[str, int] = {}
    keys: dict[str, str] = {}  # source as the rows name it -> absolute (one lookup on disk per source)
    for row in dataset.rows:
        source, _, place = row.where.rpartition(":")
        key = keys.get(source) or keys.setdefault(source, absolute_source(source) or source)
        text = json.dumps(row.data, sort_keys=True, ensure_ascii=False, default=_digest_value)
        hashes.setdefault(key, hashlib.sha256()).update(f"{place}\t{text}\n".encode())
        counts[key] = counts.get(key, 0) + 1
    return {key: f"{counts[key]} rows, sha256 {hashes[key].hexdigest()[:16]}" for key in hashes}


DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv", ".tsv")


def stream_fingerprint(specs: list[str]) -> dict[str, str]:
    """{data file (absolute): "SIZE bytes, modified TIME"} of the local files `--streaming` reads (a folder: its
    data files). Nothing is read up front when streaming, so a file's size and modification time stand for its
    rows: appending, deleting or editing rows changes them (so may `touch`, or a copy that does not keep the
    time). Hub datasets are not covered."""
    from vlmkit.data.sources import parse_source

    prints = {}
    for spec in specs:
        source = parse_source(str(spec))
        path = Path(source.location).expanduser()
        if source.hub is not None or not path.exists():
            continue
        files = (
            [path]
            if path.is_file()
            else sorted(f for f in path.rglob("*") if f.suffix.lower() in DATA_SUFFIXES)
        )
        for file in files:
            stat = file.stat()
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stat.st_mtime))
            prints[str(file.resolve())] = (
                f"{stat.st_size:,} bytes, modified {when}.{stat.st_mtime_ns % 10**9:09d}"
            )
    return prints


def data_changes(before: dict[str, dict[str, str]], now: dict[str, dict[str, str]]) -> list[str]:
    """`SOURCE: old -> new` for each source of each option ("dataset", "val_dataset") whose rows changed."""
    changes = []
    for option in now:
        old, new = before.get(option, {}), now[option]
        for source in sorted(set(old) | set(new)):
            if old.get(source) != new.get(source):
                changes.append(f"{source}: {old.get(source, 'absent')} -> {new.get(source, 'absent')}")
    return changes


def write_fingerprint(run_dir: Path, prints: dict[str, dict[str, str]]) -> None:
    (run_dir / "data_fingerprint.json").write_text(json.dumps(prints, indent=2, ensure_ascii=False) + "\n")


def read_fingerprint(run_dir: Path) -> dict[str, dict[str, str]] | None:
    """The run's data fingerprint; None for a run from before vlmkit recorded one."""
    path = run_dir / "data_fingerprint.json"
    return json.loads(path.read_text()) if path.is_file() else None
