"""The URL guard: non-public hosts, schemes, overall deadline and size limit, on a real local server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
from pathlib import Path

import pytest
from imageserver import ImageServer

from vlpipe.fetch import safety
from vlpipe.fetch.safety import PolicyError, UrlPolicy, build_opener, is_public_address, scheme_problem


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("172.16.5.4", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://a.com/x.jpg", None),
        ("HTTPS://a.com/x.jpg", None),
        ("file:///etc/passwd", "bad_scheme"),
        ("ftp://a.com/x.jpg", "bad_scheme"),
        ("data:image/png;base64,AAAA", "bad_scheme"),
        ("http:///x.jpg", "bad_url"),
    ],
)
def test_scheme_problem(url: str, problem: str | None) -> None:
    assert scheme_problem(url) == problem


def reason_of(exc: BaseException) -> str:
    cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    assert isinstance(cause, PolicyError), repr(exc)
    return cause.reason


def test_loopback_refused_unless_allowed() -> None:
    with ImageServer() as server:
        with pytest.raises(urllib.error.URLError) as info:
            build_opener(UrlPolicy()).open(server.base + "/img/jpeg", timeout=2)
        assert reason_of(info.value) == "private_address"
        assert server.requests == []  # refused before connecting
        body = (
            build_opener(UrlPolicy(allow_private_network=True))
            .open(server.base + "/img/jpeg", timeout=2)
            .read()
        )
        assert body == server.body("jpeg")


def test_metadata_address_refused() -> None:
    with pytest.raises(urllib.error.URLError) as info:
        build_opener(UrlPolicy()).open("http://169.254.169.254/latest/meta-data/", timeout=2)
    assert reason_of(info.value) == "private_address"


def test_redirect_to_private_host_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Treat only the test server (127.0.0.1) as public, so the first hop goes through and the
    # redirect hop to 169.254.169.254 is judged on its own new connection.
    monkeypatch.setattr(safety, "is_public_address", lambda address: address == "127.0.0.1")
    with ImageServer() as server:
        with pytest.raises(urllib.error.URLError) as info:
            build_opener(UrlPolicy()).open(server.base + "/metadata-redirect", timeout=2)
        assert reason_of(info.value) == "private_address"
        assert server.requests == ["/metadata-redirect"]


def test_dns_rebinding_cannot_redirect_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rebinding name answers a public address to the check, then 127.0.0.1 to any later lookup.
    # The guard must connect to the address it checked, so the listener on 127.0.0.1, where a
    # second lookup would lead, must never see a connection. No packet leaves the machine: the
    # "public" address is TEST-NET-1 (routed nowhere), counted as public for this test only, and
    # the connection to it is refused in this process before any packet is sent.
    host, public = "rebind.invalid", "192.0.2.10"
    real_getaddrinfo, real_is_public = socket.getaddrinfo, safety.is_public_address
    answers: list[str] = []
    attempted: list[str] = []

    def rebinding_getaddrinfo(name: str, *args: object, **kwargs: object) -> list:
        if name != host:
            return real_getaddrinfo(name, *args, **kwargs)
        answers.append("127.0.0.1" if answers else public)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (answers[-1], port))]

    class RecordingSocket(socket.socket):
        def connect(self, address: tuple) -> None:  # type: ignore[override]
            attempted.append(address[0])
            if address[0] == public:
                raise ConnectionRefusedError(f"test: no traffic to {public}")
            super().connect(address)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
        monkeypatch.setattr(socket, "socket", RecordingSocket)
        monkeypatch.setattr(safety, "is_public_address", lambda address: address == public or real_is_public(address))
        with pytest.raises(OSError) as info:
            build_opener(UrlPolicy()).open(f"http://{host}:{port}/img/jpeg", timeout=2)
        monkeypatch.undo()
        listener.settimeout(0.5)  # loopback connects complete at once: anything made is queued by now
        try:
            listener.accept()[0].close()
            rebound = True
        except TimeoutError:
            rebound = False
    assert not rebound, "the guard looked the name up again and connected to 127.0.0.1"
    assert (answers, attempted) == ([public], [public])  # resolved once, connected to the checked address
    assert isinstance(info.value, urllib.error.URLError) and isinstance(info.value.reason, ConnectionRefusedError)


def test_other_schemes_refused() -> None:
    opener = build_opener(UrlPolicy(allow_private_network=True))
    for url in ("file:///etc/passwd", "ftp://127.0.0.1/x", "data:text/plain,hi"):
        with pytest.raises(PolicyError) as info:
            opener.open(url, timeout=2)
        assert info.value.reason == "bad_scheme"


def test_overall_deadline_stops_trickling_server() -> None:
    with ImageServer() as server:
        opener = build_opener(UrlPolicy(allow_private_network=True, deadline_s=1.0))
        start = time.monotonic()
        response = opener.open(server.base + "/trickle", timeout=5)  # each byte arrives within 5 s
        with pytest.raises(PolicyError) as info:
            response.read()
        assert info.value.reason == "timeout"
        # Not waited on to the end: the trickle lasts 20 s. (Loose, for a loaded 2-core box; still
        # below the 5 s socket timeout, so only the deadline can have stopped it.)
        assert time.monotonic() - start < 4.0


def test_deadline_spares_a_response_that_already_arrived() -> None:
    # A download thread starved of CPU (the 2-core box under load, 64 threads per process) gets
    # to its socket after the deadline, with the whole response waiting there: keep it.
    with ImageServer() as server:
        opener = build_opener(UrlPolicy(allow_private_network=True, deadline_s=1.0))
        # Larger than the 8 KiB read buffer, so the body is read from the socket after the sleep:
        # past the deadline, 0.8 s short of twice it (room for a stalled thread).
        response = opener.open(server.base + "/img/huge", timeout=5)
        time.sleep(1.2)
        assert response.read() == server.body("huge")


def test_deadline_is_final_at_twice_its_length() -> None:
    # Past twice the deadline nothing more is read, even data already waiting: a trickling
    # server must not be able to hold a slow reader indefinitely.
    with ImageServer() as server:
        opener = build_opener(UrlPolicy(allow_private_network=True, deadline_s=0.3))
        response = opener.open(server.base + "/img/huge", timeout=5)
        time.sleep(0.7)
        with pytest.raises(PolicyError) as info:
            response.read()
        assert info.value.reason == "timeout"


def test_response_size_limit() -> None:
    with ImageServer() as server:
        opener = build_opener(UrlPolicy(allow_private_network=True, max_bytes=1200))
        assert opener.open(server.base + "/img/tiny", timeout=2).read() == server.body("tiny")
        assert len(server.body("jpeg")) > 1200
        with pytest.raises(PolicyError) as info:
            opener.open(server.base + "/img/jpeg", timeout=2).read()
        assert info.value.reason == "too_large"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_through_the_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Most real image URLs are https: the guarded connection must do TLS with hostname checks.
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    allow = UrlPolicy(allow_private_network=True, deadline_s=1.0)
    with ImageServer(tls=(cert, key)) as server:
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            build_opener(allow).open(server.base + "/img/jpeg", timeout=3)
        monkeypatch.setenv("SSL_CERT_FILE", cert)  # read when the opener's TLS context is made
        assert build_opener(allow).open(server.base + "/img/jpeg", timeout=3).read() == server.body("jpeg")
        with pytest.raises(PolicyError) as info:
            build_opener(allow).open(server.base + "/trickle", timeout=3).read()
        assert info.value.reason == "timeout"
        with pytest.raises(urllib.error.URLError) as refused:
            build_opener(UrlPolicy()).open(server.base + "/img/jpeg", timeout=3)
        assert reason_of(refused.value) == "private_address"
