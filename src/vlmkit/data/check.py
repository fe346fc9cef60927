"""Check a dataset before training: every row converted, its media found, its length measured.

    from vlmkit.data import load_datasets
    from vlmkit.data.check import check_dataset

    report = check_dataset(load_datasets(["train.jsonl"]), template, max_length=2048, truncation="shrink")
    print(report.summary())
    report.write_bad_samples("bad_samples.jsonl")
    keep = dataset.select([g.index for g in report.good])  # g.limit: None or the fitted limit

    report = check_rows((row for _, row in open_stream(["big.parquet"]).rows()), template, 2048)  # a stream

A row is bad, with the first of these reasons that applies (`BadRow.kind` in brackets):
it is not a JSON object [invalid JSON]; it cannot be converted to a Sample [bad row], or
its `<image>` placeholders and listed images disagree [placeholder mismatch]; it has no
assistant message with text to train on [no assistant reply]; a local image or video
file does not exist [missing image / missing video]; an image header does not parse or
the image is too large, or its pixel data is cut short or corrupt (every image, and every frame
of a frame-list video, is decoded: `decode_images`) [unreadable image], or a video's container
header does not [unreadable video]; the template refuses it (a family without video, 200:1 aspect
ratio, ...) [cannot encode]; it has more than `max_length` tokens [too long].

Text that writes a control or media token (`<|im_end|>`, `<|image_pad|>`, ...) is not refused: every
template tokenizes a row's text as text (`vlmkit.families.encoding.mark_text`), so such a row trains on the
characters, never on a forged turn or image. The report counts these rows and names the first, as
they usually mean a dataset was saved with a chat template already applied.

Over-long rows are never truncated (a cut through image tokens breaks the model
inputs): with truncation="delete" they are bad; with "shrink" the row keeps its images
at the largest resolution limit that fits (the template's `fit_limit`, in the unit of its
`limit_option`: pixels, tiles) and is bad only when even its `min_limit` does not fit. A row
with more text than `max_length` tokens could hold
(`MAX_CHARS_PER_TOKEN` characters each) is too long without being tokenized, so one huge line
costs no more than a row of `max_length` tokens. Rows are checked one at a time and images are
decoded one at a time and let go, so memory does not grow with the dataset.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from tqdm import tqdm

from vlmkit.data.formats import row_to_sample
from vlmkit.data.readers import Dataset, Row, file_position
from vlmkit.data.values import jsonable
from vlmkit.errors import DataError, MediaError, PlaceholderError, VlmkitError
from vlmkit.families.encoding import control_token_pattern
from vlmkit.media.grounding import LITERAL_TOKENS
from vlmkit.media.images import verify_image
from vlmkit.sample import Sample, missing_media

if TYPE_CHECKING:
    from vlmkit.families.interface import Template

TRUNCATIONS = ("delete", "shrink")
# More characters than any token of the supported tokenizers spells (Qwen2's longest: 128 spaces).
MAX_CHARS_PER_TOKEN = 128


class GoodRow(NamedTuple):
    """A row to train on: `index` into `dataset.rows`, its token `length` as it will be encoded,
    `limit`: None to encode at the template's limit, else the smaller limit that makes it fit (the
    `limit` of `template.encode`, in the unit of `template.limit_option`), and whether it holds a video."""

    index: int
    where: str
    length: int
    limit: int | None
    has_video: bool = False


class BadRow(NamedTuple):
    """A row left out: where it is (file:line), why (one line), the reason's kind, and the parsed
    row when it was a JSON object (None otherwise)."""

    where: str
    reason: str
    kind: str
    row: dict[str, Any] | None


@dataclass
class CheckReport:
    """What `check_dataset` found. `good` is in dataset order, `bad` in file order (file:line).
    `lengths` holds the token length of every row that could be measured, at the template's
    max_limit (over-long rows included, so a histogram shows them)."""

    formats: dict[str, str]
    max_length: int
    truncation: str
    limit_option: str | None = "--max-pixels"  # what a GoodRow's limit is, in messages
    good: list[GoodRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    typed_tokens: list[tuple[str, str]] = field(default_factory=list)  # (where, token) of rows writing one

    @property
    def total(self) -> int:
        return len(self.good) + len(self.bad)

    @property
    def bad_fraction(self) -> float:
        return len(self.bad) / self.total if self.total else 0.0

    @property
    def stats(self) -> dict[str, float]:
        """min, mean, median, p95 (nearest rank) and max of `lengths`; empty when none was measured."""
        if not self.lengths:
            return {}
        ordered = sorted(self.lengths)
        return {
            "min": ordered[0],
            "mean": statistics.fmean(ordered),
            "median": statistics.median(ordered),
            "p95": ordered[math.ceil(0.95 * len(ordered)) - 1],
            "max": ordered[-1],
        }

    def counts_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for bad in self.bad:
            counts[bad.kind] = counts.get(bad.kind, 0) + 1
        return counts

    def summary(self, examples: int = 5) -> str:
        """Several lines for people: counts, formats, reasons, the first bad rows, length statistics."""
        files = len(self.formats)
        percent = f" ({100 * self.bad_fraction:.1f}%)" if self.bad else ""
        lines = [
            f"checked {self.total} rows in {files} file{'s' * (files != 1)}: "
            f"{len(self.good)} good, {len(self.bad)} bad{percent}",
            *(f"  {path}: {fmt} format" for path, fmt in self.formats.items()),
        ]
        if self.bad:
            lines.append(
                "bad rows by reason: " + ", ".join(f"{k} {n}" for k, n in self.counts_by_kind().items())
            )
            lines.append("first bad rows:")
            lines += [f"  {bad.where}: {bad.reason}" for bad in self.bad[:examples]]
            if len(self.bad) > examples:
                lines.append(f"  ... and {len(self.bad) - examples} more")
        if self.typed_tokens:
            where, token = self.typed_tokens[0]
            n = len(self.typed_tokens)
            lines.append(
                f"{n} row{'s' * (n != 1)} write control tokens in their text (first: {where}: {token}); "
                "they are trained as plain text, not as the template's tokens"
            )
        shrunk = [g.limit for g in self.good if g.limit is not None]
        if shrunk:
            lines.append(
                f"shrunk to fit --max-length {self.max_length}: {len(shrunk)} row{'s' * (len(shrunk) != 1)} "
                f"(smallest {self.limit_option} {min(shrunk)})"
            )
        if self.lengths:
            s = self.stats
            lines.append(
                f"token lengths ({len(self.lengths)} rows, at the model's resolution): min {s['min']}, "
                f"mean {s['mean']:.1f}, median {s['median']:g}, p95 {s['p95']}, max {s['max']}"
            )
        return "\n".join(lines)

    def write_bad_samples(self, path: str | Path) -> Path:
        """One JSON line per bad row: {"where", "kind", "reason", "row"}; written to a temporary file
        and renamed, so a file from an earlier run is replaced only by a complete one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for bad in self.bad:
                line = {"where": bad.where, "kind": bad.kind, "reason": bad.reason, "row": bad.row}
                f.write(json.dumps(line, ensure_ascii=False, default=jsonable) + "\n")  # bytes: described
        os.replace(tmp, path)
        return path


