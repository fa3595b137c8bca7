"""Network namespaces for the tests whose peers need addresses of their own, the programs run in them, and what a tracker knows.

Transmission ignores peers on 127.0.0.0/8 that a tracker hands out, and a test
of which source address our traffic leaves from needs addresses the kernel
would not pick by itself.  So these tests run in a network namespace of their
own (``ip netns add``; CI runs the suite as root, and Debian's ``iproute2``
has ``ip``): its loopback is up and holds a few 10.x addresses, one per peer
(``ip addr add 10.x.y.z/32 dev lo``).  Every address is local to the
namespace, so any two of them reach each other over its loopback, and
nothing of the host's network is touched; the namespace's ports are its own,
so fixed port numbers are free.

How the test gets inside: :meth:`Namespace.run` runs a coroutine on an event
loop in a thread that first joins the namespace (``setns(2)`` through ctypes:
``os.setns`` is Python 3.12's).  A namespace belongs to a thread, and what
that thread creates inherits it: every socket the loop opens (our session's,
aiohttp's, the test's own), the loop's worker threads, and the programs it
starts (opentracker, transmission-daemon).  So our engine runs in-process, as
in the loopback tests, and the test reads its state directly.  When the
namespace is deleted, whatever still runs in it is killed by process id.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pyowtorrent.engine.net import TcpNetwork, source_addresses
from pyowtorrent.engine.services import TorrentSettings
from pyowtorrent.engine.session import Session
from pyowtorrent.engine.http_client import HttpClient
from pyowtorrent.engine.trackers import HttpTracker
from pyowtorrent.tracker.http_codec import AnnounceRequest

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000


def ip_tool() -> str:
    binary = shutil.which("ip")
    if binary is None:
        pytest.fail("'ip' is not installed: the test command installs it (Debian package 'iproute2')")
    return binary


def _ip(*args: str) -> None:
    done = subprocess.run([ip_tool(), *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(
            f"'ip {' '.join(args)}' failed ({done.stderr.strip()}): these tests make a network namespace, "
            "which needs root (CI runs the suite as root)"
        )


class Namespace:
    """A network namespace whose loopback is up and holds ``addresses``; deleted on leaving a ``with``."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.name = f"pyowt-{os.getpid()}-{secrets.token_hex(4)}"
        self.addresses = list(addresses)
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            for address in self.addresses:
                _ip("-n", self.name, "addr", "add", f"{address}/32", "dev", "lo")
        except BaseException:
            self.delete()
            raise

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def run(self, main: Callable[[], Awaitable[T]], timeout: float) -> T:
        """``main()`` on a fresh event loop inside the namespace; its result, or what it raised."""
        outcome: dict[str, Any] = {}

        def body() -> None:
            try:
                self._enter()

                async def bounded() -> T:
                    return await asyncio.wait_for(main(), timeout)

                outcome["result"] = asyncio.run(bounded())
            except BaseException as exc:  # handed to the calling thread
                outcome["error"] = exc

        thread = threading.Thread(target=body, name=f"netns {self.name}")
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["result"]  # type: ignore[no-any-return]

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns into {self.name}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def delete(self) -> None:
        """Kill what still runs in the namespace (programs a failed test left), then delete it."""
        pids = subprocess.run([ip_tool(), "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run([ip_tool(), "netns", "del", self.name], capture_output=True)


# -- our session, as `pyowtorrent --listen ADDR [--announce-ip IP]` makes it --------------


@dataclasses.dataclass(frozen=True)
class _Settings(TorrentSettings):
    announce_ip: str | None = None
    source_addresses: tuple[str, ...] = ()


class _BoundSession(Session):
    """What session.py does once it passes the listen addresses on (issue 12's lines in session.py).

    Outgoing connections through ``TcpNetwork(bind=...)``, HTTP announces through
    an :class:`HttpClient` bound to them, UDP announces and ``ip=`` through the settings.
    """

    def __init__(self, *, listen: str | Sequence[str], announce_ip: str | None = None, **kwargs: Any) -> None:
        sources = source_addresses([listen] if isinstance(listen, str) else listen)
        super().__init__(listen=listen, network=TcpNetwork(bind=sources), **kwargs)
        fields = {f.name: getattr(self.settings, f.name) for f in dataclasses.fields(TorrentSettings)}
        fields.update(announce_ip=announce_ip, source_addresses=sources)
        self.settings = _Settings(**fields)
        self.http = HttpClient(self.settings.client_name, sources)


def session_on(listen: str, *, announce_ip: str | None = None, **kwargs: Any) -> Session:
    """A session listening on ``listen`` whose traffic leaves from it (and that announces ``announce_ip``).

    Once ``Session`` takes ``announce_ip`` (session.py's part of issue 12), this
    is just ``Session(listen=..., announce_ip=...)``, so these tests check the
    session's own wiring; until then a subclass does what those lines will.
    """
    import inspect

    if "announce_ip" in inspect.signature(Session).parameters:
        return Session(listen=listen, announce_ip=announce_ip, **kwargs)  # type: ignore[call-arg,unused-ignore]
    return _BoundSession(listen=listen, announce_ip=announce_ip, **kwargs)


# -- programs run inside a namespace -----------------------------------------------------


async def wait_for_port(host: str, port: int, proc: asyncio.subprocess.Process, what: str, timeout: float = 10.0) -> None:
    """Until ``host:port`` accepts a TCP connection; fail if ``proc`` exits first or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if proc.returncode is not None or loop.time() > deadline:
                out = b""
                if proc.returncode is not None and proc.stdout is not None:
                    out = await proc.stdout.read()
                raise AssertionError(f"{what} did not start (exit {proc.returncode}): {out.decode(errors='replace')}") from None
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


async def stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 10 s; waits for it either way."""
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def start_opentracker(home: Path, info_hashes: Sequence[bytes], host: str, port: int = 6969) -> asyncio.subprocess.Process:
    """Debian's opentracker on ``host``, HTTP and UDP on ``port``, tracking ``info_hashes`` (its whitelist).

    As tests/conftest.py's fixture, but started from inside a namespace: it
    chroots into ``home``, so the whitelist's path is relative to it.
    """
    binary = shutil.which("opentracker")
    if binary is None:
        pytest.fail("opentracker is not installed: the test command installs it (Debian package 'opentracker')")
    home.mkdir(parents=True)
    home.chmod(0o755)
    (home / "whitelist.txt").write_text("".join(h.hex() + "\n" for h in info_hashes))
    (home / "opentracker.conf").write_text("access.whitelist whitelist.txt\n")
    proc = await asyncio.create_subprocess_exec(
        binary, "-f", str(home / "opentracker.conf"), "-i", host, "-p", str(port), "-P", str(port),
        "-d", str(home), "-u", "nobody",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    await wait_for_port(host, port, proc, "opentracker")
    return proc


# -- Transmission ---------------------------------------------------------------------------

# transmission-daemon's status numbers (RPC spec, Transmission 3).
TR_CHECKING, TR_SEEDING = 2, 6


def transmission_daemon() -> str:
    binary = shutil.which("transmission-daemon")
    if binary is None:
        pytest.fail("transmission-daemon is not installed: the test command installs it (Debian package 'transmission-daemon')")
    return binary


class Transmission:
    """A transmission-daemon of its own (config dir ``home``), driven over its JSON RPC.

    It listens for peers on ``address`` (``bind-address-ipv4``, which its
    outgoing connections and announces leave from too) and for RPC on the
    namespace's 127.0.0.1.  DHT, local peer discovery, PEX, uTP and port
    mapping are off: peers come from the tracker alone.  Encryption is left
    at its default, "preferred".
    """

    RPC_PORT = 9091
    PEER_PORT = 51413

    def __init__(self, home: Path, address: str) -> None:
        self.home = home
        self.address = address
        self.proc: asyncio.subprocess.Process | None = None
        self._session_id = ""
        self._http: Any = None

    async def start(self) -> None:
        import aiohttp

        self.home.mkdir(parents=True, exist_ok=True)
        settings = {
            "bind-address-ipv4": self.address,
            "bind-address-ipv6": "::1",
            "peer-port": self.PEER_PORT,
            "peer-port-random-on-start": False,
            "port-forwarding-enabled": False,
            "dht-enabled": False,
            "lpd-enabled": False,
            "pex-enabled": False,
            "utp-enabled": False,
            "blocklist-enabled": False,
            "rpc-enabled": True,
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": self.RPC_PORT,
            "rpc-authentication-required": False,
            "rpc-whitelist-enabled": False,
            "rpc-host-whitelist-enabled": False,
            "download-dir": str(self.home / "downloads"),
            "incomplete-dir-enabled": False,
            "rename-partial-files": False,
            "watch-dir-enabled": False,
            "start-added-torrents": True,
            "download-queue-enabled": False,
            "seed-queue-enabled": False,
            "queue-stalled-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "speed-limit-down-enabled": False,
            "speed-limit-up-enabled": False,
        }
        (self.home / "settings.json").write_text(json.dumps(settings, indent=1))
        self.proc = await asyncio.create_subprocess_exec(
            transmission_daemon(), "-f", "-g", str(self.home), "-e", str(self.home / "transmission.log"), "--log-info",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        await wait_for_port("127.0.0.1", self.RPC_PORT, self.proc, "transmission-daemon")
        self._http = aiohttp.ClientSession()

    async def rpc(self, method: str, **arguments: Any) -> dict[str, Any]:
        """One RPC call; the X-Transmission-Session-Id handshake (a 409 names the id) is done here."""
        url = f"http://127.0.0.1:{self.RPC_PORT}/transmission/rpc"
        body = {"method": method, "arguments": arguments}
        for _ in range(2):
            async with self._http.post(url, json=body, headers={"X-Transmission-Session-Id": self._session_id}) as resp:
                if resp.status == 409:
                    self._session_id = resp.headers["X-Transmission-Session-Id"]
                    continue
                assert resp.status == 200, f"transmission RPC {method}: HTTP {resp.status}"
                answer: dict[str, Any] = await resp.json(content_type=None)
                assert answer.get("result") == "success", f"transmission RPC {method}: {answer}"
                return dict(answer.get("arguments", {}))
        raise AssertionError(f"transmission RPC {method}: no session id")

    async def add(self, torrent: Path, download_dir: Path) -> int:
        """Add ``torrent`` (its files in, or to go to, ``download_dir``); its id."""
        import base64

        args = await self.rpc(
            "torrent-add", metainfo=base64.b64encode(torrent.read_bytes()).decode(), **{"download-dir": str(download_dir)}
        )
        added = args.get("torrent-added") or args.get("torrent-duplicate")
        assert added, f"transmission did not add {torrent}: {args}"
        return int(added["id"])

    async def torrent(self, tid: int) -> dict[str, Any]:
        fields = ["status", "percentDone", "leftUntilDone", "error", "errorString", "peersConnected", "uploadedEver"]
        args = await self.rpc("torrent-get", ids=[tid], fields=fields)
        (info,) = args["torrents"]
        return dict(info)

    async def wait(self, tid: int, done: Callable[[dict[str, Any]], bool], what: str, timeout: float) -> dict[str, Any]:
        """Poll torrent ``tid`` until ``done`` says so; fail on its error or after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = await self.torrent(tid)
            assert not info["error"], f"transmission: {info['errorString']}"
            if done(info):
                return info
            if loop.time() > deadline:
                raise AssertionError(f"transmission: not {what} after {timeout:g} s: {info}\n{self.log()}")
            await asyncio.sleep(0.1)

    def log(self) -> str:
        path = self.home / "transmission.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self.proc is not None:
            await stop(self.proc)


# -- what a tracker knows -------------------------------------------------------------------


async def swarm_counts(announce_url: str, info_hash: bytes) -> tuple[int, int]:
    """The tracker's (seeders, leechers) for ``info_hash``, by a scrape (which adds no peer)."""
    result = await HttpTracker(announce_url, HttpClient("test"), timeout=5).scrape(info_hash)
    assert result is not None, f"{announce_url} has no scrape URL"
    return result.complete or 0, result.incomplete or 0


async def wait_for_swarm(
    announce_url: str, info_hash: bytes, enough: Callable[[int, int], bool], what: str, timeout: float = 20.0
) -> None:
    """Scrape until ``enough(seeders, leechers)``: a client has announced before the next one starts."""
    from pyowtorrent.errors import TrackerError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            counts: tuple[int, int] | str = await swarm_counts(announce_url, info_hash)
        except TrackerError as exc:  # opentracker: no entry at all for a torrent without peers
            counts = str(exc)
        if not isinstance(counts, str) and enough(*counts):
            return
        if loop.time() > deadline:
            raise AssertionError(f"the tracker never had {what}: (seeders, leechers) = {counts}")
        await asyncio.sleep(0.1)


async def tracker_peers(announce_url: str, info_hash: bytes) -> list[tuple[str, int]]:
    """The peers the tracker hands out for ``info_hash``, asked by an announce from an observer at port 1."""
    req = AnnounceRequest(
        info_hash=info_hash, peer_id=b"-OBSERVER-" + secrets.token_bytes(10), port=1, uploaded=0, downloaded=0, left=1, numwant=200
    )
    resp = await HttpTracker(announce_url, HttpClient("test"), timeout=5).announce(req)
    return [(host, port) for host, port in resp.peers if port != 1]
