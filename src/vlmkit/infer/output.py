"""Where batch inference (`vlmkit infer --input`, `vlmkit eval`) writes while it runs: a resumable partial
output shared by the processes of a data-parallel run.

    OUTPUT.partial/run.json           what the rows answer: input (and its size and time), row count, model,
                                      encoding settings, generation options; a rerun that differs is refused
    OUTPUT.partial/part-R-PID-X.jsonl {"index": I, "row": {...}} per answered input row I, written by rank R
                                      (process PID) in increasing I, flushed batch by batch

When every input row has its line, they are written to OUTPUT in input order (a temporary file beside it,
then renamed) and the folder is removed. A run that stops (a crash, Ctrl-C, a killed rank) leaves the
folder; the same command run again answers only the rows without a line (a torn last line is answered
again) and never writes a row twice. A complete OUTPUT from an earlier run is not resumed: it is answered
again and replaced at the end, as before.

Data parallel: under `torchrun --nproc-per-node N -m vlmkit infer ...` each process (rank) joins a gloo
group (`join_ranks`; gloo because only control messages travel: which rows are left, a barrier) and
answers every N-th row left to answer; rank 0 reads what is done, checks run.json, and merges at the
end. The output equals a one-process run's row for row (greedy decoding; rows are batched differently).
"""

from __future__ import annotations

import dataclasses
import fcntl
import heapq
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from vlmkit.data.values import jsonable
from vlmkit.errors import VlmkitError

PARTIAL_SUFFIX = ".partial"
RUN_FILE = "run.json"
# one barrier waits for the slowest rank's share of the rows: give it a day, not gloo's 30 minutes
GROUP_TIMEOUT = timedelta(hours=24)


def join_ranks(device: str = "auto", backend: str = "transformers") -> tuple[int, int]:
    """(rank, world size) of this process: under torchrun (its WORLD_SIZE, RANK and LOCAL_RANK) the process
    joins a gloo group (once) and, for --device auto or cuda on a GPU machine, takes the GPU of its
    LOCAL_RANK before a model loads there (cuda:N and cpu are left as given); (0, 1) for a plain run.
    The vLLM backend under torchrun is refused: its engine places itself on the GPUs (untested here)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if backend == "vllm":
        raise VlmkitError(
            "--backend vllm under torchrun: vLLM spreads one engine over the GPUs itself (--tensor-parallel-size); "
            "run it as one process, or use the transformers backend under torchrun"
        )
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device in ("auto", "cuda") and torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise VlmkitError(
                    f"torchrun process {local_rank} of this machine has no GPU of its own ({torch.cuda.device_count()} "
                    "visible); give --nproc-per-node at most the GPU count, or --device cuda:0 to share one"
                )
            torch.cuda.set_device(local_rank)
        dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    """True for rank 0 of a torchrun run and for a plain run: the process that prints results."""
    return join_ranks()[0] == 0


def _broadcast(value: Any, world: int) -> Any:
    """Rank 0's `value`, on every rank."""
    if world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def partial_folder(output: Path) -> Path:
    return output.with_name(output.name + PARTIAL_SUFFIX)


def input_description(spec: str, rows: int, model: str, encoding: dict[str, Any], options: Any) -> dict[str, Any]:
    """What run.json records: a rerun resumes only when all of it is the same. `encoding`: the template's
    settings (pixel limits, system prompt, video sampling); `options`: the GenerationOptions."""
    path = Path(spec.split("#")[0]) if not spec.startswith(("hf::", "ms::")) else None
    stamp = None
    if path is not None and path.is_file():
        stat = path.stat()
        stamp = f"{stat.st_size} bytes, modified {stat.st_mtime_ns}"
        spec = str(Path(spec).resolve())
    description = {"input": spec, "input_file": stamp, "rows": rows, "model": model, "encoding": encoding,
                   "generation": dataclasses.asdict(options)}  # fmt: skip
    return json.loads(json.dumps(description, default=str))  # as run.json reads back, to compare


