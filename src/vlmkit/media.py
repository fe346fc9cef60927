"""Open images (and later videos) from any source users give, under a policy.

Sources: PIL images, raw bytes, `data:image/...;base64,...` URLs, local paths, `file://` URLs
and http(s) URLs (fetched with urllib). `fetch_media` turns a source into bytes or a checked
local path, so a future `load_video` can share the fetching and policy rules with `load_image`.
"""

from __future__ import annotations

import base64
import http.client
import io
import ipaddress
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np
from PIL import ExifTags, Image, ImageOps

from vlmkit.errors import MediaError, MediaTooLargeError

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DATA_URL = re.compile(r"^data:(image|video)/[\w.+-]+(;[^,;]*)*;base64,", re.IGNORECASE)
_REDIRECTS = (301, 302, 303, 307, 308)


@dataclass(frozen=True)
class MediaPolicy:
    """What `load_image` / `fetch_media` may read. The defaults suit the CLI and training.

    A server facing untrusted clients should set `allow_private_urls=False` (URLs whose host
    resolves to a non-public address are refused, re-checked on every redirect and against the
    address actually connected to; such fetches ignore proxy environment variables) and either
    `allow_local_files=False` or `media_dirs`. `timeout` bounds a whole fetch, redirects included.
    """

    timeout: float = 10.0
    max_bytes: int = 64 * 2**20
    max_redirects: int = 5
    allow_private_urls: bool = True
    allow_local_files: bool = True
    media_dirs: tuple[Path, ...] = ()
    max_image_pixels: int = 178_956_970


def load_image(source: Any, where: str = "image", policy: MediaPolicy | None = None) -> Image.Image:
    """Open `source` (see the module docstring) as an upright RGB PIL image.

    `where` names the item in errors (e.g. "data.jsonl:3: image 1"); every failure is a one-line
    MediaError. The EXIF orientation is applied, so a portrait photo stored sideways comes back
    upright with width and height swapped relative to the stored pixels: boxes refer to this
    upright image. Transparent pixels are composited onto white, because dropping alpha leaves
    whatever colour sits under it, which is black in most transparent PNGs.
    """
    policy = policy or MediaPolicy()
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    image, where = _open_checked(source, where, policy)
    with image:
        try:
            image.load()
            return _to_rgb(image)
        except Exception as e:
            raise MediaError(f"{where}: not a readable image ({_one_line(e)})") from None


