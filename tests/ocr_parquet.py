"""A LaTeX_OCR-schema Parquet made in the tests (`image` as datasets.Image bytes, `text`), with bad rows on request
(used by tests/unit/test_streaming.py and tests/integration/test_sft_streaming.py)."""

from __future__ import annotations

import io
from pathlib import Path

from conftest import random_image


def png(seed: int, height: int = 28) -> bytes:
    buffer = io.BytesIO()
    random_image(height, 40, seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


def write_ocr_parquet(path: Path, n: int, bad: tuple[int, ...] = (), cut: tuple[int, ...] = ()) -> Path:
    """LaTeX_OCR's schema (`image` as datasets.Image bytes, `text`); rows in `bad` hold bytes that are no image,
    rows in `cut` a PNG cut short (its header reads, its pixels do not)."""
    import datasets

    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    images = [{"bytes": png(i, 28 + 4 * (i % 3)), "path": None} for i in range(n)]
    for i in bad:
        images[i]["bytes"] = b"not an image"
    for i in cut:
        images[i]["bytes"] = images[i]["bytes"][:120]
    texts = [f"x^{i} " * (1 + i % 4) for i in range(n)]
    datasets.Dataset.from_dict({"image": images, "text": texts}, features=features).to_parquet(str(path))
    return path