class PartialOutput:
    """The partial output of one batch run on this rank; use as a context manager (rank 0 holds a lock on
    the folder meanwhile, so a second run on the same OUTPUT is refused rather than mixed in)."""

    def __init__(self, output: Path, description: dict[str, Any]):
        self.output = output
        self.folder = partial_folder(output)
        self.description = description
        self.rank, self.world = join_ranks()
        self.lock: TextIO | None = None
        self.part: TextIO | None = None

    def __enter__(self) -> PartialOutput:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.part is not None:
            self.part.close()
        if self.lock is not None:
            self.lock.close()

    def rows_to_answer(self) -> tuple[list[int], int]:
        """(the input indices this rank answers, in increasing order; how many rows were answered before).
        Rank 0 checks run.json and reads what is done, every rank gets the same split of the rest."""
        found: tuple[list[int] | None, int, str | None] = ([], 0, None)
        if self.rank == 0:
            try:
                done = self._start()
                left = [i for i in range(self.description["rows"]) if i not in done]
                found = (left, len(done), None)
            except VlmkitError as e:
                found = (None, 0, str(e))
        left, answered, error = _broadcast(found, self.world)
        if error is not None:
            raise VlmkitError(error)
        # a new file per run and rank (a pid may come again, in a container), so each file's indices rise
        name = f"part-{self.rank}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self.part = (self.folder / name).open("x", encoding="utf-8")
        return left[self.rank :: self.world], answered

    def _start(self) -> set[int]:
        """Make or check the folder (rank 0) and return the indices already answered."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = (self.folder / ".lock").open("a+")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise VlmkitError(
                f"--output {self.output} is being written by another vlmkit run ({self.folder} is locked); "
                "wait for it to end or choose another --output"
            ) from None
        run_file = self.folder / RUN_FILE
        if not run_file.is_file():
            for stale in self.folder.glob("part-*.jsonl"):  # rows of a run whose run.json was never written
                stale.unlink()
            run_file.write_text(json.dumps(self.description, indent=1) + "\n", encoding="utf-8")
            return set()
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            before = {}
        differs = [k for k in self.description if before.get(k) != self.description[k]]
        if differs:
            key = differs[0]
            raise VlmkitError(
                f"{self.folder} holds the partial output of another run ({key} was {before.get(key)!r}, now "
                f"{self.description[key]!r}); rerun with the same input, model and options to resume it, or "
                "delete that folder to start over"
            )
        return {index for index, _ in _answered_rows(self.folder)}

    def write(self, index: int, row: dict[str, Any]) -> None:
        assert self.part is not None
        # bytes (embedded images) are described, not written
        line = json.dumps({"index": index, "row": row}, ensure_ascii=False, default=jsonable)
        self.part.write(line + "\n")

    def flush(self) -> None:
        assert self.part is not None
        self.part.flush()

    def finish(self) -> dict[str, int]:
        """After every rank's share: rank 0 writes OUTPUT in input order and removes the folder. Returns the
        counts of ok and failed rows of the whole output, on every rank."""
        assert self.part is not None
        self.part.close()
        _barrier(self.world)
        counts: dict[str, int] | str = {}
        if self.rank == 0:
            try:
                counts = _merge(self.folder, self.output, self.description["rows"])
            except VlmkitError as e:
                counts = str(e)
        counts = _broadcast(counts, self.world)
        if isinstance(counts, str):
            raise VlmkitError(counts)
        return counts


def first_error(output: Path) -> str:
    """The `error` of the first failed row of a finished output file ('' when none failed)."""
    with Path(output).open(encoding="utf-8") as f:
        for line in f:
            if "error" in (row := json.loads(line)):
                return str(row["error"])
    return ""


def _part_rows(path: Path) -> Iterator[tuple[int, str]]:
    """(index, line) of each whole line of a part file; a torn last line (no newline: the process was
    killed while writing it) or an unreadable one is skipped, so that row is answered again."""
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.endswith("\n"):
                return
            try:
                index = json.loads(line)["index"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if isinstance(index, int):
                yield index, line


def _answered_rows(folder: Path) -> Iterator[tuple[int, str]]:
    """Every answered row of every part file, merged by index (each file is in increasing index order)."""
    parts = [_part_rows(path) for path in sorted(folder.glob("part-*.jsonl"))]
    return heapq.merge(*parts, key=lambda item: item[0])


def _merge(folder: Path, output: Path, rows: int) -> dict[str, int]:
    counts = {"ok": 0, "failed": 0}
    tmp = output.with_name(f"{output.name}.{os.getpid()}.tmp")
    expected = 0
    try:
        with tmp.open("w", encoding="utf-8") as out:
            for index, line in _answered_rows(folder):
                if index < expected:
                    continue  # answered twice (two runs that overlapped): the first one is kept
                if index != expected:
                    break
                row = json.loads(line)["row"]
                counts["failed" if "error" in row else "ok"] += 1
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                expected += 1
        if expected != rows:
            raise VlmkitError(
                f"{folder}: input row {expected} was not answered; run the same command again to answer "
                "the rows left"
            )
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(folder)
    return counts