def load_image_resized(
    source: Any,
    target_size: Callable[[int, int], tuple[int, int]],
    where: str = "image",
    policy: MediaPolicy | None = None,
    jpeg_draft: bool = False,
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode `source` once and resize it (bicubic) to `target_size(height, width)` of the upright image.

    Returns (pixels (H, W, 3) uint8 RGB, (original height, original width)); the pixels are those of
    `load_image(source).resize(...)` without its intermediate copies. With `jpeg_draft`, a JPEG at
    least twice the target size on both sides is decoded at a reduced DCT scale (1/2 .. 1/8, never
    below twice the target) before the resize: 2-4x faster on large photos, a mean difference under
    half a grey level (up to a few levels on edges), so not bit-exact with transformers.
    `target_size` may raise ValueError (e.g. an aspect-ratio limit); it is passed on as it is.
    """
    policy = policy or MediaPolicy()
    if isinstance(source, Image.Image):
        image = _to_rgb(source)
        return _resized_pixels(image, target_size(image.height, image.width)), (image.height, image.width)
    image, where = _open_checked(source, where, policy)
    with image:
        key = _resized_key(image, target_size, jpeg_draft)
        if key is not None and (hit := RESIZED_IMAGES.get(key)) is not None:
            return hit
        if jpeg_draft and image.format == "JPEG":  # JPEG keeps its EXIF in the header: safe before decoding
            height, width = _upright_size(image)
            size = target_size(height, width)
            swapped = (width, height) != image.size
            stored_h, stored_w = (size[1], size[0]) if swapped else size
            image.draft("RGB", (2 * stored_w, 2 * stored_h))
        try:
            image.load()
        except Exception as e:
            raise MediaError(f"{where}: not a readable image ({_one_line(e)})") from None
        if not jpeg_draft or image.format != "JPEG":
            height, width = _upright_size(image, header_only=False)
            size = target_size(height, width)
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
        plain = image.mode == "RGB" and "transparency" not in image.info and orientation == 1
        pixels = _resized_pixels(image if plain else _to_rgb(image), size)
    if key is not None and key[-1] == size:  # the header told the size right (not so for a late-EXIF PNG)
        pixels.setflags(write=False)
        RESIZED_IMAGES.put(key, (pixels, (height, width)))
    return pixels, (height, width)


class _ResizedImages:
    """Resized images of local files, least recently used dropped first beyond `max_bytes`: a dataset that
    asks about one image in several rows (VQA, grounding) decodes it once per process. Keyed by the
    file's path, size and modification time and the size resized to, so a changed file or other pixel
    limits miss. `VLMKIT_IMAGE_CACHE_MB` sets the budget per process (default 64; 0 turns it off).
    Thread-safe (the server and batch inference encode in threads)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.used = 0
        self.entries: OrderedDict[tuple, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple) -> tuple[np.ndarray, tuple[int, int]] | None:
        with self.lock:
            hit = self.entries.get(key)
            if hit is not None:
                self.entries.move_to_end(key)
            return hit

    def put(self, key: tuple, value: tuple[np.ndarray, tuple[int, int]]) -> None:
        size = value[0].nbytes
        with self.lock:
            if size > self.max_bytes or key in self.entries:
                return
            self.entries[key] = value
            self.used += size
            while self.used > self.max_bytes:
                _, (dropped, _) = self.entries.popitem(last=False)
                self.used -= dropped.nbytes


RESIZED_IMAGES = _ResizedImages(int(float(os.environ.get("VLMKIT_IMAGE_CACHE_MB", "64")) * 2**20))


def _resized_key(image: Image.Image, target_size: Callable, jpeg_draft: bool) -> tuple | None:
    """The cache key of a local image file resized by `target_size` (its size from the header), or None."""
    path = getattr(image, "filename", "")
    if not path or RESIZED_IMAGES.max_bytes <= 0:
        return None
    stat = os.stat(path)
    size = target_size(*_upright_size(image))
    return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns, jpeg_draft, size)


