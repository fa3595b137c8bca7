"""The Google Drive torrent source, against mocks of Google's servers: never a real network call.

Drive's API is answered by ``googleapiclient.http.HttpMockSequence`` (the
client is built from the discovery document the library ships); Google's
token endpoint by a fake ``google.auth.transport.Request``, or a requests
adapter for the sign-in flow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import stat
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytest.importorskip("googleapiclient")
pytest.importorskip("google_auth_oauthlib")

from googleapiclient.http import HttpMockSequence  # noqa: E402

from pyowtorrent.cli import common_parser  # noqa: E402
from pyowtorrent.cli import gdrive as cli_gdrive  # noqa: E402
from pyowtorrent.cli.verify import run_command  # noqa: E402
from pyowtorrent.config import Config  # noqa: E402
from pyowtorrent.errors import SourceAccessError, SourceError, TorrentNotFound  # noqa: E402
from pyowtorrent.sources import open_source  # noqa: E402
from pyowtorrent.sources.gdrive import DriveFolder, drive_query_string  # noqa: E402
from pyowtorrent.sources.gdrive_auth import (  # noqa: E402
    SCOPES,
    code_from_pasted,
    load_user_credentials,
    login,
)

FOLDER = "1FoLdEr_id-42"
BT = "application/x-bittorrent"
TORRENT = (
    b"d8:announce30:http://tracker.example/announce"
    b"4:infod6:lengthi3e4:name1:x12:piece lengthi16384e6:pieces20:" + bytes(20) + b"ee"
)


# --- a mock of Drive's server ---------------------------------------------------------------------


def ok(body: dict[str, Any]) -> tuple[dict[str, str], str]:
    return {"status": "200"}, json.dumps(body)


def drive_error(status: int, reason: str, message: str = "refused") -> tuple[dict[str, str], str]:
    errors = [{"domain": "global", "reason": reason, "message": message}]
    body = {"error": {"code": status, "message": message, "errors": errors}}
    return {"status": str(status)}, json.dumps(body)


def page(
    names_ids: list[tuple[str, str]], next_token: str | None = None, size: int = len(TORRENT)
) -> tuple[dict[str, str], str]:
    """One page of a files.list answer: (name, id) pairs, and the token of the next page if any."""
    files = [
        {"id": i, "name": n, "mimeType": BT, "size": str(size), "modifiedTime": "2024-05-01T10:00:00.000Z"}
        for n, i in names_ids
    ]
    body: dict[str, Any] = {"files": files}
    if next_token:
        body["nextPageToken"] = next_token
    return ok(body)


def media(data: bytes, start: int = 0, total: int | None = None) -> tuple[dict[str, str], bytes]:
    """One chunk of a ranged media download, as Drive answers it (206 with a Content-Range)."""
    total = len(data) if total is None else total
    return {"status": "206", "content-range": f"bytes {start}-{start + len(data) - 1}/{total}"}, data


class DropsConnection(HttpMockSequence):  # type: ignore[misc]
    """A mock whose response ``"RESET"`` is a connection reset by the peer, mid-download."""

    def request(self, uri: str, method: str = "GET", body: Any = None, headers: Any = None, **kw: Any) -> Any:
        if self._iterable and self._iterable[0] == "RESET":
            self.request_sequence.append((uri, method, body, headers))
            self._iterable.pop(0)
            raise ConnectionResetError(104, "Connection reset by peer")
        return super().request(uri, method, body, headers, **kw)


def drive(responses: list[Any], **kw: Any) -> tuple[DriveFolder, HttpMockSequence]:
    http = DropsConnection(list(responses))
    # retries=0: googleapiclient would sleep between retries; each answer here is final.
    return DriveFolder(FOLDER, http=http, retries=0, **kw), http


def params(request: tuple[str, str, Any, Any]) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(request[0]).query).items()}


def folder_meta() -> tuple[dict[str, str], str]:
    return ok({"id": FOLDER, "mimeType": "application/vnd.google-apps.folder"})


# --- finding a torrent ----------------------------------------------------------------------------


def test_name_search_pages_through_every_result_and_finds_the_file_on_page_three() -> None:
    folder, http = drive(
        [
            page([("Dataset.torrent", "wrongcase"), ("dataset.torrent.bak", "other")], next_token="tok2"),
            page([], next_token="tok3"),  # Drive may send an empty page that is not the last
            page([("dataset.torrent", "FILE3")]),
            media(TORRENT),
        ]
    )
    assert asyncio.run(folder.fetch("dataset")) == TORRENT

    lists = http.request_sequence[:3]
    assert [params(r).get("pageToken") for r in lists] == [None, "tok2", "tok3"]
    for r in lists:
        p = params(r)
        assert urlsplit(r[0]).path.endswith("/drive/v3/files")
        assert p["q"] == (
            f"'{FOLDER}' in parents and trashed = false and (name = 'dataset' or name = 'dataset.torrent')"
        )
        assert p["fields"].startswith("nextPageToken, files(")  # only the fields we read
        assert p["supportsAllDrives"] == "true"
    download = http.request_sequence[3]
    assert urlsplit(download[0]).path.endswith("/files/FILE3")
    assert params(download)["alt"] == "media"
    assert download[3]["range"].startswith("bytes=0-")


def test_exact_name_wins_over_name_dot_torrent_and_newest_of_duplicates() -> None:
    body = {
        "files": [
            {"id": "suffixed", "name": "x.torrent", "mimeType": BT, "modifiedTime": "2025-01-01T00:00:00Z"},
            {"id": "old", "name": "x", "mimeType": BT, "modifiedTime": "2023-01-01T00:00:00Z"},
            {"id": "new", "name": "x", "mimeType": BT, "modifiedTime": "2024-01-01T00:00:00Z"},
        ]
    }
    folder, _ = drive([ok(body)])
    assert folder.find("x").id == "new"


def test_names_are_quoted_for_drive_queries() -> None:
    assert drive_query_string("O'Brien \\ data") == "'O\\'Brien \\\\ data'"
    folder, http = drive([page([("it's.torrent", "Q")])])
    assert folder.find("it's.torrent").id == "Q"
    assert "name = 'it\\'s.torrent'" in params(http.request_sequence[0])["q"]


def test_an_info_hash_finds_its_hex_name() -> None:
    folder, http = drive([page([("ab" * 20 + ".torrent", "H")])])
    assert folder.find("AB" * 20).id == "H"
    assert "name = '" + "ab" * 20 + ".torrent'" in params(http.request_sequence[0])["q"]


def test_a_file_id_reference_fetches_that_file() -> None:
    folder, http = drive(
        [ok({"id": "ID9", "name": "anything.torrent", "mimeType": BT, "size": str(len(TORRENT))}), media(TORRENT)]
    )
    assert folder.fetch_sync("id:ID9") == TORRENT
    assert urlsplit(http.request_sequence[0][0]).path.endswith("/files/ID9")
    assert params(http.request_sequence[0])["alt"] == "json"  # the metadata first, then the bytes
    assert params(http.request_sequence[1])["alt"] == "media"


def test_a_missing_file_is_torrent_not_found_naming_it_and_the_folder() -> None:
    folder, http = drive([page([]), folder_meta()])
    with pytest.raises(TorrentNotFound) as info:
        asyncio.run(folder.fetch("nothere"))
    assert "'nothere'" in str(info.value) and FOLDER in str(info.value)
    assert len(http.request_sequence) == 2


def test_a_missing_file_id_is_torrent_not_found() -> None:
    folder, _ = drive([drive_error(404, "notFound", "File not found: ID0.")])
    with pytest.raises(TorrentNotFound, match="ID0"):
        folder.fetch_sync("id:ID0")


def test_a_folder_we_cannot_see_is_an_access_error_not_a_missing_file() -> None:
    folder, _ = drive([page([]), drive_error(404, "notFound", f"File not found: {FOLDER}.")])
    with pytest.raises(SourceAccessError, match=f"folder {FOLDER} not found, or not shared"):
        folder.fetch_sync("dataset")


def test_permission_denied_is_an_access_error_naming_the_folder() -> None:
    folder, _ = drive([drive_error(403, "insufficientFilePermissions", "The user does not have sufficient permissions")])
    with pytest.raises(SourceAccessError) as info:
        asyncio.run(folder.fetch("dataset"))
    assert FOLDER in str(info.value) and "403" in str(info.value)


def test_a_rate_limit_403_is_not_taken_for_an_access_error() -> None:
    folder, _ = drive([drive_error(403, "userRateLimitExceeded", "User Rate Limit Exceeded")])
    with pytest.raises(SourceError, match="slow down") as info:
        folder.fetch_sync("dataset")
    assert not isinstance(info.value, SourceAccessError)


def test_an_answer_that_is_not_json_is_a_source_error() -> None:
    folder, _ = drive([({"status": "200"}, "<html>captive portal</html>")])
    with pytest.raises(SourceError, match="cannot be read"):
        folder.fetch_sync("dataset")


def test_a_google_docs_item_is_refused_without_downloading() -> None:
    body = {"files": [{"id": "D", "name": "notes", "mimeType": "application/vnd.google-apps.document"}]}
    folder, http = drive([ok(body)])
    with pytest.raises(SourceError, match="not a file to download"):
        folder.fetch_sync("notes")
    assert len(http.request_sequence) == 1


def test_list_names_reads_every_page() -> None:
    folder, http = drive([page([("a.torrent", "A")], next_token="p2"), page([("b.torrent", "B")])])
    assert folder.list_names() == ["a.torrent", "b.torrent"]
    assert params(http.request_sequence[1])["pageToken"] == "p2"
    assert params(http.request_sequence[1])["q"] == f"'{FOLDER}' in parents and trashed = false"


def test_a_bad_folder_id_is_refused_before_any_request() -> None:
    with pytest.raises(SourceError, match="not a Google Drive folder id"):
        DriveFolder("https://drive.google.com/drive/folders/x")


def test_without_the_extra_the_error_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "googleapiclient", None)  # what a missing package looks like to import
    folder, _ = drive([])
    with pytest.raises(SourceError, match=re.escape("pip install 'pyowtorrent[gdrive]'")):
        folder.fetch_sync("x")


def test_open_source_builds_the_folder_from_the_config(tmp_path: Path) -> None:
    config = Config(gdrive_token=tmp_path / "token.json", gdrive_client_secrets=tmp_path / "credentials.json")
    source = open_source(f"gdrive:{FOLDER}", config)
    assert isinstance(source, DriveFolder)
    assert (source.folder_id, source.token_path) == (FOLDER, tmp_path / "token.json")


# --- downloading ----------------------------------------------------------------------------------


def test_a_download_in_chunks_returns_the_exact_bytes_and_leaves_no_temp_file(tmp_path: Path) -> None:
    data = os.urandom(25)
    folder, http = drive(
        [page([("d.torrent", "F")], size=25), media(data[:10], 0, 25), media(data[10:20], 10, 25), media(data[20:], 20, 25)],
        chunk_size=10,
    )
    out = tmp_path / "d.torrent"
    folder.download_to("d", out)
    assert out.read_bytes() == data
    assert os.listdir(tmp_path) == ["d.torrent"]
    assert [r[3]["range"] for r in http.request_sequence[1:]] == ["bytes=0-9", "bytes=10-19", "bytes=20-29"]


@pytest.mark.parametrize(
    "failure", [drive_error(500, "backendError", "Internal Error"), "RESET"], ids=["http-500", "connection-reset"]
)
def test_an_interrupted_download_leaves_no_partial_file(tmp_path: Path, failure: Any) -> None:
    data = os.urandom(25)
    folder, http = drive([page([("d.torrent", "F")], size=25), media(data[:10], 0, 25), failure], chunk_size=10)
    old = tmp_path / "kept.torrent"
    old.write_bytes(b"the previous version")
    with pytest.raises(SourceError, match="downloading 'd.torrent'"):
        folder.download_to("d", tmp_path / "new.torrent")
    with pytest.raises(SourceError):
        # Replacing an existing file: it stays as it was.
        drive([page([("d.torrent", "F")], size=25), media(data[:10], 0, 25), failure], chunk_size=10)[0].download_to("d", old)
    assert os.listdir(tmp_path) == ["kept.torrent"]  # no new.torrent, no temp file
    assert old.read_bytes() == b"the previous version"
    assert len(http.request_sequence) == 3  # the failed chunk was asked for


def test_a_file_larger_than_a_torrent_may_be_is_refused(tmp_path: Path) -> None:
    # Drive's listing says too large: refused before downloading.
    folder, http = drive([page([("big.torrent", "B")], size=1 << 30)])
    with pytest.raises(SourceError, match="more than the"):
        folder.fetch_sync("big")
    assert len(http.request_sequence) == 1
    # The listing said small but the server keeps sending: cut off at the cap, nothing left behind.
    folder, _ = drive(
        [page([("d.torrent", "F")], size=10), media(bytes(10), 0, 30), media(bytes(10), 10, 30)],
        chunk_size=10,
        max_size=15,
    )
    with pytest.raises(SourceError, match="more than the 15 bytes"):
        folder.download_to("d", tmp_path / "d.torrent")
    assert os.listdir(tmp_path) == []


# --- the stored token -----------------------------------------------------------------------------


class FakeTokenEndpoint:
    """Google's token endpoint as a ``google.auth.transport.Request``: one canned answer, requests recorded."""

    class Response:
        def __init__(self, status: int, body: dict[str, Any]) -> None:
            self.status = status
            self.headers = {"content-type": "application/json"}
            self.data = json.dumps(body).encode()

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.answer = self.Response(status, body)
        self.calls: list[tuple[str, str, dict[str, list[str]]]] = []

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None, **kw: Any) -> Any:
        text = body.decode() if isinstance(body, bytes) else (body or "")
        self.calls.append((url, method, parse_qs(text)))
        return self.answer


