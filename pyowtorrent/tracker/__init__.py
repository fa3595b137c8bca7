"""Trackers: the HTTP (BEP 3, 7, 23, 48) and UDP (BEP 15) message codecs, sans I/O.

:mod:`.http_codec` builds announce and scrape URLs and reads the bencoded
answers; :mod:`.udp_codec` packs and unpacks BEP 15 datagrams; :mod:`.peers`
holds the compact peer lists both share.  Nothing here opens a socket, reads
a clock or draws a random number.
"""

from __future__ import annotations

from .http_codec import (
    MAX_RESPONSE_BYTES,
    AnnounceRequest,
    AnnounceResponse,
    ScrapeResult,
    TrackerFailure,
    announce_url,
    parse_announce_response,
    parse_scrape_response,
    scrape_request_url,
    scrape_url,
)
from .peers import encode_compact_peers, encode_compact_peers6, parse_compact_peers, parse_compact_peers6
from .udp_codec import (
    CONNECTION_ID_LIFETIME,
    ConnectResponse,
    ScrapeResponse,
    StrayPacket,
    decode_announce,
    decode_connect,
    decode_response,
    decode_scrape,
    encode_announce,
    encode_connect,
    encode_scrape,
    retransmit_timeout,
)

__all__ = [
    "CONNECTION_ID_LIFETIME",
    "MAX_RESPONSE_BYTES",
    "AnnounceRequest",
    "AnnounceResponse",
    "ConnectResponse",
    "ScrapeResponse",
    "ScrapeResult",
    "StrayPacket",
    "TrackerFailure",
    "announce_url",
    "decode_announce",
    "decode_connect",
    "decode_response",
    "decode_scrape",
    "encode_announce",
    "encode_compact_peers",
    "encode_compact_peers6",
    "encode_connect",
    "encode_scrape",
    "parse_announce_response",
    "parse_compact_peers",
    "parse_compact_peers6",
    "parse_scrape_response",
    "retransmit_timeout",
    "scrape_request_url",
    "scrape_url",
]
