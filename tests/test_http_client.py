"""The trackers' HTTP client on real loopback sockets: HTTPS, and trackers that misbehave.

Each hostile tracker here is a few lines of asyncio server; each test checks
that the announce ends in a :class:`TrackerError` saying what went wrong (the
torrent-level consequence, one tracker failing and the torrent going on, is
``test_tracker_client.py``'s).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pyowtorrent.engine.http_client import HttpClient
from pyowtorrent.engine.trackers import HttpTracker
from pyowtorrent.errors import TrackerError
from pyowtorrent.tracker.http_codec import AnnounceRequest

ANSWER = b"d8:intervali900e5:peers6:\x7f\x00\x00\x01\x1a\xe1e"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _request() -> AnnounceRequest:
    return AnnounceRequest(info_hash=b"i" * 20, peer_id=b"p" * 20, port=6881, uploaded=0, downloaded=0, left=1)


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: bytes) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(response)
    await writer.drain()
    writer.close()


async def _announce(handler: Handler, *, timeout: float = 10.0, tls: ssl.SSLContext | None = None,
                    client_tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> object:
    """Announce to a tracker that is ``handler`` (on 127.0.0.1, named ``host``): the answer, or the TrackerError."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if tls is not None else "http"
    tracker = HttpTracker(f"{scheme}://{host}:{port}/announce", HttpClient("test", tls=client_tls), timeout=timeout)
    try:
        return await tracker.announce(_request())
    except TrackerError as exc:
        return exc
    finally:
        server.close()


def _failure(handler: Handler, **kwargs: float) -> str:
    outcome = asyncio.run(_announce(handler, **kwargs))
    assert isinstance(outcome, TrackerError), outcome
    return str(outcome)


def test_a_tracker_that_never_finishes_its_answer_times_out() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nd8:inter")
        await reader.read()  # holds the connection until the client gives up

    assert "no answer within 0.5 s" in _failure(stall, timeout=0.5)


def test_a_redirect_loop_ends_after_five_redirects() -> None:
    asked = 0

    async def loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal asked
        asked += 1
        await _answer(reader, writer, b"HTTP/1.1 302 Found\r\nLocation: /announce?again=1\r\nContent-Length: 0\r\n\r\n")

    assert "more than 5 redirects" in _failure(loop)
    assert asked == 6


def test_a_redirect_to_another_scheme_is_refused() -> None:
    async def elsewhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(reader, writer, b"HTTP/1.1 301 Moved\r\nLocation: file:///etc/passwd\r\n\r\n")

    assert "not an http:// or https:// URL" in _failure(elsewhere)


def test_an_endless_answer_is_cut_at_the_bound() -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
        try:
            for _ in range(64):  # 4 MiB, framed by a close that never comes first
                writer.write(b"9" * (64 << 10))
                await writer.drain()
        except ConnectionError:
            pass  # the client hung up, as it should
        writer.close()

    assert "larger than 1048576 bytes" in _failure(flood)


def test_a_tracker_that_hangs_up_without_answering_is_an_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # read first: closing on unread bytes is a reset, another error
        writer.close()

    assert "not a readable HTTP answer" in _failure(hang_up)


def test_a_refusing_status_is_an_error_with_its_reason() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(reader, writer, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    assert _failure(refuse).endswith(": HTTP 403 Forbidden")


def test_nobody_listening_is_an_error() -> None:
    async def main() -> object:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        try:
            return await HttpTracker(f"http://127.0.0.1:{port}/announce", HttpClient("test")).announce(_request())
        except TrackerError as exc:
            return exc

    outcome = asyncio.run(main())
    assert isinstance(outcome, TrackerError) and "cannot connect to 127.0.0.1" in str(outcome)


# -- HTTPS ------------------------------------------------------------------------------------


def _certificates(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A test CA and a certificate it signed for 127.0.0.1: (the server's context, a client's that trusts the CA)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyowtorrent test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("tracker.test")]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp / "server.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / "server.pem")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


async def _tracker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await _answer(reader, writer, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(ANSWER), ANSWER))


def test_an_https_tracker_with_a_trusted_certificate_answers(tmp_path: Path) -> None:
    server, client = _certificates(tmp_path)
    response = asyncio.run(_announce(_tracker, tls=server, client_tls=client))
    assert getattr(response, "peers") == [("127.0.0.1", 6881)]


def test_an_https_tracker_named_with_a_root_dot_is_checked_against_its_name_without_it(tmp_path: Path) -> None:
    """``tracker.test.`` is ``tracker.test``: certificates never name the root's dot.  (The resolver
    is faked: this machine resolves no such name.)"""
    server, client = _certificates(tmp_path)

    async def main() -> object:
        loop = asyncio.get_running_loop()
        resolve = loop.getaddrinfo

        async def named(host: str, port: int, *args: object, **kwargs: object) -> object:
            return await resolve("127.0.0.1" if host == "tracker.test." else host, port, *args, **kwargs)

        setattr(loop, "getaddrinfo", named)
        return await _announce(_tracker, tls=server, client_tls=client, host="tracker.test.")

    response = asyncio.run(main())
    assert getattr(response, "peers", None) == [("127.0.0.1", 6881)], response


def test_an_https_tracker_whose_certificate_we_do_not_trust_is_an_error(tmp_path: Path) -> None:
    server, _ = _certificates(tmp_path)
    outcome = asyncio.run(_announce(_tracker, tls=server))  # the system's trust store: not our test CA
    assert isinstance(outcome, TrackerError) and "CERTIFICATE_VERIFY_FAILED" in str(outcome)


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\n\r\n", b"garbage\r\n\r\n"])
def test_an_https_tracker_answering_badly_is_an_error(tmp_path: Path, answer: bytes) -> None:
    server, client = _certificates(tmp_path)

    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _answer(reader, writer, answer)

    outcome = asyncio.run(_announce(bad, tls=server, client_tls=client))
    assert isinstance(outcome, TrackerError)


@pytest.mark.parametrize("bind", [(), ("127.0.0.1", "::1")], ids=["unbound", "bound"])
def test_a_tracker_name_whose_first_address_drops_connections_is_reached_at_the_next(bind: tuple[str, ...]) -> None:
    """A common broken dual-stack set-up: the name's IPv6 address takes no connection (here a
    listener whose backlog is full), its IPv4 address answers.  The resolver is the one part faked:
    this machine has no name with two such addresses."""

    async def main() -> object:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(_tracker, "127.0.0.1", 0)
        port4 = server.sockets[0].getsockname()[1]
        hole = socket.socket(socket.AF_INET6)
        hole.bind(("::1", 0))
        hole.listen(0)
        port6 = hole.getsockname()[1]
        filler = socket.socket(socket.AF_INET6)
        filler.connect(("::1", port6))  # fills the backlog: further SYNs are dropped

        async def resolve(host: str, port: int, *args: object, **kwargs: object) -> list[tuple[object, ...]]:
            assert host == "dual.test"
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port6, 0, 0)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port4)),
            ]

        setattr(loop, "getaddrinfo", resolve)
        try:
            return await HttpTracker("http://dual.test/announce", HttpClient("test", bind), timeout=20).announce(_request())
        except TrackerError as exc:
            return exc
        finally:
            server.close()
            hole.close()
            filler.close()

    outcome = asyncio.run(main())
    assert getattr(outcome, "peers", None) == [("127.0.0.1", 6881)], outcome
