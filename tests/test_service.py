"""The upload service (pyowtorrent serve), in-process on loopback, through aiohttp's client: the whole flow.

Uploads (raw and multipart) answer 201 with the dataset; its .torrent parses and carries the service's
tracker and web seed; the list shows it seeding; the web seed answers byte ranges; a pyowtorrent
leecher fed by the web seed alone gets it byte-exact; tokens, replace and delete.  Bad input is in
test_service_bad_input.py; restarts and libtorrent leechers through the tracker in
test_service_restart.py.  The helpers here are shared by both.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pyowtorrent.engine.session import Session
from pyowtorrent.metainfo.torrent_file import Metainfo, parse_metainfo
from pyowtorrent.service.app import ServiceConfig, UploadService
from pyowtorrent.service.auth import Tokens
from pyowtorrent.storage.create import create_torrent
from pyowtorrent.storage.verifier import verify_payload

from .engine_util import make_zip, until

TOKEN = "test-token-0123456789abcdef"
OTHER_TOKEN = "another-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **overrides: Any) -> AsyncIterator[UploadService]:
    """The service on 127.0.0.1, free ports, data in ``tmp_path/data``, writes for ``TOKEN``."""
    options: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "listen": ["127.0.0.1"],
        "port": 0,
        "peer_port": 0,
        "tokens": Tokens([TOKEN, OTHER_TOKEN]),
    }
    options.update(overrides)
    service = UploadService(ServiceConfig(**options))
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def payload_zip(tmp_path: Path, name: str = "ds.zip", size: int = 300_000, seed: int = 1) -> Path:
    """A real zip of about ``size`` bytes (members stored, random bytes)."""
    return make_zip(tmp_path / "src" / name, {"worm/a.bin": size // 2, "worm/b.bin": size - size // 2}, seed)


def state_of(service: UploadService) -> tuple[list[str], list[str], list[bytes], list[str]]:
    """Everything an upload could leave behind: files under the data directory, the catalog, seeding, reservations.

    The seeding session's own resume writes (a temporary file renamed over the resume file) come and
    go by themselves: they are left out.
    """
    files = sorted(
        str(p.relative_to(service.paths.data))
        for p in service.paths.data.rglob("*")
        if p.is_file() and not (p.parent == service.paths.resume and p.name.endswith(".tmp"))
    )
    return (
        files,
        [d.name for d in service.catalog],
        sorted(service.session.torrents),
        sorted(service.reservations.receiving()),
    )


@contextlib.contextmanager
def service_log() -> Iterator[list[logging.LogRecord]]:
    """The service's log records while the block runs (a handler of its own: the CLI may stop propagation)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("pyowtorrent.service")
    handler, level = Keep(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def logged(records: list[logging.LogRecord], *words: str) -> bool:
    return any(all(w in r.getMessage() for w in words) for r in records)


async def put(client: aiohttp.ClientSession, service: UploadService, name: str, data: Any, **kw: Any) -> tuple[int, Any]:
    headers = kw.pop("headers", AUTH)
    async with client.put(f"{service.public_url}uploads/{name}", data=data, headers=headers, **kw) as resp:
        return resp.status, await resp.json()


async def post_form(
    client: aiohttp.ClientSession, service: UploadService, filename: str, data: bytes, query: str = "", **kw: Any
) -> tuple[int, Any]:
    form = aiohttp.FormData(quote_fields=False)  # the file name as a browser sends it, not percent-encoded
    form.add_field("file", data, filename=filename, content_type="application/zip")
    headers = kw.pop("headers", AUTH)
    async with client.post(f"{service.public_url}uploads{query}", data=form, headers=headers, **kw) as resp:
        return resp.status, await resp.json()


async def get_torrent(client: aiohttp.ClientSession, doc: dict[str, Any]) -> Metainfo:
    async with client.get(doc["torrent_url"]) as resp:
        assert resp.status == 200 and resp.content_type == "application/x-bittorrent"
        return parse_metainfo(await resp.read())


async def listing(client: aiohttp.ClientSession, service: UploadService, **kw: Any) -> dict[str, dict[str, Any]]:
    async with client.get(f"{service.public_url}uploads", **kw) as resp:
        assert resp.status == 200
        return {d["name"]: d for d in (await resp.json())["uploads"]}


# -- the whole flow -------------------------------------------------------------------------


def test_a_raw_upload_is_published_torrent_listing_web_seed_and_payload_all_agree(tmp_path: Path) -> None:
    src = payload_zip(tmp_path)
    data = src.read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            status, doc = await put(client, service, "ds.zip", data)
            assert status == 201
            info_hash = doc["info_hash"]
            assert doc["name"] == "ds.zip" and doc["size"] == len(data) and doc["replaced"] is False
            assert doc["sha256"] == hashlib.sha256(data).hexdigest()
            assert doc["torrent_url"] == f"{service.public_url}torrents/{info_hash}.torrent"
            assert doc["magnet"].startswith(f"magnet:?xt=urn:btih:{info_hash}")
            assert doc["state"] == "seeding" and doc["checked_bytes"] == 0  # seeding without a recheck

            meta = await get_torrent(client, doc)
            assert meta.info_hash.hex() == info_hash and meta.name == "ds.zip" and meta.total_length == len(data)
            assert meta.trackers == ((f"{service.public_url}announce",),)
            assert meta.web_seeds == (f"{service.public_url}data/ds.zip",)
            # Hashed while received, the torrent is the one create_torrent makes of the file.
            assert meta.info_hash == create_torrent(src).info_hash
            assert verify_payload(meta, service.paths.payload("ds.zip")).ok
            assert service.paths.payload("ds.zip").read_bytes() == data

            listed = await listing(client, service)
            assert set(listed) == {"ds.zip"}
            entry = listed["ds.zip"]
            assert entry["info_hash"] == info_hash and entry["size"] == len(data) and entry["state"] == "seeding"
            assert {"peers", "uploaded", "upload_rate", "swarm", "trackers", "magnet", "web_seed_url"} <= set(entry)
            async with client.get(f"{service.public_url}uploads/ds.zip") as resp:
                assert resp.status == 200 and (await resp.json())["info_hash"] == info_hash
            async with client.get(f"{service.public_url}healthz") as resp:
                health = await resp.json()
                assert resp.status == 200 and health["status"] == "ok" and health["seeding"] == 1

            # The web seed: the payload over HTTP, whole and in byte ranges.
            async with client.get(doc["web_seed_url"]) as resp:
                assert resp.status == 200 and await resp.read() == data
            # The service's own seeder announced to the service's own tracker.
            await until(lambda: len(service.tracker.peers(meta.info_hash)) == 1, what="the seeder's announce")

    asyncio.run(main())


def test_a_multipart_upload_is_named_after_its_file_and_makes_the_same_torrent(tmp_path: Path) -> None:
    src = payload_zip(tmp_path, "form.zip", 100_000)
    data = src.read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            status, doc = await post_form(client, service, "form.zip", data)
            assert status == 201 and doc["name"] == "form.zip" and doc["size"] == len(data)
            meta = await get_torrent(client, doc)
            assert meta.info_hash == create_torrent(src).info_hash
            assert service.paths.payload("form.zip").read_bytes() == data
            # ?name= names it instead of the file's name.
            status, doc = await post_form(client, service, "form.zip", data, "?name=renamed.zip")
            assert status == 201 and doc["name"] == "renamed.zip"
            assert set(await listing(client, service)) == {"form.zip", "renamed.zip"}

    asyncio.run(main())


def test_a_body_of_unknown_length_is_hashed_at_two_lengths_and_gets_the_one_its_size_wants(tmp_path: Path) -> None:
    src = payload_zip(tmp_path, size=700_000)
    data = src.read_bytes()

    async def chunks() -> AsyncIterator[bytes]:
        for at in range(0, len(data), 65536):
            yield data[at : at + 65536]

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            status, doc = await put(client, service, "ds.zip", chunks())  # chunked: no Content-Length
            assert status == 201 and doc["size"] == len(data) and doc["piece_length"] == 256 << 10
            meta = await get_torrent(client, doc)
            assert meta.info_hash == create_torrent(src, piece_length=256 << 10).info_hash

    asyncio.run(main())


def test_torrents_carry_the_extra_trackers_and_web_seed_bases(tmp_path: Path) -> None:
    data = payload_zip(tmp_path, "a b.zip").read_bytes()

    async def main() -> None:
        async with running(
            tmp_path,
            trackers=["udp://tracker.example.org:6969/announce"],
            web_seed_bases=["https://mirror.example.org/datasets"],
        ) as service, aiohttp.ClientSession() as client:
            status, doc = await put(client, service, "a%20b.zip", data)
            assert status == 201 and doc["name"] == "a b.zip"
            meta = await get_torrent(client, doc)
            assert meta.trackers == ((f"{service.public_url}announce",), ("udp://tracker.example.org:6969/announce",))
            assert meta.web_seeds == (
                f"{service.public_url}data/a%20b.zip",
                "https://mirror.example.org/datasets/a%20b.zip",
            )
            async with client.get(f"{service.public_url}data/a%20b.zip") as resp:
                assert resp.status == 200 and await resp.read() == data

    asyncio.run(main())


def test_the_web_seed_answers_byte_ranges_with_206(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            _, doc = await put(client, service, "ds.zip", data)
            url = doc["web_seed_url"]
            for header, start, end in (("bytes=100-199", 100, 200), ("bytes=-10", len(data) - 10, len(data)), ("bytes=299990-", 299990, len(data))):
                async with client.get(url, headers={"Range": header}) as resp:
                    assert resp.status == 206
                    assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
                    assert await resp.read() == data[start:end]
            async with client.head(url) as resp:
                assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(data)
                assert resp.headers["Accept-Ranges"] == "bytes"
            async with client.get(url, headers={"Range": f"bytes={len(data)}-"}) as resp:
                assert resp.status == 416
            async with client.get(f"{service.public_url}data/nothing.zip") as resp:
                assert resp.status == 404 and (await resp.json())["code"] == "not_found"

    asyncio.run(main())


def test_a_pyowtorrent_leecher_fed_by_the_services_web_seed_alone_is_byte_exact(tmp_path: Path) -> None:
    data = payload_zip(tmp_path, size=1_000_000, seed=7).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            _, doc = await put(client, service, "ds.zip", data)
            meta = await get_torrent(client, doc)
            async with Session(listen="127.0.0.1") as leecher:
                torrent = await leecher.add_torrent(meta, tmp_path / "got", trackers=[])  # no tracker: no peers
                await torrent.wait_done(timeout=60)
                (seed,) = torrent.status().web_seeds
                assert seed.url == doc["web_seed_url"] and seed.downloaded == len(data) and not seed.dropped
                assert torrent.status().num_peers == 0
        assert (tmp_path / "got" / "ds.zip").read_bytes() == data

    asyncio.run(main())


# -- tokens --------------------------------------------------------------------------------


def test_writes_need_a_token_from_the_file(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            before = state_of(service)
            status, doc = await put(client, service, "ds.zip", data, headers={})
            assert status == 401 and doc["code"] == "token_required"
            async with client.put(f"{service.public_url}uploads/ds.zip", data=data) as resp:
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            status, doc = await put(client, service, "ds.zip", data, headers={"Authorization": "Basic dXNlcjpwYXNz"})
            assert status == 401
            status, doc = await put(client, service, "ds.zip", data, headers={"Authorization": f"Bearer {TOKEN}x"})
            assert status == 403 and doc["code"] == "token_refused"
            status, _ = await post_form(client, service, "ds.zip", data, headers={})
            assert status == 401
            assert state_of(service) == before
            # Any token of the file, the scheme in any case.
            status, _ = await put(client, service, "ds.zip", data, headers={"Authorization": f"bearer {OTHER_TOKEN}"})
            assert status == 201
            for headers, wanted in (({}, 401), ({"Authorization": "Bearer wrong-token-0123456789"}, 403)):
                async with client.delete(f"{service.public_url}uploads/ds.zip", headers=headers) as resp:
                    assert resp.status == wanted
            assert "ds.zip" in service.catalog
            # Reads are public by default.
            assert set(await listing(client, service)) == {"ds.zip"}

    asyncio.run(main())


def test_without_tokens_the_service_takes_no_uploads_and_anonymous_ones_only_on_loopback(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path, tokens=None) as service, aiohttp.ClientSession() as client:
            status, doc = await put(client, service, "ds.zip", data, headers=AUTH)
            assert status == 403 and doc["code"] == "read_only"
        async with running(tmp_path, tokens=None, allow_anonymous_uploads=True) as service, aiohttp.ClientSession() as client:
            status, _ = await put(client, service, "ds.zip", data, headers={})
            assert status == 201

    asyncio.run(main())
    from pyowtorrent.errors import PyowtorrentError

    with pytest.raises(PyowtorrentError, match="loopback"):
        UploadService(
            ServiceConfig(
                data_dir=tmp_path, listen=["0.0.0.0"], public_url="http://x.org/", allow_anonymous_uploads=True
            )
        )
    with pytest.raises(PyowtorrentError, match="--tokens"):
        UploadService(ServiceConfig(data_dir=tmp_path, listen=["127.0.0.1"], private_reads=True))


def test_private_reads_gate_the_catalog_and_torrents_but_not_the_web_seed_or_tracker(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path, private_reads=True) as service, aiohttp.ClientSession() as client:
            _, doc = await put(client, service, "ds.zip", data)
            for url in (f"{service.public_url}uploads", f"{service.public_url}uploads/ds.zip", doc["torrent_url"]):
                async with client.get(url) as resp:
                    assert resp.status == 401, url
                async with client.get(url, headers={"Authorization": "Bearer not-a-token-0123456789"}) as resp:
                    assert resp.status == 403, url
                async with client.get(url, headers=AUTH) as resp:
                    assert resp.status == 200, url
            # BitTorrent clients send no token: the web seed, the tracker and the health check stay open.
            async with client.get(doc["web_seed_url"]) as resp:
                assert resp.status == 200
            async with client.get(f"{service.public_url}healthz") as resp:
                assert resp.status == 200
            async with client.get(f"{service.public_url}scrape") as resp:
                assert resp.status == 200

    asyncio.run(main())


def test_the_tokens_file_rules(tmp_path: Path) -> None:
    from pyowtorrent.service.auth import Access, TokensError

    path = tmp_path / "tokens"
    path.write_text(f"# the maintainers\n{TOKEN}   # alice\n\n  {OTHER_TOKEN}\n")
    path.chmod(0o644)
    with pytest.raises(TokensError, match="chmod 600"):
        Tokens.load(path)
    path.chmod(0o600)
    tokens = Tokens.load(path)
    assert len(tokens) == 2
    assert tokens.check(f"Bearer {TOKEN}") is Access.GRANTED and tokens.check(f"Bearer {OTHER_TOKEN}") is Access.GRANTED
    assert tokens.check(None) is Access.NO_TOKEN and tokens.check("Bearer") is Access.NO_TOKEN
    assert tokens.check(f"Bearer {TOKEN[:-1]}") is Access.WRONG_TOKEN
    # Revoking: the line goes, a reload takes effect; a broken file keeps the tokens in force.
    path.write_text(f"{OTHER_TOKEN}\n")
    assert tokens.reload() and tokens.check(f"Bearer {TOKEN}") is Access.WRONG_TOKEN
    path.write_text("short\n")
    assert not tokens.reload() and tokens.check(f"Bearer {OTHER_TOKEN}") is Access.GRANTED
    for text, rule in (("# nothing\n", "no tokens"), ("two tokens-0123456789abc\n", "no spaces"), ("short\n", "at least")):
        path.write_text(text)
        with pytest.raises(TokensError, match=rule):
            Tokens.load(path)


# -- replace, delete -----------------------------------------------------------------------


def test_replace_publishes_the_new_payload_under_the_name_and_forgets_the_old_torrent(tmp_path: Path) -> None:
    first = payload_zip(tmp_path, seed=1).read_bytes()
    second = payload_zip(tmp_path, size=200_000, seed=2).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            _, old = await put(client, service, "ds.zip", first)
            status, doc = await put(client, service, "ds.zip", second, params={"replace": "1"})
            assert status == 201 and doc["replaced"] is True and doc["info_hash"] != old["info_hash"]
            assert service.paths.payload("ds.zip").read_bytes() == second
            async with client.get(old["torrent_url"]) as resp:
                assert resp.status == 404
            meta = await get_torrent(client, doc)
            assert verify_payload(meta, service.paths.payload("ds.zip")).ok
            assert sorted(service.session.torrents) == [meta.info_hash]
            assert [p.name for p in service.paths.torrents.iterdir()] == [f"{doc['info_hash']}.torrent"]
            resume = [p.name for p in service.paths.resume.iterdir() if not p.name.endswith(".tmp")]  # see state_of
            assert resume == [f"{doc['info_hash']}.resume.json"]
            listed = await listing(client, service)
            assert listed["ds.zip"]["info_hash"] == doc["info_hash"] and listed["ds.zip"]["state"] == "seeding"
            assert listed["ds.zip"]["checked_bytes"] == 0

    asyncio.run(main())


def test_delete_stops_seeding_and_removes_the_payload_torrent_and_resume_data(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            _, keep = await put(client, service, "keep.zip", data)
            empty = state_of(service)
            _, doc = await put(client, service, "ds.zip", data)
            async with client.delete(f"{service.public_url}uploads/ds.zip", headers=AUTH) as resp:
                assert resp.status == 200
                assert await resp.json() == {"name": "ds.zip", "info_hash": doc["info_hash"], "deleted": True}
            assert state_of(service)[0] == empty[0]  # same files as before it came
            assert sorted(service.session.torrents) == [bytes.fromhex(keep["info_hash"])]
            assert service.tracker.allowed_info_hashes == frozenset([bytes.fromhex(keep["info_hash"])])
            assert set(await listing(client, service)) == {"keep.zip"}
            for url in (doc["torrent_url"], doc["web_seed_url"], f"{service.public_url}uploads/ds.zip"):
                async with client.get(url) as resp:
                    assert resp.status == 404, url
            async with client.delete(f"{service.public_url}uploads/ds.zip", headers=AUTH) as resp:
                assert resp.status == 404 and (await resp.json())["code"] == "not_found"
            # The name is free again.
            status, _ = await put(client, service, "ds.zip", data)
            assert status == 201

    asyncio.run(main())


def test_errors_are_json_even_for_unknown_routes_and_methods(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            async with client.get(f"{service.public_url}no/such/thing") as resp:
                assert resp.status == 404 and (await resp.json())["status"] == 404
            async with client.patch(f"{service.public_url}uploads") as resp:
                assert resp.status == 405 and "POST" in resp.headers["Allow"] and (await resp.json())["status"] == 405
            async with client.get(f"{service.public_url}torrents/{'0' * 40}.torrent") as resp:
                assert resp.status == 404 and (await resp.json())["code"] == "not_found"
            async with client.get(service.public_url) as resp:
                assert resp.status == 200 and resp.content_type == "text/html"

    asyncio.run(main())


def test_many_datasets_in_a_row_each_verify(tmp_path: Path) -> None:
    rng = random.Random(9)

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            for i in range(5):
                data = payload_zip(tmp_path, f"d{i}.zip", rng.randrange(20_000, 200_000), seed=i).read_bytes()
                status, doc = await put(client, service, f"d{i}.zip", data)
                assert status == 201
                meta = await get_torrent(client, doc)
                assert verify_payload(meta, service.paths.payload(f"d{i}.zip")).ok
            assert len(await listing(client, service)) == 5

    asyncio.run(main())
