"""Magnet URIs (BEP 9, with BEP 53 ``so=`` and BEP 52 ``urn:btmh:``)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

from ..errors import MagnetError
from .urls import is_tracker_url

__all__ = ["Magnet", "parse_magnet"]

_MAX_URI = 64 * 1024  # a magnet is a link; anything this long is not one
_MAX_SELECT = 1 << 20  # file indexes in so= beyond this cannot be real


@dataclass(frozen=True)
class Magnet:
    info_hash: bytes | None = None  # v1, 20 bytes
    info_hash_v2: bytes | None = None  # v2, 32 bytes (SHA-256)
    display_name: str | None = None
    trackers: tuple[str, ...] = ()
    web_seeds: tuple[str, ...] = ()
    peers: tuple[tuple[str, int], ...] = ()
    select_only: tuple[int, ...] | None = None  # BEP 53 file indexes, sorted
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def uri(self) -> str:
        parts = []
        if self.info_hash is not None:
            parts.append("xt=urn:btih:" + self.info_hash.hex())
        if self.info_hash_v2 is not None:
            parts.append("xt=urn:btmh:1220" + self.info_hash_v2.hex())
        if self.display_name:
            parts.append("dn=" + quote(self.display_name, safe=""))
        parts += ["tr=" + quote(t, safe="") for t in self.trackers]
        parts += ["ws=" + quote(w, safe="") for w in self.web_seeds]
        parts += ["x.pe=" + _format_peer(h, p) for h, p in self.peers]
        if self.select_only:
            parts.append("so=" + _format_ranges(self.select_only))
        return "magnet:?" + "&".join(parts)


def parse_magnet(uri: str) -> Magnet:
    """Parse a magnet URI; :class:`MagnetError` names what is wrong with it."""
    if not isinstance(uri, str):
        raise MagnetError("a magnet URI must be a string")
    if len(uri) > _MAX_URI:
        raise MagnetError(f"magnet URI longer than {_MAX_URI} characters")
    if not uri[:8].lower() == "magnet:?":
        raise MagnetError("not a magnet URI (must start with 'magnet:?')")
    try:
        pairs = parse_qsl(uri[8:], keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise MagnetError(f"magnet URI query cannot be parsed: {exc}") from None
    v1 = v2 = None
    name = None
    trackers: list[str] = []
    seeds: list[str] = []
    peers: list[tuple[str, int]] = []
    select: tuple[int, ...] | None = None
    extra: dict[str, list[str]] = {}
    for key, value in pairs:
        k = key.lower()
        if k == "xt" or (k.startswith("xt.") and k[3:].isdigit()):
            low = value.lower()
            if low.startswith("urn:btih:"):
                v1 = _parse_btih(value[9:])
            elif low.startswith("urn:btmh:"):
                v2 = _parse_btmh(value[9:])
            else:
                extra.setdefault(key, []).append(value)
        elif k == "dn":
            name = value
        elif k == "tr" or (k.startswith("tr.") and k[3:].isdigit()):
            # libtorrent drops the URLs it finds invalid, and so do we.
            if value not in trackers and is_tracker_url(value):
                trackers.append(value)
        elif k == "ws":
            if value and value not in seeds:
                seeds.append(value)
        elif k == "x.pe":
            peers.append(_parse_peer(value))
        elif k == "so":
            select = _parse_ranges(value)
        else:
            extra.setdefault(key, []).append(value)
    if v1 is None and v2 is None:
        raise MagnetError("magnet URI has no 'xt=urn:btih:' (or 'urn:btmh:') info-hash")
    return Magnet(
        v1, v2, name, tuple(trackers), tuple(seeds), tuple(peers), select, {k: tuple(v) for k, v in extra.items()}
    )


_HEX = frozenset("0123456789abcdefABCDEF")
_BASE32 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567abcdefghijklmnopqrstuvwxyz")


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes '²' and '٣'."""
    return text.isascii() and text.isdigit()


def _parse_btih(text: str) -> bytes:
    if len(text) == 40:
        if not set(text) <= _HEX:
            raise MagnetError(f"btih info-hash {text!r} is not 40 hex digits")
        return bytes.fromhex(text)
    if len(text) == 32:
        if not set(text) <= _BASE32:
            raise MagnetError(f"btih info-hash {text!r} is not 32 base32 characters")
        try:
            return base64.b32decode(text.upper())
        except binascii.Error:
            raise MagnetError(f"btih info-hash {text!r} is not 32 base32 characters") from None
    raise MagnetError(f"btih info-hash must be 40 hex or 32 base32 characters, got {len(text)}")


def _parse_btmh(text: str) -> bytes:
    # A multihash: 0x12 (sha2-256), 0x20 (32 bytes), then the digest.
    if not set(text) <= _HEX or len(text) % 2:
        raise MagnetError(f"btmh multihash {text!r} is not hex")
    raw = bytes.fromhex(text)
    if len(raw) != 34 or raw[:2] != b"\x12\x20":
        raise MagnetError("btmh multihash must be a 32-byte sha2-256 multihash (1220…)")
    return raw[2:]


def _parse_peer(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not _digits(port_text) or not 0 < int(port_text) < 65536:
        raise MagnetError(f"x.pe peer {text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise MagnetError(f"x.pe peer {text!r} has an invalid IPv6 address") from None
    elif not host or ":" in host:
        raise MagnetError(f"x.pe peer {text!r} is not HOST:PORT (IPv6 addresses go in brackets)")
    return host, int(port_text)


def _format_peer(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_ranges(text: str) -> tuple[int, ...]:
    out: set[int] = set()
    for part in text.split(","):
        lo_text, dash, hi_text = part.partition("-")
        if not _digits(lo_text) or (dash and not _digits(hi_text)):
            raise MagnetError(f"so= item {part!r} is not an index or a range N-M")
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
        if hi < lo or hi >= _MAX_SELECT or len(out) + (hi - lo) >= _MAX_SELECT:
            raise MagnetError(f"so= range {part!r} is empty or too large")
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def _format_ranges(indexes: tuple[int, ...]) -> str:
    parts = []
    run_start = prev = None
    for i in indexes:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if run_start is not None:
            parts.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
        run_start = prev = i
    if run_start is not None:
        parts.append(str(run_start) if run_start == prev else f"{run_start}-{prev}")
    return ",".join(parts)