def _reason(error: Exception, where: str) -> str:
    return str(error).removeprefix(f"{where}: ")


def _has_reply(sample: Sample) -> bool:
    return any(
        m["role"] == "assistant" and any(p["type"] == "text" and p["text"].strip() for p in m["content"])
        for m in sample.messages
    )


def _undecodable(sample: Sample, where: str) -> tuple[str, str] | None:
    """(kind, reason) of the first image (or frame of a frame-list video) that does not decode fully."""
    frames = [
        ("unreadable video", f"video {k}: frame {i}", frame)
        for k, video in enumerate(sample.media("video"), 1)
        if isinstance(video, (list, tuple))
        for i, frame in enumerate(video, 1)
    ]
    images = [("unreadable image", f"image {k}", s) for k, s in enumerate(sample.media("image"), 1)]
    for kind, item, source in images + frames:
        try:
            verify_image(source, f"{where}: {item}")
        except MediaError as e:
            return kind, _reason(e, where)
    return None


def _text_chars(sample: Sample) -> int:
    return sum(len(p["text"]) for m in sample.messages for p in m["content"] if p["type"] == "text")


def _typed_token(sample: Sample, pattern) -> str | None:
    """The first control token written in the text of `sample`, or None."""
    for message in sample.messages:
        for part in message["content"]:
            found = pattern.search(part["text"]) if part["type"] == "text" and pattern else None
            if found:
                return found[0]
    return None


def media_or_size_problem(sample: Sample, row: Row, max_length: int, decode_images: bool) -> tuple[str, str] | None:
    """(reason, kind) of what makes `sample` unusable before it is tokenized: a missing media file, more text than
    `max_length` tokens can hold (never tokenized: a huge row would cost gigabytes), an image that does not decode
    (with `decode_images`); None when there is none."""
    missing = missing_media(sample, row.base_dirs)
    if missing:
        return missing[1], f"missing {missing[0]}"
    chars = _text_chars(sample)
    if chars > MAX_CHARS_PER_TOKEN * max_length:
        return (
            f"{chars} characters of text, more than {max_length} tokens can hold; raise --max-length or split the row",
            "too long",
        )
    undecodable = _undecodable(sample, row.where) if decode_images else None
    return (undecodable[1], undecodable[0]) if undecodable is not None else None


