"""The upload service's private mode: private datasets (BEP 27) and the per-user passkeys that open them.

A private dataset is published with ``PUT /uploads/{name}?private=1`` (or
``POST /uploads?private=1``; every upload, with ``pyowtorrent serve
--private``).  Its torrent has ``private=1`` in its info dictionary, so
clients take peers from its tracker only (no DHT, no PEX, no local discovery),
and its info-hash differs from that of a public torrent of the same bytes.  It
carries the service's own tracker and web seed only: an extra ``--tracker``
or ``--web-seed-base`` would check no passkey, so neither is put in.

Each user gets a passkey, which goes where the public URLs have none:

===================================================  ===========================================
``<public-url>announce?pk=KEY`` (``scrape?pk=KEY``)  the tracker, for this user
``<public-url>data/KEY/<name>``                      the web seed (BEP 19), byte ranges
``<public-url>torrents/<info-hash>.torrent?pk=KEY``  the user's own copy of the ``.torrent``
``<public-url>uploads?pk=KEY``                       the catalog as the user sees it, with links
===================================================  ===========================================

Why these shapes, with libtorrent as the yardstick.  The tracker URL keeps the
path ``/announce``: libtorrent announces to a tracker on loopback only at a
path starting with ``/announce`` (its SSRF mitigation), and makes the scrape
URL, as BEP 48 does, by changing ``announce`` to ``scrape``.  ``pk`` is a
query parameter clients keep (they append theirs after ``&``), and none of
theirs: libtorrent refuses a tracker URL that comes with ``info_hash``,
``key``, ``port`` and the like.  The web seed's key is a path segment: a web
seed on the local network may carry no query string for libtorrent, and a
single-file web seed's URL ends with the file's name (BEP 19).  A user's copy
of the ``.torrent`` differs from anyone else's in ``announce`` and
``url-list`` only, which are outside the info dictionary: every user's copy
has the same info-hash, and the service seeds that one torrent.

The tracker refuses (a bencoded ``failure reason``, nothing recorded, no
peers) an announce of a private torrent without ``pk``, and any announce
whose ``pk`` is not in force; the web seed and the ``.torrent`` answer
``403``.  The service's own seeder announces with a key of its own, made at
each start and never written anywhere.

The passkeys file (``DIR/.pyowtorrent/passkeys``, or ``--passkeys FILE``): one
``passkey user`` per line, ``#`` comments, one passkey per user; a passkey is
16 to 128 letters, digits, ``-`` or ``_`` (the service makes 32 hex digits,
:func:`secrets.token_hex`), a user name 1 to 64 letters, digits and
``.@+-_``.  The same rules as the tokens file: owner only (``chmod 600``),
else the service does not start.  A missing file is no passkeys yet.

Handing out and revoking, either way:

* the admin API, with a bearer token of the tokens file: ``POST
  /passkeys?user=alice`` makes alice a passkey (``&replace=1`` a new one,
  the old one dead), ``DELETE /passkeys/alice`` revokes it, ``GET
  /passkeys`` lists the users.  Each rewrites the file (read again first, so
  a hand edit is kept) and is in force at once;
* by hand: edit the file, then ``SIGHUP`` (:meth:`Passkeys.reload`).  A file
  that breaks a rule is not taken: the passkeys in force stay, and the log
  says why.

A revoked passkey fails its user's next announce, web seed request and
``.torrent`` download.  What it cannot undo: a connection already open
between the user's client and a seeder stays open until one side closes it,
and BitTorrent has no per-peer login, so a user who keeps the info-hash and a
seeder's address can still connect to that seeder directly.  To shut such a
user out, publish the data again under another name (the name is in the info
dictionary, so the info-hash changes), hand the new ``.torrent`` out, and
delete the old dataset.

Passkeys are compared in constant time over SHA-256 digests (as the tokens),
and never logged whole: :func:`redact` cuts every passkey in a URL
(``pk=KEY``, ``/data/KEY/``) down to its first four characters, in the
service's access log, in the seeder's announce log lines
(:data:`SEEDER_LOGGERS`), and with ``pyowtorrent serve`` in every line it
logs (:class:`RedactPasskeys` on its log handlers).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..errors import PyowtorrentError
from ..metainfo.bencoding import Bencached, encode
from ..metainfo.torrent_file import Metainfo
from ..storage.resume import write_atomically
from .auth import read_owner_only
from .catalog import Dataset
from .uploads import UploadError

log = logging.getLogger(__name__)

__all__ = [
    "KEYED_DATA_ROUTE",
    "SEEDER_LOGGERS",
    "SEEDER",
    "UNKNOWN_PASSKEY",
    "Passkeys",
    "PasskeysError",
    "RedactPasskeys",
    "Viewer",
    "check_user",
    "keyed_announce",
    "keyed_data",
    "new_passkey",
    "personal_torrent",
    "redact",
    "redact_logs",
    "shown",
]

#: The route of the web seed for a passkey holder.
KEYED_DATA_ROUTE: Final = "/data/{passkey}/{name}"
#: The name the service's own seeder's passkey goes by.
SEEDER: Final = "(seeder)"
#: The tracker's failure reason for a passkey that is not in force.
UNKNOWN_PASSKEY: Final = "unknown passkey: it was revoked or mistyped; ask the dataset's maintainer for a new one"

_PASSKEY: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
_USER: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9.@+_-]{0,63}")
_HEADER: Final = (
    "# pyowtorrent serve passkeys: one 'passkey user' per line ('#' starts a comment)."
    " Edit, then SIGHUP the service; or use POST/DELETE /passkeys."
)


class PasskeysError(PyowtorrentError):
    """The passkeys file cannot be used (permissions, format): the service does not start with it."""


def new_passkey() -> str:
    """A new random passkey: 128 bits, as 32 hex digits."""
    return secrets.token_hex(16)


def shown(passkey: str) -> str:
    """What a log or a listing shows of a passkey: its first four characters."""
    return passkey[:4] + "..."


def keyed_announce(public_url: str, passkey: str) -> str:
    """A user's tracker URL: ``<public-url>announce?pk=<passkey>``."""
    return f"{public_url}announce?pk={passkey}"


