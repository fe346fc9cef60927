"""vlmkit.media.images: every source kind, the policy refusals and the pixel fix-ups.

HTTP tests use a ThreadingHTTPServer on 127.0.0.1; nothing leaves the machine.
"""

import base64
import io
import os
import socket
import struct
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from vlmkit.errors import MediaError
from vlmkit.media import images as media
from vlmkit.media.images import MediaPolicy, fetch_media, load_image

WHERE = "data.jsonl:3: image 1"


def png_bytes(size=(20, 10), color=(255, 0, 0)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def load_error(source, policy=None) -> str:
    with pytest.raises(MediaError) as info:
        load_image(source, where=WHERE, policy=policy)
    message = str(info.value)
    assert message.startswith(WHERE + ": ") and "\n" not in message
    return message


# -- a local HTTP server ----------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    stop: threading.Event  # set by the fixture so a slow request ends at teardown

    def do_GET(self):
        if self.path == "/img.png":
            self.reply(200, png_bytes())
        elif self.path.startswith("/redirect/"):
            left = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/redirect/{left - 1}" if left > 1 else "/img.png")
            self.end_headers()
        elif self.path == "/to-loopback":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_address[1]}/img.png")
            self.end_headers()
        elif self.path == "/to-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        elif self.path == "/slow":
            self.stop.wait(3)
            self.reply(200, png_bytes())
        elif self.path == "/big":
            self.reply(200, b"x" * 5000)
        elif self.path == "/big-no-length":  # HTTP/1.0: the body ends when the connection closes
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"x" * 5000)
        else:
            self.reply(404, b"not found")

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        """A client that hangs up mid-reply (a size limit, a refused redirect) is what these tests check;
        anything else is printed as the standard server does."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    Handler.stop = threading.Event()
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.stop.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=2)


# -- sources ----------------------------------------------------------------------------------------


def test_path_str_and_pathlib(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    for source in (path, str(path)):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (20, 10)
        assert image.getpixel((0, 0)) == (255, 0, 0)


def test_bytes_pil_and_data_url():
    data = png_bytes()
    assert load_image(data).size == (20, 10)
    assert load_image(bytearray(data)).size == (20, 10)
    assert load_image(Image.new("L", (4, 3), 7)).getpixel((0, 0)) == (7, 7, 7)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert load_image(url).getpixel((5, 5)) == (255, 0, 0)


def test_file_url(tmp_path):
    path = tmp_path / "my image.png"
    path.write_bytes(png_bytes())
    assert load_image(path.as_uri()).size == (20, 10)
    assert "another host" in load_error("file://example.com/x.png")


def test_fetch_media_returns_bytes_or_path(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"anything")
    assert fetch_media(str(path)) == path
    assert fetch_media(b"abc") == b"abc"


def test_malformed_data_urls():
    assert "malformed data: URL" in load_error("data:text/plain;base64,aGVsbG8=")
    assert "malformed data: URL" in load_error("data:image/png,rawbytes")
    assert "not valid base64" in load_error("data:image/png;base64,@@@@")


def test_unsupported_source_and_scheme():
    assert "from int" in load_error(3)
    assert "unsupported URL scheme ftp://" in load_error("ftp://example.com/a.png")


def test_missing_and_corrupt_file(tmp_path):
    missing = tmp_path / "nope.png"
    message = load_error(missing)
    assert "file not found" in message and str(missing) in message
    corrupt = tmp_path / "photo.jpg"
    corrupt.write_bytes(os.urandom(2000))
    assert "not an image file" in load_error(corrupt)


def test_truncated_image():
    assert "not a readable image" in load_error(png_bytes((64, 64))[:80])


# -- pixels -----------------------------------------------------------------------------------------


def test_transparency_is_composited_onto_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (255, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 255, 128))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    image = load_image(buffer.getvalue())
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (255, 0, 0)
    r, g, b = image.getpixel((2, 2))
    assert 126 <= r <= 128 and 126 <= g <= 128 and b == 255
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 10, 20, 30])
    palette.info["transparency"] = 0
    assert load_image(palette).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "portrait.jpg"
    Image.new("RGB", (40, 20), (0, 128, 0)).save(path, exif=exif)
    assert Image.open(path).size == (40, 20)
    assert load_image(path).size == (20, 40)


def test_pixel_limit_from_policy():
    message = load_error(png_bytes(), policy=MediaPolicy(max_image_pixels=100))
    assert "image is 20 x 10, over the limit of 100 pixels" in message


def test_decompression_bomb_header():
    data = bytearray(png_bytes((1, 1)))
    ihdr = struct.pack(">II", 20_000, 20_000) + bytes(data[24:29])  # width, height, then depth etc.
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    message = load_error(bytes(data))
    assert "over the limit of 178956970 pixels" in message


def test_max_bytes_for_bytes_and_data_urls():
    data = png_bytes()
    policy = MediaPolicy(max_bytes=50)
    assert "over the limit of 50 bytes" in load_error(data, policy)
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert "over the limit of 50 bytes" in load_error(url, policy)


# -- local file policy ------------------------------------------------------------------------------


def test_local_files_refused(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes())
    policy = MediaPolicy(allow_local_files=False)
    assert "local files are not allowed" in load_error(path, policy)
    assert "local files are not allowed" in load_error(path.as_uri(), policy)


def test_media_dirs(tmp_path):
    inside = tmp_path / "media"
    (inside / "sub").mkdir(parents=True)
    (inside / "sub" / "a.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (inside / "link.png").symlink_to(tmp_path / "secret.png")
    policy = MediaPolicy(media_dirs=(inside,))
    assert load_image(inside / "sub" / "a.png", policy=policy).size == (20, 10)
    assert load_image(str(inside / "sub" / ".." / "sub" / "a.png"), policy=policy).size == (20, 10)
    for escape in (inside / ".." / "secret.png", inside / "link.png"):
        assert "outside the allowed media directories" in load_error(escape, policy)
    assert "outside the allowed media directories" in load_error((inside / "link.png").as_uri(), policy)


# -- http -------------------------------------------------------------------------------------------


def test_http(server):
    assert load_image(server + "/img.png").size == (20, 10)


def test_http_404(server):
    url = server + "/missing.png"
    assert load_error(url) == f"{WHERE}: could not fetch {url}: HTTP 404"


def test_redirects(server):
    assert load_image(server + "/redirect/3", policy=MediaPolicy(max_redirects=3)).size == (20, 10)
    url = server + "/redirect/3"
    message = load_error(url, MediaPolicy(max_redirects=2))
    assert f"could not fetch {url}" in message and "more than 2 redirects" in message


def test_redirect_to_file_url_refused(server):
    assert "redirect to a non-http(s) URL file:///etc/passwd" in load_error(server + "/to-file")


def test_timeout(server):
    url = server + "/slow"
    message = load_error(url, MediaPolicy(timeout=0.5))
    assert f"could not fetch {url}: timed out after 0.5 s" in message


def test_response_over_max_bytes(server):
    policy = MediaPolicy(max_bytes=1000)
    for path in ("/big", "/big-no-length"):
        assert "over the limit of 1000 bytes" in load_error(server + path, policy)


def test_unreachable(server):
    url = "http://127.0.0.1:1/img.png"
    assert f"could not fetch {url}: " in load_error(url)


def test_private_urls_refused(server):
    policy = MediaPolicy(allow_private_urls=False)
    message = load_error(server + "/img.png", policy)
    assert "127.0.0.1 is at 127.0.0.1, not a public address" in message
    message = load_error(f"http://localhost:{port_of(server)}/img.png", policy)
    assert "localhost is at" in message and "not a public address" in message


def test_private_redirect_target_refused(server, monkeypatch):
    """A public first hop that redirects to a private host is refused at the second hop."""
    pretend_public(server, monkeypatch)
    url = f"http://public.test:{port_of(server)}/to-loopback"
    message = load_error(url, MediaPolicy(allow_private_urls=False))
    assert f"could not fetch {url} (redirected to {server}/img.png): 127.0.0.1 is at 127.0.0.1" in message


def test_connection_goes_to_the_vetted_address(monkeypatch):
    """DNS that says public at check time and loopback later (rebinding) cannot redirect the connection:
    the host is resolved once and that vetted address is connected to."""
    answers = iter([["8.8.8.8"], ["127.0.0.1"]])
    monkeypatch.setattr(media, "_resolve", lambda host, port: next(answers))
    connected = []

    def connect(address, *args, **kwargs):
        connected.append(address)
        raise ConnectionRefusedError("no network in tests")

    monkeypatch.setattr(socket, "create_connection", connect)
    message = load_error("http://rebind.test:8080/img.png", MediaPolicy(allow_private_urls=False))
    assert "could not fetch http://rebind.test:8080/img.png" in message
    assert connected == [("8.8.8.8", 8080)]


def port_of(server: str) -> int:
    return int(server.rsplit(":", 1)[1])


def pretend_public(server, monkeypatch):
    """public.test resolves to 8.8.8.8 for the policy check, but connections go to the test server."""
    real_resolve, real_connect = media._resolve, socket.create_connection
    monkeypatch.setattr(
        media,
        "_resolve",
        lambda host, port: ["8.8.8.8"] if host == "public.test" else real_resolve(host, port),
    )

    def connect(address, *args, **kwargs):
        if address[0] == "8.8.8.8":  # the vetted address of public.test: the test server stands in for it
            address = ("127.0.0.1", port_of(server))
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", connect)
