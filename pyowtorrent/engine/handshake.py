"""Connecting and handshakes: everything before a connection belongs to a torrent.

The session owns sockets: it dials and accepts through its
:class:`~pyowtorrent.engine.net.Network`, exchanges the BEP 3 handshake
with a deadline, refuses junk (an HTTP server, random bytes) with a
:class:`ProtocolError` that ends only that connection, and hands a torrent
a :class:`PeerLink` whose handshake is done.

The handshake may come behind message stream encryption
(:mod:`pyowtorrent.wire.mse`), as the session's ``encryption`` policy
allows: an incoming stream that does not start with the protocol string
may be a key exchange; a dial may be one.  After an encrypted handshake the
link's reader and writer are :mod:`~pyowtorrent.engine.crypto_stream`'s, so
nothing past this module knows.  The whole exchange, key exchange included,
runs under one deadline.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Literal, get_args

from ..errors import ProtocolError
from ..wire import Handshake, parse_handshake
from ..wire.handshake import HANDSHAKE_LENGTH, PROTOCOL
from ..wire.mse import CryptoMethod, Initiator, MseResult, Receiver, is_plaintext_opening
from .clock import Clock
from .crypto_stream import secure_stream
from .net import Address, Network

__all__ = [
    "CONNECT_TIMEOUT",
    "DialOrder",
    "ENCRYPTION_POLICIES",
    "Encryption",
    "HANDSHAKE_TIMEOUT",
    "HungUp",
    "PeerLink",
    "accept_handshake",
    "dial_handshake",
    "open_stream",
    "read_handshake",
]

CONNECT_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0

# "disabled": plaintext only, and an incoming key exchange is junk.
# "enabled": plaintext first; encrypted for peers that want it (they hang up on
#   a plaintext handshake, or send a key exchange); the stream stays plaintext
#   where the peer allows it.
# "required": encrypted handshakes only, and RC4 over the whole stream.
Encryption = Literal["disabled", "enabled", "required"]
ENCRYPTION_POLICIES: tuple[Encryption, ...] = get_args(Encryption)


class HungUp(ConnectionError):
    """The remote took the connection and closed it before its handshake.

    What a client that requires encryption does with a plaintext handshake,
    and a plaintext-only one with a key exchange: worth one try the other way.
    """


# Failures that end one connection attempt, and nothing more.
CONNECTION_FAILURES = (OSError, TimeoutError, asyncio.IncompleteReadError, ProtocolError)


@dataclass
class PeerLink:
    """A connection whose remote handshake has been read (and ours sent, when we dialled)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    address: Address
    handshake: Handshake
    data: bytes  # the remote's handshake as read, for the torrent's protocol object
    outgoing: bool
    # None: a plaintext handshake; else what the encrypted one chose for the stream.
    encryption: CryptoMethod | None = None


