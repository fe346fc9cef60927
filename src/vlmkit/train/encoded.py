"""Training rows encoded on access, and skipped (listed, never fatal) when one fails mid-training."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Any

import torch

from vlmkit.errors import VlmkitError

# How reading a row's media fails when the file changed or is damaged past its header: vlmkit's own
# errors, and what PIL / PyAV raise underneath (OSError for truncated data, SyntaxError for a broken PNG,
# EOFError for a cut GIF, ValueError for undecodable frames). Anything else is a bug and keeps its traceback.
MEDIA_FAILURES = (VlmkitError, OSError, ValueError, EOFError, SyntaxError)


class EncodedDataset(torch.utils.data.Dataset):
    """Rows of a `vlmkit.data.Dataset` encoded on access (in DataLoader workers), never held decoded;
    with an `EncodeCache`, read from it (and written to it on a miss) instead of encoded every epoch.

    A row that validation passed but that fails to encode while training (e.g. an image whose header is
    fine but whose pixel data is truncated) is skipped: appended to `bad_file` and announced once, and
    the next row that encodes takes its place. More than `max_bad` such rows (in one process; at least one
    is always allowed) stop the run."""

    def __init__(
        self,
        dataset,
        template,
        rows: list[int],
        limits: dict[int, int] | None = None,
        cache=None,
        bad_file: Path | None = None,
        max_bad: int = 0,
    ):
        self.dataset = dataset
        self.template = template
        self.rows = rows
        self.limits = limits or {}  # row -> its resolution limit (`template.encode`'s `limit`) when shrunk
        self.cache = cache
        self.bad_file = bad_file
        self.max_bad = max_bad
        self.failed: set[int] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def encode_row(self, i: int) -> dict[str, Any] | None:
        """Row i encoded, or None when it fails (listed in `bad_file` the first time)."""
        row = self.rows[i]
        if row in self.failed:
            return None
        try:
            sample = self.dataset[row]
            if self.cache is not None:
                encoded = self.cache.encode(sample, self.limits.get(row))
            elif row in self.limits:
                encoded = self.template.encode(sample, limit=self.limits[row])
            else:
                encoded = self.template.encode(sample)
        except MEDIA_FAILURES as e:
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise  # a full disk (writing the encode cache) is not the row's fault
            self._skip(row, e)
            return None
        encoded.pop("image_sizes", None)
        return encoded

    def __getitem__(self, i: int) -> dict[str, Any]:
        for k in range(len(self.rows)):
            encoded = self.encode_row((i + k) % len(self.rows))
            if encoded is not None:
                return encoded
        raise VlmkitError(f"no row could be encoded while training; see {self.bad_file}")

    def _skip(self, row: int, error: Exception) -> None:
        self.failed.add(row)
        where = self.dataset.rows[row].where
        reason = str(error).removeprefix(f"{where}: ")
        if self.bad_file is not None:
            line = {
                "where": where,
                "kind": "failed while training",
                "reason": reason,
                "row": self.dataset.rows[row].data,
            }
            # One short append per line: DataLoader workers writing at once never interleave within a line.
            with open(self.bad_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        print(f"skipped {where}: {reason} (listed in {self.bad_file})", file=sys.stderr, flush=True)
        if len(self.failed) > self.max_bad:
            raise VlmkitError(
                f"{len(self.failed)} rows failed while training (more than --max-bad-fraction allows); "
                f"see {self.bad_file}; run `vlmkit data check` on the data and fix them"
            )
