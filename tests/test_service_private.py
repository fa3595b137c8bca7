"""The upload service's private mode (issue 11, "Restricted access"): private datasets and per-user passkeys.

In-process on loopback through aiohttp's client (helpers from test_service.py), plus ``pyowtorrent serve``
as a process for SIGHUP and the start-up checks.  A private upload makes a BEP 27 torrent; each user's
copy carries the user's passkey in its tracker and web seed URLs and has the same info-hash; the
embedded tracker, the web seed and the .torrent answer only a passkey in force; revoking a passkey
(DELETE /passkeys/{user}, or a hand edit and SIGHUP) takes effect at once.  A pyowtorrent leecher and
a libtorrent leecher download with a user's .torrent; once the passkey is revoked a new libtorrent
leecher is refused by the tracker and is given no peers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import aiohttp
import pytest
from yarl import URL

from pyowtorrent.engine.session import Session
from pyowtorrent.metainfo.bencoding import decode, encode
from pyowtorrent.metainfo.torrent_file import Metainfo, load_metainfo, parse_metainfo
from pyowtorrent.service.app import UploadService
from pyowtorrent.service.passkeys import UNKNOWN_PASSKEY, Passkeys, PasskeysError, redact
from pyowtorrent.service.tracker import PRIVATE_TORRENT
from pyowtorrent.storage.create import create_torrent

from .conftest import REPO, free_port
from .engine_util import until
from .test_service import AUTH, listing, payload_zip, post_form, put, running
from .test_service_restart import serving

# -- helpers ---------------------------------------------------------------------------------------


async def issue(client: aiohttp.ClientSession, service: UploadService, user: str, **params: str) -> dict[str, Any]:
    """A passkey for ``user`` through the admin API (a token holder's request)."""
    async with client.post(f"{service.public_url}passkeys", params={"user": user, **params}, headers=AUTH) as resp:
        doc: dict[str, Any] = await resp.json()
        assert resp.status == 201, doc
        return doc


async def revoke(client: aiohttp.ClientSession, service: UploadService, user: str) -> None:
    async with client.delete(f"{service.public_url}passkeys/{user}", headers=AUTH) as resp:
        assert resp.status == 200 and await resp.json() == {"user": user, "revoked": True}


async def fetch(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, bytes]:
    async with client.get(url, **kw) as resp:
        return resp.status, await resp.read()


async def error_code(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with client.get(url, **kw) as resp:
        return resp.status, (await resp.json())["code"]


async def users_torrent(client: aiohttp.ClientSession, doc: dict[str, Any], passkey: str) -> bytes:
    status, body = await fetch(client, doc["torrent_url"], params={"pk": passkey})
    assert status == 200
    return body


def query(**fields: bytes | str | int) -> str:
    """An announce or scrape query string, the info-hash and peer id escaped byte by byte."""
    return "&".join(
        f"{k}={quote_from_bytes(v, safe='') if isinstance(v, bytes) else v}" for k, v in fields.items()
    )


async def tracker_get(client: aiohttp.ClientSession, url: str, q: str) -> dict[bytes, Any]:
    """A tracker's bencoded answer (always HTTP 200: a refusal is a ``failure reason``)."""
    async with client.get(URL(f"{url}{'&' if '?' in url else '?'}{q}", encoded=True)) as resp:
        assert resp.status == 200
        answer: dict[bytes, Any] = decode(await resp.read())
        return answer


async def announce(
    client: aiohttp.ClientSession, url: str, info_hash: bytes, peer_id: bytes, port: int
) -> dict[bytes, Any]:
    """A leecher's ``started`` announce at ``url`` (which may hold ``?pk=``)."""
    q = query(info_hash=info_hash, peer_id=peer_id, port=port, uploaded=0, downloaded=0, left=1000, event="started")
    return await tracker_get(client, url, q + "&compact=1")


def compact_ports(peers: bytes) -> set[int]:
    return {int.from_bytes(peers[i + 4 : i + 6], "big") for i in range(0, len(peers), 6)}


def tracked_ports(service: UploadService, info_hash: bytes) -> set[int]:
    return {p.port for p in service.tracker.peers(info_hash)}


# -- the torrent, the .torrent per user, the listing --------------------------------------------------


def test_a_private_upload_is_a_bep27_torrent_and_each_users_copy_carries_that_users_passkey(tmp_path: Path) -> None:
    src = payload_zip(tmp_path, "priv.zip", 400_000, seed=3)
    data = src.read_bytes()

    async def main() -> None:
        async with running(
            tmp_path,
            trackers=["udp://tracker.example.org:6969/announce"],
            web_seed_bases=["https://mirror.example.org/datasets"],
        ) as service, aiohttp.ClientSession() as client:
            base = service.public_url
            status, pub = await put(client, service, "pub.zip", data)
            assert status == 201 and pub["private"] is False and pub["magnet"] is not None
            status, doc = await put(client, service, "priv.zip", data, params={"private": "1"})
            assert status == 201 and doc["private"] is True
            assert doc["magnet"] is None  # a magnet without a passkey would lead nowhere
            ih = bytes.fromhex(doc["info_hash"])

            # The stored torrent: private, the service's own tracker and web seed only (the extra tracker and
            # mirror check no passkey, so they are left out); BEP 27 makes its info-hash another one.
            stored = load_metainfo(service.paths.torrent(ih))
            assert stored.private and stored.info_hash == ih
            assert stored.trackers == ((f"{base}announce",),) and stored.web_seeds == (f"{base}data/priv.zip",)
            assert ih != create_torrent(src, piece_length=stored.piece_length).info_hash
            assert ih == create_torrent(src, piece_length=stored.piece_length, private=True).info_hash

            alice, bob = (await issue(client, service, "alice"))["passkey"], (await issue(client, service, "bob"))["passkey"]
            assert len(alice) == 32 and set(alice) <= set("0123456789abcdef") and alice != bob

            # The .torrent needs a passkey in force, and is that user's own copy.
            assert await error_code(client, doc["torrent_url"]) == (403, "passkey_required")
            assert await error_code(client, doc["torrent_url"], headers=AUTH) == (403, "passkey_required")
            assert await error_code(client, doc["torrent_url"], params={"pk": "0" * 32}) == (403, "passkey_refused")
            copies: dict[str, Metainfo] = {}
            for key in (alice, bob):
                meta = copies[key] = parse_metainfo(await users_torrent(client, doc, key))
                assert meta.private and meta.info_hash == ih  # the same torrent for everyone
                assert meta.trackers == ((f"{base}announce?pk={key}",),)
                assert meta.web_seeds == (f"{base}data/{key}/priv.zip",)
            assert copies[alice].to_bytes() != copies[bob].to_bytes()
            # A public dataset is as before: its torrent for anyone, with the extra tracker and mirror.
            meta = parse_metainfo((await fetch(client, pub["torrent_url"]))[1])
            assert not meta.private and len(meta.trackers) == 2 and len(meta.web_seeds) == 2

            # The listing: a private dataset for token and passkey holders only, its links for the holder.
            assert set(await listing(client, service)) == {"pub.zip"}
            admin = await listing(client, service, headers=AUTH)
            assert set(admin) == {"pub.zip", "priv.zip"} and admin["priv.zip"]["magnet"] is None
            mine = await listing(client, service, params={"pk": alice})
            assert set(mine) == {"pub.zip", "priv.zip"}
            entry = mine["priv.zip"]
            assert entry["torrent_url"] == f"{base}torrents/{ih.hex()}.torrent?pk={alice}"
            assert entry["web_seed_url"] == f"{base}data/{alice}/priv.zip"
            assert entry["magnet"].startswith(f"magnet:?xt=urn:btih:{ih.hex()}") and alice in entry["magnet"]
            assert await error_code(client, f"{base}uploads", params={"pk": "x" * 32}) == (403, "passkey_refused")
            assert await error_code(client, f"{base}uploads/priv.zip") == (403, "passkey_required")
            status, body = await fetch(client, f"{base}uploads/priv.zip", params={"pk": bob})
            assert status == 200 and json.loads(body)["web_seed_url"] == f"{base}data/{bob}/priv.zip"

            # Handing out a passkey says where its holder finds the private datasets.
            carol = await issue(client, service, "carol")
            assert carol["torrents"] == {"priv.zip": f"{base}torrents/{ih.hex()}.torrent?pk={carol['passkey']}"}
            assert carol["uploads_url"] == f"{base}uploads?pk={carol['passkey']}"
            assert carol["announce_url"] == f"{base}announce?pk={carol['passkey']}"

    asyncio.run(main())


def test_with_private_every_upload_is_private_and_a_form_upload_takes_the_flag_too(tmp_path: Path) -> None:
    data = payload_zip(tmp_path, size=100_000).read_bytes()

    async def main() -> None:
        async with running(tmp_path, private=True) as service, aiohttp.ClientSession() as client:
            status, doc = await put(client, service, "a.zip", data)
            assert status == 201 and doc["private"] is True
            status, doc = await put(client, service, "b.zip", data, params={"private": "0"})
            assert status == 400 and doc["code"] == "private_only"
            assert "b.zip" not in service.catalog
        async with running(tmp_path / "2") as service, aiohttp.ClientSession() as client:
            status, doc = await post_form(client, service, "f.zip", data, "?private=1")
            assert status == 201 and doc["private"] is True
            assert load_metainfo(service.paths.torrent(bytes.fromhex(doc["info_hash"]))).private
            status, doc = await put(client, service, "g.zip", data, params={"private": "perhaps"})
            assert status == 400 and doc["code"] == "bad_query"

    asyncio.run(main())


# -- the tracker ------------------------------------------------------------------------------------


def test_the_tracker_answers_a_private_torrent_only_to_a_passkey_in_force_and_never_with_peers_otherwise(
    tmp_path: Path,
) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            base = service.public_url
            _, doc = await put(client, service, "priv.zip", data, params={"private": "1"})
            _, pub = await put(client, service, "pub.zip", data)
            ih, pub_ih = bytes.fromhex(doc["info_hash"]), bytes.fromhex(pub["info_hash"])
            seeder_port = service.session.listen_port
            # The service's seeder announces with a passkey of its own (shown cut short in the listing).
            await until(lambda: tracked_ports(service, ih) == {seeder_port}, what="the seeder's keyed announce")
            await until(lambda: tracked_ports(service, pub_ih) == {seeder_port}, what="the seeder's public announce")
            listed = await listing(client, service, headers=AUTH)
            assert service.passkeys.seeder_key not in json.dumps(listed)
            alice = (await issue(client, service, "alice"))["passkey"]

            # No passkey, a wrong one: a failure reason, no peers, nothing recorded.
            refused = {
                f"{base}announce": PRIVATE_TORRENT,
                f"{base}announce?pk={'0' * 32}": UNKNOWN_PASSKEY,
                f"{base}announce?pk={alice[:-1]}": UNKNOWN_PASSKEY,
            }
            for n, (url, reason) in enumerate(refused.items()):
                answer = await announce(client, url, ih, b"-XX0001-refused%04d" % n, 40000 + n)
                assert answer == {b"failure reason": reason.encode()}, url
            assert tracked_ports(service, ih) == {seeder_port}

            # Alice's passkey: the seeder as a peer, and she is tracked.
            answer = await announce(client, f"{base}announce?pk={alice}", ih, b"-XX0001-alice-000001", 41000)
            assert b"failure reason" not in answer and compact_ports(answer[b"peers"]) == {seeder_port}
            assert tracked_ports(service, ih) == {seeder_port, 41000}

            # Scrapes: the plain one never names a private torrent; a keyed one does.
            for q in ("", query(info_hash=ih)):
                files = (await tracker_get(client, f"{base}scrape", q))[b"files"]
                assert ih not in files and (q or pub_ih in files)
            files = (await tracker_get(client, f"{base}scrape?pk={alice}", query(info_hash=ih)))[b"files"]
            assert files[ih][b"complete"] == 1 and files[ih][b"incomplete"] == 1
            assert ih in (await tracker_get(client, f"{base}scrape?pk={alice}", ""))[b"files"]
            wrong = await tracker_get(client, f"{base}scrape?pk={'0' * 32}", "")
            assert wrong == {b"failure reason": UNKNOWN_PASSKEY.encode()}

            # Revoked: her next announce is refused at once, and gets no peers.
            await revoke(client, service, "alice")
            answer = await announce(client, f"{base}announce?pk={alice}", ih, b"-XX0001-alice-000002", 41001)
            assert answer == {b"failure reason": UNKNOWN_PASSKEY.encode()}
            assert 41001 not in tracked_ports(service, ih)

            # A public torrent is tracked at the plain URL, as before.
            answer = await announce(client, f"{base}announce", pub_ih, b"-XX0001-public-00001", 42000)
            assert b"failure reason" not in answer and seeder_port in compact_ports(answer[b"peers"])

    asyncio.run(main())


# -- the web seed -----------------------------------------------------------------------------------


def test_the_web_seed_of_a_private_dataset_serves_byte_ranges_only_to_a_passkey_in_force(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            base = service.public_url
            _, doc = await put(client, service, "priv.zip", data, params={"private": "1"})
            _, pub = await put(client, service, "pub.zip", data)
            alice, bob = (await issue(client, service, "alice"))["passkey"], (await issue(client, service, "bob"))["passkey"]
            ranged = {"Range": "bytes=100-199"}

            assert await error_code(client, f"{base}data/priv.zip", headers=ranged) == (403, "passkey_required")
            assert await error_code(client, f"{base}data/{'0' * 32}/priv.zip", headers=ranged) == (403, "passkey_refused")
            async with client.head(f"{base}data/priv.zip") as resp:
                assert resp.status == 403
            for key in (alice, bob):
                async with client.get(f"{base}data/{key}/priv.zip", headers=ranged) as resp:
                    assert resp.status == 206 and resp.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
                    assert await resp.read() == data[100:200]
            assert await fetch(client, f"{base}data/{alice}/priv.zip") == (200, data)
            assert (await fetch(client, pub["web_seed_url"]))[0] == 200  # a public one: open, as before

            await revoke(client, service, "alice")
            assert await error_code(client, f"{base}data/{alice}/priv.zip", headers=ranged) == (403, "passkey_refused")
            assert await error_code(client, doc["torrent_url"], params={"pk": alice}) == (403, "passkey_refused")
            assert (await fetch(client, f"{base}data/{bob}/priv.zip", headers=ranged))[0] == 206

    asyncio.run(main())


# -- handing out, revoking, the file ----------------------------------------------------------------


def test_token_holders_hand_out_replace_and_revoke_passkeys_kept_in_an_owner_only_file(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            base = service.public_url
            await put(client, service, "priv.zip", data, params={"private": "1"})
            web_seed = f"{base}data/{{}}/priv.zip"
            admin = (("POST", f"{base}passkeys?user=alice"), ("GET", f"{base}passkeys"), ("DELETE", f"{base}passkeys/alice"))
            for method, url in admin:
                for headers, wanted in (({}, 401), ({"Authorization": "Bearer wrong-token-0123456789"}, 403)):
                    async with client.request(method, url, headers=headers) as resp:
                        assert resp.status == wanted, (method, url)
            assert not service.paths.passkeys.exists()

            first = await issue(client, service, "alice")
            assert first["replaced"] is False
            async with client.post(f"{base}passkeys", params={"user": "alice"}, headers=AUTH) as resp:
                assert resp.status == 409 and (await resp.json())["code"] == "passkey_exists"
            second = await issue(client, service, "alice", replace="1")
            assert second["replaced"] is True and second["passkey"] != first["passkey"]
            assert (await fetch(client, web_seed.format(first["passkey"])))[0] == 403  # the old one is dead at once
            assert (await fetch(client, web_seed.format(second["passkey"])))[0] == 200
            for user in ("", "../x", "a b", "x" * 65):
                async with client.post(f"{base}passkeys", params={"user": user}, headers=AUTH) as resp:
                    assert resp.status == 400 and (await resp.json())["code"] == "bad_user", user
            async with client.delete(f"{base}passkeys/nobody", headers=AUTH) as resp:
                assert resp.status == 404 and (await resp.json())["code"] == "no_passkey"
            async with client.get(f"{base}passkeys", headers=AUTH) as resp:
                assert await resp.json() == {"users": [{"user": "alice", "passkey": second["passkey"][:4] + "..."}]}

            # The file: the owner's alone, one 'passkey user' line each.
            path = service.paths.passkeys
            assert path.stat().st_mode & 0o777 == 0o600
            lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
            assert lines == [f"{second['passkey']} alice"]

            # A hand edit is in force after a reload (SIGHUP), and an API edit keeps it.
            carol, erin = "c" * 32, "e" * 32
            path.write_text(path.read_text() + f"{carol} carol  # added by hand\n")
            assert (await fetch(client, web_seed.format(carol)))[0] == 403
            assert service.passkeys.reload()
            assert (await fetch(client, web_seed.format(carol)))[0] == 200
            path.write_text(path.read_text() + f"{erin} erin\n")  # not reloaded...
            await issue(client, service, "dave")  # ...but the API reads the file before it writes it
            assert (await fetch(client, web_seed.format(erin)))[0] == 200
            assert "# added by hand" in path.read_text()
            await revoke(client, service, "carol")
            assert carol not in path.read_text() and (await fetch(client, web_seed.format(carol)))[0] == 403

            # A broken file is not taken: what is in force stays, and the API says to fix it.
            kept = path.read_text()
            path.write_text(kept + "not-a-line\n")
            assert not service.passkeys.reload()
            assert (await fetch(client, web_seed.format(erin)))[0] == 200
            async with client.post(f"{base}passkeys", params={"user": "frank"}, headers=AUTH) as resp:
                assert resp.status == 500 and (await resp.json())["code"] == "passkeys_file"
            assert path.read_text() == kept + "not-a-line\n"

    asyncio.run(main())


def test_the_passkeys_file_rules(tmp_path: Path) -> None:
    path = tmp_path / "passkeys"
    keys = Passkeys(path)
    keys.load()
    assert len(keys) == 0  # no file: no passkeys yet
    key = "0123456789abcdef0123456789abcdef"
    path.write_text(f"# users\n{key} alice@example.org  # a comment\n\n")
    path.chmod(0o644)
    with pytest.raises(PasskeysError, match="chmod 600"):
        keys.load()
    path.chmod(0o600)
    keys.load()
    assert keys.user_of(key) == "alice@example.org" and keys.user_of(key[:-1]) is None
    assert keys.refusal(key) is None and keys.refusal("f" * 32) == UNKNOWN_PASSKEY
    assert keys.user_of(keys.seeder_key) == "(seeder)" and keys.seeder_key not in path.read_text()
    for text, rule in (
        (f"{key}\n", "two fields"),
        (f"{key} alice extra\n", "two fields"),
        ("short alice\n", "16 to 128"),
        (f"{key[:-1]}! alice\n", "16 to 128"),
        (f"{key} ../alice\n", "not a user name"),
        (f"{key} alice\n{'1' * 32} alice\n", "one per user"),
        (f"{key} alice\n{key} bob\n", "on another line"),
    ):
        path.write_text(text)
        with pytest.raises(PasskeysError, match=rule) as caught:
            keys.load()
        assert key not in str(caught.value)  # an error names the line, never the key
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(PasskeysError):
        Passkeys(link).load()
    assert keys.user_of(key) == "alice@example.org"  # the passkeys in force stay


# -- downloads ---------------------------------------------------------------------------------------


def test_a_pyowtorrent_leecher_with_a_users_torrent_downloads_byte_exact_from_the_web_seed_and_from_the_seeder(
    tmp_path: Path,
) -> None:
    data = payload_zip(tmp_path, size=1_000_000, seed=5).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            _, doc = await put(client, service, "priv.zip", data, params={"private": "1"})
            alice = (await issue(client, service, "alice"))["passkey"]
            torrent = await users_torrent(client, doc, alice)
            meta = parse_metainfo(torrent)
            ih = meta.info_hash
            await until(lambda: len(tracked_ports(service, ih)) == 1, what="the service's seeder to announce")
            # The web seed alone (no tracker: no peers).
            async with Session(listen="127.0.0.1") as leecher:
                t = await leecher.add_torrent(meta, tmp_path / "ws", trackers=[])
                await t.wait_done(timeout=60)
                (seed,) = t.status().web_seeds
                assert seed.url == meta.web_seeds[0] and seed.downloaded == len(data) and t.status().num_peers == 0
            # The seeder alone, found through the private tracker with alice's passkey (her copy without its web seed).
            top = decode(torrent)
            del top[b"url-list"]
            peers_only = parse_metainfo(encode(top))
            assert peers_only.info_hash == meta.info_hash and peers_only.web_seeds == ()
            seeder = service.torrents["priv.zip"]
            before = seeder.status().uploaded
            async with Session(listen="127.0.0.1") as leecher:
                t = await leecher.add_torrent(peers_only, tmp_path / "bt")
                await t.wait_done(timeout=60)
            assert seeder.status().uploaded - before >= len(data)
        assert (tmp_path / "ws" / "priv.zip").read_bytes() == data
        assert (tmp_path / "bt" / "priv.zip").read_bytes() == data

    asyncio.run(main())


def test_libtorrent_downloads_through_the_private_tracker_and_after_revocation_a_new_leecher_gets_no_peers(
    tmp_path: Path,
) -> None:
    import libtorrent as lt

    from .lt_util import lt_session

    data = payload_zip(tmp_path, size=1_500_000, seed=13).read_bytes()

    def add(ses: Any, torrent: bytes, dest: Path) -> Any:
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent)
        params.save_path = str(dest)
        params.url_seeds = []  # peers from the tracker alone
        params.flags |= lt.torrent_flags.override_web_seeds
        return ses.add_torrent(params)

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            _, doc = await put(client, service, "priv.zip", data, params={"private": "1"})
            ih = bytes.fromhex(doc["info_hash"])
            alice = (await issue(client, service, "alice"))["passkey"]
            torrent = await users_torrent(client, doc, alice)
            await until(lambda: len(tracked_ports(service, ih)) == 1, what="the service's seeder to announce")

            ses = lt_session()
            handle = add(ses, torrent, tmp_path / "lt1")
            assert handle.torrent_file().priv()
            try:
                await until(lambda: handle.status().is_seeding, timeout=60, what="libtorrent to finish")
                assert ses.listen_port() in tracked_ports(service, ih)  # it announced with alice's passkey
            finally:
                ses.remove_torrent(handle)
            assert (tmp_path / "lt1" / "priv.zip").read_bytes() == data

            await revoke(client, service, "alice")
            ses2 = lt_session(alert_mask=lt.alert.category_t.all_categories)
            handle2 = add(ses2, torrent, tmp_path / "lt2")
            answers: list[Any] = []

            def tracker_answered() -> bool:
                kinds = (lt.tracker_error_alert, lt.tracker_reply_alert)
                answers.extend(a for a in ses2.pop_alerts() if isinstance(a, kinds))
                return bool(answers)

            try:
                await until(tracker_answered, timeout=30, what="libtorrent's announce to be answered")
                (answer,) = answers[:1]
                assert isinstance(answer, lt.tracker_error_alert), answer.message()
                assert answer.failure_reason() == UNKNOWN_PASSKEY
                # The tracker gave it nothing and recorded nothing; a private torrent has no other source of peers.
                assert ses2.listen_port() not in tracked_ports(service, ih)
                st = handle2.status()
                assert st.num_peers == 0 and st.list_peers == 0 and not st.is_seeding
            finally:
                ses2.remove_torrent(handle2)

    asyncio.run(main())


# -- restart, logs, the command ------------------------------------------------------------------------


def test_a_private_dataset_and_its_passkeys_stay_so_across_a_restart(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()
    state: dict[str, Any] = {}

    async def first() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            _, doc = await put(client, service, "pub.zip", data)
            assert json.loads(service.paths.catalog.read_text())["version"] == 1  # no private dataset: as before
            _, state["doc"] = await put(client, service, "priv.zip", data, params={"private": "1"})
            state["alice"] = (await issue(client, service, "alice"))["passkey"]
            catalog = json.loads(service.paths.catalog.read_text())
            assert catalog["version"] == 2 and [d.get("private", False) for d in catalog["datasets"]] == [False, True]

    async def second() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            base, doc, alice = service.public_url, state["doc"], state["alice"]
            ih = bytes.fromhex(doc["info_hash"])
            assert set(await listing(client, service)) == {"pub.zip"}
            mine = await listing(client, service, params={"pk": alice})
            assert mine["priv.zip"]["state"] == "seeding" and mine["priv.zip"]["checked_bytes"] == 0
            # (A new port: the user's copy is made for the service's URL of now, the info-hash the same.)
            meta = parse_metainfo(await users_torrent(client, {"torrent_url": f"{base}torrents/{ih.hex()}.torrent"}, alice))
            assert meta.info_hash == ih and meta.trackers == ((f"{base}announce?pk={alice}",),)
            assert (await fetch(client, f"{base}data/priv.zip"))[0] == 403
            assert (await fetch(client, f"{base}data/{alice}/priv.zip"))[0] == 200
            answer = await announce(client, f"{base}announce", ih, b"-XX0001-restart-0001", 43000)
            assert answer == {b"failure reason": PRIVATE_TORRENT.encode()}

    asyncio.run(first())
    asyncio.run(second())


@contextlib.contextmanager
def all_logs() -> Iterator[list[str]]:
    """Every line pyowtorrent logs meanwhile, at every level (a handler of its own: the CLI may stop propagation)."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger("pyowtorrent")
    handler, level = Keep(logging.DEBUG), logger.level
    # aiohttp's access log keeps the request line in a field of its own too.
    handler.setFormatter(
        logging.Formatter("%(name)s %(message)s %(first_request_line)s", defaults={"first_request_line": ""})
    )
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_no_log_line_holds_a_passkey_whole(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()
    keys: list[str] = []

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            base = service.public_url
            keys.append(service.passkeys.seeder_key)
            _, doc = await put(client, service, "priv.zip", data, params={"private": "1"})
            ih = bytes.fromhex(doc["info_hash"])
            alice = (await issue(client, service, "alice"))["passkey"]
            keys.append(alice)
            await until(lambda: len(tracked_ports(service, ih)) == 1, what="the seeder's announce")
            await announce(client, f"{base}announce?pk={alice}", ih, b"-XX0001-logged-00001", 44000)
            await fetch(client, f"{base}data/{alice}/priv.zip", headers={"Referer": f"{base}uploads?pk={alice}"})
            await fetch(client, doc["torrent_url"], params={"pk": alice})
            await revoke(client, service, "alice")
            await announce(client, f"{base}announce?pk={alice}", ih, b"-XX0001-logged-00002", 44001)
            await fetch(client, f"{base}data/{alice}/priv.zip")
            await fetch(client, f"{base}uploads", params={"pk": alice})

    with all_logs() as lines:
        asyncio.run(main())
    text = "\n".join(lines)
    assert f"/data/{keys[1][:4]}.../priv.zip" in text and f"pk={keys[1][:4]}..." in text  # the access log, cut
    for key in keys:
        assert key not in text
    assert redact(f"GET /data/{keys[1]}/d.zip?x=1&pk={keys[0]} /data/d.zip /srv/data/sets/d.zip") == (
        f"GET /data/{keys[1][:4]}.../d.zip?x=1&pk={keys[0][:4]}... /data/d.zip /srv/data/sets/d.zip"
    )


def test_sighup_makes_the_service_read_its_passkeys_file_again(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()
    carol = "ca" * 16

    async def main(served: Any) -> None:
        base = served.url
        passkeys = tmp_path / "data" / ".pyowtorrent" / "passkeys"
        async with aiohttp.ClientSession() as client:
            async with client.put(f"{base}uploads/priv.zip", params={"private": "1"}, data=data, headers=AUTH) as resp:
                assert resp.status == 201
            url = f"{base}data/{carol}/priv.zip"

            async def answers(status: int) -> None:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while (await fetch(client, url))[0] != status:  # the service's own answer, polled
                    assert loop.time() < deadline, f"the web seed never answered {status}"
                    await asyncio.sleep(0.05)

            assert (await fetch(client, url))[0] == 403
            fd = os.open(passkeys, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, f"{carol} carol\n".encode())
            os.close(fd)
            served.proc.send_signal(signal.SIGHUP)
            await answers(200)
            passkeys.write_text("# carol revoked\n")
            served.proc.send_signal(signal.SIGHUP)
            await answers(403)

    with serving(tmp_path, free_port()) as served:
        asyncio.run(main(served))
    log = (tmp_path / "service.log").read_text()
    assert "passkeys reloaded" in log and f"/data/{carol[:4]}.../priv.zip" in log and carol not in log


def test_a_passkeys_file_others_may_read_stops_the_service_from_starting(tmp_path: Path) -> None:
    path = tmp_path / "passkeys"
    path.write_text(f"{'ab' * 16} alice\n")
    path.chmod(0o640)
    cmd = [
        sys.executable, "-m", "pyowtorrent", "serve", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1",
        "--port", "0", "--peer-port", "0", "--passkeys", str(path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == 2 and b"serving" not in proc.stdout
    assert proc.stderr.decode().startswith("error: ") and "chmod 600" in proc.stderr.decode()
    assert "ab" * 16 not in proc.stderr.decode()
