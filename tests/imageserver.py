"""A local HTTP server on 127.0.0.1 serving a headerless CC-format TSV and images of many kinds.

Each `Case` is one row of the TSV: a URL path on this server (or an absolute URL), what the
server sends for it, and what `vlpipe fetch` must do with it: keep it (with the colours the
top and bottom halves must have once upright) or drop it with a given reason.
"""

from __future__ import annotations

import io
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def two_tone(
    size: tuple[int, int], top: tuple[int, ...], bottom: tuple[int, ...], mode: str = "RGB"
) -> Image.Image:
    """An image whose top half is `top` and bottom half `bottom`: shows orientation and colour at once."""
    width, height = size
    img = Image.new(mode, size, bottom)
    img.paste(Image.new(mode, (width, height // 2), top), (0, 0))
    return img


def encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def exif_rotated_jpeg() -> bytes:
    """Upright: red over blue, 160x120; stored rotated with EXIF orientation 6 (rotate to display)."""
    upright = two_tone((160, 120), RED, BLUE)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # exif_transpose(6) applies ROTATE_270
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif)


def palette_transparent_png() -> bytes:
    """Palette PNG: top half transparent (white once composited), bottom half blue."""
    img = Image.new("P", (160, 120), 1)
    img.putpalette([0, 0, 0, *BLUE] + [0, 0, 0] * 254)
    img.paste(0, (0, 0, 160, 60))
    return encode(img, "PNG", transparency=0)


def rgba_png() -> bytes:
    """RGBA PNG: top half fully transparent black (must become white, not black), bottom blue."""
    img = two_tone((160, 120), (0, 0, 0, 0), (*BLUE, 255), mode="RGBA")
    return encode(img, "PNG")


def png16() -> bytes:
    """16-bit greyscale PNG: top 65535 (white), bottom 32896 (mid grey 128), not clipped to white."""
    arr = np.full((120, 160), 32896, dtype=np.uint16)
    arr[:60] = 65535
    return encode(Image.fromarray(arr), "PNG")  # uint16 -> mode I;16


def cmyk_jpeg() -> bytes:
    return encode(two_tone((160, 120), (0, 255, 255, 0), (255, 255, 0, 0), mode="CMYK"), "JPEG", quality=95)


def rgb(fmt: str, size: tuple[int, int] = (160, 120), **kwargs: object) -> bytes:
    return encode(two_tone(size, RED, BLUE), fmt, **kwargs)


@dataclass(frozen=True)
class Case:
    """One TSV row: what is served at `path` and the expected outcome."""

    name: str
    path: str  # "/img/<name>" etc., or an absolute URL
    expect: str  # "kept" or the drop reason
    top: tuple[int, int, int] | None = None  # expected colours of a kept image
    bottom: tuple[int, int, int] | None = None
    size: tuple[int, int] | None = None  # expected stored (width, height) of a kept image


# name -> (body factory, content type)
IMAGES: dict[str, tuple[Callable[[], bytes], str]] = {
    "jpeg": (lambda: rgb("JPEG", quality=95), "image/jpeg"),
    "progressive": (lambda: rgb("JPEG", quality=95, progressive=True), "image/jpeg"),
    "cmyk": (cmyk_jpeg, "image/jpeg"),
    "palette": (palette_transparent_png, "image/png"),
    "rgba": (rgba_png, "image/png"),
    "png16": (png16, "image/png"),
    "webp": (lambda: rgb("WEBP", quality=95), "image/webp"),
    "gif": (lambda: rgb("GIF"), "image/gif"),
    "gray": (lambda: encode(two_tone((160, 120), 255, 0, mode="L"), "JPEG", quality=95), "image/jpeg"),
    "exif": (exif_rotated_jpeg, "image/jpeg"),
    "big": (lambda: rgb("PNG", size=(1024, 768)), "image/png"),
    "tiny": (lambda: rgb("PNG", size=(1, 1)), "image/png"),
    "small": (lambda: rgb("PNG", size=(40, 30)), "image/png"),
    "strip": (lambda: rgb("PNG", size=(1500, 100)), "image/png"),
    "huge": (lambda: rgb("PNG", size=(2400, 1800)), "image/png"),
    "truncated": (lambda: rgb("JPEG", size=(320, 240), quality=95)[:900], "image/jpeg"),
    "html": (lambda: b"<html><body>Not an image</body></html>", "image/jpeg"),
    "empty": (lambda: b"", "image/jpeg"),
}

UPRIGHT = {"top": RED, "bottom": BLUE, "size": (160, 120)}
CASES: list[Case] = [
    Case("jpeg", "/img/jpeg", "kept", **UPRIGHT),
    Case("progressive", "/img/progressive", "kept", **UPRIGHT),
    Case("cmyk", "/img/cmyk", "kept", **UPRIGHT),
    Case("palette", "/img/palette", "kept", top=WHITE, bottom=BLUE, size=(160, 120)),
    Case("rgba", "/img/rgba", "kept", top=WHITE, bottom=BLUE, size=(160, 120)),
    Case("png16", "/img/png16", "kept", top=WHITE, bottom=(128, 128, 128), size=(160, 120)),
    Case("webp", "/img/webp", "kept", **UPRIGHT),
    Case("gif", "/img/gif", "kept", **UPRIGHT),
    Case("gray", "/img/gray", "kept", top=WHITE, bottom=BLACK, size=(160, 120)),
    Case("exif", "/img/exif", "kept", **UPRIGHT),
    Case("big", "/img/big", "kept", top=RED, bottom=BLUE, size=(341, 256)),
    Case("redirect", "/redirect/jpeg", "kept", **UPRIGHT),
    Case("tiny", "/img/tiny", "too_small"),
    Case("small", "/img/small", "too_small"),
    Case("strip", "/img/strip", "bad_aspect"),
    Case("huge", "/img/huge", "too_large"),
    Case("truncated", "/img/truncated", "truncated"),
    Case("html", "/img/html", "undecodable"),
    Case("empty", "/img/empty", "empty"),
    Case("404", "/status/404", "http_404"),
    Case("500", "/status/500", "http_500"),
    Case("loop", "/loop", "redirect_loop"),
    Case("trickle", "/trickle", "timeout"),
    Case("noai", "/noai", "robots_disallowed"),
    Case("duplicate", "/img/jpeg", "duplicate_url"),
    Case("file", "file:///etc/passwd", "bad_scheme"),
    Case("ftp", "ftp://example.com/a.jpg", "bad_scheme"),
]


class ImageServer:
    """Serves `IMAGES`, error endpoints and `/list.tsv` (+ `/list-N.tsv` for the first N cases)."""

    def __init__(
        self, cases: list[Case] = CASES, trickle_seconds: float = 20.0, tls: tuple[str, str] | None = None
    ) -> None:
        self.cases = cases
        self.trickle_seconds = trickle_seconds
        # Built up front: a handler busy encoding images could exceed a client's short timeout.
        self._bodies = {name: factory() for name, (factory, _) in IMAGES.items()}
        self.requests: list[str] = []
        self.ranges: list[str] = []  # the Range header of every ranged-endpoint request ("" when absent)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        scheme = "http"
        if tls:  # (cert.pem, key.pem): serve https
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, case: Case) -> str:
        return case.path if "://" in case.path else self.base + case.path

    def tsv(self, cases: list[Case] | None = None) -> str:
        """Headerless caption<TAB>url lines, like the real Conceptual Captions files."""
        return "".join(f"a picture of {c.name}\t{self.url(c)}\n" for c in (cases or self.cases))

    def body(self, name: str) -> bytes:
        return self._bodies[name]

    def __enter__(self) -> ImageServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def send(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path
                server.requests.append(path)
                if path.startswith("/list") and path.endswith(".tsv"):
                    count = path[len("/list-") : -len(".tsv")] if path.startswith("/list-") else ""
                    cases = server.cases[: int(count)] if count else server.cases
                    self.send_ranged(server.tsv(cases).encode())
                elif path.startswith("/img/") and path[5:] in IMAGES:
                    self.send(200, server.body(path[5:]), IMAGES[path[5:]][1])
                elif path.startswith("/redirect/"):
                    self.send(302, b"", "text/plain", {"Location": "/img/" + path[len("/redirect/") :]})
                elif path == "/metadata-redirect":  # a classic SSRF: redirect to the cloud metadata service
                    self.send(
                        302, b"", "text/plain", {"Location": "http://169.254.169.254/latest/meta-data/"}
                    )
                elif path == "/loop":
                    self.send(302, b"", "text/plain", {"Location": "/loop"})
                elif path.startswith("/status/"):
                    self.send(int(path[8:]), b"error", "text/plain")
                elif path == "/noai":
                    self.send(200, server.body("jpeg"), "image/jpeg", {"X-Robots-Tag": "noai"})
                elif path == "/trickle":
                    self.trickle(server.body("jpeg"))
                else:
                    self.send(404, b"not found", "text/plain")

            def send_ranged(self, body: bytes) -> None:
                # Enough of RFC 7233 ("bytes=N-") to test resumable list downloads.
                header = self.headers.get("Range", "")
                server.ranges.append(header)
                if header.startswith("bytes=") and header.endswith("-"):
                    start = int(header[6:-1])
                    if start >= len(body):
                        self.send(416, b"", "text/plain")
                    else:
                        self.send(206, body[start:], "text/tab-separated-values")
                else:
                    self.send(200, body, "text/tab-separated-values")

            def trickle(self, body: bytes) -> None:
                # One byte at a time, each well within the socket timeout, never finishing in time.
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                end = time.monotonic() + server.trickle_seconds
                try:
                    for byte in body:
                        if time.monotonic() > end:
                            break
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.2)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        return Handler


def assert_kept_image(data: bytes, case: Case, tolerance: int = 16) -> None:
    """A kept image is an RGB JPEG of the expected size, upright, with the expected colours."""
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and img.mode == "RGB", (case.name, img.format, img.mode)
    assert img.size == case.size, (case.name, img.size)
    arr = np.asarray(img, dtype=np.int16)
    height, width = arr.shape[:2]
    for colour, y in ((case.top, height // 4), (case.bottom, 3 * height // 4)):
        patch = arr[y - 4 : y + 4, width // 2 - 4 : width // 2 + 4].reshape(-1, 3).mean(axis=0)
        assert np.abs(patch - np.array(colour)).max() <= tolerance, (case.name, colour, patch.round())
