"""`vlmkit sft --streaming`: train from rows read as training goes (`vlmkit.data.streaming`), packed as they
arrive, split across processes and DataLoader workers, and resumable at the row.

Readers: process r of R with DataLoader worker w of W is reader c = r * W + w of C = R * W, and reads its share
of the data (`RowStream.rows`: whole shards when a source's shards divide among the readers, else every Cth
row), so no row is read by two readers in a pass over the data. A reader takes its rows in
windows of WINDOW: each row is checked as `vlmkit data check` does (images not decoded; a row that fails to
encode later is skipped then), its tokens counted from image headers, the window packed best-fit
(`pack_lengths`, seeded by the window) or, without packing, taken row by row, and each pack is encoded and
yielded with the reader's position after it: (pass, first row of the window in the reader's share, packs of the
window done). When
a reader's rows end, its next pass starts from the top: the stream never ends and --max-steps stops training.

The trainer notes the position of each batch it trains (`StreamingTrainer.compute_loss`) and every checkpoint
holds all readers' positions in `stream_position.json`. `--resume` starts each reader there: the window is read
and packed again and its packs already trained are skipped, so an interrupted and resumed run trains the rows
of an uninterrupted one, and rows before the window are skipped unread (whole Arrow batches) and unencoded.
"""

from __future__ import annotations

import json
import sys
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from vlmkit.errors import VlmkitError
from vlmkit.train.callbacks import VlmTrainer
from vlmkit.train.encoded import MEDIA_FAILURES

WINDOW = 256  # rows of one reader packed together: fuller packs vs rows re-read on resume
POSITION_FILE = "stream_position.json"
Position = tuple[int, int, int]  # (pass over the data, first row of the window, packs of the window done)


class TrainingStream(torch.utils.data.IterableDataset):
    """Items: (encoded rows of one pack, or one encoded row in a list without packing; (reader, Position after
    it)). `stream`: a `RowStream`; `capacity`: the packing length, or None for no packing; `start`: reader ->
    Position to start from (from a checkpoint); bad rows are appended to `bad_file`, and more than
    `max_bad_fraction` of a reader's rows read (counted over at least a window) stop the run."""

    def __init__(self, stream, template, *, max_length: int, truncation: str, capacity: int | None, rank: int,
                 world_size: int, seed: int, start: dict[int, Position] | None = None,
                 bad_file: Path | None = None, max_bad_fraction: float = 0.0):  # fmt: skip
        self.stream = stream
        self.template = template
        self.max_length = max_length
        self.shrink = truncation == "shrink"
        self.capacity = capacity
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.start = start or {}
        self.bad_file = bad_file
        self.max_bad_fraction = max_bad_fraction
        self.read = 0
        self.bad = 0
        self.listed: set[str] | None = None  # rows `bad_file` lists, read when the first bad row comes

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        epoch, start, done = self.start.get(reader, (0, 0, 0))
        while True:
            from_top, yielded = (start, done) == (0, 0), False
            rows = self.stream.rows(start, readers, reader)
            try:
                while window := list(islice(rows, WINDOW)):
                    after = window[-1][0] + 1
                    groups = self._groups(window, seed=self.seed + epoch * 1_000_003 + start)
                    for k in range(done, len(groups)):
                        encoded = [e for e in (self._encode(*item) for item in groups[k]) if e is not None]
                        position = (epoch, after, 0) if k + 1 == len(groups) else (epoch, start, k + 1)
                        if encoded:
                            yielded = True
                            yield encoded, (reader, position)
                    start, done = after, 0
            finally:
                rows.close()  # also when training stops mid-stream: `datasets` closes its files now
            if from_top and not yielded:
                raise VlmkitError(
                    f"--streaming: process {self.rank} (DataLoader worker {worker}) found no usable row in a whole "
                    f"pass over its share of the data (1 of {readers} readers); see {self.bad_file}, or use fewer "
                    "processes or --num-workers"
                )
            epoch, start, done = epoch + 1, 0, 0

    def _groups(self, window: list, seed: int) -> list[list[tuple]]:
        """The window's usable rows as packs (or one by one): lists of (row, its resolution limit or None)."""
        from vlmkit.data.check import CheckReport, GoodRow, check_row
        from vlmkit.train.packing import pack_lengths

        report = CheckReport({}, self.max_length, "delete")
        good, lengths = [], []
        for index, row in window:
            self.read += 1
            if isinstance(row.data, Exception):
                self._skip(row, "invalid JSON", str(row.data).removeprefix(f"{row.where}: "))
                continue
            result, _ = check_row(index, row, self.template, self.max_length, self.shrink, report,
                                   decode_images=False)  # fmt: skip
            if not isinstance(result, GoodRow):
                self._skip(row, result.kind, result.reason)
                continue
            if self.capacity is not None and result.has_video:
                raise VlmkitError(f"--streaming: {row.where} has a video, and video rows cannot be packed yet; "
                                  "use --no-packing")  # fmt: skip
            good.append((row, result.limit))
            lengths.append(result.length)
        if self.capacity is None:
            return [[item] for item in good]
        return [[good[i] for i in pack] for pack in pack_lengths(lengths, self.capacity, seed=seed)]

    def _encode(self, row, limit: int | None) -> dict[str, Any] | None:
        from vlmkit.data.formats import row_to_sample

        try:
            sample = row_to_sample(row.data, row.format, row.where, row.base_dirs)
            encoded = self.template.encode(sample, limit=limit) if limit else self.template.encode(sample)
        except MEDIA_FAILURES as e:
            self._skip(row, "failed while training", str(e).removeprefix(f"{row.where}: "))
            return None
        encoded.pop("image_sizes", None)
        return encoded

    def _skip(self, row, kind: str, reason: str) -> None:
        """Count a bad row and list it in `bad_file` once: the next pass over the data, or a resumed run that
        reads its window again, meets the same row again."""
        self.bad += 1
        if self.listed is None:
            self.listed = listed_rows(self.bad_file)
        if row.where not in self.listed:
            self.listed.add(row.where)
            self._list(row, kind, reason)
        if self.bad > max(1, int(self.max_bad_fraction * max(self.read, WINDOW))):
            raise VlmkitError(
                f"{self.bad} of {self.read} rows read by one reader are bad (more than --max-bad-fraction "
                f"{self.max_bad_fraction:.1%}); see {self.bad_file}; run `vlmkit data check` on the data and fix them"
            )

    def _list(self, row, kind: str, reason: str) -> None:
        from vlmkit.data.values import jsonable

        if self.bad_file is not None:
            line = {"where": row.where, "kind": kind, "reason": reason,
                    "row": None if isinstance(row.data, Exception) else row.data}  # fmt: skip
            with open(
                self.bad_file, "a", encoding="utf-8"
            ) as f:  # one short append: workers never interleave
                f.write(json.dumps(line, ensure_ascii=False, default=jsonable) + "\n")
        print(f"skipped {row.where}: {reason} (listed in {self.bad_file})", file=sys.stderr, flush=True)


