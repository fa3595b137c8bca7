"""Peer exchange (BEP 11 ``ut_pex``) for one torrent: tell peers whom we trade with, learn whom they do.

Telling: every peer that advertised ``ut_pex`` gets, at most once a minute
(BEP 11), the peers we connected to since the last message we sent it
(``added``, with flags: seed, reachable, prefers encryption) and those we no
longer are (``dropped``), at most 50 of each a message.  A peer we dialled is
advertised at the address we dialled; one that dialled us at its IP and the
listen port its extension handshake gave, or not at all (libtorrent does the
same: only connectable contacts are worth passing on).  The first message
goes at the first tick after the peer's extension handshake.

Learning: each message is checked against what an honest peer sends.  More
than :data:`PEX_BURST` messages within a minute is a flood and ends the
connection (libtorrent counts six back, because a rate-limited connection
may deliver several late ones at once).  From one source we take at most
:data:`MAX_LEARNED_PER_SOURCE` contacts at a time (BEP 11: "avoid taking all
connection candidates from a single PEX source"; libtorrent's
``max_pex_peers``) and at most :data:`MAX_PORTS_PER_IP` ports of one IP (BEP
11 says to ignore duplicate IPs, against swarms that would aim our dials at
one victim; a few stay, for peers sharing a NAT or a test host).  Port 0,
unspecified, multicast and reserved addresses are ignored, and private or
loopback ones unless the source is itself on such an address (libtorrent's
rule).  We never add ourselves: an address at our listen port on an IP a peer
told us is ours (BEP 10 ``yourip``), or one the dialler found to be us.

Private torrents (BEP 27) get none of it: ``ut_pex`` is not advertised, the
wire connection neither decodes nor sends PEX, and this class does nothing.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque
from collections.abc import Callable, Iterable

from ..wire.events import Pex, PexPeer
from ..wire.pex import PEX_EXTENSION, PexFlags
from .clock import Clock
from .conduct import PeerMisbehaved
from .net import Address
from .peer import Peer

log = logging.getLogger(__name__)

__all__ = ["MAX_LEARNED_PER_SOURCE", "PEX_ID", "PEX_INTERVAL", "PeerExchange", "usable_contact"]

# The id we ask peers to send ut_pex under (libtorrent's choice too).
PEX_ID = 1
# BEP 11: "no more than 1 PEX message per minute".
PEX_INTERVAL = 60.0
# BEP 11: "the combined amount of added v4/v6 contacts should not exceed 50
# entries. The same applies to dropped entries."
MAX_ADDED = 50
MAX_DROPPED = 50
# Messages from one peer within PEX_INTERVAL before it counts as a flood.
PEX_BURST = 6
MAX_LEARNED_PER_SOURCE = 50
MAX_PORTS_PER_IP = 4
# Our own IPs as peers see them (BEP 10 yourip): a handful, one per interface or NAT.
MAX_SELF_IPS = 8


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return ip


def _is_local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return ip.is_private or ip.is_loopback or ip.is_link_local


def usable_contact(ip: str, port: int, source_ip: str) -> Address | None:
    """The address to dial for a contact that ``source_ip`` sent us, or None if it is not worth a dial."""
    address, source = _ip(ip), _ip(source_ip)
    if address is None or not 0 < port < 1 << 16:
        return None
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return None
    if _is_local(address) and not (source is not None and _is_local(source)):
        return None  # a stranger pointing us at our own network
    return str(address), port


class _Told:
    """What we told one peer: the contacts it knows as connected, and when it may hear from us again."""

    __slots__ = ("contacts", "next_at")

    def __init__(self, now: float) -> None:
        self.contacts: dict[Address, None] = {}
        self.next_at = now


class _Heard:
    """What one peer told us: when its last messages came, and the contacts we took from it."""

    __slots__ = ("arrivals", "learned")

    def __init__(self) -> None:
        self.arrivals: deque[float] = deque(maxlen=PEX_BURST)
        self.learned: dict[Address, None] = {}


class PeerExchange:
    """One torrent's BEP 11 bookkeeping, both ways; ``enabled`` is False for a private torrent."""

    def __init__(
        self,
        enabled: bool,
        clock: Clock,
        add_peer: Callable[[str, int], None],
        is_self: Callable[[Address], bool],
        listen_port: Callable[[], int],
    ) -> None:
        self.enabled = enabled
        self.clock = clock
        self.add_peer = add_peer
        self.is_self = is_self
        self.listen_port = listen_port
        self._told: dict[Peer, _Told] = {}
        self._heard: dict[Peer, _Heard] = {}
        self._self_ips: dict[str, None] = {}
        self.learned = 0  # contacts passed on to the peer set, for the curious

    def extension_ids(self) -> dict[str, int]:
        """What goes into the ``m`` of our extension handshake."""
        return {PEX_EXTENSION: PEX_ID} if self.enabled else {}

    def forget(self, peer: Peer) -> None:
        self._told.pop(peer, None)
        self._heard.pop(peer, None)

    # -- telling ---------------------------------------------------------------------

    def tick(self, peers: Iterable[Peer]) -> None:
        """Send each peer that takes ut_pex the changes since its last message, if a minute has passed."""
        if not self.enabled:
            return
        now = self.clock.now()
        peers = [p for p in peers if not p.closed.is_set()]
        current: dict[Address, int] = {}
        advertised: dict[Peer, Address] = {}
        for p in peers:
            contact = _contact_of(p)
            if contact is not None:
                current[contact[0]] = contact[1]
                advertised[p] = contact[0]
        for p in peers:
            if PEX_EXTENSION not in p.conn.remote_extensions:
                continue
            told = self._told.get(p)
            if told is None:
                told = self._told[p] = _Told(now)
            if now < told.next_at:
                continue
            itself = advertised.get(p)
            added = [a for a in current if a not in told.contacts and a != itself and a != p.address][:MAX_ADDED]
            dropped = [a for a in told.contacts if a not in current][:MAX_DROPPED]
            if not added and not dropped:
                continue  # nothing new: the next change may go at once
            p.send(Pex(tuple(PexPeer(ip, port, current[(ip, port)]) for ip, port in added), tuple(dropped)))
            told.contacts.update(dict.fromkeys(added))
            for a in dropped:
                del told.contacts[a]
            told.next_at = now + PEX_INTERVAL

    # -- learning --------------------------------------------------------------------

    def on_message(self, peer: Peer, message: Pex) -> None:
        """A ut_pex message from ``peer``: new contacts go to the peer set; a flood ends the connection."""
        if not self.enabled:
            return  # unreachable: the connection of a private torrent does not decode PEX
        now = self.clock.now()
        heard = self._heard.get(peer)
        if heard is None:
            heard = self._heard[peer] = _Heard()
        if len(heard.arrivals) == PEX_BURST and now - heard.arrivals[0] < PEX_INTERVAL:
            raise PeerMisbehaved(f"{PEX_BURST + 1} PEX messages within {PEX_INTERVAL:g} s (BEP 11: one a minute)")
        heard.arrivals.append(now)
        self._note_yourip(peer)
        for ip, port in message.dropped:
            gone = _ip(ip)
            if gone is not None:
                heard.learned.pop((str(gone), port), None)
        source = peer.address[0]
        for contact in message.added:
            if len(heard.learned) >= MAX_LEARNED_PER_SOURCE:
                break
            address = usable_contact(contact.ip, contact.port, source)
            if address is None or address in heard.learned or address == peer.address or self._ourselves(address):
                continue
            if sum(1 for a in heard.learned if a[0] == address[0]) >= MAX_PORTS_PER_IP:
                continue
            heard.learned[address] = None
            self.learned += 1
            self.add_peer(*address)

    def _note_yourip(self, peer: Peer) -> None:
        handshake = peer.extension_handshake
        if handshake is None or handshake.yourip is None:
            return
        ip = _ip(str(ipaddress.ip_address(handshake.yourip)))  # 4 or 16 bytes: checked by the wire
        if ip is None or str(ip) in self._self_ips:
            return
        if len(self._self_ips) >= MAX_SELF_IPS:
            del self._self_ips[next(iter(self._self_ips))]
        self._self_ips[str(ip)] = None

    def _ourselves(self, address: Address) -> bool:
        return (address[0] in self._self_ips and address[1] == self.listen_port()) or self.is_self(address)


def _contact_of(peer: Peer) -> tuple[Address, int] | None:
    """Where others can reach ``peer``, and its BEP 11 flags; None if we do not know a listening address."""
    handshake = peer.extension_handshake
    ip = _ip(peer.address[0])
    if ip is None:
        return None
    flags = 0
    if peer.outgoing:
        port = peer.address[1]
        flags |= PexFlags.REACHABLE
    elif handshake is not None and handshake.p:
        port = handshake.p
    else:
        return None
    if peer.is_seed:
        flags |= PexFlags.SEED
    if handshake is not None and handshake.raw.get(b"e") == 1:
        flags |= PexFlags.ENCRYPTION
    return (str(ip), port), flags
