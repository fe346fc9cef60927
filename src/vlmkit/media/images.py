"""Open images (and later videos) from any source users give, under a policy.

Sources: PIL images, raw bytes, `data:image/...;base64,...` URLs, local paths, `file://` URLs
and http(s) URLs (fetched with urllib). `fetch_media` turns a source into bytes or a checked
local path, so a future `load_video` can share the fetching and policy rules with `load_image`.
"""

from __future__ import annotations

import base64
import functools
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
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import numpy as np
from PIL import ExifTags, Image, ImageOps

from vlmkit.errors import MediaError, MediaTooLargeError, PrivateUrlError, VlmkitError

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DATA_URL = re.compile(r"^data:(image|video)/[\w.+-]+(;[^,;]*)*;base64,", re.IGNORECASE)
_REDIRECTS = (301, 302, 303, 307, 308)
# The only image formats decoded (Pillow's names): what cameras, phones, browsers and datasets produce. Pillow
# reads some 40 more, each a parser of untrusted bytes, and EPS runs Ghostscript on the file's PostScript.
# HEIF is read only when the pillow-heif plugin is registered; an MPO (a camera's multi-picture JPEG) is a JPEG.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF")


@dataclass(frozen=True)
class MediaPolicy:
    """What `load_image` / `fetch_media` may read. The defaults suit the CLI and training.

    A server facing untrusted clients should set `allow_private_urls=False` (the host of every hop is
    resolved once, refused unless every address is public, IPv4 embedded in IPv6 included, and then
    that very address is connected to: no connection is made to a refused address; such fetches ignore
    proxy environment variables) and either `allow_local_files=False` or `media_dirs`. `timeout` bounds
    a whole fetch: connect, headers and body of every hop, redirects included.
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
    limits miss. The budget is per process: IMAGE_CACHE_MB by default, `vlmkit --image-cache-mb N COMMAND`
    (`set_image_cache_mb`) to change it, 0 to turn it off; it is saved nowhere.
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


IMAGE_CACHE_MB = 64
RESIZED_IMAGES = _ResizedImages(IMAGE_CACHE_MB * 2**20)


def set_image_cache_mb(mb: float) -> None:
    """The resized-image cache's budget for this process (and the workers it forks), in MiB; 0 turns it off."""
    if mb < 0:
        raise VlmkitError(f"--image-cache-mb {mb:g}: give a size in MiB, 0 or more (0 turns the cache off)")
    with RESIZED_IMAGES.lock:
        RESIZED_IMAGES.max_bytes = int(mb * 2**20)
        RESIZED_IMAGES.entries.clear()
        RESIZED_IMAGES.used = 0


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
            image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data, formats=_readable_formats())
    except Image.DecompressionBombError:
        limit = min(policy.max_image_pixels, 2 * (Image.MAX_IMAGE_PIXELS or 0))
        raise MediaTooLargeError(f"{where}: image is over the limit of {limit} pixels") from None
    except Image.UnidentifiedImageError:
        names = ", ".join(_readable_formats())
        raise MediaError(f"{where}: not an image file, or not in a format read here ({names}); convert it to PNG or JPEG") from None
    except Exception as e:
        raise MediaError(f"{where}: not a readable image ({_one_line(e)})") from None
    if image.width * image.height > policy.max_image_pixels:
        image.close()
        raise MediaTooLargeError(
            f"{where}: image is {image.width} x {image.height}, over the limit of "
            f"{policy.max_image_pixels} pixels"
        )
    return image, where


def _readable_formats() -> tuple[str, ...]:
    """IMAGE_FORMATS that this Pillow can open (Image.open refuses a name it does not know)."""
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


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
    try:
        if policy.media_dirs:
            resolved = path.resolve()  # follows symlinks and `..` before the check
            if not any(resolved.is_relative_to(Path(d).resolve()) for d in policy.media_dirs):
                raise MediaError(f"{where}: {path} is outside the allowed media directories")
            path = resolved
        if not path.is_file():
            raise MediaError(f"{where}: file not found: {path}")
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a name too long, a symlink loop
        raise MediaError(f"{where}: not a usable path {str(path)[:200]!r} ({_one_line(e)[:200]})") from None
    return path