def keyed_data(public_url: str, passkey: str) -> str:
    """The base of a user's web seed URLs: ``<public-url>data/<passkey>`` (a name follows)."""
    return f"{public_url}data/{passkey}"


def check_user(user: str) -> str:
    """``user`` if it is a user name the passkeys file can hold, else a ``400``."""
    if not _USER.fullmatch(user):
        raise UploadError(
            400, "bad_user", "a user name is 1 to 64 letters, digits and '.@+-_', starting with a letter or digit"
        )
    return user


@dataclass(frozen=True)
class _Entry:
    passkey: str
    user: str
    digest: bytes


def _digest(passkey: str) -> bytes:
    return hashlib.sha256(passkey.encode("utf-8", "surrogateescape")).digest()


def _fields(line: str) -> list[str]:
    return line.split("#", 1)[0].split()


def _parse(path: Path, text: str) -> tuple[_Entry, ...]:
    entries: list[_Entry] = []
    users: set[str] = set()
    keys: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = _fields(line)
        if not fields:
            continue
        where = f"{path}, line {number}"
        if len(fields) != 2:
            raise PasskeysError(f"{where}: a line is 'passkey user', two fields")
        passkey, user = fields
        if not _PASSKEY.fullmatch(passkey):
            raise PasskeysError(f"{where}: a passkey is 16 to 128 letters, digits, '-' or '_'")
        if not _USER.fullmatch(user):
            raise PasskeysError(f"{where}: {user[:64]!r} is not a user name (1 to 64 letters, digits and '.@+-_')")
        if user in users:
            raise PasskeysError(f"{where}: {user!r} has a passkey already (one per user)")
        if passkey in keys:
            raise PasskeysError(f"{where}: this passkey is on another line already")
        users.add(user)
        keys.add(passkey)
        entries.append(_Entry(passkey, user, _digest(passkey)))
    return tuple(entries)


