"""The events of the peer wire protocol: one small immutable class per message.

Names follow the BEPs: BEP 3 (the core messages), BEP 5 (``Port``), BEP 6
(the fast extension), BEP 10 (the extension protocol) and BEP 11 (``Pex``,
an extension message the connection decodes when it speaks ``ut_pex``) and BEP 9
(``MetadataRequest``, ``MetadataData``, ``MetadataReject``: ``ut_metadata``).  The
same classes go both ways: :meth:`PeerConnection.receive_data` returns them
and :meth:`PeerConnection.send` takes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, TypeAlias

__all__ = [
    "AllowedFast",
    "Bitfield",
    "Cancel",
    "Choke",
    "Event",
    "Extended",
    "ExtensionHandshake",
    "Handshake",
    "Have",
    "HaveAll",
    "HaveNone",
    "Interested",
    "InvalidRequest",
    "KeepAlive",
    "Message",
    "MetadataData",
    "MetadataMessage",
    "MetadataReject",
    "MetadataRequest",
    "NotInterested",
    "Pex",
    "PexPeer",
    "Piece",
    "Port",
    "Reject",
    "Request",
    "Suggest",
    "Unchoke",
    "UnrequestedPiece",
]


@dataclass(frozen=True, slots=True)
class Handshake:
    """BEP 3's handshake, with the reserved bits we understand decoded."""

    info_hash: bytes
    peer_id: bytes
    fast: bool = False  # BEP 6: reserved[7] & 0x04
    extension_protocol: bool = False  # BEP 10: reserved[5] & 0x10
    dht: bool = False  # BEP 5: reserved[7] & 0x01


@dataclass(frozen=True, slots=True)
class KeepAlive:
    pass


@dataclass(frozen=True, slots=True)
class Choke:
    pass


@dataclass(frozen=True, slots=True)
class Unchoke:
    pass


@dataclass(frozen=True, slots=True)
class Interested:
    pass


@dataclass(frozen=True, slots=True)
class NotInterested:
    pass


@dataclass(frozen=True, slots=True, init=False)
class Have:
    index: int

    def __init__(self, index: int) -> None:
        _set_have_index(self, index)  # one per piece per peer in a swarm: see Piece


@dataclass(frozen=True, slots=True)
class Bitfield:
    """Piece 0 is the high bit of the first byte; spare bits are zero."""

    bits: bytes


@dataclass(frozen=True, slots=True, init=False)
class Request:
    index: int
    begin: int
    length: int

    def __init__(self, index: int, begin: int, length: int) -> None:
        # A seeder gets one per 16 KiB it sends: see Piece.
        _set_request_index(self, index)
        _set_request_begin(self, begin)
        _set_request_length(self, length)


@dataclass(frozen=True, slots=True, init=False)
class Piece:
    index: int
    begin: int
    block: bytes | memoryview = field(repr=False)  # a view lets a seeder send without an extra copy

    def __init__(self, index: int, begin: int, block: bytes | memoryview) -> None:
        # A leecher makes one per 16 KiB: the slots' own setters cost half what the
        # generated frozen ``__init__`` does (``object.__setattr__`` by name).
        _set_piece_index(self, index)
        _set_piece_begin(self, begin)
        _set_piece_block(self, block)


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    """A frozen slots class's own setter for field ``name`` (what a hand-written ``__init__`` uses)."""
    setter: Callable[[object, Any], None] = cls.__dict__[name].__set__
    return setter


_set_have_index = _slot_setter(Have, "index")
_set_request_index = _slot_setter(Request, "index")
_set_request_begin = _slot_setter(Request, "begin")
_set_request_length = _slot_setter(Request, "length")
_set_piece_index = _slot_setter(Piece, "index")
_set_piece_begin = _slot_setter(Piece, "begin")
_set_piece_block = _slot_setter(Piece, "block")


@dataclass(frozen=True, slots=True)
class Cancel:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class Port:
    """BEP 5: the sender's DHT node listens on this UDP port."""

    port: int


@dataclass(frozen=True, slots=True)
class HaveAll:
    pass


@dataclass(frozen=True, slots=True)
class HaveNone:
    pass


@dataclass(frozen=True, slots=True)
class Suggest:
    index: int