def expired_token_file(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "token": "stale-access-token",
                "refresh_token": "1//refresh",
                "token_uri": "https://oauth2.googleapis.com/token",
                "client_id": "client.apps.googleusercontent.com",
                "client_secret": "shh",
                "scopes": SCOPES,
                "expiry": (datetime.now(timezone.utc) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    path.chmod(0o644)
    return path


def test_an_expired_token_is_refreshed_and_written_back_as_json_mode_0600(tmp_path: Path) -> None:
    token = expired_token_file(tmp_path / "token.json")
    answer = {"access_token": "fresh-access-token", "expires_in": 3599, "token_type": "Bearer", "scope": SCOPES[0]}
    endpoint = FakeTokenEndpoint(200, answer)

    creds = load_user_credentials(token, request=endpoint)

    assert creds.token == "fresh-access-token" and creds.valid
    [(url, method, form)] = endpoint.calls
    assert (url, method) == ("https://oauth2.googleapis.com/token", "POST")
    assert form["grant_type"] == ["refresh_token"] and form["refresh_token"] == ["1//refresh"]
    saved = json.loads(token.read_text())  # JSON, not a pickle
    assert saved["token"] == "fresh-access-token" and saved["refresh_token"] == "1//refresh"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["token.json"]


def test_a_revoked_refresh_token_says_to_sign_in_again(tmp_path: Path) -> None:
    token = expired_token_file(tmp_path / "token.json")
    before = token.read_bytes()
    endpoint = FakeTokenEndpoint(400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."})
    with pytest.raises(SourceAccessError, match="sign in again: pyowtorrent gdrive login"):
        load_user_credentials(token, request=endpoint)
    assert token.read_bytes() == before


def test_no_token_yet_says_to_run_login_and_where_credentials_come_from(tmp_path: Path) -> None:
    with pytest.raises(SourceAccessError, match="run `pyowtorrent gdrive login`") as info:
        load_user_credentials(tmp_path / "none.json")
    assert "credentials.json" in str(info.value)
    # And the folder says the same on first use, before any request.
    folder = DriveFolder(FOLDER, token_path=tmp_path / "none.json")
    with pytest.raises(SourceAccessError, match="gdrive login"):
        folder.fetch_sync("x")


def test_a_corrupt_token_file_says_to_sign_in_again(tmp_path: Path) -> None:
    token = tmp_path / "token.json"
    token.write_bytes(b"\x80\x04\x95 not json")
    with pytest.raises(SourceAccessError, match="not a usable Google sign-in token.*gdrive login"):
        load_user_credentials(token)


def test_a_bad_service_account_key_is_an_access_error(tmp_path: Path) -> None:
    key = tmp_path / "sa.json"
    key.write_text('{"type": "service_account"}')
    folder = DriveFolder(FOLDER, service_account_key=key)
    with pytest.raises(SourceAccessError, match="not a Google service-account key"):
        folder.fetch_sync("x")


# --- signing in -----------------------------------------------------------------------------------


def test_login_without_client_secrets_says_what_to_ask_for(tmp_path: Path) -> None:
    with pytest.raises(SourceAccessError, match="ask the dataset's maintainer for credentials.json.*--client-secrets"):
        login(None, tmp_path / "token.json")
    with pytest.raises(SourceAccessError, match="no such file"):
        login(tmp_path / "credentials.json", tmp_path / "token.json")


def client_secrets(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.json"
    path.write_text(
        json.dumps(
            {
                "installed": {
                    "client_id": "client.apps.googleusercontent.com",
                    "client_secret": "shh",
                    "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                    "token_uri": "https://oauth2.googleapis.com/token",
                    "redirect_uris": ["http://localhost"],
                }
            }
        )
    )
    return path


def test_console_login_exchanges_the_pasted_code_and_stores_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests
    from google_auth_oauthlib.flow import InstalledAppFlow

    seen: list[dict[str, list[str]]] = []

    class TokenEndpoint(requests.adapters.BaseAdapter):  # Google's token server, which cannot exist here
        def send(self, request: Any, **kw: Any) -> Any:
            seen.append(parse_qs(request.body if isinstance(request.body, str) else request.body.decode()))
            resp = requests.Response()
            resp.status_code = 200
            resp.headers["content-type"] = "application/json"
            answer = {"access_token": "ya29.new", "refresh_token": "1//new", "expires_in": 3599, "scope": SCOPES[0]}
            resp._content = json.dumps({**answer, "token_type": "Bearer"}).encode()
            resp.url = request.url
            resp.request = request
            return resp

        def close(self) -> None:
            pass

    made = InstalledAppFlow.from_client_secrets_file

    def with_mock_endpoint(*a: Any, **kw: Any) -> Any:
        flow = made(*a, **kw)
        flow.oauth2session.mount("https://oauth2.googleapis.com/", TokenEndpoint())
        return flow

    monkeypatch.setattr(InstalledAppFlow, "from_client_secrets_file", with_mock_endpoint)
    shown: list[str] = []

    def paste(prompt: str) -> str:
        [url] = re.findall(r"https://accounts\.google\.com/\S+", shown[-1])
        state = parse_qs(urlsplit(url).query)["state"][0]
        return f"http://localhost/?state={state}&code=4/the-code&scope={SCOPES[0]}"

    token = tmp_path / "conf" / "token.json"
    creds = login(client_secrets(tmp_path), token, console=True, show=shown.append, ask=paste)

    asked = parse_qs(urlsplit(re.findall(r"https://\S+", shown[-1])[0]).query)
    assert asked["scope"] == SCOPES and asked["redirect_uri"] == ["http://localhost"]
    assert asked["access_type"] == ["offline"] and "code_challenge" in asked
    [form] = seen
    assert form["code"] == ["4/the-code"] and form["code_verifier"] and form["grant_type"] == ["authorization_code"]
    assert creds.token == "ya29.new"
    saved = json.loads(token.read_text())
    assert saved["refresh_token"] == "1//new"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_the_pasted_answer_must_belong_to_this_sign_in() -> None:
    assert code_from_pasted("  4/bare-code \n", "s1") == "4/bare-code"
    assert code_from_pasted("http://localhost/?state=s1&code=4/c", "s1") == "4/c"
    with pytest.raises(SourceAccessError, match="another sign-in attempt"):
        code_from_pasted("http://localhost/?state=other&code=4/c", "s1")
    with pytest.raises(SourceAccessError, match="access_denied"):
        code_from_pasted("http://localhost/?error=access_denied&state=s1", "s1")
    with pytest.raises(SourceAccessError, match="no address or code"):
        code_from_pasted("", "s1")


# --- the command line -----------------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pyowtorrent")
    cli_gdrive.add_arguments(parser.add_subparsers(dest="command", required=True), common_parser())
    args = parser.parse_args(argv)
    return run_command(args.handler, args)


@pytest.fixture
def mock_drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[HttpMockSequence]:
    """The CLI's folder talks to a mock of Drive's server; the folder id comes from a config file."""
    config = tmp_path / "config.toml"
    config.write_text(f'[gdrive]\nfolder_id = "{FOLDER}"\n')
    monkeypatch.setenv("PYOWTORRENT_CONFIG", str(config))
    mocks: list[HttpMockSequence] = []

    def open_folder(folder_id: str | None, cfg: Config) -> DriveFolder:
        return DriveFolder.from_config(folder_id, cfg, http=mocks[0], retries=0)

    monkeypatch.setattr(cli_gdrive, "open_folder", open_folder)
    return mocks


def test_cli_ls_lists_every_page_of_the_configured_folder(
    mock_drive: list[HttpMockSequence], capsys: pytest.CaptureFixture[str]
) -> None:
    http = HttpMockSequence([page([("a.torrent", "A")], next_token="p2"), page([("b.torrent", "B")])])
    mock_drive.append(http)
    assert run_cli(["gdrive", "ls"]) == 0
    assert capsys.readouterr().out.splitlines() == ["a.torrent", "b.torrent"]
    assert f"'{FOLDER}' in parents" in params(http.request_sequence[0])["q"]


def test_cli_ls_without_access_exits_2_with_the_reason(
    mock_drive: list[HttpMockSequence], capsys: pytest.CaptureFixture[str]
) -> None:
    mock_drive.append(HttpMockSequence([drive_error(403, "insufficientFilePermissions")]))
    assert run_cli(["gdrive", "ls", "OtherFolder"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "OtherFolder" in err and "no access" in err


def test_cli_get_saves_the_torrent_under_its_drive_name(mock_drive: list[HttpMockSequence], tmp_path: Path) -> None:
    mock_drive.append(HttpMockSequence([page([("dataset.torrent", "F")]), media(TORRENT)]))
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli(["gdrive", "get", "dataset", "-o", str(out)]) == 0
    assert (out / "dataset.torrent").read_bytes() == TORRENT
    assert os.listdir(out) == ["dataset.torrent"]
