"""GRPO prompt rows (`vlmkit grpo`): any format `vlmkit sft` reads, ending in a user turn, with a `solution` column
(the answer the rewards check the completions against). One rule decides which rows are refused, for the
trainer (which stops at the first) and for `vlmkit data check` (which counts them all):

    problem, tokens = prompt_problem(sample, row_data, template, max_length, max_completion_length)  # None: good

A row is refused without a `solution`, when it ends with an assistant reply, or when its prompt (image tokens
included, with the generation prompt) plus --max-completion-length is over --max-length: image tokens are never
cut, so such a row would train on a prompt the model never sees at inference.

`vlmkit data check` takes a file for GRPO prompts when its first rows all have a `solution` column
(`is_prompt_source`), as it takes one for preference pairs by their columns.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from vlmkit.data.check import BadRow, CheckReport, GoodRow, _reason, media_or_size_problem
from vlmkit.data.formats import row_to_sample
from vlmkit.data.readers import Row
from vlmkit.data.values import jsonable
from vlmkit.errors import DataError, MediaError, VlmkitError
from vlmkit.sample import Sample

if TYPE_CHECKING:
    from vlmkit.families.interface import Template


def is_prompt_source(spec: str) -> bool:
    """Whether `spec`'s first rows all have a `solution` column (GRPO prompts, for `vlmkit data check`)."""
    from vlmkit.data.streaming import first_stored_rows

    try:
        rows = first_stored_rows(spec)
    except VlmkitError:  # unreadable: the reader that follows says why
        return False
    return bool(rows) and all(isinstance(row, dict) and "solution" in row for row in rows)


def prompt_problem(
    sample: Sample, data: dict[str, Any], template: Template, max_length: int, max_completion_length: int
) -> tuple[tuple[str, str] | None, int | None]:
    """((why the row is refused, its kind) or None when it is good, the tokens it takes: its prompt's
    (image tokens and generation prompt included) plus --max-completion-length, or None when not counted).
    `data`: the row as stored (its `solution`)."""
    if data.get("solution") is None:
        return ("no 'solution' (the answer the rewards check the completions against)", "no solution"), None
    if sample.messages and sample.messages[-1]["role"] == "assistant":
        return ("ends with an assistant reply; a GRPO row is a prompt (and a solution)", "not a prompt"), None
    length = template.count_tokens(sample, add_generation_prompt=True)
    if length + max_completion_length <= max_length:
        return None, length + max_completion_length
    reason = (
        f"the prompt is {length} tokens (image tokens included), which with --max-completion-length "
        f"{max_completion_length} is over --max-length {max_length}; image tokens are never cut: raise "
        "--max-length or lower --max-pixels"
    )
    return (reason, "too long"), length + max_completion_length


def check_prompt(
    index: int, row: Row, template: Template, max_length: int, max_completion_length: int, decode_images: bool
) -> tuple[GoodRow | BadRow, int | None]:
    """(the row checked as `vlmkit grpo` reads it: format, media, then `prompt_problem`; the tokens it takes
    or None when not counted)."""
    where = row.where

    def bad(reason: str, kind: str) -> BadRow:
        return BadRow(where, reason, kind, jsonable(row.data))  # embedded media described, not kept

    try:
        sample = row_to_sample(row.data, row.format, where, row.base_dirs)
        unusable = media_or_size_problem(sample, row, max_length, decode_images)  # as sft's rows are checked
        if unusable is not None:
            return bad(*unusable), None
        problem, length = prompt_problem(sample, row.data, template, max_length, max_completion_length)
    except MediaError as e:
        return bad(_reason(e, where), f"unreadable {e.media}"), None
    except DataError as e:
        return bad(_reason(e, where), "bad row"), None
    if problem is not None:
        return bad(*problem), length
    return GoodRow(index, where, length, None, bool(sample.media("video"))), length


def check_prompts(
    rows: Iterable[Row],
    template: Template,
    max_length: int,
    max_completion_length: int,
    progress: bool = False,
    decode_images: bool = True,
) -> CheckReport:
    """Check every GRPO prompt row (`check_prompt`); the report counts the rows `vlmkit grpo` would refuse."""
    report = CheckReport(formats={}, max_length=max_length, truncation="delete", limit_option=template.limit_option)
    rows = tqdm(rows, desc="checking prompts", unit="row", file=sys.stderr, disable=not progress)
    for index, row in enumerate(rows):
        report.formats.setdefault(row.where.rpartition(":")[0], f"{row.format} GRPO prompts")
        if isinstance(row.data, DataError):
            report.bad.append(BadRow(row.where, _reason(row.data, row.where), "invalid JSON", None))
            continue
        result, length = check_prompt(index, row, template, max_length, max_completion_length, decode_images)
        (report.good if isinstance(result, GoodRow) else report.bad).append(result)
        if length is not None:
            report.lengths.append(length)
    return report
