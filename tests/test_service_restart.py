"""``pyowtorrent serve`` as a process: libtorrent downloads an upload through the service's tracker, before
and after a restart, and the restart does not re-hash; a kill -9 mid-upload leaves nothing behind; a
tokens file others may read stops it from starting.
"""

from __future__ import annotations

import asyncio
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyowtorrent.metainfo.torrent_file import parse_metainfo

from .conftest import REPO, free_port
from .engine_util import until
from .lt_util import lt_session
from .test_service import TOKEN, payload_zip

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tokens_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# uploaders\n{TOKEN}\n")
    path.chmod(mode)
    return path


class Served:
    """A ``pyowtorrent serve`` process and its base URL."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url


@contextmanager
def serving(tmp_path: Path, port: int, *, stop: signal.Signals = signal.SIGTERM) -> Iterator[Served]:
    """Run the service on ``port`` until the block ends, then send ``stop`` (SIGTERM must exit 0)."""
    log = open(tmp_path / "service.log", "ab")
    cmd = [
        sys.executable, "-m", "pyowtorrent", "serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1",
        "--port", str(port), "--peer-port", "0", "--tokens", str(tokens_file(tmp_path)), "-v",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log)
    try:
        assert proc.stdout is not None
        # It prints one line once it serves: nothing to poll.
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline().decode() if ready else ""
        assert line.startswith("serving"), f"the service did not start: {line!r}; see {tmp_path / 'service.log'}"
        yield Served(proc, line.split(" at ", 1)[1].split()[0])
    finally:
        if proc.poll() is None:
            proc.send_signal(stop)
        code = proc.wait(timeout=30)
        log.close()
    if stop is signal.SIGTERM:
        assert code == 0, (tmp_path / "service.log").read_text()


async def get_json(client: aiohttp.ClientSession, url: str) -> Any:
    async with client.get(url) as resp:
        assert resp.status == 200, url
        return await resp.json()


async def wait_for(client: aiohttp.ClientSession, url: str, predicate: Callable[[Any], bool], what: str) -> Any:
    """Poll a JSON document until ``predicate`` holds (the service's own state, no sleeping in its place)."""
    doc: Any = None

    async def check() -> bool:
        nonlocal doc
        doc = await get_json(client, url)
        return predicate(doc)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not await check():
        assert loop.time() < deadline, f"timed out waiting for {what}: {doc}"
        await asyncio.sleep(0.05)
    return doc


async def lt_leech(torrent: bytes, dest: Path) -> None:
    """libtorrent downloads ``torrent`` from peers alone (its web seeds taken out): peers come from the tracker."""
    import libtorrent as lt

    ses = lt_session()
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = str(dest)
    params.url_seeds = []
    params.flags |= lt.torrent_flags.override_web_seeds
    handle = ses.add_torrent(params)
    assert handle.url_seeds() == []
    try:
        await until(lambda: handle.status().is_seeding, timeout=60, what="libtorrent to finish")
    finally:
        ses.remove_torrent(handle)


def test_libtorrent_downloads_an_upload_through_the_services_tracker_before_and_after_a_restart(tmp_path: Path) -> None:
    data = payload_zip(tmp_path, size=1_500_000, seed=11).read_bytes()
    port = free_port()

    async def upload_and_leech(base: str) -> dict[str, Any]:
        async with aiohttp.ClientSession() as client:
            async with client.put(f"{base}uploads/ds.zip", data=data, headers=AUTH) as resp:
                assert resp.status == 201
                doc: dict[str, Any] = await resp.json()
            async with client.get(doc["torrent_url"]) as resp:
                torrent = await resp.read()
            meta = parse_metainfo(torrent)
            assert meta.trackers == ((f"{base}announce",),) and meta.web_seeds == (f"{base}data/ds.zip",)
            item = f"{base}uploads/ds.zip"
            # The service's seeder is on its tracker before the leecher asks it.
            await wait_for(client, item, lambda d: d["swarm"]["seeders"] == 1, "the service's seeder to announce")
            await lt_leech(torrent, tmp_path / "lt1")
            after = await get_json(client, item)
            assert after["uploaded"] >= len(data)  # from the service's seeder: libtorrent had no web seed
            return doc

    with serving(tmp_path, port) as served:
        before = asyncio.run(upload_and_leech(served.url))
    assert (tmp_path / "lt1" / "ds.zip").read_bytes() == data

    async def seeded_again_and_leech(base: str) -> None:
        async with aiohttp.ClientSession() as client:
            doc = await get_json(client, f"{base}uploads/ds.zip")
            assert doc["info_hash"] == before["info_hash"] and doc["state"] == "seeding" and doc["error"] is None
            assert doc["checked_bytes"] == 0  # the resume data vouched for every piece: nothing re-hashed
            async with client.get(before["torrent_url"]) as resp:
                torrent = await resp.read()
            await wait_for(client, f"{base}uploads/ds.zip", lambda d: d["swarm"]["seeders"] == 1, "the seeder again")
            await lt_leech(torrent, tmp_path / "lt2")

    with serving(tmp_path, port) as served:
        asyncio.run(seeded_again_and_leech(served.url))
    assert (tmp_path / "lt2" / "ds.zip").read_bytes() == data


def test_after_a_kill_mid_upload_the_published_dataset_is_seeded_without_a_rehash_and_the_half_upload_is_gone(
    tmp_path: Path,
) -> None:
    done = payload_zip(tmp_path, "done.zip", 400_000, seed=1).read_bytes()
    half = payload_zip(tmp_path, "half.zip", 400_000, seed=2).read_bytes()
    port = free_port()
    tmp_dir = tmp_path / "data" / ".pyowtorrent" / "tmp"

    async def upload_then_kill(served: Served) -> None:
        async with aiohttp.ClientSession() as client:
            async with client.put(f"{served.url}uploads/done.zip", data=done, headers=AUTH) as resp:
                assert resp.status == 201

            async def held() -> Any:
                yield half[:100_000]
                await asyncio.Event().wait()  # the rest never comes

            put = asyncio.ensure_future(client.put(f"{served.url}uploads/half.zip", data=held(), headers=AUTH))
            await until(lambda: any(tmp_dir.iterdir()), what="the second upload to reach a file")
            served.proc.kill()  # mid-upload, before the client goes
            served.proc.wait()
            put.cancel()

    with serving(tmp_path, port, stop=signal.SIGKILL) as served:
        asyncio.run(upload_then_kill(served))
    assert any(tmp_dir.iterdir())  # the kill left the half upload

    async def check(base: str) -> None:
        async with aiohttp.ClientSession() as client:
            listed = {d["name"]: d for d in (await get_json(client, f"{base}uploads"))["uploads"]}
            assert set(listed) == {"done.zip"}
            assert listed["done.zip"]["state"] == "seeding" and listed["done.zip"]["checked_bytes"] == 0
            async with client.get(f"{base}data/done.zip") as resp:
                assert await resp.read() == done

    with serving(tmp_path, port) as served:
        asyncio.run(check(served.url))
        assert list(tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tokens", "TOKENS_0644", "--listen", "127.0.0.1"], "chmod 600"),
        (["--listen", "0.0.0.0", "--public-url", "http://x.org/", "--allow-anonymous-uploads"], "loopback"),
        (["--private-reads", "--listen", "127.0.0.1"], "--tokens"),
        (["--public-url", "ftp://example.org/"], "--public-url"),
        ([], "--public-url"),  # all addresses, and no URL to put in the torrents
    ],
)
def test_a_configuration_that_is_unsafe_or_cannot_work_stops_the_service_from_starting(
    tmp_path: Path, args: list[str], message: str
) -> None:
    loose = tokens_file(tmp_path, 0o644)
    args = [str(loose) if a == "TOKENS_0644" else a for a in args]
    cmd = [sys.executable, "-m", "pyowtorrent", "serve", "--data", str(tmp_path / "data"), "--port", "0", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("error: ") and message in proc.stderr.decode()
    assert b"serving" not in proc.stdout