def listed_rows(bad_file: Path | None) -> set[str]:
    """The `where` of every row a bad-samples file lists (a line cut short by a killed run is passed over)."""
    listed: set[str] = set()
    if bad_file is None or not bad_file.is_file():
        return listed
    with open(bad_file, encoding="utf-8") as f:
        for line in f:
            try:
                listed.add(json.loads(line)["where"])
            except (ValueError, KeyError, TypeError):
                continue
    return listed


def collate_stream(collate, packing: bool, items: list) -> dict[str, Any]:
    """A DataLoader batch of `TrainingStream` items -> `collate`'s batch (packs for `collate_packed`, rows
    for `collate_padded`) plus `stream_position`: {reader: Position after the batch}. A batch comes from one
    reader (one DataLoader worker makes a whole batch)."""
    groups = [group for group, _ in items]
    batch = collate(groups) if packing else collate([row for group in groups for row in group])
    reader, position = items[-1][1]
    batch["stream_position"] = {reader: position}
    return batch


class StreamingTrainer(VlmTrainer):
    """VlmTrainer over a `TrainingStream`: keeps the position of every batch trained and writes all readers'
    positions into each checkpoint (`stream_position.json`)."""

    def __init__(self, *args, readers: int, positions: dict[int, Position], **kwargs):
        super().__init__(*args, **kwargs)
        self.readers = readers
        self.stream_positions = {c: positions.get(c, (0, 0, 0)) for c in range(readers)}

    def get_train_dataloader(self):
        from accelerate.data_loader import IterableDatasetShard

        loader = super().get_train_dataloader()
        if isinstance(loader.dataset, IterableDatasetShard):
            # accelerate splits an iterable's items among processes; ours are split by rank already
            loader.dataset.num_processes, loader.dataset.process_index = 1, 0
        return loader

    def _load_rng_state(self, checkpoint) -> None:
        # Resuming, the Trainer restores the RNG state and then starts the DataLoader iterator, which draws a
        # seed from it; an uninterrupted run drew that seed long before. Restored at the first step instead, the
        # state is the one saved (dropout masks match an uninterrupted run).
        self._rng_checkpoint = checkpoint

    def training_step(self, *args, **kwargs):
        if getattr(self, "_rng_checkpoint", None) is not None:
            super()._load_rng_state(self._rng_checkpoint)
            self._rng_checkpoint = None
        return super().training_step(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        position = inputs.pop("stream_position", None)
        if position is not None and model.training:
            self.stream_positions.update(position)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)  # before on_save, which marks the checkpoint complete
        positions = dict(self.stream_positions)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.stream_positions)
            positions = {}
            for ranks_positions in gathered:  # each reader's latest: a rank knows only its own readers'
                for reader, position in ranks_positions.items():
                    positions[reader] = max(positions.get(reader, position), position)
        if self.is_world_process_zero():
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            write_positions(folder, self.readers, positions)


