"""The URL list is untrusted input: refuse internal hosts, odd schemes, endless and oversized bodies.

img2dataset fetches every image with `urllib.request.urlopen`, which would happily read
`file:///etc/passwd`, the cloud metadata endpoint `http://169.254.169.254/`, or anything on the
intranet, and whose `timeout` bounds each socket read, not the whole download (a server that
trickles one byte per second holds a thread forever). We install, inside each download process,
a urllib opener whose connections:

- accept only http and https (no file://, ftp://, data://, no proxy handler);
- resolve the host once, refuse it if *any* address is non-public, then connect to exactly the
  address that was checked, so a DNS answer that changes between check and connect (rebinding)
  cannot slip through; every redirect hop opens a new connection and is checked the same way;
- stop reading after `max_bytes` of response, and at an overall deadline per connection: past
  it, only data the server already sent is taken (a thread starved of CPU finds a finished
  response waiting), nothing is waited for, and twice the deadline ends the download regardless.

Refusals are raised as `PolicyError` whose message starts with `vlpipe:<reason>`, which survives
img2dataset's `str(err)` error recording and is mapped back to a drop reason by `publish.py`.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import select
import socket
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from vlpipe.fetch.config import UrlPolicy

ALLOWED_SCHEMES = ("http", "https")
REASON_PREFIX = "vlpipe:"


class PolicyError(OSError):
    """A refused URL or an aborted response; `reason` is the drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{REASON_PREFIX}{reason} {detail}")
        self.reason = reason


def scheme_problem(url: str) -> str | None:
    """`bad_scheme` unless the URL is http(s) with a host; checked before anything is downloaded."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "bad_url"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return "bad_scheme"
    if not parts.hostname:
        return "bad_url"
    return None


def all_private(urls: list[str]) -> bool:
    """True when every URL names its host as a literal non-public address (127.0.0.1, 10.0.0.7, ::1).

    Checked before img2dataset starts, without any DNS lookup: a list made only of such URLs would
    otherwise spend its start-up and timeouts to drop every row as `private_address`. Names
    (`localhost` included) are left to the guard, which resolves them inside the download.
    """
    def private(url: str) -> bool:
        host = urlsplit(url).hostname or ""
        try:
            return not is_public_address(host)
        except ValueError:  # a name, not an address: only the guard's own lookup can tell
            return False

    return bool(urls) and all(private(u) for u in urls)


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses (no loopback/private/link-local/reserved)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _checked_socket(host: str, port: int, timeout: float | None, policy: UrlPolicy) -> socket.socket:
    """Resolve `host`, refuse non-public answers, and connect to one of the checked addresses."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PolicyError("dns_error", f"{host}: {exc}") from exc
    if not policy.allow_private_network:
        for *_, sockaddr in infos:
            if not is_public_address(sockaddr[0]):
                raise PolicyError("private_address", f"{host} resolves to {sockaddr[0]}")
    last_error: OSError | None = None
    for family, socktype, proto, _, sockaddr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error if last_error else PolicyError("dns_error", f"{host}: no address")


class _BoundedReader(io.RawIOBase):
    """A socket reader that gives up at an overall deadline or after `max_bytes`."""

    def __init__(self, raw: Any, sock: socket.socket, timeout: float | None, policy: UrlPolicy) -> None:
        self._raw = raw
        self._sock = sock
        self._timeout = timeout
        self._policy = policy
        self._deadline = time.monotonic() + policy.deadline_s
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        now = time.monotonic()
        wait = self._deadline - now
        if wait <= 0:
            # Past the deadline, take only what the server has already sent. Under CPU load a
            # download thread can wait seconds for the CPU or the GIL while its response sits
            # complete in the socket buffer: that is not the server being slow. Never wait on the
            # server past the deadline, and stop at twice the deadline in any case (a trickling
            # server always has a byte ready for a reader that is slow enough).
            if now >= self._deadline + self._policy.deadline_s or not _has_data_waiting(self._sock):
                raise self._expired()
            wait = _PARTIAL_RECORD_WAIT_S
        self._sock.settimeout(wait if self._timeout is None else min(self._timeout, wait))
        try:
            count = self._raw.readinto(buffer)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                raise self._expired() from None
            raise
        self._read += count or 0
        if self._read > self._policy.max_bytes:
            raise PolicyError("too_large", f"response larger than {self._policy.max_bytes} bytes")
        return count

    def _expired(self) -> PolicyError:
        return PolicyError("timeout", f"response not complete after {self._policy.deadline_s:g} s")

    def close(self) -> None:
        self._raw.close()
        super().close()


# Past the deadline a read is only tried when data is waiting; with TLS that may be part of a
# record whose rest is still in flight, worth this long at most.
_PARTIAL_RECORD_WAIT_S = 1.0


def _has_data_waiting(sock: socket.socket) -> bool:
    """True when a read returns at once: bytes (or the end of the stream) already received."""
    pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
    if pending is not None and pending() > 0:
        return True
    poller = select.poll()  # not select.select: it fails on descriptors above 1023
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class _BoundedSocket:
    """Wraps a connected socket so that http.client's response file is a `_BoundedReader`."""

    def __init__(self, sock: socket.socket, timeout: float | None, policy: UrlPolicy) -> None:
        self._sock = sock
        self._timeout = timeout
        self._policy = policy

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "r" not in mode:
            return self._sock.makefile(mode, *args, **kwargs)
        # socket.makefile keeps the fd open until both the file and the socket are closed, which
        # urllib relies on: it closes the connection's socket before the body is read.
        raw = self._sock.makefile("rb", buffering=0)
        return io.BufferedReader(_BoundedReader(raw, self._sock, self._timeout, self._policy))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _GuardedHTTPConnection(http.client.HTTPConnection):
    policy = UrlPolicy()

    def connect(self) -> None:
        sock = _checked_socket(self.host, self.port, self.timeout, self.policy)
        self.sock = _BoundedSocket(sock, self.timeout, self.policy)  # type: ignore[assignment]


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    policy = UrlPolicy()

    def connect(self) -> None:
        sock = _checked_socket(self.host, self.port, self.timeout, self.policy)
        tls = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]
        self.sock = _BoundedSocket(tls, self.timeout, self.policy)  # type: ignore[assignment]


def build_opener(policy: UrlPolicy) -> urllib.request.OpenerDirector:
    """An opener with only guarded http/https handlers, redirects and error processing."""
    http_conn = type("GuardedHTTP", (_GuardedHTTPConnection,), {"policy": policy})
    https_conn = type("GuardedHTTPS", (_GuardedHTTPSConnection,), {"policy": policy})

    class GuardedHTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(http_conn, req)

    class GuardedHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
            return self.do_open(https_conn, req, context=self._context)

    class RefuseOtherSchemes(urllib.request.BaseHandler):
        # Reached for any scheme without a handler, e.g. a redirect to ftp://.
        def unknown_open(self, req: urllib.request.Request) -> None:
            raise PolicyError("bad_scheme", f"{req.type}:// is not allowed")

    opener = urllib.request.OpenerDirector()
    for handler in (
        GuardedHTTPHandler(),
        GuardedHTTPSHandler(),
        RefuseOtherSchemes(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPRedirectHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


_installed: UrlPolicy | None = None


def install_guard(policy: UrlPolicy) -> None:
    """Make `urllib.request.urlopen` in this process use the guarded opener (idempotent)."""
    global _installed
    if _installed != policy:
        urllib.request.install_opener(build_opener(policy))
        _installed = policy
