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
        self._advertised: dict[int, str] = {}  # id -> the name we advertised it for

    # -- what we send -------------------------------------------------------

    def advertise(self, m: Mapping[str, int]) -> None:
        """Check and record the ``m`` of an extension handshake we send."""
        ids = [i for i in m.values() if i]
        if any(not 0 <= i <= 255 for i in m.values()) or len(ids) != len(set(ids)):
            raise LocalProtocolError(f"extension ids must be distinct bytes: {m}")
        # A later handshake may move a name to another id: the old id stays
        # accepted (see check_incoming) and the newest name for an id wins.
        self._advertised.update({i: name for name, i in m.items() if i})

    def remote_id(self, name: str) -> int:
        """The id to send extension ``name`` under; the remote must have advertised it."""
        ext_id = self.remote.get(name)
        if ext_id is None:
            raise LocalProtocolError(f"the remote does not take {name} messages")
        return ext_id

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

    def check_incoming(self, ext_id: int) -> str:
        """The name of the extension we advertised ``ext_id`` for; refuses any other id."""
        # Ids we advertised once stay accepted: an extension message may
        # cross the handshake that disabled it.
        name = self._advertised.get(ext_id)
        if name is None:
            raise RemoteProtocolError(Violation.EXTENDED_ID_NOT_ADVERTISED, f"extended message id {ext_id}")
        return name