class _FetchError(Exception):
    """Why one fetch failed; `_fetch` turns it into a MediaError naming the item and URL."""


class _NotPublic(_FetchError):
    """A hop's host is not at a public address; `_fetch` raises a PrivateUrlError, which the caller can explain."""


def _fetch(url: str, where: str, policy: MediaPolicy) -> bytes:
    """GET `url`, following at most `policy.max_redirects` redirects, each hop checked, all within one
    deadline of `policy.timeout` seconds (connect, headers and body of every hop together)."""
    deadline = _Deadline(policy.timeout)
    vet = not policy.allow_private_urls
    handlers: list[Any] = [_NoRedirects(), _DeadlineHTTPHandler(deadline, vet), _DeadlineHTTPSHandler(deadline, vet)]
    if vet:
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy would connect where we cannot vet
    opener = urllib.request.build_opener(*handlers)
    current = url
    try:
        for _ in range(policy.max_redirects + 1):
            try:
                with opener.open(_ascii_url(current), timeout=deadline.left()) as response:
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
        reason, error = str(e), PrivateUrlError if isinstance(e, _NotPublic) else MediaError
    except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
        cause = e.reason if isinstance(e, urllib.error.URLError) else e
        reason, error = _one_line(cause), MediaError
        if isinstance(cause, _FetchError):
            reason, error = str(cause), PrivateUrlError if isinstance(cause, _NotPublic) else MediaError
        elif deadline.expired() or isinstance(cause, TimeoutError):
            reason = f"timed out after {policy.timeout:g} s"
    finally:
        deadline.cancel()
    hop = f" (redirected to {current})" if current != url else ""
    raise error(f"{where}: could not fetch {url}{hop}: {reason}")


def _read_limited(response: Any, deadline: _Deadline, policy: MediaPolicy) -> bytes:
    too_big = f"response is over the limit of {_size(policy.max_bytes)}"
    length = response.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > policy.max_bytes:
        raise _FetchError(too_big)
    chunks, size = [], 0
    while chunk := response.read1(65536):
        size += len(chunk)
        if size > policy.max_bytes:
            raise _FetchError(too_big)
        chunks.append(chunk)
    if deadline.expired():  # the watchdog closed the socket: what was read may be cut short
        raise _FetchError(f"timed out after {policy.timeout:g} s")
    return b"".join(chunks)


