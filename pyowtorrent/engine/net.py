"""The engine's one way onto the network: every peer dial and listen goes through a :class:`Network`.

The default is asyncio's TCP (:class:`TcpNetwork`); the swarm simulator
supplies in-memory links with latency and bandwidth.  A connection is an
``asyncio.StreamReader`` / ``asyncio.StreamWriter`` pair either way, so the
peer driver cannot tell them apart.

Outgoing traffic leaves from the address we listen on.  A session told to
listen on a specific address (``--listen 10.0.0.5``) dials from it, and its
announces leave from it too (``trackers.py``): otherwise the kernel picks the
source address by route, a tracker records that one and hands it out, and
nobody can reach us where we listen.  libtorrent does the same (each listen
socket announces from its own address; ``outgoing_interfaces`` binds peer
connections).  :func:`source_addresses` picks the address per family from
the listen addresses; a wildcard (``0.0.0.0``, ``::``) leaves that family to
the kernel, as before.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from typing import Any, Awaitable, Callable, Iterable, Protocol, Sequence

__all__ = [
    "Address",
    "ConnectionHandler",
    "Listener",
    "Network",
    "TcpNetwork",
    "bound_socket",
    "is_local_address",
    "source_addresses",
    "source_for",
]

Address = tuple[str, int]
ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# Linux: bind() to an address without reserving a port yet, so that the port
# is chosen at connect() for the whole 4-tuple; otherwise every bound outgoing
# socket holds one of the ~28 000 ephemeral ports of that address.
_IP_BIND_ADDRESS_NO_PORT: int | None = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)
# Happy eyeballs (RFC 8305's recommended 250 ms): the next address is tried this long after the last.
NEXT_ADDRESS_DELAY = 0.25
# Bound sockets are dialled one address after another (asyncio's happy eyeballs takes one
# local address for every family): each but the last gets this long.
BOUND_ATTEMPT_TIMEOUT = 3.0


def source_addresses(listen: Iterable[str]) -> tuple[str, ...]:
    """The addresses outgoing traffic leaves from, given the listen addresses: at most one per family.

    Only IP literals count (a host name is the listen socket's business);
    the first specific address of a family is taken, and a wildcard of a
    family (``0.0.0.0``, ``::``) means that family's traffic is not bound —
    we are reachable at every address of the host anyway.
    """
    chosen: dict[int, str] = {}
    wildcard: set[int] = set()
    for host in listen:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            continue
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        if ip.is_unspecified:
            wildcard.add(family)
        else:
            chosen.setdefault(family, str(ip))
    return tuple(addr for family, addr in chosen.items() if family not in wildcard)


# libtorrent's is_local: loopback, private (RFC 1918, RFC 6598 shared), link-local, IPv6 unique-local.
_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7")
)


def is_local_address(host: str) -> bool:
    """Whether ``host`` (an IP literal) is this machine or its local network; a name is not."""
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or any(ip in n for n in _LOCAL_NETWORKS)


def source_for(sources: Sequence[str], family: int) -> str | None:
    """The address of ``sources`` in address family ``family`` (``socket.AF_INET``/``AF_INET6``), if any."""
    for addr in sources:
        if (":" in addr) == (family == socket.AF_INET6):
            return addr
    return None


def bound_socket(family: int, kind: int, proto: int, sources: Sequence[str]) -> socket.socket:
    """A non-blocking socket, bound to the source address of its family when there is one."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        source = source_for(sources, family) if family in (socket.AF_INET, socket.AF_INET6) else None
        if source is not None:
            if _IP_BIND_ADDRESS_NO_PORT is not None and kind == socket.SOCK_STREAM:
                try:
                    sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass  # an old kernel: the port is reserved at bind(), which also works
            sock.bind((source, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class Listener(Protocol):
    def addresses(self) -> Sequence[Address]: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class Network(Protocol):
    async def connect(
        self, host: str, port: int, *, local_host: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a stream to ``host:port`` (from ``local_host`` when given); raises ``OSError``."""
        ...

    async def listen(self, handler: ConnectionHandler, host: str, port: int) -> Listener:
        """Accept streams on ``host:port`` (port 0: any free one); raises ``OSError``."""
        ...


class _TcpListener:
    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    def addresses(self) -> list[Address]:
        out: list[Address] = []
        for sock in self._server.sockets:
            host, port = sock.getsockname()[:2]
            out.append((str(host), int(port)))
        return out

    def close(self) -> None:
        self._server.close()

    async def wait_closed(self) -> None:
        await self._server.wait_closed()


class TcpNetwork:
    """asyncio's TCP streams.

    ``bind``: the session's listen addresses (or already its
    :func:`source_addresses`); a connection to an address of a family with
    a specific one leaves from it.  ``local_host`` given to :meth:`connect`
    overrides it for that connection.
    """

    def __init__(self, bind: Iterable[str] = ()) -> None:
        self.sources = source_addresses(bind)

    async def connect(
        self, host: str, port: int, *, local_host: str | None = None, tls: ssl.SSLContext | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """``tls``: speak TLS over the connection, checking ``host``'s certificate (HTTPS trackers).

        A host name of several addresses is dialled at each in turn (a second
        attempt starting :data:`NEXT_ADDRESS_DELAY` s after the first, RFC 8305's
        happy eyeballs), so one address that drops connection attempts (an IPv6
        route that goes nowhere) costs a quarter of a second, not the caller's
        whole timeout.
        """
        server_hostname = host.rstrip(".") if tls is not None else None  # certificates name no root dot
        if local_host or not self.sources:
            local = (local_host, 0) if local_host else None
            return await asyncio.open_connection(
                host, port, local_addr=local, ssl=tls, server_hostname=server_hostname,
                happy_eyeballs_delay=NEXT_ADDRESS_DELAY,
            )
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        errors: list[OSError] = []
        for n, (family, kind, proto, _, address) in enumerate(infos):
            last = n == len(infos) - 1
            try:
                dial = _connect(loop, bound_socket(family, kind, proto, self.sources), address)
                sock = await (dial if last else asyncio.wait_for(dial, BOUND_ATTEMPT_TIMEOUT))
            except (OSError, asyncio.TimeoutError) as exc:
                errors.append(exc if isinstance(exc, OSError) else OSError(f"{address[0]}: no answer"))
                continue
            return await asyncio.open_connection(sock=sock, ssl=tls, server_hostname=server_hostname)
        if len({str(e) for e in errors}) == 1:
            raise errors[0]
        raise OSError(f"cannot connect to {host}:{port}: " + ("; ".join(str(e) for e in errors) or "no address"))

    async def listen(self, handler: ConnectionHandler, host: str, port: int) -> Listener:
        server = await asyncio.start_server(handler, host=host, port=port, reuse_address=True)
        return _TcpListener(server)


async def _connect(loop: asyncio.AbstractEventLoop, sock: socket.socket, address: Any) -> socket.socket:
    try:
        await loop.sock_connect(sock, address)
    except BaseException:  # a failure, or the caller's timeout cancelling us
        sock.close()
        raise
    return sock
