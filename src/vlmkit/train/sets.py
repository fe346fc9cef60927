"""The training and validation sets of a `vlmkit sft` run: every row checked up front (bad ones skipped and
listed in bad_samples.jsonl; training stops before it starts when too many are), the encode cache opened,
and the rows batched (packed sequences or padded, length-grouped batches); or, with --streaming, rows
checked, packed and encoded as training reads them. Also what a resume checks the data against."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmkit.errors import VlmkitError
from vlmkit.train.config import SFTConfig
from vlmkit.train.encoded import EncodedDataset
from vlmkit.train.packing import PackedDataset, collate_packed, pack_lengths
from vlmkit.train.resume import data_fingerprint, stream_fingerprint
from vlmkit.train.run import check_resumed_args, saved_args

if TYPE_CHECKING:
    from vlmkit.train.finetune import _Base, _Run


def _batching(config: SFTConfig, template, train_set, train_lengths, val_set, val_lengths, is_main: bool):
    """(train set, val set, train sampler or None, collator): packed sequences with --packing, else
    padded batches, length-grouped with --group-by-length."""
    from vlmkit.train.sampler import LengthGroupedSampler, collate_padded

    if not config.packing:
        sampler = (
            LengthGroupedSampler(train_lengths, config.batch_size, config.seed) if config.group_by_length else None
        )
        return train_set, val_set, sampler, partial(collate_padded, template)
    packs = pack_lengths(train_lengths, config.max_length, seed=config.seed)
    if is_main:
        fill = sum(train_lengths) / (len(packs) * config.max_length)
        print(
            f"packing: {len(train_lengths)} rows into {len(packs)} sequences of up to {config.max_length} "
            f"tokens ({fill:.1%} full)"
        )
    train_set = PackedDataset(train_set, packs)
    if val_set is not None:
        val_set = PackedDataset(val_set, pack_lengths(val_lengths, config.max_length))
    # flash-attention takes the whole batch as one padding-free row; SDPA/eager one padded row per pack.
    padding_free = config.attn_impl == "flash_attention_2"
    return train_set, val_set, None, partial(
        collate_packed, template, padding_free=padding_free, capacity=config.max_length
    )


def _validate(dataset, template, config: SFTConfig, run_dir: Path, name: str, is_main: bool):
    """Check every row before training; returns (row indices, {row: its resolution limit}, token lengths, whether any
    row holds a video) to train on."""
    from vlmkit.data.check import check_dataset

    report = check_dataset(
        dataset,
        template,
        max_length=config.max_length,
        truncation=config.truncation,
        progress=config.progress and is_main,
    )
    if is_main:
        for source, line in dataset.schemas.items():
            print(f"{source}: {line}")
    judge_report(report, config, run_dir, name, is_main)
    return (
        [good.index for good in report.good],
        {g.index: g.limit for g in report.good if g.limit},
        [good.length for good in report.good],
        any(good.has_video for good in report.good),
    )


def judge_report(report, config: SFTConfig, run_dir: Path, name: str, is_main: bool) -> None:
    """List the bad rows of a `CheckReport` in bad_samples[_NAME].jsonl and print its summary (main process);
    stop before training when more than --max-bad-fraction of the rows are bad, or none is good."""
    bad_file = run_dir / f"bad_samples{'' if name == 'train' else '_' + name}.jsonl"
    if report.bad and is_main:
        report.write_bad_samples(bad_file)
    if is_main:
        print(report.summary())
    fraction = len(report.bad) / max(report.total, 1)
    if fraction > config.max_bad_fraction:
        first = report.bad[0]
        raise VlmkitError(
            f"{len(report.bad)} of {report.total} {name} rows are bad ({fraction:.1%} > --max-bad-fraction "
            f"{config.max_bad_fraction:.1%}), the first {first.where}: {first.reason}; see "
            f"{run_dir / 'bad_samples.jsonl'} and fix them, or raise the limit"
        )
    if not report.good:
        raise VlmkitError(f"no usable {name} rows left after validation; see {bad_file}")


@dataclass
class TrainingSets:
    """The validated rows, as the Trainer takes them."""

    train_set: Any
    val_set: Any
    train_sampler: Any
    collate: Any
    train_rows: list[int] | None  # None when streamed
    val_rows: list[int]
    stream_options: dict[str, Any] = field(default_factory=dict)  # StreamingTrainer's, with --streaming


def data_fingerprints(config: SFTConfig, train_data, val_data) -> dict[str, dict[str, str]]:
    """What a resume checks the data against: the rows as read, or with --streaming (nothing read up front)
    the data files' sizes and modification times."""
    if config.streaming:
        return {"dataset": stream_fingerprint(config.dataset)}
    prints = {"dataset": data_fingerprint(train_data)}
    if val_data is not None:
        prints["val_dataset"] = data_fingerprint(val_data)
    return prints