@dataclass(frozen=True, slots=True)
class Reject:
    index: int
    begin: int
    length: int


@dataclass(frozen=True, slots=True)
class AllowedFast:
    index: int


@dataclass(frozen=True, slots=True)
class ExtensionHandshake:
    """BEP 10's handshake (extended message 0).

    ``m`` maps extension names to the ids the *sender* wants to receive them
    under (0 disables one).  The well-known keys are decoded when they have
    the right type and ignored otherwise, as BEP 10 asks; ``raw`` keeps the
    whole dictionary (bytes keys) for everything else.  On sending, the typed
    fields override the same keys of ``raw``.
    """

    m: dict[str, int] = field(default_factory=dict)
    v: str | None = None
    reqq: int | None = None
    p: int | None = None
    yourip: bytes | None = None
    metadata_size: int | None = None  # BEP 9: the size of the info dictionary, if the sender has it
    raw: dict[bytes, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Extended:
    """A BEP 10 extension message other than the handshake.

    ``ext_id`` is the id the receiver of the message chose for it in its
    :class:`ExtensionHandshake`; ``payload`` is everything after that byte.
    """

    ext_id: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class PexPeer:
    """One contact of a BEP 11 ``added`` list: an IPv4 or IPv6 address (text), a port, its flags.

    ``flags`` are BEP 11's bits (:class:`~pyowtorrent.wire.pex.PexFlags`): 0x01
    prefers encryption, 0x02 seed, 0x04 uTP, 0x08 hole punching, 0x10
    reachable (the sender connected to it).
    """

    ip: str
    port: int
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Pex:
    """A BEP 11 ``ut_pex`` message: peers the sender connected to, and dropped, since its last one.

    IPv4 and IPv6 contacts share each tuple; on the wire they go to ``added``
    / ``added6`` and ``dropped`` / ``dropped6`` by family (IPv4 ones first when
    decoded).  Not a :data:`Message`: it travels as an :class:`Extended`
    under the id the receiver chose for ``ut_pex``, and only a connection
    made with ``pex=True`` sends or decodes it.
    """

    added: tuple[PexPeer, ...] = ()
    dropped: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class MetadataRequest:
    """BEP 9 ``ut_metadata`` request (msg_type 0) for one 16 KiB piece of the info dictionary."""

    piece: int


@dataclass(frozen=True, slots=True)
class MetadataData:
    """BEP 9 ``ut_metadata`` data (msg_type 1): piece ``piece`` of metadata of ``total_size`` bytes."""

    piece: int
    total_size: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MetadataReject:
    """BEP 9 ``ut_metadata`` reject (msg_type 2)."""

    piece: int


MetadataMessage: TypeAlias = MetadataRequest | MetadataData | MetadataReject
"""A BEP 9 message.  Not a :data:`Message`: like :class:`Pex` it travels as an
:class:`Extended` under the id the receiver chose for ``ut_metadata``, and only
a connection made with ``metadata=True`` sends or decodes it."""


Message: TypeAlias = (
    KeepAlive
    | Choke
    | Unchoke
    | Interested
    | NotInterested
    | Have
    | Bitfield
    | Request
    | Piece
    | Cancel
    | Port
    | HaveAll
    | HaveNone
    | Suggest
    | Reject
    | AllowedFast
    | ExtensionHandshake
    | Extended
)
"""Everything that follows the handshake."""

@dataclass(frozen=True, slots=True)
class InvalidRequest:
    """A request the remote may not make: a piece out of range, a block of length 0 or over the
    limit, or past the end of its piece.  Not a :data:`Message`: received only.

    libtorrent answers one with a reject (BEP 6) and counts it, and drops a peer only after many;
    the connection does the same: it does not fail, and a :class:`Reject` of these very fields
    may be sent back (once).  ``reason`` says what is wrong with it.
    """

    index: int
    begin: int
    length: int
    reason: str


@dataclass(frozen=True, slots=True)
class UnrequestedPiece:
    """A piece message in range and on the block grid that answers no request of ours (the block
    is dropped; only its size is kept, to count as waste).  Not a :data:`Message`: received only."""

    index: int
    begin: int
    length: int


Event: TypeAlias = Handshake | Message | Pex | MetadataMessage | InvalidRequest | UnrequestedPiece
