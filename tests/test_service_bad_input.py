"""Bad input to the upload service, each case a test: refused with a clear JSON error, and nothing left behind.

"Nothing left behind" is checked the same way each time (``state_of``): the files under the data
directory (temporary uploads included), the catalog, the seeding session and the reservations are
what they were before the request, and the service logged one line saying why.
"""

from __future__ import annotations

import asyncio
import json
import random
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from pyowtorrent.service.app import UploadService
from pyowtorrent.service.uploads import ZipRefused, check_zip

from .engine_util import make_zip, until
from .test_service import AUTH, TOKEN, logged, payload_zip, post_form, put, running, service_log, state_of

LIMIT = 200_000


async def raw_exchange(service: UploadService, request: bytes) -> bytes:
    """Send ``request`` as it is on a new connection; the whole answer (the service closes, or says how long it is)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            0,
        )
        return head + await reader.readexactly(length)
    finally:
        writer.close()


def put_head(name: str, length: int | None, *extra: str) -> bytes:
    lines = [f"PUT /uploads/{name} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {TOKEN}", *extra]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def held_body(data: bytes, gate: asyncio.Event, at: int) -> AsyncIterator[bytes]:
    """``data`` as a streamed body that stops after ``at`` bytes until ``gate`` is set."""
    yield data[:at]
    await gate.wait()
    yield data[at:]


# -- size ---------------------------------------------------------------------------------


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, max_upload_size=LIMIT) as service:
            before = state_of(service)
            with service_log() as records:
                # Expect: 100-continue: the answer is the refusal, not "100 Continue", and the body is never sent.
                answer = await raw_exchange(service, put_head("ds.zip", LIMIT + 1, "Expect: 100-continue"))
                assert answer.startswith(b"HTTP/1.1 413") and b'"too_large"' in answer
                # Without it: the headers alone are answered (the test never sends a body byte).
                answer = await raw_exchange(service, put_head("ds.zip", LIMIT + 1))
                assert answer.startswith(b"HTTP/1.1 413")
            assert state_of(service) == before
            assert logged(records, "413", "over the limit")

    asyncio.run(main())


def test_a_body_over_the_limit_is_refused_the_moment_it_passes_it(tmp_path: Path) -> None:
    data = payload_zip(tmp_path, size=3 * LIMIT).read_bytes()

    async def main() -> None:
        async with running(tmp_path, max_upload_size=LIMIT) as service, aiohttp.ClientSession() as client:
            before = state_of(service)
            gate = asyncio.Event()
            with service_log() as records:
                # Chunked (no length declared): the client holds the rest back once past the limit, so
                # the answer can only come from the service refusing mid-stream.
                status, doc = await put(client, service, "ds.zip", held_body(data, gate, LIMIT + 1))
                gate.set()
            assert status == 413 and doc["code"] == "too_large" and str(LIMIT) in doc["error"]
            assert state_of(service) == before
            assert logged(records, "413")
            # The same for a form.
            status, doc = await post_form(client, service, "ds.zip", data)
            assert status == 413 and state_of(service) == before

    asyncio.run(main())


# -- not a zip ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["random bytes", "truncated", "unsafe member", "empty"])
def test_what_is_not_a_whole_safe_zip_is_refused_with_422(tmp_path: Path, how: str) -> None:
    good = payload_zip(tmp_path).read_bytes()
    if how == "random bytes":
        data = random.Random(1).randbytes(50_000)
    elif how == "truncated":
        data = good[: len(good) - 1000]
    elif how == "unsafe member":
        data = make_zip(tmp_path / "evil.zip", {"../../etc/cron.d/evil": 100}).read_bytes()
    else:
        data = b""

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            before = state_of(service)
            with service_log() as records:
                status, doc = await put(client, service, "ds.zip", data)
                assert status == 422 and doc["code"] == "not_a_zip" and doc["error"].startswith("not a valid zip")
                status, doc = await post_form(client, service, "ds.zip", data)
                assert status == 422
            assert state_of(service) == before
            assert logged(records, "422", "not a valid zip")

    asyncio.run(main())


def _zip_with(tmp_path: Path, name: str, *, unix_mode: int | None = None) -> Path:
    path = tmp_path / "z.zip"
    info = zipfile.ZipInfo(name)
    if unix_mode is not None:
        info.create_system, info.external_attr = 3, unix_mode << 16
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(info, b"data")
    return path


@pytest.mark.parametrize(
    "member,rule",
    [("../x", "'..'"), ("a/../../x", "'..'"), ("/etc/passwd", "absolute"), ("C:/x", "absolute"), ("a\\b", "backslash")],
)
def test_check_zip_refuses_members_that_would_land_outside(tmp_path: Path, member: str, rule: str) -> None:
    path = _zip_with(tmp_path, member)
    with pytest.raises(ZipRefused, match=rule):
        check_zip(path, path.stat().st_size)


def test_check_zip_refuses_a_nul_in_a_name_and_symbolic_links(tmp_path: Path) -> None:
    path = _zip_with(tmp_path, "nul@here")
    path.write_bytes(path.read_bytes().replace(b"nul@here", b"nul\0here"))  # zipfile cuts names at a NUL
    with pytest.raises(ZipRefused, match="NUL"):
        check_zip(path, path.stat().st_size)
    path = _zip_with(tmp_path, "link", unix_mode=0o120777)
    with pytest.raises(ZipRefused, match="symbolic link"):
        check_zip(path, path.stat().st_size)


def test_check_zip_takes_zip64_comments_and_empty_archives_and_refuses_data_around_them(tmp_path: Path) -> None:
    z64 = tmp_path / "many.zip"
    with zipfile.ZipFile(z64, "w") as z:  # past 65535 members: zip64 end records
        for i in range(70_000):
            z.writestr(f"f{i}", b"")
    with zipfile.ZipFile(tmp_path / "forced.zip", "w") as z:
        with z.open("big", "w", force_zip64=True) as w:
            w.write(b"q" * 100)
    with zipfile.ZipFile(tmp_path / "comment.zip", "w") as z:
        z.writestr("a", b"b")
        z.comment = b"a comment holding PK\x05\x06 in it"
    with zipfile.ZipFile(tmp_path / "empty.zip", "w"):
        pass
    for name in ("many.zip", "forced.zip", "comment.zip", "empty.zip"):
        path = tmp_path / name
        check_zip(path, path.stat().st_size)
    good = (tmp_path / "comment.zip").read_bytes()
    for bad, rule in ((b"junk" + good, "start with"), (good + b"junk", "no end"), (good[:40] + good[42:], "does not end where")):
        (tmp_path / "bad.zip").write_bytes(bad)
        with pytest.raises(ZipRefused, match=rule):
            check_zip(tmp_path / "bad.zip", len(bad))


# -- a client that goes away, a client that stalls ----------------------------------------------


@pytest.mark.parametrize("form", [False, True], ids=["raw", "multipart"])
def test_a_client_that_disconnects_mid_upload_leaves_nothing(tmp_path: Path, form: bool) -> None:
    data = payload_zip(tmp_path, size=400_000).read_bytes()
    if form:
        boundary = "b0undary"
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"ds.zip\"\r\n"
            f"Content-Type: application/zip\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        head = (
            f"POST /uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
    else:
        body, head = data, put_head("ds.zip", len(data))

    async def main() -> None:
        async with running(tmp_path) as service:
            before = state_of(service)
            with service_log() as records:
                _, writer = await asyncio.open_connection("127.0.0.1", service.port)
                writer.write(head + body[: len(body) // 2])
                await writer.drain()
                # Gone only once the service is writing it to a file of its own.
                await until(lambda: any(service.paths.tmp.iterdir()), what="the upload to start")
                writer.transport.abort()
                await until(lambda: service.reservations.uploads == 0, what="the upload to end")
            assert state_of(service) == before
            assert logged(records, "went away")
            # The name is free again.
            async with aiohttp.ClientSession() as client:
                status, _ = await put(client, service, "ds.zip", data)
                assert status == 201

    asyncio.run(main())


def test_a_stalled_body_ends_the_upload_after_the_read_timeout(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path, read_timeout=0.3) as service:
            before = state_of(service)
            with service_log() as records:
                # Half the body, then nothing: the client keeps the connection open and says no more.
                answer = await raw_exchange(service, put_head("ds.zip", len(data)) + data[: len(data) // 2])
            assert answer.startswith(b"HTTP/1.1 408") and b'"timeout"' in answer
            assert state_of(service) == before
            assert logged(records, "408", "no data for 0.3 seconds")

    asyncio.run(main())


# -- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_name",
    [
        "a%2Fb.zip",  # a separator
        "a/b.zip",
        "a%5Cb.zip",
        "..%2Fetc.zip",
        "x..zip",
        "%2E%2E",
        "bad%01name.zip",  # control characters
        "tab%09.zip",
        "rtl%E2%80%AEpiz.exe.zip",  # an invisible bidi override
        "x" * 197 + ".zip",  # 201 bytes
        "%C3%A9" * 99 + ".zip",  # 202 bytes of UTF-8, 103 characters
        ".hidden.zip",
        "notazip.tar",
        "CON.zip",  # Windows would rename it
        "a%3Fb.zip",
    ],
)
def test_a_bad_name_is_refused_with_400_before_the_body(tmp_path: Path, raw_name: str) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            before = state_of(service)
            with service_log() as records:
                url = URL(f"{service.public_url}uploads/{raw_name}", encoded=True)
                async with client.put(url, data=data, headers=AUTH) as resp:
                    doc: Any = await resp.json()
                    assert resp.status == 400 and doc["code"] == "bad_name" and "refused" in doc["error"], doc
            assert state_of(service) == before
            assert logged(records, "400", "upload name")

    asyncio.run(main())


def test_a_name_of_exactly_200_bytes_is_taken(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()
    name = "é" * 95 + "abcdef.zip"  # 190 + 10 bytes of UTF-8
    assert len(name.encode()) == 200

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            status, doc = await put(client, service, name, data)
            assert status == 201 and doc["name"] == name

    asyncio.run(main())


def test_a_bad_file_name_in_a_form_is_refused_with_400(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            before = state_of(service)
            for filename in ("../ds.zip", "C:\\Users\\me\\ds.zip", "ds.exe"):
                status, doc = await post_form(client, service, filename, data)
                assert status == 400 and doc["code"] == "bad_name", filename
            assert state_of(service) == before

    asyncio.run(main())


def test_a_taken_name_is_refused_with_409_unless_replace(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()
    other = payload_zip(tmp_path, size=100_000, seed=3).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            assert (await put(client, service, "ds.zip", data))[0] == 201
            before = state_of(service)
            with service_log() as records:
                status, doc = await put(client, service, "ds.zip", other)
                assert status == 409 and doc["code"] == "exists" and "replace=1" in doc["error"]
                status, doc = await post_form(client, service, "ds.zip", other)
                assert status == 409
                status, doc = await put(client, service, "ds.zip", other, params={"replace": "maybe"})
                assert status == 400
            assert state_of(service) == before and service.paths.payload("ds.zip").read_bytes() == data
            assert logged(records, "409", "exists already")
            # A file put in the data directory by hand is taken too.
            (service.paths.data / "byhand.zip").write_bytes(other)
            assert (await put(client, service, "byhand.zip", data))[0] == 409
            status, doc = await put(client, service, "ds.zip", other, params={"replace": "1"})
            assert status == 201 and doc["replaced"] is True

    asyncio.run(main())


# -- concurrency -----------------------------------------------------------------------------------


def test_concurrent_uploads_of_different_names_all_succeed(tmp_path: Path) -> None:
    payloads = {f"d{i}.zip": payload_zip(tmp_path, f"d{i}.zip", 150_000 + i, seed=i).read_bytes() for i in range(4)}

    async def main() -> None:
        async with running(tmp_path, max_concurrent_uploads=4) as service, aiohttp.ClientSession() as client:
            results = await asyncio.gather(*(put(client, service, n, d) for n, d in payloads.items()))
            assert [status for status, _ in results] == [201] * 4
            for name, data in payloads.items():
                assert service.paths.payload(name).read_bytes() == data
            assert len(service.session.torrents) == 4 and len(service.catalog) == 4
            # The catalog on disk holds all four: its saves never lost one to another.
            on_disk = json.loads(service.paths.catalog.read_text())["datasets"]
            assert sorted(d["name"] for d in on_disk) == sorted(payloads)

    asyncio.run(main())


def test_of_concurrent_uploads_of_one_name_exactly_one_wins(tmp_path: Path) -> None:
    payloads = [payload_zip(tmp_path, f"v{i}.zip", 150_000, seed=i).read_bytes() for i in range(5)]

    async def main() -> None:
        async with running(tmp_path, max_concurrent_uploads=8) as service, aiohttp.ClientSession() as client:
            # One holds the name mid-body: every other upload of it is refused at once.
            gate = asyncio.Event()
            first = asyncio.ensure_future(put(client, service, "ds.zip", held_body(payloads[0], gate, 1000)))
            await until(lambda: service.reservations.busy("ds.zip"), what="the first upload to take the name")
            status, doc = await put(client, service, "ds.zip", payloads[1])
            assert status == 409 and doc["code"] == "in_progress"
            status, _ = await post_form(client, service, "ds.zip", payloads[1])
            assert status == 409
            gate.set()
            assert (await first)[0] == 201
            # All at once: one wins, whoever comes first; the rest get 409.
            results = await asyncio.gather(*(put(client, service, "race.zip", p) for p in payloads))
            statuses = sorted(status for status, _ in results)
            assert statuses == [201, 409, 409, 409, 409]
            won = next(i for i, (status, _) in enumerate(results) if status == 201)
            assert service.paths.payload("race.zip").read_bytes() == payloads[won]
            assert list(service.paths.tmp.iterdir()) == []

    asyncio.run(main())


def test_uploads_past_the_cap_are_refused_with_503_and_retry_after(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path, max_concurrent_uploads=1) as service, aiohttp.ClientSession() as client:
            gate = asyncio.Event()
            first = asyncio.ensure_future(put(client, service, "one.zip", held_body(data, gate, 1000)))
            await until(lambda: service.reservations.uploads == 1, what="the first upload to start")
            before = state_of(service)
            async with client.put(f"{service.public_url}uploads/two.zip", data=data, headers=AUTH) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "30"
                assert (await resp.json())["code"] == "busy"
            status, _ = await post_form(client, service, "two.zip", data)
            assert status == 503
            assert state_of(service) == before
            gate.set()
            assert (await first)[0] == 201
            assert (await put(client, service, "two.zip", data))[0] == 201

    asyncio.run(main())


def test_a_form_without_a_file_or_with_two_is_refused(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def main() -> None:
        async with running(tmp_path) as service, aiohttp.ClientSession() as client:
            before = state_of(service)
            url = f"{service.public_url}uploads"
            form = aiohttp.FormData(default_to_multipart=True)
            form.add_field("note", "no file here")
            async with client.post(url, data=form, headers=AUTH) as resp:
                assert resp.status == 400 and (await resp.json())["code"] == "no_file"
            form = aiohttp.FormData()
            form.add_field("file", data, filename="a.zip")
            form.add_field("file2", data, filename="b.zip")
            async with client.post(url, data=form, headers=AUTH) as resp:
                assert resp.status == 400 and "one file" in (await resp.json())["error"]
            async with client.post(url, data=data, headers={**AUTH, "Content-Type": "application/zip"}) as resp:
                assert resp.status == 415
            assert state_of(service) == before
            # Fields around the one file are ignored.
            form = aiohttp.FormData()
            form.add_field("note", "hello")
            form.add_field("file", data, filename="a.zip")
            form.add_field("submit", "upload")
            async with client.post(url, data=form, headers=AUTH) as resp:
                assert resp.status == 201 and (await resp.json())["name"] == "a.zip"

    asyncio.run(main())


def test_a_trickling_client_is_cut_off_though_each_read_comes_in_time(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()

    async def trickle() -> AsyncIterator[bytes]:
        yield data[:1000]
        while True:  # a byte at a time, each well within the read timeout: a slow client, not a stalled one
            await asyncio.sleep(0.02)
            yield b"x"

    async def main() -> None:
        async with running(tmp_path, read_timeout=0.5) as service, aiohttp.ClientSession() as client:
            before = state_of(service)
            with service_log() as records:
                status, doc = await put(client, service, "ds.zip", trickle())
            assert status == 408 and doc["code"] == "too_slow"
            assert state_of(service) == before
            assert logged(records, "408", "too slow")

    asyncio.run(main())


def test_a_malformed_form_is_refused_with_400_and_leaves_nothing(tmp_path: Path) -> None:
    data = payload_zip(tmp_path).read_bytes()
    boundary = "b0undary"
    # The file part never ends: no closing boundary before the body does.
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="ds.zip"\r\n\r\n'
    ).encode() + data
    head = (
        f"POST /uploads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()

    async def main() -> None:
        async with running(tmp_path) as service:
            before = state_of(service)
            answer = await raw_exchange(service, head + body)
            assert answer.startswith(b"HTTP/1.1 400") and b'"bad_form"' in answer, answer[:300]
            assert state_of(service) == before

    asyncio.run(main())
