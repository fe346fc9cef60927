"""The page's data view: a page of a dataset's rows with their images and boxes, and `vlmkit data check`'s report.

Rows are read as `vlmkit data check` and training read them (`vlmkit.data.streaming.open_stream`, any format
vlmkit reads); images come back as small JPEG data: URLs with their original size, boxes in original pixels
(`vlmkit.media.grounding.reference_objects`), so the page draws them at any scale.
"""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path
from typing import Any

from vlmkit.data.formats import row_to_sample
from vlmkit.data.sources import Row
from vlmkit.errors import DataError, VlmkitError
from vlmkit.media.grounding import reference_objects
from vlmkit.media.images import load_image

THUMBNAIL = 384  # longest side of an image shown, in pixels
CHECKED_ROWS = 500  # rows the check summary reads: the page answers in seconds; `vlmkit data check` reads all


def _stream(path: Path):
    from vlmkit.data.streaming import open_stream

    return open_stream([str(path)])


def thumbnail(source: Any, where: str) -> dict[str, Any]:
    """{"url": a JPEG data: URL of at most THUMBNAIL px, "width", "height": the original's} or {"error"}."""
    try:
        image = load_image(source, where)
    except VlmkitError as e:
        return {"error": str(e)}
    width, height = image.size
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85)
    return {
        "url": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(),
        "width": width,
        "height": height,
    }


def _row_view(row: Row, template) -> dict[str, Any]:
    if isinstance(row.data, DataError):
        return {"where": row.where, "error": str(row.data)}
    try:
        sample = row_to_sample(row.data, row.format, row.where, row.base_dirs)
    except VlmkitError as e:
        return {"where": row.where, "error": str(e)}
    messages = [
        {"role": m["role"], "text": "".join(p["text"] if p["type"] == "text" else f"<{p['type']}>" for p in m["content"])}
        for m in sample.messages
    ]
    images = [thumbnail(source, f"{row.where}: image {k + 1}") for k, source in enumerate(sample.media("image"))]
    try:
        boxes = reference_objects(template, sample) if template is not None else []
    except VlmkitError as e:
        boxes, messages = [], [*messages, {"role": "error", "text": str(e)}]
    return {"where": row.where, "messages": messages, "images": images, "boxes": boxes}


def read_page(path: Path, offset: int, limit: int, template) -> dict[str, Any]:
    """Rows [offset, offset + limit) of the dataset at `path`, as the page shows them."""
    stream = _stream(path)
    rows = [row for _, row in itertools.islice(stream.rows(), offset, offset + limit)]
    return {
        "format": stream.describe(),
        "offset": offset,
        "rows": [_row_view(row, template) for row in rows],
    }


def check_summary(path: Path, template, max_length: int = 2048) -> dict[str, Any]:
    """`vlmkit data check`'s summary of the first CHECKED_ROWS rows, and their token lengths."""
    from vlmkit.data.check import check_rows

    rows = (row for _, row in _stream(path).rows())
    report = check_rows(itertools.islice(rows, CHECKED_ROWS), template, max_length, progress=False)
    return {
        "summary": report.summary(),
        "rows": report.total,
        "bad": len(report.bad),
        "lengths": report.lengths,
        "max_length": max_length,
        "first_rows_only": report.total >= CHECKED_ROWS,
    }
