"""The configuration file: one TOML file read by the CLI, the daemon and the owmeta loader alike.

Where it is: ``$PYOWTORRENT_CONFIG`` if set, else the platform's config
directory (``$XDG_CONFIG_HOME/pyowtorrent/config.toml``, by default
``~/.config/pyowtorrent/config.toml`` on Linux).  A missing file means the
defaults.  Environment variables override the file, command-line flags
override both (callers pass them to :meth:`Config.merged`).

Example::

    [session]
    listen = ["0.0.0.0", "::"]
    port = 6881
    upload_rate_limit = 0          # bytes per second, 0: no cap
    max_connections = 200

    [paths]
    download_dir = "~/datasets"
    state_dir = "~/.local/state/pyowtorrent"

    [sources]
    torrent_source = "https://example.org/torrents/"   # a directory, a URL, or gdrive:FOLDER_ID

    [gdrive]
    folder_id = "1AbC..."
    client_secrets = "~/.config/pyowtorrent/credentials.json"
    token = "~/.config/pyowtorrent/gdrive-token.json"
    # service_account_key = "/etc/pyowtorrent/service-account.json"

    [owmeta]
    seed_with_daemon = false
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

__all__ = ["Config", "load_config", "default_config_path", "default_state_dir", "ENV_OVERRIDES"]


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _platform_dir(xdg_var: str, xdg_default: str, env: Mapping[str, str]) -> Path:
    if sys.platform == "win32":
        return Path(env.get("APPDATA") or _home() / "AppData" / "Roaming") / "pyowtorrent"
    if sys.platform == "darwin":
        return _home() / "Library" / "Application Support" / "pyowtorrent"
    base = env.get(xdg_var)
    # The XDG spec: a relative path in the variable is invalid and is ignored.
    return (Path(base) if base and os.path.isabs(base) else _home() / xdg_default) / "pyowtorrent"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("PYOWTORRENT_CONFIG"):
        return Path(env["PYOWTORRENT_CONFIG"]).expanduser()
    return _platform_dir("XDG_CONFIG_HOME", ".config", env) / "config.toml"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    return _platform_dir("XDG_STATE_HOME", ".local/state", os.environ if env is None else env)


@dataclass(frozen=True)
class Config:
    """Every setting, with its default.  Paths are expanded (``~``) and absolute."""

    listen: tuple[str, ...] = ("0.0.0.0", "::")
    port: int = 0
    upload_rate_limit: int = 0
    max_connections: int = 200
    download_dir: Path = field(default_factory=lambda: Path.cwd())
    state_dir: Path = field(default_factory=default_state_dir)
    torrent_source: str | None = None
    gdrive_folder_id: str | None = None
    gdrive_client_secrets: Path | None = None
    gdrive_token: Path | None = None
    gdrive_service_account_key: Path | None = None
    owmeta_seed_with_daemon: bool = False
    source_path: Path | None = None  # the file these came from, if any

    def merged(self, **overrides: Any) -> Config:
        """This config with the settings given (not ``None``) replaced: command-line flags."""
        given = {k: v for k, v in overrides.items() if v is not None}
        for key in given:
            if key not in _FIELDS:
                raise ConfigError(f"no such setting: {key}")
        return dataclasses.replace(self, **{k: _coerce_override(k, v) for k, v in given.items()})

    @property
    def gdrive_token_path(self) -> Path:
        """Where the Drive sign-in token is kept (JSON, mode 0600)."""
        return self.gdrive_token or default_config_path().parent / "gdrive-token.json"


_FIELDS = {f.name for f in dataclasses.fields(Config)}

# (section, key) in the file -> (attribute, kind)
_SCHEMA: dict[tuple[str, str], tuple[str, str]] = {
    ("session", "listen"): ("listen", "str_list"),
    ("session", "port"): ("port", "port"),
    ("session", "upload_rate_limit"): ("upload_rate_limit", "count"),
    ("session", "max_connections"): ("max_connections", "positive"),
    ("paths", "download_dir"): ("download_dir", "path"),
    ("paths", "state_dir"): ("state_dir", "path"),
    ("sources", "torrent_source"): ("torrent_source", "str"),
    ("gdrive", "folder_id"): ("gdrive_folder_id", "str"),
    ("gdrive", "client_secrets"): ("gdrive_client_secrets", "path"),
    ("gdrive", "token"): ("gdrive_token", "path"),
    ("gdrive", "service_account_key"): ("gdrive_service_account_key", "path"),
    ("owmeta", "seed_with_daemon"): ("owmeta_seed_with_daemon", "bool"),
}

# Environment variable -> attribute.  They override the file.
ENV_OVERRIDES: dict[str, str] = {
    "PYOWTORRENT_STATE_DIR": "state_dir",
    "PYOWTORRENT_DOWNLOAD_DIR": "download_dir",
    "PYOWTORRENT_PORT": "port",
    "PYOWTORRENT_TORRENT_SOURCE": "torrent_source",
}
_KIND_OF = {attr: kind for attr, kind in _SCHEMA.values()}


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """The configuration: defaults, then the file, then the environment.

    ``path`` None: the default location, where a missing file means the
    defaults.  A path given explicitly must exist.
    """
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("PYOWTORRENT_CONFIG"))
    file = Path(path).expanduser() if path is not None else default_config_path(env)
    values: dict[str, Any] = {"state_dir": default_state_dir(env)}
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{file}: no such configuration file") from None
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if text is not None:
        values.update(_parse(file, text))
        values["source_path"] = file
    for var, attr in ENV_OVERRIDES.items():
        raw = env.get(var)
        if raw:
            try:
                values[attr] = _convert(_KIND_OF[attr], raw if _KIND_OF[attr] != "port" else _int(raw))
            except ValueError as exc:
                raise ConfigError(f"environment variable {var}={raw!r}: {exc}") from None
    return Config(**values)


def _parse(file: Path, text: str) -> dict[str, Any]:
    import tomllib  # here, not at the top: most runs have no file to parse, and it costs ~3 ms to import

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)".
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in doc.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{file}, line {_line_of(text, section)}: {section!r} is not a [section]")
        for key, raw in table.items():
            where = f"{file}, line {_line_of(text, key, section)}"
            entry = _SCHEMA.get((section, key))
            if entry is None:
                known = sorted(k for s, k in _SCHEMA if s == section)
                hint = f" (known in [{section}]: {', '.join(known)})" if known else f" (no section [{section}])"
                raise ConfigError(f"{where}: unknown setting {section}.{key}{hint}")
            attr, kind = entry
            try:
                values[attr] = _convert(kind, raw)
            except ValueError as exc:
                raise ConfigError(f"{where}: {section}.{key}: {exc}") from None
    return values


def _line_of(text: str, key: str, section: str | None = None) -> int:
    """The line where ``key`` is set (inside ``[section]`` when given), for error messages."""
    in_section = section is None
    key_re = re.compile(rf'^\s*("?){re.escape(key)}\1\s*=')
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if section is not None and stripped.startswith("["):
            in_section = stripped.strip("[] ") == section
            if section == key and in_section:
                return n
            continue
        if in_section and key_re.match(line):
            return n
    return 0


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("not a whole number") from None


def _convert(kind: str, raw: Any) -> Any:
    if kind == "str":
        if not isinstance(raw, str) or not raw:
            raise ValueError("must be a non-empty string")
        return raw
    if kind == "path":
        if not isinstance(raw, str) or not raw:
            raise ValueError("must be a path (a non-empty string)")
        return Path(raw).expanduser().absolute()
    if kind == "str_list":
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not raw or not all(isinstance(v, str) and v for v in raw):
            raise ValueError("must be a list of addresses (strings)")
        return tuple(raw)
    if kind == "bool":
        if not isinstance(raw, bool):
            raise ValueError("must be true or false")
        return raw
    if type(raw) is not int:
        raise ValueError("must be a whole number")
    if kind == "port" and not 0 <= raw <= 65535:
        raise ValueError("must be a port number, 0 to 65535 (0: any free port)")
    if kind == "count" and raw < 0:
        raise ValueError("must be 0 or more")
    if kind == "positive" and raw < 1:
        raise ValueError("must be 1 or more")
    return raw


def _coerce_override(attr: str, value: Any) -> Any:
    kind = _KIND_OF.get(attr)
    if kind == "path" and not isinstance(value, Path):
        return Path(value).expanduser().absolute()
    if kind == "path":
        return value.expanduser().absolute()
    if kind == "str_list" and isinstance(value, (list, tuple)):
        return tuple(value)
    return value