def _read(path: Path) -> str:
    if not os.path.lexists(path):
        return ""  # no passkeys yet: the first one handed out makes the file
    return read_owner_only(path, "passkeys file", PasskeysError)


class Passkeys:
    """The users' passkeys (the file) and the private torrents they open; the tracker's :class:`~.tracker.KeyGate`.

    :meth:`load` reads the file (blocking); :meth:`issue` and :meth:`revoke`
    rewrite it on an executor, one at a time.  ``seeder_key`` is the service's
    own seeder's, in memory only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: tuple[_Entry, ...] = ()
        self.seeder_key = new_passkey()
        self._seeder = _Entry(self.seeder_key, SEEDER, _digest(self.seeder_key))
        self._private: set[bytes] = set()
        self._edits = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def load(self) -> None:
        """Read the file (blocking); :class:`PasskeysError` if it breaks a rule (the passkeys in force stay)."""
        self._entries = _parse(self.path, _read(self.path))

    def reload(self) -> bool:
        """Read the file again after a hand edit (``SIGHUP``); keep the passkeys in force if it is broken."""
        try:
            self.load()
        except PasskeysError as exc:
            log.error("passkeys not reloaded, the previous ones stay in force: %s", exc)
            return False
        log.info("passkeys reloaded from %s: %d users", self.path, len(self._entries))
        return True

    def users(self) -> list[dict[str, str]]:
        """Who has a passkey, each key shown by its first characters only."""
        return [{"user": e.user, "passkey": shown(e.passkey)} for e in self._entries]

    def user_of(self, passkey: str) -> str | None:
        """The user whose passkey this is (:data:`SEEDER` for the seeder's), or ``None``: in constant time."""
        given = _digest(passkey)
        found: str | None = None
        for entry in (self._seeder, *self._entries):  # every one, whatever matched: the time says nothing
            if hmac.compare_digest(given, entry.digest):
                found = entry.user
        return found

    def require(self, passkey: str) -> str:
        """The user of ``passkey``, else a ``403``."""
        user = self.user_of(passkey)
        if user is None:
            raise UploadError(403, "passkey_refused", "this passkey is not in force: it was revoked or mistyped")
        return user

    # -- the tracker's KeyGate, and which torrents are private ------------------------------

    def is_private(self, info_hash: bytes) -> bool:
        return info_hash in self._private

    def refusal(self, passkey: str) -> str | None:
        return None if self.user_of(passkey) is not None else UNKNOWN_PASSKEY

    def guard(self, info_hash: bytes) -> None:
        """Track and serve ``info_hash`` for passkey holders only."""
        self._private.add(info_hash)

    def unguard(self, info_hash: bytes) -> None:
        self._private.discard(info_hash)

    # -- handing out, revoking -------------------------------------------------------------

    async def issue(self, user: str, replace: bool, executor: Executor) -> tuple[str, bool]:
        """A new passkey for ``user``, in the file and in force, and whether it replaced one (else ``409``)."""
        check_user(user)
        passkey = new_passkey()
        had = False

        def change(lines: list[str], entries: tuple[_Entry, ...]) -> list[str]:
            nonlocal had
            had = any(e.user == user for e in entries)
            if had and not replace:
                raise UploadError(
                    409,
                    "passkey_exists",
                    f"{user!r} has a passkey already; ?replace=1 makes a new one (the old one then fails)",
                )
            kept = [line for line in lines if _fields(line)[1:2] != [user]] or [_HEADER]
            return [*kept, f"{passkey} {user}"]

        await self._edit(change, executor)
        log.info("passkey %s %s for %s", shown(passkey), "replaced" if had else "issued", user)
        return passkey, had

    async def revoke(self, user: str, executor: Executor) -> None:
        """Remove ``user``'s passkey from the file and from force (``404`` if there is none)."""

        def change(lines: list[str], entries: tuple[_Entry, ...]) -> list[str]:
            if not any(e.user == user for e in entries):
                raise UploadError(404, "no_passkey", f"{user[:64]!r} has no passkey")
            return [line for line in lines if _fields(line)[1:2] != [user]]

        await self._edit(change, executor)
        log.info("passkey of %s revoked", user)

    async def _edit(self, change: Callable[[list[str], tuple[_Entry, ...]], list[str]], executor: Executor) -> None:
        def edit() -> tuple[_Entry, ...]:
            try:
                text = _read(self.path)  # again: a hand edit not yet reloaded is kept, not overwritten
                lines = text.splitlines()
                entries = _parse(self.path, text)
            except PasskeysError as exc:
                raise UploadError(500, "passkeys_file", f"{exc}; fix the file first") from None
            new = "".join(f"{line}\n" for line in change(lines, entries))
            fresh = _parse(self.path, new)
            write_atomically(self.path, new)  # mode 0600
            return fresh

        async with self._edits:
            try:
                self._entries = await asyncio.get_running_loop().run_in_executor(executor, edit)
            except OSError as exc:
                raise UploadError(500, "storage", f"cannot write {self.path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Viewer:
    """Who reads the catalog: a token holder (``admin``), a user (a passkey in force), or anyone."""

    admin: bool
    passkey: str | None = None

    def sees(self, dataset: Dataset) -> bool:
        """Whether the dataset is listed to this viewer (a private one to token and passkey holders only)."""
        return not dataset.private or self.admin or self.passkey is not None


def personal_torrent(meta: Metainfo, announce: str, web_seed: str) -> bytes:
    """A user's copy of a private torrent: the user's tracker and web seed URLs, the same info dictionary."""
    top = {k: v for k, v in meta.raw_top.items() if k not in (b"announce", b"announce-list", b"url-list", b"info")}
    top[b"announce"] = announce.encode()
    top[b"url-list"] = [web_seed.encode()]
    top[b"info"] = Bencached(meta.info_bytes)
    return encode(top)


# -- keeping passkeys out of the logs ---------------------------------------------------------------

# /data/KEY/name (a name has no '/'), a segment that could be a passkey: not /srv/data/sets/x.zip.
_IN_PATH: Final = re.compile(r"(/data/)([A-Za-z0-9_-]{16,128})(?=/)")
_IN_QUERY: Final = re.compile(r"([?&]pk=)([^&#\s\"']+)")


def _cut(match: re.Match[str]) -> str:
    return match.group(1) + shown(match.group(2))


def redact(text: str) -> str:
    """``text`` with every passkey of a URL in it (``pk=KEY``, ``/data/KEY/``) cut to its first characters."""
    return _IN_QUERY.sub(_cut, _IN_PATH.sub(_cut, text))


class RedactPasskeys(logging.Filter):
    """Cuts the passkeys out of a record's message (and aiohttp's access log fields): see :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report, not ours to raise
            return True
        cut = redact(message)
        if cut != message:
            record.msg, record.args = cut, None
        line = getattr(record, "first_request_line", None)
        if isinstance(line, str):
            setattr(record, "first_request_line", redact(line))
        headers = getattr(record, "request_header", None)
        if isinstance(headers, dict):
            setattr(record, "request_header", {k: redact(v) if isinstance(v, str) else v for k, v in headers.items()})
        return True


#: The loggers whose lines may hold the seeder's passkey: its announces' URLs (besides the service's access log).
SEEDER_LOGGERS: Final = ("pyowtorrent.engine.announcer", "pyowtorrent.engine.trackers")


def redact_logs(logger: logging.Logger, *, handlers: bool = False) -> None:
    """Pass ``logger``'s own records (with ``handlers``: all its handlers write) through :class:`RedactPasskeys`."""
    targets: list[logging.Filterer] = [*logger.handlers] if handlers else [logger]
    for target in targets:
        if not any(isinstance(f, RedactPasskeys) for f in target.filters):
            target.addFilter(RedactPasskeys())