class DialOrder:
    """Which handshakes a dial tries, in turn, as the encryption policy says.

    ``None`` is a plaintext handshake, else the stream methods offered.  With
    "enabled", plaintext first (it costs less), except for peers that took
    only an encrypted one before: remembered, as libtorrent does, up to
    ``capacity`` of them, the oldest forgotten first.
    """

    def __init__(self, policy: Encryption, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self._encrypted_first: OrderedDict[Address, None] = OrderedDict()

    def handshakes(self, address: Address) -> list[CryptoMethod | None]:
        if self.policy == "disabled":
            return [None]
        if self.policy == "required":
            return [CryptoMethod.RC4]
        either = CryptoMethod.PLAINTEXT | CryptoMethod.RC4  # the peer chooses
        return [either, None] if address in self._encrypted_first else [None, either]

    def remember(self, address: Address, encrypted: bool) -> None:
        """What the handshake with ``address`` that worked was."""
        if self.policy != "enabled":
            return
        if not encrypted:
            self._encrypted_first.pop(address, None)
            return
        self._encrypted_first[address] = None
        self._encrypted_first.move_to_end(address)
        if len(self._encrypted_first) > self.capacity:
            self._encrypted_first.popitem(last=False)


async def open_stream(
    network: Network, clock: Clock, address: Address, local_host: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with clock.timeout(CONNECT_TIMEOUT):
        return await network.connect(address[0], address[1], local_host=local_host)


async def read_handshake(reader: asyncio.StreamReader, clock: Clock) -> tuple[bytes, Handshake]:
    """The remote's 68-byte handshake; raises on junk (early: the protocol string comes first) or a timeout."""
    async with clock.timeout(HANDSHAKE_TIMEOUT):
        return await _read_handshake(reader)


async def _read_handshake(reader: asyncio.StreamReader, head: bytes = b"") -> tuple[bytes, Handshake]:
    if len(head) < len(PROTOCOL):
        head += await reader.readexactly(len(PROTOCOL) - len(head))
    parse_handshake(head)  # not "\x13BitTorrent protocol": refuse before waiting for the rest
    data = head + await reader.readexactly(HANDSHAKE_LENGTH - len(head))
    hs = parse_handshake(data)
    assert hs is not None
    return data, hs


async def _encrypted_handshake(
    side: Initiator | Receiver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, received: bytes
) -> MseResult:
    """Run ``side`` to its end; reads exactly what it wants, so nothing past the handshake is read here."""
    out = side.receive_data(received)
    while side.result is None:
        if out:
            writer.write(out)
        out = side.receive_data(await reader.readexactly(side.wanted))
    if out:
        writer.write(out)
    return side.result


async def accept_handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    address: Address,
    clock: Clock,
    encryption: Encryption,
    find_skey: Callable[[bytes], bytes | None],
    randbytes: Callable[[int], bytes],
) -> PeerLink:
    """An incoming connection's handshake, plaintext or encrypted as ``encryption`` allows.

    ``find_skey`` names our torrent from an encrypted handshake's
    HASH('req2', info-hash) (:func:`~pyowtorrent.wire.mse.skey_hash`).
    Raises on junk, a refused kind of handshake, or the deadline.
    """
    async with clock.timeout(HANDSHAKE_TIMEOUT):
        head = await reader.readexactly(len(PROTOCOL))
        if encryption == "disabled" or is_plaintext_opening(head):
            if encryption == "required":
                raise ProtocolError("a plaintext handshake, and this session requires encryption")
            data, hs = await _read_handshake(reader, head)
            return PeerLink(reader, writer, address, hs, data, outgoing=False)
        allowed = CryptoMethod.RC4 if encryption == "required" else CryptoMethod.PLAINTEXT | CryptoMethod.RC4
        result = await _encrypted_handshake(Receiver(find_skey, randbytes, allowed), reader, writer, head)
        reader, writer = secure_stream(reader, writer, result)
        data, hs = await _read_handshake(reader)
    if hs.info_hash != result.skey:
        # The stream key is the torrent both sides keyed RC4 with; another one here is a lie.
        raise ProtocolError("an encrypted handshake for one torrent, then a BitTorrent handshake for another")
    return PeerLink(reader, writer, address, hs, data, outgoing=False, encryption=result.method)


async def dial_handshake(
    network: Network,
    clock: Clock,
    address: Address,
    handshake: bytes,
    info_hash: bytes,
    encrypt: CryptoMethod | None,
    randbytes: Callable[[int], bytes],
    local_host: str | None = None,
) -> PeerLink:
    """Connect, send our ``handshake`` (plaintext, or as the initial payload of an encrypted
    handshake offering the stream methods ``encrypt``), read the remote's.

    Raises :class:`HungUp` when the remote closed the connection before its
    handshake, so that the caller may try the other kind; other failures as
    they come (every one in ``CONNECTION_FAILURES``).
    """
    reader, writer = await open_stream(network, clock, address, local_host)
    method: CryptoMethod | None = None
    try:
        async with clock.timeout(HANDSHAKE_TIMEOUT):
            if encrypt is None:
                writer.write(handshake)
            else:
                initiator = Initiator(info_hash, handshake, randbytes, encrypt)
                writer.write(initiator.first_bytes())
                result = await _encrypted_handshake(initiator, reader, writer, b"")
                reader, writer = secure_stream(reader, writer, result)
                method = result.method
            data, hs = await _read_handshake(reader)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        writer.close()
        raise HungUp(f"closed before its handshake ({'encrypted' if encrypt else 'plaintext'})") from exc
    except BaseException:
        writer.close()
        raise
    return PeerLink(reader, writer, address, hs, data, outgoing=True, encryption=method)