# Positions count rows of the reader's own share (issue 28 #10); before, a window's first row was its index in the
# whole source. The files of that numbering have no "numbering" key.
NUMBERING = "share"


def write_positions(checkpoint: Path, readers: int, positions: dict[int, Position]) -> None:
    data = {
        "readers": readers,
        "numbering": NUMBERING,
        "positions": {str(c): list(p) for c, p in sorted(positions.items())},
    }
    (checkpoint / POSITION_FILE).write_text(json.dumps(data) + "\n")


def read_positions(checkpoint: Path, readers: int) -> dict[int, Position]:
    """The readers' positions saved in `checkpoint`; refuses a checkpoint of another number of readers."""
    path = checkpoint / POSITION_FILE
    if not path.is_file():
        raise VlmkitError(f"--resume {checkpoint}: no {POSITION_FILE}; it was not trained with --streaming")
    data = json.loads(path.read_text())
    if data["readers"] != readers:
        raise VlmkitError(
            f"--resume {checkpoint}: it was streamed by {data['readers']} readers (processes x DataLoader workers), "
            f"this run has {readers}; resume with the same number of processes and --num-workers"
        )
    if readers > 1 and data.get("numbering") != NUMBERING:  # one reader's share is the whole source: same rows
        raise VlmkitError(
            f"--resume {checkpoint}: its {readers} readers' positions were saved by an older vlmkit, which counted "
            "them in the whole source, not in each reader's share; resuming here would train other rows. Resume "
            "it with the vlmkit version that wrote it"
        )
    return {int(c): tuple(p) for c, p in data["positions"].items()}


def streaming_batches(config, template, stream, args, run_dir: Path, resume_from: Path | None, is_main: bool):
    """(train set, collator, StreamingTrainer's extra arguments) for `sft --streaming` over `stream` (a
    `RowStream`); `args` (TrainingArguments) are set for an iterable that each process reads itself."""
    from functools import partial

    from vlmkit.train.packing import collate_packed
    from vlmkit.train.sampler import collate_padded

    workers = max(1, args.dataloader_num_workers)
    readers = args.world_size * workers
    start = read_positions(resume_from, readers) if resume_from is not None else {}
    args.accelerator_config.dispatch_batches = False  # each process reads its own rows, none are broadcast
    args.ignore_data_skip = True  # a resumed stream starts at its saved rows: no batches to skip
    if is_main:
        for source, line in stream.schemas.items():
            print(f"{source}: {line}")
        where = "at the rows after the checkpoint's" if start else "from the first row"
        print(
            f"streaming {stream.describe()}; {readers} reader(s) ({args.world_size} process(es) x {workers} "
            f"DataLoader worker(s)), {where}"
        )
        for line in stream.split_notes(readers):
            print(f"  {line}")
    train_set = TrainingStream(
        stream,
        template,
        max_length=config.max_length,
        truncation=config.truncation,
        capacity=config.max_length if config.packing else None,
        rank=args.process_index,
        world_size=args.world_size,
        seed=config.seed,
        start=start,
        bad_file=run_dir / "bad_samples.jsonl",
        max_bad_fraction=config.max_bad_fraction,
    )
    if config.packing:
        padding_free = config.attn_impl == "flash_attention_2"
        collate = partial(collate_packed, template, padding_free=padding_free, capacity=config.max_length)
    else:
        collate = partial(collate_padded, template)
    return train_set, partial(collate_stream, collate, bool(config.packing)), {"readers": readers, "positions": start}
