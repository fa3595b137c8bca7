"""A Google Drive folder of ``.torrent`` files as a torrent source (the ``gdrive`` extra).

A reference is ``id:FILEID`` (that file, wherever it is), or an exact file
name inside the folder (``NAME`` also finds ``NAME.torrent``; an info-hash in
hex finds ``HEX.torrent``).  The search is restricted to the folder and pages
through every result: the loader this replaces looked only at the first ten
files of the whole Drive.

Signing in is in :mod:`pyowtorrent.sources.gdrive_auth`.  googleapiclient is
synchronous and its ``httplib2`` transport is not thread-safe: every call runs
in a worker thread (``asyncio.to_thread``) under the folder's lock.  The
service is built from the discovery document the library ships, so building
it needs no network.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from ..errors import SourceAccessError, SourceError, StorageError, TorrentNotFound
from ..metainfo.torrent_file import MAX_TORRENT_SIZE
from . import gdrive_auth
from .base import is_info_hash

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["DriveFolder", "DriveFile", "drive_query_string"]

log = logging.getLogger(__name__)

ID_PREFIX = "id:"
FOLDER_MIME = "application/vnd.google-apps.folder"
SHORTCUT_MIME = "application/vnd.google-apps.shortcut"
# Docs, Sheets, folders...: Drive items with no bytes of their own to download.
GOOGLE_APPS_MIME_PREFIX = "application/vnd.google-apps."
# Drive ids are URL-safe base64-ish; anything else is a typo or a pasted URL.
_DRIVE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")
# The largest page Drive gives: fewest round trips for a big folder.
PAGE_SIZE = 1000
# A .torrent is at most MAX_TORRENT_SIZE (32 MiB); 1 MiB chunks keep the size
# cap close and the memory small when the server ignores the size we were told.
DOWNLOAD_CHUNK = 1 << 20
# googleapiclient retries 5xx, 429 and dropped connections with exponential backoff.
RETRIES = 3
_FILE_FIELDS = "id, name, size, mimeType, modifiedTime, shortcutDetails(targetId, targetMimeType)"
# Drive says "403" both for "not yours" and for "slow down"; these reasons are the latter.
_RATE_LIMIT_REASONS = {"rateLimitExceeded", "userRateLimitExceeded", "sharingRateLimitExceeded", "dailyLimitExceeded"}


@dataclass(frozen=True)
class DriveFile:
    """One file in Drive, as a listing gives it (``size`` is None for Google Docs items)."""

    id: str
    name: str
    mime_type: str
    size: int | None = None
    modified: str = ""  # RFC 3339, as Drive writes it; orders lexically

    @classmethod
    def from_api(cls, item: Any) -> DriveFile:
        item = _json_object(item)
        shortcut = item.get("shortcutDetails") or {}
        if item.get("mimeType") == SHORTCUT_MIME and shortcut.get("targetId"):
            # A shortcut's bytes are its target's: download the target.
            return cls(str(shortcut["targetId"]), str(item.get("name", "")), str(shortcut.get("targetMimeType", "")))
        size = item.get("size")
        return cls(
            id=str(item["id"]),
            name=str(item.get("name", "")),
            mime_type=str(item.get("mimeType", "")),
            size=int(size) if size is not None else None,
            modified=str(item.get("modifiedTime", "")),
        )


def drive_query_string(value: str) -> str:
    """``value`` as a quoted string of Drive's query language: ``'`` and ``\\`` escaped with ``\\``."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class DriveFolder:
    """``.torrent`` files in one Google Drive folder.

    Credentials, first given first used: ``credentials`` (any google-auth
    credentials), a service-account key file, the signed-in user's token at
    ``token_path`` (see :func:`~pyowtorrent.sources.gdrive_auth.login`).
    ``http`` is an ``httplib2.Http``-like transport; given alone, requests
    go through it unauthenticated (the tests pass a mock of Drive's server).
    Nothing touches the network before the first call.
    """

    def __init__(
        self,
        folder_id: str,
        *,
        credentials: Any = None,
        client_secrets: str | os.PathLike[str] | None = None,
        token_path: str | os.PathLike[str] | None = None,
        service_account_key: str | os.PathLike[str] | None = None,
        http: Any = None,
        max_size: int = MAX_TORRENT_SIZE,
        retries: int = RETRIES,
        chunk_size: int = DOWNLOAD_CHUNK,
    ) -> None:
        if not _DRIVE_ID.fullmatch(folder_id):
            raise SourceError(
                f"{folder_id!r} is not a Google Drive folder id (the last part of the folder's address, "
                "https://drive.google.com/drive/folders/ID)"
            )
        self.folder_id = folder_id
        self.client_secrets = Path(client_secrets) if client_secrets is not None else None
        self.token_path = Path(token_path) if token_path is not None else None
        self.service_account_key = Path(service_account_key) if service_account_key is not None else None
        self.max_size = max_size
        self.retries = retries
        self.chunk_size = chunk_size
        self._credentials = credentials
        self._http = http
        self._service_obj: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, folder_id: str | None, config: Config | None = None, **kwargs: Any) -> DriveFolder:
        """The folder ``folder_id`` (default: the config's ``gdrive.folder_id``) with the config's credentials."""
        if config is None:
            from ..config import load_config

            config = load_config()
        folder = folder_id or config.gdrive_folder_id
        if not folder:
            raise SourceError("no Google Drive folder: set gdrive.folder_id in the config file, or name one")
        kwargs.setdefault("client_secrets", config.gdrive_client_secrets)
        kwargs.setdefault("token_path", config.gdrive_token_path)
        kwargs.setdefault("service_account_key", config.gdrive_service_account_key)
        return cls(folder, **kwargs)

    def __repr__(self) -> str:
        return f"DriveFolder({self.folder_id!r})"

    def __str__(self) -> str:
        return f"gdrive:{self.folder_id}"

    # --- the TorrentSource protocol ---

    async def fetch(self, reference: str) -> bytes:
        return await asyncio.to_thread(self.fetch_sync, reference)

    def fetch_sync(self, reference: str) -> bytes:
        """The bytes of the file ``reference`` names, at most ``max_size`` of them."""
        file = self.find(reference)
        sink = io.BytesIO()
        self._download(file, sink)
        return sink.getvalue()

    # --- finding ---

    def find(self, reference: str) -> DriveFile:
        """The file ``reference`` names: ``id:FILEID``, or an exact name in the folder (or NAME.torrent)."""
        if reference.startswith(ID_PREFIX):
            return self._get_by_id(reference[len(ID_PREFIX) :])
        if is_info_hash(reference):
            reference = reference.lower() + ".torrent"
        if not reference or "\0" in reference:
            raise TorrentNotFound(f"{reference!r} is not a file name")
        names = [reference] if reference.endswith(".torrent") else [reference, reference + ".torrent"]
        wanted = " or ".join(f"name = {drive_query_string(n)}" for n in names)
        found = self._list(f"({wanted})", f"finding {reference!r}")
        for name in names:  # the exact name first, then NAME.torrent
            matches = [f for f in found if f.name == name]
            if matches:
                if len(matches) > 1:
                    log.warning("%d files named %r in %s: using the newest", len(matches), name, self)
                return max(matches, key=lambda f: f.modified)
        self._check_folder()  # a folder we cannot see explains better than "not found"
        raise TorrentNotFound(f"no file {reference!r} in Google Drive folder {self.folder_id}")

    def list_files(self) -> list[DriveFile]:
        """Every file in the folder (not in its subfolders), by name."""
        files = self._list(None, "listing")
        if not files:
            self._check_folder()
        return files

    def list_names(self) -> list[str]:
        return [f.name for f in self.list_files()]

    def _list(self, condition: str | None, what: str) -> list[DriveFile]:
        """All pages of the files in the folder that meet ``condition`` (a Drive query)."""
        query = f"{drive_query_string(self.folder_id)} in parents and trashed = false"
        if condition:
            query += f" and {condition}"
        files: list[DriveFile] = []
        page_token: str | None = None
        with self._calling(f"{what} in Google Drive folder {self.folder_id}", self._folder_missing) as drive:
            while True:
                page = drive.files().list(
                    q=query,
                    pageSize=PAGE_SIZE,
                    pageToken=page_token,
                    fields=f"nextPageToken, files({_FILE_FIELDS})",
                    orderBy="name",
                    # A dataset's folder may sit in a shared drive; without these Drive hides it.
                    supportsAllDrives=True,
                    includeItemsFromAllDrives=True,
                ).execute(num_retries=self.retries)
                page = _json_object(page)
                files.extend(DriveFile.from_api(item) for item in page.get("files", []))
                page_token = page.get("nextPageToken")
                if not page_token:
                    return files

    def _get_by_id(self, file_id: str) -> DriveFile:
        if not _DRIVE_ID.fullmatch(file_id):
            raise TorrentNotFound(f"{file_id!r} is not a Google Drive file id")

        def missing() -> SourceError:
            return TorrentNotFound(f"no file with id {file_id} on Google Drive, or it is not shared with you")

        with self._calling(f"looking up Google Drive file {file_id}", missing) as drive:
            item = drive.files().get(fileId=file_id, fields=_FILE_FIELDS, supportsAllDrives=True).execute(
                num_retries=self.retries
            )
            return DriveFile.from_api(item)

    def _check_folder(self) -> None:
        """Raise :class:`SourceAccessError` if the folder does not exist or is not a folder we may read."""
        with self._calling(f"opening Google Drive folder {self.folder_id}", self._folder_missing) as drive:
            item = drive.files().get(fileId=self.folder_id, fields="id, mimeType", supportsAllDrives=True).execute(
                num_retries=self.retries
            )
            mime = _json_object(item).get("mimeType")
        if mime != FOLDER_MIME:
            raise SourceError(f"Google Drive item {self.folder_id} is not a folder ({mime})")

    def _folder_missing(self) -> SourceError:
        return SourceAccessError(
            f"Google Drive folder {self.folder_id} not found, or not shared with {self._who()}: "
            "check gdrive.folder_id, and ask the dataset's maintainer for access"
        )

    # --- downloading ---

    def download_to(self, reference: str, path: str | os.PathLike[str]) -> DriveFile:
        """Save the file ``reference`` names at ``path``; see :meth:`download_file`."""
        file = self.find(reference)
        self.download_file(file, path)
        return file

    def download_file(self, file: DriveFile, path: str | os.PathLike[str]) -> None:
        """Stream ``file`` into a temporary file beside ``path``, then rename it to ``path``.

        On any failure (or interruption) the temporary file is removed and
        ``path`` is untouched: never a partial file.
        """
        dest = Path(path)
        try:
            fd, tmp = gdrive_auth.new_temp_file(dest, 0o666)
        except OSError as exc:
            raise StorageError(f"{dest}: cannot create: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as sink:
                self._download(file, sink)
            os.replace(tmp, dest)
        except BaseException as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise StorageError(f"{dest}: cannot write: {exc.strerror or exc}") from None
            raise

    def _download(self, file: DriveFile, sink: IO[bytes]) -> None:
        if file.mime_type.startswith(GOOGLE_APPS_MIME_PREFIX):
            raise SourceError(f"{file.name!r} ({file.id}) is a Google Drive {file.mime_type}, not a file to download")
        if file.size is not None and file.size > self.max_size:
            raise SourceError(f"{file.name!r} is {file.size} bytes, more than the {self.max_size} a .torrent may have")

        def missing() -> SourceError:
            return TorrentNotFound(f"{file.name!r} ({file.id}) is gone from Google Drive")

        capped = _CappedWriter(sink, self.max_size, file.name)
        with self._calling(f"downloading {file.name!r} from Google Drive", missing) as drive:
            from googleapiclient.http import MediaIoBaseDownload  # type: ignore[import-untyped]

            request = drive.files().get_media(fileId=file.id, supportsAllDrives=True)
            downloader = MediaIoBaseDownload(capped, request, chunksize=self.chunk_size)
            done = False
            while not done:
                _, done = downloader.next_chunk(num_retries=self.retries)
        log.debug("downloaded %r (%s): %d bytes", file.name, file.id, capped.written)

    # --- the service, and what its errors mean ---

    def _service(self) -> Any:
        """The Drive v3 client, built on first use (under the lock)."""
        if self._service_obj is not None:
            return self._service_obj
        from googleapiclient.discovery import build  # type: ignore[import-untyped]

        creds = self._credentials
        if creds is None and self._http is None:
            creds = self._credentials = self._load_credentials()
        http = self._http
        if http is not None and creds is not None:
            import google_auth_httplib2  # type: ignore[import-untyped]

            http = google_auth_httplib2.AuthorizedHttp(creds, http=http)
        # build() takes http or credentials, not both.
        self._service_obj = build(
            "drive",
            "v3",
            http=http,
            credentials=None if http is not None else creds,
            cache_discovery=False,
            static_discovery=True,
        )
        return self._service_obj

    def _load_credentials(self) -> Any:
        if self.service_account_key is not None:
            return gdrive_auth.load_service_account(self.service_account_key)
        if self.token_path is None:
            raise SourceAccessError(
                f"no Google Drive credentials for folder {self.folder_id}: {gdrive_auth.MISSING_SECRETS}; "
                f"then run `{gdrive_auth.LOGIN_HINT}`"
            )
        return gdrive_auth.load_user_credentials(self.token_path, client_secrets=self.client_secrets)

    def _who(self) -> str:
        email = getattr(self._credentials, "service_account_email", None)
        return f"the service account {email}" if email else "the account you signed in with"

    @contextmanager
    def _calling(self, what: str, missing: Callable[[], SourceError]) -> Iterator[Any]:
        """Hold the lock, give the service, and turn Google's failures into ours; ``missing`` for a 404."""
        gdrive_auth.require_google("the Google Drive torrent source")
        from google.auth.exceptions import RefreshError, TransportError
        from googleapiclient.errors import HttpError  # type: ignore[import-untyped]
        import httplib2  # type: ignore[import-untyped]

        with self._lock:
            try:
                yield self._service()
            except HttpError as exc:
                raise self._http_error(exc, what, missing) from None
            except RefreshError as exc:
                raise SourceAccessError(
                    f"{what}: Google no longer accepts the sign-in ({gdrive_auth.first_line(exc)}); "
                    f"sign in again: {gdrive_auth.LOGIN_HINT}"
                ) from None
            except (TransportError, httplib2.HttpLib2Error, OSError) as exc:
                raise SourceError(f"{what}: cannot reach Google Drive: {gdrive_auth.first_line(exc)}") from None
            except (ValueError, KeyError, TypeError) as exc:
                # A body that is not the JSON Drive documents (a proxy's page, a truncated answer).
                raise SourceError(f"{what}: Google Drive's answer cannot be read ({type(exc).__name__}: {exc})") from None

    def _http_error(self, exc: Any, what: str, missing: Callable[[], SourceError]) -> SourceError:
        status = int(exc.resp.status)
        reason = exc.reason or getattr(exc.resp, "reason", "")
        if status == 404:
            return missing()
        if status == 429 or (status == 403 and _reasons(exc) & _RATE_LIMIT_REASONS):
            return SourceError(f"{what}: Google Drive asks us to slow down (HTTP {status}: {reason}); try again later")
        if status == 401:
            return SourceAccessError(f"{what}: Google Drive refused the sign-in; sign in again: {gdrive_auth.LOGIN_HINT}")
        if status == 403:
            return SourceAccessError(
                f"{what}: no access (HTTP 403: {reason}); ask the dataset's maintainer to share "
                f"folder {self.folder_id} with {self._who()}"
            )
        return SourceError(f"{what}: Google Drive answered HTTP {status}: {reason}")


def _json_object(answer: Any) -> dict[str, Any]:
    # googleapiclient hands back a body that is not JSON as a plain string.
    if not isinstance(answer, dict):
        raise ValueError(f"expected a JSON object, got {type(answer).__name__}")
    return answer


def _reasons(exc: Any) -> set[str]:
    """The machine-readable reasons in a Drive error (``error.errors[].reason``)."""
    details = exc.error_details
    if not isinstance(details, list):
        return set()
    return {str(d["reason"]) for d in details if isinstance(d, dict) and "reason" in d}


class _CappedWriter:
    """Passes writes on to ``sink`` until more than ``limit`` bytes came: then a :class:`SourceError`.

    MediaIoBaseDownload only calls ``write``.  A failing disk is a
    :class:`StorageError` here, so it is not taken for a network failure.
    """

    def __init__(self, sink: IO[bytes], limit: int, label: str) -> None:
        self.sink = sink
        self.limit = limit
        self.label = label
        self.written = 0

    def write(self, data: bytes) -> int:
        self.written += len(data)
        if self.written > self.limit:
            raise SourceError(f"{self.label!r}: more than the {self.limit} bytes a .torrent may have")
        try:
            return self.sink.write(data)
        except OSError as exc:
            raise StorageError(f"saving {self.label!r}: {exc.strerror or exc}") from None
