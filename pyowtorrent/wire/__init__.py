"""The BitTorrent peer wire protocol (BEP 3, 5, 6, 9, 10, 11), sans I/O.

Bytes in, events out; events in, bytes out (the shape of python-hyper/h11)::

    conn = PeerConnection(info_hash, peer_id, num_pieces, piece_length, total_length)
    sock.sendall(conn.handshake_bytes())
    for event in conn.receive_data(sock.recv(65536)):
        ...
    sock.sendall(conn.send(Interested()))
"""

from __future__ import annotations

from .bitfield import bitfield_bytes, bitfield_flags, bitfield_length, bits_to_set
from .connection import DEFAULT_MAX_BLOCK, DEFAULT_MAX_EXTENSION_MESSAGE, PeerConnection
from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .events import (
    AllowedFast,
    Bitfield,
    Cancel,
    Choke,
    Event,
    Extended,
    ExtensionHandshake,
    Handshake,
    Have,
    HaveAll,
    HaveNone,
    Interested,
    InvalidRequest,
    KeepAlive,
    Message,
    MetadataData,
    MetadataMessage,
    MetadataReject,
    MetadataRequest,
    NotInterested,
    Pex,
    PexPeer,
    Piece,
    Port,
    Reject,
    Request,
    Suggest,
    Unchoke,
    UnrequestedPiece,
)
from .handshake import HANDSHAKE_LENGTH, PROTOCOL, encode_handshake, parse_handshake
from .metadata import (
    METADATA_EXTENSION,
    MetadataAssembler,
    MetadataFailed,
    MetadataServer,
    MetadataVerified,
    advertised_metadata_size,
    decode_metadata_message,
    encode_metadata_message,
)
from .pex import PexFlags, decode_pex, encode_pex

__all__ = [
    "AllowedFast",
    "Bitfield",
    "Cancel",
    "Choke",
    "DEFAULT_MAX_BLOCK",
    "DEFAULT_MAX_EXTENSION_MESSAGE",
    "Event",
    "Extended",
    "ExtensionHandshake",
    "HANDSHAKE_LENGTH",
    "Handshake",
    "Have",
    "HaveAll",
    "HaveNone",
    "Interested",
    "InvalidRequest",
    "KeepAlive",
    "LocalProtocolError",
    "METADATA_EXTENSION",
    "Message",
    "MetadataAssembler",
    "MetadataData",
    "MetadataFailed",
    "MetadataMessage",
    "MetadataReject",
    "MetadataRequest",
    "MetadataServer",
    "MetadataVerified",
    "NotInterested",
    "PROTOCOL",
    "PeerConnection",
    "Pex",
    "PexFlags",
    "PexPeer",
    "Piece",
    "Port",
    "Reject",
    "RemoteProtocolError",
    "Request",
    "Suggest",
    "Unchoke",
    "UnrequestedPiece",
    "Violation",
    "advertised_metadata_size",
    "bitfield_bytes",
    "bitfield_flags",
    "bitfield_length",
    "bits_to_set",
    "decode_metadata_message",
    "decode_pex",
    "encode_handshake",
    "encode_metadata_message",
    "encode_pex",
    "parse_handshake",
]
