"""Who may write to the upload service: bearer tokens from a file, checked in constant time.

The tokens file holds one token per line; ``#`` starts a comment (whole line
or after the token), blank lines are skipped.  A token is at least
:data:`MIN_TOKEN_LENGTH` characters with no spaces and no ``#``
(``python -c "import secrets; print(secrets.token_urlsafe(32))"`` makes one).
The file must be a regular file that neither the group nor others may read or
write (``chmod 600``): anyone who can read it can upload.  A file that breaks
a rule stops the service from starting, with the reason.

A request's token (``Authorization: Bearer <token>``) is compared with every
token in the file, each comparison in constant time over SHA-256 digests of
equal length, and none cut short: how long an answer takes says nothing about
how much of a guess was right, nor how long the real tokens are.

What a request gets (:meth:`Tokens.check`): no ``Authorization`` header (or
not ``Bearer``) is ``401`` with ``WWW-Authenticate: Bearer``; a token that is
not in the file is ``403``.

Revoking a token: delete its line, then reload (``SIGHUP`` to ``pyowtorrent
serve``, or :meth:`Tokens.reload`).  A reload that finds the file broken keeps
the tokens it had and says why.  (The private mode's per-user passkeys, for
the tracker, the web seed and the ``.torrent`` of a private dataset, are a
separate mechanism with a file of the same rules: :mod:`.passkeys`.)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from ..errors import PyowtorrentError

log = logging.getLogger(__name__)

__all__ = ["MIN_TOKEN_LENGTH", "Access", "Tokens", "TokensError", "bearer_token", "read_owner_only"]

#: Shorter tokens are refused: a token is a password that a script keeps, so it can be long.
MIN_TOKEN_LENGTH: Final = 16
# A tokens file is a short list; a bigger file is a mistake (a key, a dump), not tokens.
_MAX_FILE_SIZE: Final = 1 << 20


class TokensError(PyowtorrentError):
    """The tokens file cannot be used (permissions, format): the service must not start with it."""


class Access(enum.Enum):
    """What :meth:`Tokens.check` found in a request."""

    GRANTED = 200
    NO_TOKEN = 401  # no Authorization header, or not a bearer token
    WRONG_TOKEN = 403  # a bearer token that is not in the file


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case), else ``None``."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Tokens:
    """The tokens that may write, as SHA-256 digests; :meth:`load` reads a tokens file."""

    def __init__(self, tokens: Iterable[str], path: Path | None = None) -> None:
        self._digests = [_digest(t) for t in tokens]
        if not self._digests:
            raise TokensError(f"{path or 'tokens'}: no tokens (one per line; '#' starts a comment)")
        self.path = path

    def __len__(self) -> int:
        return len(self._digests)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Tokens:
        """Read a tokens file, refusing one that others may read (see the module docstring)."""
        p = Path(path)
        return cls(_read_tokens(p), p)

    def reload(self) -> bool:
        """Read the file again (after a token was added or revoked); keep the old tokens if it is broken."""
        if self.path is None:
            return False
        try:
            fresh = Tokens.load(self.path)
        except TokensError as exc:
            log.error("tokens not reloaded, the previous ones stay in force: %s", exc)
            return False
        self._digests = fresh._digests
        log.info("tokens reloaded from %s: %d", self.path, len(self._digests))
        return True

    def check(self, authorization: str | None) -> Access:
        """Whether an ``Authorization`` header's value carries one of the tokens."""
        token = bearer_token(authorization)
        if token is None:
            return Access.NO_TOKEN
        given = _digest(token)
        found = False
        for digest in self._digests:  # every one, whatever matched: the time says nothing
            found |= hmac.compare_digest(given, digest)
        return Access.GRANTED if found else Access.WRONG_TOKEN


def read_owner_only(path: Path, what: str, error: type[PyowtorrentError]) -> str:
    """The text of a small secrets file that only its owner may read or write (blocking).

    Refused with ``error`` (saying why, and naming ``what`` the file is): a
    file that cannot be opened, a symbolic link, not a regular file, one the
    group or others may read or write, over 1 MiB, or not UTF-8.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: the {what} is not a regular file")
        if st.st_mode & 0o077:
            raise error(
                f"{path}: the {what} may be read or written by others (mode {stat.S_IMODE(st.st_mode):04o});"
                f" make it the owner's alone: chmod 600 {path}"
            )
        if st.st_size > _MAX_FILE_SIZE:
            raise error(f"{path}: the {what} is over {_MAX_FILE_SIZE} bytes; it should be a short list")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(_MAX_FILE_SIZE + 1)
    finally:
        os.close(fd)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: the {what} is not UTF-8 text") from None


def _read_tokens(path: Path) -> list[str]:
    text = read_owner_only(path, "tokens file", TokensError)
    tokens: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        token = line.split("#", 1)[0].strip()
        if not token:
            continue
        if any(c.isspace() for c in token):
            raise TokensError(f"{path}, line {number}: a token has no spaces (one token per line)")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokensError(f"{path}, line {number}: a token is at least {MIN_TOKEN_LENGTH} characters")
        tokens.append(token)
    if not tokens:
        raise TokensError(f"{path}: no tokens in the file (one per line; '#' starts a comment)")
    return tokens