def _resized_pixels(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 of an RGB `image` resized to size = (H, W) with bicubic (no resize when equal)."""
    height, width = size
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image)


def read_image_size(source: Any, where: str = "image", policy: MediaPolicy | None = None) -> tuple[int, int]:
    """(height, width) of `source` as `load_image` would return it, from the file header only.

    Local files are opened just far enough to read the size and EXIF orientation; URLs, data:
    URLs and bytes are fetched as `load_image` fetches them, but not decoded. Errors are the
    MediaErrors `load_image` raises for a missing, unreadable or too large image.
    """
    policy = policy or MediaPolicy()
    if isinstance(source, Image.Image):
        return _upright_size(source, header_only=False)
    image, _ = _open_checked(source, where, policy)
    with image:
        return _upright_size(image)


def verify_image(source: Any, where: str = "image", policy: MediaPolicy | None = None) -> tuple[int, int]:
    """(height, width) as `read_image_size` gives it, after decoding every byte of pixel data, so a file
    whose header is fine but whose data is truncated or corrupt fails here (a MediaError) and not in
    the middle of training. A JPEG is decoded at 1/8 scale (the DCT still reads all of it): about half
    the time of a full decode (11 vs 22 ms for a 1-1.5 MP photo here, 0.1 ms for the header alone)."""
    policy = policy or MediaPolicy()
    if isinstance(source, Image.Image):
        return _upright_size(source, header_only=False)
    image, where = _open_checked(source, where, policy)
    with image:
        size = _upright_size(image)
        if image.format == "JPEG":
            image.draft(image.mode, (1, 1))
        try:
            image.load()
        except Exception as e:
            raise MediaError(
                f"{where}: not a readable image, its pixel data is cut short or corrupt ({_one_line(e)})"
            ) from None
    return size


def _open_checked(source: Any, where: str, policy: MediaPolicy) -> tuple[Image.Image, str]:
    """Fetch `source` and open it lazily (header only) under the pixel limit; returns the image and a
    `where` that names the file or URL at fault."""
    data = fetch_media(source, where, policy)
    if isinstance(data, Path) or (isinstance(source, str) and not source.startswith("data:")):
        where = f"{where}: {data if isinstance(data, Path) else source}"
    try:
        with warnings.catch_warnings():  # our own pixel limit replaces Pillow's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    except Image.DecompressionBombError:
        limit = min(policy.max_image_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0))
        raise MediaTooLargeError(f"{where}: image is over the limit of {limit} pixels") from None
    except Image.UnidentifiedImageError:
        raise MediaError(f"{where}: not an image file (or not a format Pillow can read)") from None
    except Exception as e:
        raise MediaError(f"{where}: not a readable image ({_one_line(e)})") from None
    if image.width * image.height > policy.max_image_pixels:
        image.close()
        raise MediaTooLargeError(
            f"{where}: image is {image.width} x {image.height}, over the limit of "
            f"{policy.max_image_pixels} pixels"
        )
    return image, where


def _upright_size(image: Image.Image, header_only: bool = True) -> tuple[int, int]:
    """(height, width) after the EXIF orientation is applied, as `load_image` returns it."""
    width, height = image.size
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return height, width  # Pillow's PNG getexif() decodes the whole image to look for a late eXIf chunk
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)  # 5-8 swap the sides


def fetch_media(source: Any, where: str = "media", policy: MediaPolicy | None = None) -> bytes | Path:
    """Bytes for raw bytes, data: and http(s) URLs; a checked existing local Path for paths and file:// URLs.

    Applies every rule of `policy` except the pixel limit; raises MediaError naming `where`.
    """
    policy = policy or MediaPolicy()
    if isinstance(source, (bytes, bytearray)):
        if len(source) > policy.max_bytes:
            raise MediaTooLargeError(
                f"{where}: {len(source)} bytes is over the limit of {_size(policy.max_bytes)}"
            )
        return bytes(source)
    if isinstance(source, Path):
        return _local_file(source, where, policy)
    if not isinstance(source, str):
        raise MediaError(
            f"{where}: cannot open media from {type(source).__name__}; give a path, URL or bytes"
        )
    if source[:5].lower() == "data:":
        return _decode_data_url(source, where, policy)
    scheme = _URL_SCHEME.match(source)
    if not scheme:
        return _local_file(Path(source), where, policy)
    scheme = scheme.group(1).lower()
    if scheme in ("http", "https"):
        return _fetch(source, where, policy)
    if scheme == "file":
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise MediaError(f"{where}: {source} names another host; file:// URLs must be local")
        return _local_file(Path(urllib.request.url2pathname(parts.path)), where, policy)
    raise MediaError(f"{where}: unsupported URL scheme {scheme}://; use http(s), file, data: or a path")


def _decode_data_url(url: str, where: str, policy: MediaPolicy) -> bytes:
    header = _DATA_URL.match(url)
    if not header:
        raise MediaError(
            f"{where}: malformed data: URL; expected data:image/<type>;base64,<data> (or data:video/...)"
        )
    payload = "".join(url[header.end() :].split())
    if len(payload) * 3 // 4 > policy.max_bytes:  # refuse before decoding
        raise MediaTooLargeError(f"{where}: data: URL is over the limit of {_size(policy.max_bytes)}")
    try:
        return base64.b64decode(payload, validate=True)
    except ValueError:
        raise MediaError(f"{where}: malformed data: URL; the data is not valid base64") from None


def _local_file(path: Path, where: str, policy: MediaPolicy) -> Path:
    if not policy.allow_local_files:
        raise MediaError(f"{where}: local files are not allowed here ({path}); send an http(s) or data: URL")
    if policy.media_dirs:
        resolved = path.resolve()  # follows symlinks and `..` before the check
        if not any(resolved.is_relative_to(Path(d).resolve()) for d in policy.media_dirs):
            raise MediaError(f"{where}: {path} is outside the allowed media directories")
        path = resolved
    if not path.is_file():
        raise MediaError(f"{where}: file not found: {path}")
    return path


class _FetchError(Exception):
    """Why one fetch failed; `_fetch` turns it into a MediaError naming the item and URL."""


def _fetch(url: str, where: str, policy: MediaPolicy) -> bytes:
    """GET `url`, following at most `policy.max_redirects` redirects, each hop checked."""
    handlers: list[Any] = [_NoRedirects()]
    if not policy.allow_private_urls:
        handlers += [urllib.request.ProxyHandler({}), _PublicHTTPHandler(), _PublicHTTPSHandler()]
    opener = urllib.request.build_opener(*handlers)
    deadline = time.monotonic() + policy.timeout
    current = url
    try:
        for _ in range(policy.max_redirects + 1):
            if not policy.allow_private_urls:
                _check_public_host(current)
            try:
                with opener.open(current, timeout=max(deadline - time.monotonic(), 0.001)) as response:
                    return _read_limited(response, deadline, policy)
            except urllib.error.HTTPError as e:
                e.close()
                location = e.headers.get("Location") if e.code in _REDIRECTS else None
                if not location:
                    raise _FetchError(f"HTTP {e.code}") from None
                current = urljoin(current, location)
                if urlsplit(current).scheme.lower() not in ("http", "https"):
                    raise _FetchError(f"redirect to a non-http(s) URL {current}") from None
        raise _FetchError(f"more than {policy.max_redirects} redirects")
    except _FetchError as e:
        reason = str(e)
    except urllib.error.URLError as e:
        timed_out = isinstance(e.reason, TimeoutError)
        reason = f"timed out after {policy.timeout:g} s" if timed_out else _one_line(e.reason)
    except TimeoutError:
        reason = f"timed out after {policy.timeout:g} s"
    except (OSError, ValueError, http.client.HTTPException) as e:
        reason = _one_line(e)
    hop = f" (redirected to {current})" if current != url else ""
    raise MediaError(f"{where}: could not fetch {url}{hop}: {reason}")


def _read_limited(response: Any, deadline: float, policy: MediaPolicy) -> bytes:
    too_big = f"response is over the limit of {_size(policy.max_bytes)}"
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > policy.max_bytes:
        raise _FetchError(too_big)
    chunks, size = [], 0
    while chunk := response.read1(65536):  # one recv at a time, so the deadline is checked often
        size += len(chunk)
        if size > policy.max_bytes:
            raise _FetchError(too_big)
        if time.monotonic() > deadline:
            raise _FetchError(f"timed out after {policy.timeout:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def _resolve(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _check_public_host(url: str) -> None:
    parts = urlsplit(url)
    if not parts.hostname:
        raise _FetchError("the URL has no host")
    try:
        addresses = _resolve(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as e:
        raise _FetchError(f"cannot resolve {parts.hostname} ({e.strerror})") from None
    for address in addresses:
        _check_public_address(parts.hostname, address)


def _check_public_address(host: str, address: str) -> None:
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if not ip.is_global or ip.is_multicast:  # private, loopback, link-local, reserved, unspecified...
        raise _FetchError(f"{host} is at {address}, not a public address; only public URLs are allowed here")


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every 3xx into an HTTPError so `_fetch` can check each hop itself."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _PublicHTTPConnection(http.client.HTTPConnection):
    """Checks the address actually connected to, so DNS that changes after the check is caught."""

    def connect(self):
        super().connect()
        _check_public_address(self.host, self.sock.getpeername()[0])


class _PublicHTTPSConnection(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        _check_public_address(self.host, self.sock.getpeername()[0])


class _PublicHTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_PublicHTTPConnection, req)


class _PublicHTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_PublicHTTPSConnection, req, context=self._context)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Upright (EXIF orientation applied) RGB copy; transparency composited onto white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n} bytes"


def _one_line(e: object) -> str:
    return " ".join(str(e).split()) or type(e).__name__