def training_sets(config: SFTConfig, base: _Base, run: _Run) -> TrainingSets:
    """Validate every row (bad ones skipped and listed), open the encode cache, and batch: packed or padded."""
    from vlmkit.settings import write_settings

    template, run_dir, is_main = base.template, run.dir, run.is_main
    if config.streaming:
        return _streamed_set(config, base, run)
    train_rows, train_limits, train_lengths, has_video = _validate(
        run.train_data, template, config, run_dir, "train", is_main
    )
    cache = None
    if config.encode_cache:
        from vlmkit.data.cache import open_training_cache

        cache_dir = config.cache_dir or str(Path(config.output_dir) / "encode_cache")
        cache = open_training_cache(
            cache_dir, template, run.train_data, train_rows, train_limits, config.encode_workers, is_main
        )
    train_set = EncodedDataset(
        run.train_data,
        template,
        train_rows,
        train_limits,
        cache,
        bad_file=run_dir / "bad_samples.jsonl",
        max_bad=max(1, int(config.max_bad_fraction * len(run.train_data))),
    )
    val_set, val_rows, val_lengths = None, [], None
    if run.val_data is not None:
        val_rows, val_limits, val_lengths, val_video = _validate(
            run.val_data, template, config, run_dir, "val", is_main
        )
        has_video = has_video or val_video
        val_set = EncodedDataset(
            run.val_data,
            template,
            val_rows,
            val_limits,
            cache,
            bad_file=run_dir / "bad_samples_val.jsonl",
            max_bad=max(1, int(config.max_bad_fraction * len(run.val_data))),
        )
    if config.packing and has_video:  # known from validation: no second pass over the rows
        if base.packing_requested:
            raise VlmkitError("--packing: the data has video rows, which cannot be packed yet; use --no-packing")
        config.packing = False
        if is_main:
            print("packing off: the data has video rows, which cannot be packed yet")
            if run.resume_from is None:
                (run_dir / "args.json").write_text(json.dumps(saved_args(config.to_dict()), indent=2) + "\n")
    if is_main and run.resume_from is not None:
        check_resumed_args(config, run_dir, run.resume_from, run.data_prints)
        write_settings(run_dir, run.settings)
    train_set, val_set, train_sampler, collate = _batching(
        config, template, train_set, train_lengths, val_set, val_lengths if val_set else None, is_main
    )
    return TrainingSets(train_set, val_set, train_sampler, collate, train_rows, val_rows)


def _streamed_set(config: SFTConfig, base: _Base, run: _Run) -> TrainingSets:
    """--streaming: rows checked, packed and encoded as training reads them (`vlmkit.train.streaming`)."""
    from vlmkit.settings import write_settings
    from vlmkit.train.streaming import streaming_batches

    if run.is_main and run.resume_from is not None:
        check_resumed_args(config, run.dir, run.resume_from, run.data_prints)
        write_settings(run.dir, run.settings)
    train_set, collate, stream_options = streaming_batches(
        config, base.template, run.train_data, run.args, run.dir, run.resume_from, run.is_main
    )
    return TrainingSets(train_set, None, None, collate, None, [], stream_options)
