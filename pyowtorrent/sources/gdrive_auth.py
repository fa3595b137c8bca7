"""Signing in to Google Drive: the installed-app OAuth flow, the stored token, service-account keys.

The datasets' maintainers keep their Drive folder restricted: they hand out
an OAuth client (``credentials.json``, a "Desktop app" client secret) and each
user signs in once with :func:`login`, which stores the resulting token as
JSON, mode 0600 (never pickle: a pickle is code).  :func:`load_user_credentials`
reads it back, refreshes it when it has expired and writes the refreshed
token back.  A machine without a person at it uses a service-account key
(:func:`load_service_account`), with the folder shared to that account.

Every scope is read-only (``drive.readonly``).  The Google libraries are the
optional extra ``gdrive`` and are imported only when used.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from ..errors import SourceAccessError, SourceError

__all__ = [
    "SCOPES",
    "INSTALL_HINT",
    "login",
    "load_user_credentials",
    "load_service_account",
    "save_token",
    "require_google",
    "new_temp_file",
]

log = logging.getLogger(__name__)

SCOPES = ["https://www.googleapis.com/auth/drive.readonly"]
INSTALL_HINT = "pip install 'pyowtorrent[gdrive]'"
LOGIN_HINT = "pyowtorrent gdrive login"
MISSING_SECRETS = (
    "no Google OAuth client secrets: ask the dataset's maintainer for credentials.json "
    "and set gdrive.client_secrets in the config file, or pass --client-secrets"
)
# Where Google sends the browser after consent in the copy-paste flow.  The
# out-of-band redirect (urn:ietf:wg:oauth:2.0:oob) is gone, and google-auth-oauthlib
# 1.x dropped run_console; a "Desktop app" client accepts any loopback address,
# so the browser lands on http://localhost/?code=..., which nothing serves: the
# page fails to load, and the person copies its address back to us.
CONSOLE_REDIRECT_URI = "http://localhost"


def require_google(what: str) -> None:
    """Raise a :class:`SourceError` naming the extra to install if the Google libraries are missing."""
    try:
        import google.auth  # noqa: F401
        import google_auth_oauthlib  # type: ignore[import-untyped]  # noqa: F401
        import googleapiclient  # type: ignore[import-untyped]  # noqa: F401
    except ImportError as exc:
        raise SourceError(f"{what} needs the Google API libraries ({exc.name} is missing): {INSTALL_HINT}") from None


# --- the stored token ---------------------------------------------------------------------------


def load_user_credentials(
    token_path: str | os.PathLike[str],
    *,
    client_secrets: str | os.PathLike[str] | None = None,
    request: Any = None,
) -> Any:
    """The signed-in user's credentials from ``token_path``, refreshed (and saved) if expired.

    ``request`` is a :class:`google.auth.transport.Request` for the refresh
    (default: one over ``requests``).  ``client_secrets`` only improves the
    message when there is no token yet.
    """
    require_google("Google Drive")
    from google.auth.exceptions import RefreshError, TransportError
    from google.oauth2.credentials import Credentials

    path = Path(token_path)
    if not path.is_file():
        first = "" if client_secrets else f"{MISSING_SECRETS}; then "
        raise SourceAccessError(f"not signed in to Google Drive (no token at {path}): {first}run `{LOGIN_HINT}`")
    try:
        creds = Credentials.from_authorized_user_file(str(path), SCOPES)  # type: ignore[no-untyped-call]
    except (ValueError, OSError) as exc:
        # json's errors are ValueErrors too; so is a token missing its refresh_token.
        raise SourceAccessError(f"{path}: not a usable Google sign-in token ({exc}); sign in again: {LOGIN_HINT}") from None
    if creds.valid:
        return creds
    if not creds.refresh_token:
        raise SourceAccessError(f"the Google sign-in in {path} has expired; sign in again: {LOGIN_HINT}")
    if request is None:
        import google.auth.transport.requests

        request = google.auth.transport.requests.Request()
    try:
        creds.refresh(request)
    except RefreshError as exc:
        # invalid_grant: the refresh token was revoked, expired (7 days for an app in
        # "testing" mode) or the password changed.  Only a new sign-in helps.
        raise SourceAccessError(
            f"the Google sign-in in {path} is no longer accepted ({first_line(exc)}); sign in again: {LOGIN_HINT}"
        ) from None
    except TransportError as exc:
        raise SourceError(f"cannot reach Google to refresh the sign-in token: {first_line(exc)}") from None
    save_token(creds, path)
    log.info("refreshed the Google sign-in token in %s", path)
    return creds


def save_token(creds: Any, token_path: str | os.PathLike[str]) -> None:
    """Write ``creds`` as JSON to ``token_path``: mode 0600 from the first byte, replaced atomically."""
    write_private(Path(token_path), creds.to_json().encode("utf-8"))


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, never leaving a half-written file."""
    try:
        # A token is a password: its directory is private too when we create it.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = new_temp_file(path, 0o600)
    except OSError as exc:
        raise SourceError(f"{path}: cannot write the sign-in token: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError):
            raise SourceError(f"{path}: cannot write the sign-in token: {exc.strerror or exc}") from None
        raise


def new_temp_file(dest: Path, mode: int) -> tuple[int, Path]:
    """Create a new, empty temporary file beside ``dest`` with ``mode`` (less the umask); its fd and path.

    ``os.open`` with ``O_EXCL`` sets the mode at creation, so no other user can
    open the file in the moment before a ``chmod``; and it is in ``dest``'s
    directory, so ``os.replace`` onto ``dest`` is a rename, atomic.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# --- service accounts ---------------------------------------------------------------------------


def load_service_account(key_file: str | os.PathLike[str]) -> Any:
    """Credentials from a service-account key file, read-only scope."""
    require_google("Google Drive")
    from google.oauth2 import service_account

    try:
        return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            os.fspath(key_file), scopes=SCOPES
        )
    except OSError as exc:
        raise SourceAccessError(f"{key_file}: cannot read the service-account key: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise SourceAccessError(f"{key_file}: not a Google service-account key ({first_line(exc)})") from None


# --- signing in ---------------------------------------------------------------------------------


def _tell(text: str) -> None:
    # Signing in is a conversation with a person; the CLI passes its own.
    sys.stderr.write(text + "\n")


def login(
    client_secrets: str | os.PathLike[str] | None,
    token_path: str | os.PathLike[str],
    console: bool = False,
    *,
    show: Callable[[str], None] = _tell,
    ask: Callable[[str], str] = input,
) -> Any:
    """Sign in with the installed-app OAuth flow and store the token as JSON (mode 0600).

    With a browser on this machine, Google's consent page opens and a one-shot
    server on a free loopback port receives the answer.  With ``console`` (or
    when no browser can be found: a headless machine) the person opens the
    address on any device, and pastes back the address the browser ends up on.
    Returns the credentials.
    """
    if client_secrets is None:
        raise SourceAccessError(MISSING_SECRETS)
    require_google("signing in to Google Drive")
    import webbrowser

    from google_auth_oauthlib.flow import InstalledAppFlow  # type: ignore[import-untyped]

    secrets_path = Path(client_secrets)
    if not secrets_path.is_file():
        raise SourceAccessError(f"{secrets_path}: no such file; {MISSING_SECRETS}")
    try:
        flow = InstalledAppFlow.from_client_secrets_file(str(secrets_path), scopes=SCOPES)
    except (OSError, ValueError, KeyError) as exc:
        raise SourceAccessError(
            f"{secrets_path}: not a Google OAuth client secrets file ({first_line(exc)}); "
            "ask the dataset's maintainer for the credentials.json of a Desktop app client"
        ) from None
    if not console:
        try:
            webbrowser.get()
        except webbrowser.Error:
            show("No web browser found here: signing in by copy and paste instead.")
            console = True
    import requests
    from oauthlib.oauth2.rfc6749.errors import OAuth2Error  # type: ignore[import-untyped]

    try:
        creds = _console_flow(flow, show, ask) if console else _browser_flow(flow)
    except OAuth2Error as exc:
        # A refused consent (access_denied), a code used twice or too late (invalid_grant).
        raise SourceAccessError(
            f"Google refused the sign-in: {exc.description or exc.error}; run `{LOGIN_HINT}` again"
        ) from None
    except (requests.RequestException, OSError) as exc:
        raise SourceError(f"cannot reach Google to sign in: {first_line(exc)}") from None
    save_token(creds, token_path)
    if not creds.refresh_token:
        log.warning("Google gave no refresh token: you will have to sign in again when this one expires")
    return creds


def _browser_flow(flow: Any) -> Any:
    # prompt=consent: Google issues a refresh token only on a consent screen, and
    # a person signing in again (after a revoked token) may otherwise skip it.
    return flow.run_local_server(
        port=0,
        prompt="consent",
        authorization_prompt_message="Your browser should open Google's sign-in page. If it does not, open:\n{url}",
        success_message="Signed in: pyowtorrent may read the dataset folder. You can close this window.",
    )


def _console_flow(flow: Any, show: Callable[[str], None], ask: Callable[[str], str]) -> Any:
    flow.redirect_uri = CONSOLE_REDIRECT_URI
    url, state = flow.authorization_url(prompt="consent")
    show(
        "Open this address in a browser on any device and sign in:\n\n"
        f"{url}\n\n"
        "Google then sends the browser to an address starting with http://localhost/ "
        "that does not load; that is expected. Copy that whole address from the address bar."
    )
    try:
        pasted = ask("Address (or just the code): ")
    except EOFError:
        raise SourceAccessError(f"no answer to read (standard input is closed); run `{LOGIN_HINT}` in a terminal") from None
    code = code_from_pasted(pasted, state)
    flow.fetch_token(code=code)
    return flow.credentials


def code_from_pasted(pasted: str, state: str) -> str:
    """The authorization code in what the person pasted: the redirected address, or the bare code."""
    text = pasted.strip()
    if not text:
        raise SourceAccessError(f"no address or code given; run `{LOGIN_HINT} --console` again")
    if "://" not in text and "code=" not in text:
        return text
    query = parse_qs(urlsplit(text).query if "://" in text else text.lstrip("?"))
    if "error" in query:
        raise SourceAccessError(f"Google did not grant access: {query['error'][0]}")
    if query.get("state", [state])[0] != state:
        # Another sign-in attempt's answer: using it would defeat the state check.
        raise SourceAccessError(f"that address is from another sign-in attempt; run `{LOGIN_HINT}` again")
    codes = query.get("code")
    if not codes:
        raise SourceAccessError("no code in that address; copy the whole address the browser ended up on")
    return codes[0]


def first_line(exc: BaseException) -> str:
    # google-auth's errors carry (message, response) in args; the message is what a person reads.
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = first.strip() or type(exc).__name__
    return text.splitlines()[0]