def check_row(
    index: int,
    row: Row,
    template: Template,
    max_length: int,
    shrink: bool,
    report: CheckReport,
    pattern=None,
    decode_images: bool = True,
) -> tuple[GoodRow | BadRow, int | None]:
    """(GoodRow or BadRow, length at the template's max_limit or None when not measured); a row whose
    text writes a control token (`pattern`) is noted in `report.typed_tokens`."""
    where = row.where

    def bad(reason: str, kind: str) -> BadRow:
        return BadRow(where, reason, kind, jsonable(row.data))  # embedded media described, not kept

    try:
        sample = row_to_sample(row.data, row.format, where, row.base_dirs)
    except DataError as e:
        return bad(_reason(e, where), "placeholder mismatch" if isinstance(e, PlaceholderError) else "bad row"), None
    typed = _typed_token(sample, pattern)
    if typed is not None:
        report.typed_tokens.append((where, typed))
    if not _has_reply(sample):
        return bad(
            "no assistant reply to train on; a training row needs an assistant message with text",
            "no assistant reply",
        ), None
    problem = media_or_size_problem(sample, row, max_length, decode_images)
    if problem is not None:
        return bad(*problem), None
    try:
        length = template.count_tokens(sample)
    except MediaError as e:
        return bad(_reason(e, where), f"unreadable {e.media}"), None
    except DataError as e:
        return bad(_reason(e, where), "cannot encode"), None
    if length <= max_length:
        return GoodRow(index, where, length, None, bool(sample.media("video"))), length
    over = f"{length} tokens, over --max-length {max_length}"
    has_images = bool(sample.media("image"))
    if has_images and template.limit_option is None:  # the checkpoint fixes the image size: nothing to shrink
        return bad(f"{over}; this model's images have a fixed size, raise --max-length or shorten the text", "too long"), length
    if not shrink:
        hint = " or use --truncation shrink to lower its image resolution" if has_images else ""
        return bad(f"{over}; raise --max-length{hint}", "too long"), length
    limit = template.fit_limit(sample, max_length)
    if limit is None:
        if not has_images:
            return bad(f"{over} without images to shrink; raise --max-length", "too long"), length
        smallest = template.count_tokens(sample, limit=template.min_limit)
        return (
            bad(
                f"{over}, and {smallest} even at {template.limit_option} {template.min_limit}; raise --max-length",
                "too long",
            ),
            length,
        )
    length_fitted = template.count_tokens(sample, limit=limit)
    return GoodRow(index, where, length_fitted, limit, bool(sample.media("video"))), length


def check_rows(
    rows: Iterable[Row],
    template: Template,
    max_length: int,
    truncation: str = "delete",
    progress: bool = True,
    decode_images: bool = True,
) -> CheckReport:
    """Check `rows` against `template`, one at a time as they come (a `RowStream`'s rows are read as they are
    checked: memory does not grow with the dataset, only the report's ~100 bytes a row). A row whose data is
    a `DataError` (a line that is not a JSON object) is bad [invalid JSON]. `GoodRow.index` counts `rows`.

    template: a family template (`vlmkit.families.interface.Template`: `count_tokens`, `fit_limit`,
    `limit_option`, `min_limit`).
    max_length: the most tokens a row may have; truncation: "delete" drops longer rows, "shrink"
    lowers their image resolution to fit (see the module docstring). progress: a tqdm bar on stderr.
    decode_images: decode every image fully (catches truncated pixel data, ~10 ms a photo) instead of
    reading headers only.
    Raises `VlmkitError` for a bad `max_length` or `truncation`; problems with rows never raise.
    """
    if truncation not in TRUNCATIONS:
        raise VlmkitError(f"--truncation {truncation}: choose one of {', '.join(TRUNCATIONS)}")
    if max_length < 1:
        raise VlmkitError(f"--max-length {max_length}: must be at least 1")
    report = CheckReport(
        formats={}, max_length=max_length, truncation=truncation, limit_option=template.limit_option
    )
    box_format = template.box_format
    live = (box_format.keep_tokens if box_format else ()) + LITERAL_TOKENS  # grounding markup is data
    pattern = control_token_pattern(template.tokenizer, live)
    rows = tqdm(rows, desc="checking rows", unit="row", file=sys.stderr, disable=not progress)
    for index, row in enumerate(rows):
        report.formats.setdefault(row.where.rpartition(":")[0], row.format)
        if isinstance(row.data, DataError):
            report.bad.append(BadRow(row.where, _reason(row.data, row.where), "invalid JSON", None))
            continue
        result, length = check_row(
            index, row, template, max_length, truncation == "shrink", report, pattern, decode_images
        )
        (report.good if isinstance(result, GoodRow) else report.bad).append(result)
        if length is not None:
            report.lengths.append(length)
    return report


def check_dataset(
    dataset: Dataset,
    template: Template,
    max_length: int,
    truncation: str = "delete",
    progress: bool = True,
    decode_images: bool = True,
) -> CheckReport:
    """`check_rows` of every row of `dataset`, with its unparsable `dataset.bad` rows listed in their place
    (`GoodRow.index` is an index into `dataset.rows`)."""
    report = check_rows(dataset.rows, template, max_length, truncation, progress, decode_images)
    report.bad += [BadRow(where, reason, "invalid JSON", None) for where, reason in dataset.bad]
    files = {path: i for i, path in enumerate(report.formats)}
    report.bad.sort(key=lambda bad: file_position(bad.where, files))
    return report
