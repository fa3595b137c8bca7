"""BEP 6 allowed-fast sets: which pieces a peer may have while choked, both ways, sans-IO.

*Allowed Fast* lets a new peer start before anyone unchokes it: the sender
says "ask me for these pieces and I will send them even while I choke you".
:func:`allowed_fast_set` is BEP 6's canonical generator, so that two peers
offering *k* pieces to one address offer the same *k*: SHA-1 over the
receiver's masked address and the info-hash, hashed again and again, each
hash cut into five big-endian 32-bit numbers taken modulo the number of
pieces.  The mask keeps a host that holds several addresses of one network
from collecting several sets (IPv4: BEP 6's /24).

:class:`FastGrants` is what we gave one peer (and how much of each piece it
has had while choked); :class:`FastOffers` is what one peer gave us.  No
clock, no I/O: the peer driver asks them.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable

__all__ = [
    "ALLOWED_FAST_SET_SIZE",
    "CHOKED_REQUESTS_PER_BLOCK",
    "MAX_OFFERED",
    "FastGrants",
    "FastOffers",
    "allowed_fast_set",
    "masked_address",
]

# BEP 6: "We currently set k to 10".  libtorrent's default is 5; a bigger set
# starts a new peer sooner at the cost of pieces given away unreciprocated.
ALLOWED_FAST_SET_SIZE = 10
# A peer may ask for a granted piece's blocks this many times over while
# choked (re-requests after a timeout, a piece that failed its hash); beyond
# that its requests are refused like any other while choked.  libtorrent's
# bound, where it disconnects instead.
CHOKED_REQUESTS_PER_BLOCK = 3
# Pieces one peer may offer us.  Honest peers offer their k (libtorrent 5,
# BEP 6's 10); more only makes us scan and remember.
MAX_OFFERED = 64


def masked_address(ip: str) -> bytes:
    """The bytes BEP 6 hashes for ``ip``: IPv4 with its last octet zeroed.

    An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 peer)
    counts as the IPv4 address, so both kinds of socket give a peer one set.
    BEP 6 makes "no provisions for IPv6": we zero all but the /64 (what one
    host is usually given, as the /24 was for IPv4), 16 bytes in all.
    """
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    packed = address.packed
    if len(packed) == 4:
        return packed[:3] + b"\0"
    return packed[:8] + bytes(8)


def allowed_fast_set(ip: str, info_hash: bytes, num_pieces: int, k: int = ALLOWED_FAST_SET_SIZE) -> list[int]:
    """BEP 6's allowed-fast set of ``k`` pieces for the peer at ``ip``, in the order generated.

    With no more pieces than ``k`` every piece is in it (the canonical loop
    could not find ``k`` distinct ones; libtorrent does the same).
    """
    if len(info_hash) != 20:
        raise ValueError("an info-hash is 20 bytes")
    if num_pieces < 0 or k < 0:
        raise ValueError("num_pieces and k must not be negative")
    if num_pieces <= k:
        return list(range(num_pieces))
    chosen: dict[int, None] = {}  # insertion-ordered set
    x = masked_address(ip) + info_hash
    while len(chosen) < k:
        x = hashlib.sha1(x).digest()
        for j in range(0, 20, 4):
            if len(chosen) >= k:
                break
            chosen.setdefault(int.from_bytes(x[j : j + 4], "big") % num_pieces)
    return list(chosen)


class FastGrants:
    """The allowed-fast pieces we gave one peer, and the requests for each we took while choking it."""

    __slots__ = ("pieces", "_taken")

    def __init__(self, pieces: Iterable[int]) -> None:
        self.pieces = frozenset(pieces)
        self._taken: dict[int, int] = {}

    def __contains__(self, index: int) -> bool:
        return index in self.pieces

    def take(self, index: int, blocks_in_piece: int, peer_has: int = 0) -> bool:
        """A request for piece ``index`` while we choke the peer, which has ``peer_has`` pieces: True
        if we serve it (and it is counted).  Allowed fast is for starting peers: as BEP 6's reference
        implementation does, a peer with more pieces than the set holds is refused."""
        if index not in self.pieces or peer_has > len(self.pieces):
            return False
        taken = self._taken.get(index, 0)
        if taken >= CHOKED_REQUESTS_PER_BLOCK * blocks_in_piece:
            return False
        self._taken[index] = taken + 1
        return True


class FastOffers:
    """The pieces one peer said we may ask for while it chokes us (BEP 6 ``allowed_fast``), bounded."""

    __slots__ = ("pieces",)

    def __init__(self) -> None:
        self.pieces: set[int] = set()

    def __contains__(self, index: int) -> bool:
        return index in self.pieces

    def __bool__(self) -> bool:
        return bool(self.pieces)

    def offer(self, index: int) -> bool:
        """The peer offered ``index``: False if that told us nothing (offered already, or over the bound)."""
        if index in self.pieces or len(self.pieces) >= MAX_OFFERED:
            return False
        self.pieces.add(index)
        return True

    def withdraw(self, index: int) -> None:
        """It refused a request for ``index`` while choking us: ask no more for it (libtorrent does the same)."""
        self.pieces.discard(index)
