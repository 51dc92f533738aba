"""A local image server on 127.0.0.1 that behaves like a slice of the web, broken links included.

The demo downloads its embedded dataset through the real fetch stage (img2dataset over HTTP), so
it needs a server; serving on loopback keeps the demo offline. Real caption lists are full of
dead links and bad files, and the point of the demo is to show fetch dropping them with reasons,
so besides the good images the server answers a fixed set of broken URLs (`BROKEN`).
"""

from __future__ import annotations

import io
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

from PIL import Image

# path -> (caption, what a careful fetch should do with it). The captions are ordinary so that
# only the response, not the row, tells good from bad.
BROKEN: dict[str, tuple[str, str]] = {
    "/broken/missing.jpg": ("a red circle in the center", "HTTP 404"),
    "/broken/server-error.jpg": ("two blue squares in a row", "HTTP 500"),
    "/broken/html-page.jpg": ("a green star on the left", "an HTML page served as image/jpeg"),
    "/broken/truncated.jpg": ("a yellow triangle at the top", "a JPEG cut off after its first bytes"),
    "/broken/empty.jpg": ("an orange cross near the bottom", "zero bytes"),
    "/broken/one-pixel.png": ("a purple circle on the right", "a 1x1 image"),
    "/broken/strip.jpg": ("three red stars in a row", "a 960x64 strip (15:1 aspect)"),
}


def _jpeg(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _broken_bodies() -> dict[str, tuple[int, str, bytes]]:
    """status, content type and body of every broken URL (built once per server)."""
    full = _jpeg((128, 128), (200, 40, 40))
    return {
        "/broken/missing.jpg": (404, "text/plain", b"not found"),
        "/broken/server-error.jpg": (500, "text/plain", b"internal error"),
        "/broken/html-page.jpg": (200, "image/jpeg", b"<!doctype html><html><body>Moved</body></html>"),
        "/broken/truncated.jpg": (200, "image/jpeg", full[: len(full) // 3]),
        "/broken/empty.jpg": (200, "image/jpeg", b""),
        "/broken/one-pixel.png": (200, "image/png", _png((1, 1), (150, 30, 205))),
        "/broken/strip.jpg": (200, "image/jpeg", _jpeg((960, 64), (225, 25, 25))),
    }


class _Handler(SimpleHTTPRequestHandler):
    """Static files from the dataset folder, plus the broken endpoints; no request logging."""

    def __init__(self, *args, bodies: dict[str, tuple[int, str, bytes]], **kwargs) -> None:
        self.bodies = bodies
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (name fixed by http.server)
        path = self.path.split("?", 1)[0]
        if path not in self.bodies:
            super().do_GET()
            return
        status, content_type, body = self.bodies[path]
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base)
        """Silent: thousands of 200 lines would bury the demo's own output."""


class DemoServer:
    """Serve `root` on 127.0.0.1 at an ephemeral port, in a daemon thread; use as a context manager.

    >>> with DemoServer(dataset_dir) as server:
    ...     server.url("images/000000.jpg")
    """

    def __init__(self, root: str | Path) -> None:
        handler = partial(_Handler, directory=str(Path(root)), bodies=_broken_bodies())
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="vlpipe-demo-server", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def broken_rows(self) -> list[tuple[str, str]]:
        """(caption, url) rows for every broken endpoint, to mix into the served TSV."""
        return [(caption, self.url(path)) for path, (caption, _) in BROKEN.items()]

    def __enter__(self) -> DemoServer:
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