class _Deadline:
    """One deadline for a whole fetch. Socket timeouts bound each read, not their sum (a server that sends
    a header byte a second never trips them), so a timer shuts every socket of the fetch down at the end."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.timers: list[threading.Timer] = []

    def left(self) -> float:
        return max(self.end - time.monotonic(), 0.001)

    def expired(self) -> bool:
        return time.monotonic() >= self.end

    def guard(self, sock: socket.socket) -> None:
        timer = threading.Timer(self.left(), _shut, (sock,))
        timer.daemon = True
        timer.start()
        self.timers.append(timer)

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a blocked recv returns at once
    except OSError:
        pass


def _resolve(host: str, port: int) -> list[str]:
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def _resolve_within(host: str, port: int, deadline: _Deadline) -> list[str]:
    """`host`'s addresses, looked up within the fetch's deadline. The system resolver takes no timeout, so it
    runs in a thread that the fetch stops waiting for at the deadline (the thread ends at the resolver's own)."""
    answer: dict[str, Any] = {}

    def lookup() -> None:
        try:
            answer["addresses"] = _resolve(host, port)
        except (OSError, UnicodeError) as e:
            answer["error"] = e

    thread = threading.Thread(target=lookup, name="vlmkit-resolve", daemon=True)
    thread.start()
    thread.join(deadline.left())
    if thread.is_alive():
        raise _FetchError(f"timed out after {deadline.seconds:g} s (resolving {host})")
    if "error" in answer:
        error = answer["error"]
        raise _FetchError(f"cannot resolve {host} ({getattr(error, 'strerror', None) or _one_line(error)})")
    return answer["addresses"]


def _ascii_url(url: str) -> str:
    """`url` as it goes on the wire: an internationalised host name in its IDNA (punycode) form, other
    non-ASCII characters percent-encoded (http.client sends only ASCII)."""
    if url.isascii():
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        netloc = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")  # an IPv6 address is ASCII
    except UnicodeError:
        raise _FetchError(f"{host!r} is not a valid host name") from None
    if parts.port is not None:
        netloc += f":{parts.port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    safe = "/%:@!$&'()*+,;=?~-._"
    return urlunsplit((parts.scheme, quote(netloc, safe=safe + "[]"), quote(parts.path, safe=safe),
                       quote(parts.query, safe=safe), quote(parts.fragment, safe=safe)))  # fmt: skip


# IPv6 ranges that carry an IPv4 address in their last 32 bits: IPv4-compatible (::a.b.c.d), IPv4-mapped,
# IPv4-translated (SIIT) and NAT64 (well-known and local-use prefixes). 6to4 and Teredo are handled by
# `ipaddress` itself.
_EMBEDS_IPV4 = tuple(
    ipaddress.ip_network(n) for n in ("::/96", "::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48")
)


def _check_public_address(host: str, address: str) -> None:
    ip = ipaddress.ip_address(address.split("%")[0])
    embedded: list[ipaddress.IPv4Address] = []
    if ip.version == 6:
        if ip.is_site_local:  # fec0::/10, deprecated but still routed inside some sites
            embedded.append(ipaddress.IPv4Address("0.0.0.0"))
        if any(ip in net for net in _EMBEDS_IPV4):
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None:
            embedded.append(ip.sixtofour)
        if ip.teredo is not None:
            embedded.extend(ip.teredo)
    for candidate in (ip, *embedded):
        if not candidate.is_global or candidate.is_multicast:  # private, loopback, link-local, reserved...
            raise _NotPublic(
                f"{host} is at {address}, not a public address; only public URLs are allowed here"
            )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every 3xx into an HTTPError so `_fetch` can check each hop itself."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _DeadlineConnection:
    """Mixed into http.client's connections: the socket goes to a vetted address (when `vet`) and is under the
    fetch's deadline before anything is sent or read on it, the TLS handshake of HTTPS included."""

    def __init__(self, *args: Any, deadline: _Deadline, vet: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.deadline, self.vet = deadline, vet
        self._create_connection = self._open_socket  # what http.client's `connect` opens its socket with

    def _open_socket(self, address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
        """Resolve the host once, within the deadline, check every address when vetting (nothing is connected
        to before the check, so refusals do not tell open ports from closed ones), then connect to those
        addresses in turn: DNS that answers otherwise later cannot send the connection elsewhere. HTTPS still
        checks the certificate against the URL's host."""
        host, port = address
        addresses = _resolve_within(host, port, self.deadline)
        if self.vet:
            for ip in addresses:
                _check_public_address(host, ip)
        for ip in addresses:
            try:
                sock = socket.create_connection((ip, port), timeout=self.deadline.left(), source_address=source_address)
            except OSError:
                if ip == addresses[-1]:
                    raise
                continue
            self.deadline.guard(sock)
            return sock
        raise _FetchError(f"{host} has no address")


class _DeadlineHTTPConnection(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline, vet: bool):
        super().__init__()
        self.deadline, self.vet = deadline, vet

    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, deadline=self.deadline, vet=self.vet), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, vet: bool):
        super().__init__()
        self.deadline, self.vet = deadline, vet

    def https_open(self, req):
        connection = functools.partial(_DeadlineHTTPSConnection, deadline=self.deadline, vet=self.vet)
        return self.do_open(connection, req, context=self._context)


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
