"""Media as dataset values: what Parquet, Arrow and hub datasets put in an image or video column.

`media_source(value, base_dirs)` turns one value into a source `vlmkit.media.images` opens:

- a `datasets.Image` / `datasets.Video` dict `{"bytes": ..., "path": ...}`: its bytes when it has
  them (the `path` of an embedded image is often the name it had on another machine), else its path;
- raw bytes: as they are;
- a base64 string of an image or video (no `data:` prefix): the decoded bytes, recognised by the
  file signature they decode to, so a path that happens to use only base64 letters stays a path;
- a path: relative paths resolve against the first of `base_dirs` that holds them (the dataset's
  folder first), as in JSON rows.

Bytes reach the encode cache as bytes, so its key is their hash: the content, not a path that may be
absent. `jsonable(value)` describes bytes in a row written back out (bad rows, predictions).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path
from typing import Any

from vlmkit.sample import is_local_path, resolve_path

_BASE64 = re.compile(r"[A-Za-z0-9+/\r\n]+={0,2}")
# File signatures of the image and video formats Pillow and PyAV read: (offset, bytes).
_SIGNATURES = (
    (0, b"\x89PNG"), (0, b"\xff\xd8\xff"), (0, b"GIF8"), (0, b"BM"), (0, b"II*\x00"), (0, b"MM\x00*"),
    (0, b"RIFF"), (4, b"ftyp"), (0, b"\x1aE\xdf\xa3"), (0, b"\x00\x00\x01\xba"), (0, b"OggS"),
)  # fmt: skip


def _is_media(data: bytes) -> bool:
    return any(data[offset : offset + len(sig)] == sig for offset, sig in _SIGNATURES)


def decode_base64(text: str) -> bytes | None:
    """The bytes of `text` when it is base64 of an image or video file, else None."""
    if len(text) < 16 or not _BASE64.fullmatch(text):
        return None
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        return None
    return data if _is_media(data) else None


def media_source(value: Any, base_dirs: tuple[Path, ...] = ()) -> Any:
    """One media value of a dataset row -> a source for `vlmkit.media.images` (see the module docstring).

    Anything not recognised (None, a PIL image, a URL) is returned as it is, so the media loader
    names the problem with the row's location.
    """
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not is_local_path(value):
        return value
    if len(value) >= 16 and "." not in value[-6:] and (data := decode_base64(value)) is not None:
        return data
    return resolve_path(value, base_dirs)


def jsonable(value: Any) -> Any:
    """`value` with bytes replaced by a short description, so a row with embedded media can be
    written as JSON: `"<12345 bytes, sha256 0123abcd...>"`."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return f"<{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}>"
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
