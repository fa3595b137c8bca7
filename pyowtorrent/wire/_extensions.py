"""BEP 10's extension message ids, both ways.

Each side picks the id it wants each extension message sent to it under and
says so in the ``m`` of its extension handshake.  So we send an extension
message under the id the *remote* advertised, and accept one only under an
id *we* advertised.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import LocalProtocolError, RemoteProtocolError, Violation
from .events import Extended, ExtensionHandshake

__all__ = ["ExtensionIds"]


class ExtensionIds:
    __slots__ = ("remote", "_advertised")

    def __init__(self) -> None:
        self.remote: dict[str, int] = {}  # name -> the id the remote receives it under
        self._advertised: set[int] = set()

    # -- what we send -------------------------------------------------------

    def advertise(self, m: Mapping[str, int]) -> None:
        """Check and record the ``m`` of an extension handshake we send."""
        ids = [i for i in m.values() if i]
        if any(not 0 <= i <= 255 for i in m.values()) or len(ids) != len(set(ids)):
            raise LocalProtocolError(f"extension ids must be distinct bytes: {m}")
        self._advertised.update(ids)

    def check_outgoing(self, message: Extended, max_message: int) -> None:
        if message.ext_id not in self.remote.values():
            raise LocalProtocolError(f"the remote has no extension message with id {message.ext_id}")
        if 2 + len(message.payload) > max_message:
            raise LocalProtocolError(f"extension message of {len(message.payload)} bytes is over the limit")

    # -- what we receive ----------------------------------------------------

    def update_remote(self, handshake: ExtensionHandshake) -> None:
        # BEP 10: a later handshake changes only the names it lists; 0 disables.
        for name, remote_id in handshake.m.items():
            if remote_id:
                self.remote[name] = remote_id
            else:
                self.remote.pop(name, None)

    def check_incoming(self, ext_id: int) -> None:
        # Ids we advertised once stay accepted: an extension message may
        # cross the handshake that disabled it.
        if ext_id not in self._advertised:
            raise RemoteProtocolError(Violation.EXTENDED_ID_NOT_ADVERTISED, f"extended message id {ext_id}")
