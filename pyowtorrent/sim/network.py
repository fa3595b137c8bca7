"""An in-memory network of hosts with latency and bandwidth, for the swarm simulator.

Connections are real ``asyncio.StreamReader`` / ``asyncio.StreamWriter``
pairs over an in-memory transport, so the engine runs over it unchanged
(through a host's :class:`~pyowtorrent.engine.net.Network` view,
``host.network``).  Nothing here touches a socket, a thread or the wall
clock: every event is a ``loop.call_at`` on the running loop, normally a
:class:`~pyowtorrent.sim.loop.VirtualTimeLoop`.

The model
---------
Every host has an upload pipe (``up`` bytes/s), a download pipe (``down``
bytes/s) and a one-way ``latency``; ``None`` means unlimited.  Bytes written
to a connection wait in its send queue.  The sender's upload pipe serves its
connections round-robin, one chunk (at most ``chunk`` bytes) at a time, each
taking ``len / up`` seconds; the chunk then queues at the receiver's download
pipe, served the same way at ``down``; it reaches the receiving protocol
(``data_received``) after the link's latency, the sender's latency plus the
receiver's.  So a lone transfer runs at ``min(up, down)``, connections
sharing a pipe share it evenly, and each connection's bytes arrive in order.

Flow control: a connection keeps at most ``window`` bytes between its send
queue and the receiving protocol (in the pipes, in flight, or held while the
receiver has paused reading), like a TCP receive window whose updates reach
the sender at once.  A send queue above ``high_water`` pauses the writing
protocol (``await writer.drain()`` waits) until it is back under
``low_water``.

Set-up and teardown: a connection is made one round trip (twice the link's
latency) after ``connect()``, on both ends at once; with no listener there,
``connect()`` raises ``ConnectionRefusedError`` at that time, and to an IP no
host has, ``OSError`` after ``unreachable_delay``.  ``close()`` sends what is
queued, then an end-of-stream: the closer's protocol gets
``connection_lost(None)`` once its queue has left, the other end
``eof_received()`` and ``connection_lost(None)`` when the end arrives.
``abort()`` drops the queue; the other end gets ``ConnectionResetError``
after the latency.  ``host.go_offline()`` cuts the host off at once: both
ends of each of its connections get ``ConnectionResetError``, and its
listeners refuse until ``go_online()``.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import math
from collections import deque
from typing import Iterator

from ..engine.net import Address, ConnectionHandler, Listener, Network

__all__ = ["SimHost", "SimNetwork"]

# A BitTorrent block: a pipe's unit of service, so round-robin shares are fair
# at the granularity the protocol itself moves data.
DEFAULT_CHUNK = 16 << 10
# Bytes a connection may have between its send queue and the receiver: enough
# for a fast link with a long round trip (a Linux receive window grows to a few MiB).
DEFAULT_WINDOW = 4 << 20
# A send queue above HIGH_WATER pauses the writer until it falls to LOW_WATER.
HIGH_WATER = 256 << 10
LOW_WATER = 64 << 10
# How long a connect to an address no host has takes to fail (an ARP timeout's order).
UNREACHABLE_DELAY = 3.0
EPHEMERAL_PORTS = range(49152, 65536)


class _Flow:
    """One direction of a connection: send queue, pipes, and bytes in flight to the receiver."""

    __slots__ = (
        "loop", "src", "dst", "latency", "window", "sender", "receiver", "buf", "in_flight",
        "fin_pending", "stopped", "in_up", "in_down", "down_q", "transit", "timer", "due",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, src: SimHost, dst: SimHost, window: int) -> None:
        self.loop = loop
        self.src = src
        self.dst = dst
        self.latency = src.latency + dst.latency
        self.window = window
        self.sender: _SimTransport
        self.receiver: _SimTransport
        self.buf = bytearray()  # written, not yet taken by the upload pipe
        self.in_flight = 0  # taken, not yet handed to (or dropped by) the receiver
        self.fin_pending = False
        self.stopped = False  # the sender will send nothing more (aborted or reset)
        self.in_up = False  # queued at the upload pipe's round-robin
        self.in_down = False
        self.down_q: deque[bytes] = deque()  # waiting for the download pipe; b"" is the end of stream
        self.transit: deque[tuple[float, bytes]] = deque()  # (arrival time, chunk), in order
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0

    def sendable(self) -> bool:
        if self.stopped:
            return False
        if self.buf:
            return self.in_flight < self.window
        return self.fin_pending

    def take(self, limit: int) -> bytes | None:
        """The next chunk for the upload pipe (b"" for the end of stream), or None."""
        if self.stopped:
            return None
        buf = self.buf
        if buf:
            n = min(limit, len(buf), self.window - self.in_flight)
            if n <= 0:
                return None
            if n == len(buf):
                chunk = bytes(buf)
                buf.clear()
            else:
                chunk = bytes(memoryview(buf)[:n])
                del buf[:n]
            self.in_flight += n
            self.sender._queue_shrank()
            return chunk
        if self.fin_pending:
            self.fin_pending = False
            self.loop.call_soon(self.sender._lose, None)  # as asyncio does once the buffer is flushed
            return b""
        return None

    def arrive(self, chunk: bytes) -> None:
        """The download pipe has passed ``chunk``: it reaches the receiver after the latency."""
        self.transit.append((self.loop.time() + self.latency, chunk))
        if self.timer is None and not self.receiver._paused:
            self._schedule()

    def _schedule(self) -> None:
        self.due = self.transit[0][0]
        self.timer = self.loop.call_at(self.due, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        # A timer may fire a hair before its time (the loop allows its clock resolution).
        self.release(max(self.loop.time(), self.due))

    def release(self, now: float) -> None:
        """Hand over, in order, every chunk that has arrived by ``now``, while the receiver reads."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        transit = self.transit
        receiver = self.receiver
        released = 0
        while transit and transit[0][0] <= now and not receiver._paused:
            chunk = transit.popleft()[1]
            released += len(chunk)
            receiver._receive(chunk)
        self.in_flight -= released
        if transit and self.timer is None and not receiver._paused:
            self._schedule()
        if released and not self.in_up and self.sendable():
            self.src._uplink.wake(self)

    def resume(self) -> None:
        if self.transit and self.timer is None:
            self._schedule()

    def stop(self) -> None:
        """Send nothing more; what is already past the download pipe still arrives."""
        self.stopped = True
        self.fin_pending = False
        self.buf.clear()
        self.down_q.clear()

    def kill(self) -> None:
        self.stop()
        self.transit.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Pipe:
    """A host's upload or download pipe: serves flows round-robin, one chunk at a time, at ``rate`` bytes/s."""

    __slots__ = ("loop", "rate", "chunk", "upload", "ring", "busy", "free_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, rate: float | None, chunk: int, upload: bool) -> None:
        self.loop = loop
        self.rate = rate
        self.chunk = chunk
        self.upload = upload
        self.ring: deque[_Flow] = deque()
        self.busy = False
        self.free_at = 0.0

    def wake(self, flow: _Flow) -> None:
        if self.upload:
            if flow.in_up:
                return
            flow.in_up = True
        else:
            if flow.in_down:
                return
            flow.in_down = True
        self.ring.append(flow)
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        ring = self.ring
        upload = self.upload
        while ring:
            flow = ring.popleft()
            if upload:
                chunk = flow.take(self.chunk)
                more = chunk is not None and flow.sendable()
                flow.in_up = more
            else:
                chunk = flow.down_q.popleft() if flow.down_q else None
                more = bool(flow.down_q)
                flow.in_down = more
            if chunk is None:
                continue
            if more:
                ring.append(flow)
            if self.rate is None or not chunk:
                self._pass(flow, chunk)
                continue
            self.busy = True
            # Back to back from the last chunk's end, so rounding errors do not add up.
            self.free_at = max(self.free_at, self.loop.time()) + len(chunk) / self.rate
            self.loop.call_at(self.free_at, self._finish, flow, chunk)
            return

    def _finish(self, flow: _Flow, chunk: bytes) -> None:
        self.busy = False
        self._pass(flow, chunk)
        self._serve()

    def _pass(self, flow: _Flow, chunk: bytes) -> None:
        if self.upload:
            flow.src.bytes_up += len(chunk)
            if not flow.stopped:
                flow.down_q.append(chunk)
                flow.dst._downlink.wake(flow)
        else:
            flow.dst.bytes_down += len(chunk)
            flow.arrive(chunk)


class _SimTransport(asyncio.Transport):
    """One end of an in-memory connection."""

    def __init__(self, host: SimHost, sockname: Address, peername: Address, out: _Flow, inc: _Flow) -> None:
        super().__init__({"peername": peername, "sockname": sockname, "socket": None})
        self._host = host
        self._out = out
        self._in = inc
        self._serial = next(host._net._serials)
        self._peer: _SimTransport
        self._protocol: asyncio.Protocol | asyncio.BufferedProtocol
        self._closing = False
        self._lost = False
        self._paused = False  # reading
        self._write_paused = False
        self._high = HIGH_WATER
        self._low = LOW_WATER

    def __repr__(self) -> str:
        return f"<_SimTransport {self.get_extra_info('sockname')} -> {self.get_extra_info('peername')}>"

    # -- asyncio.Transport ---------------------------------------------------

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        if not isinstance(protocol, (asyncio.Protocol, asyncio.BufferedProtocol)):
            raise TypeError(f"a stream transport needs an asyncio.Protocol or BufferedProtocol, not {protocol!r}")
        self._protocol = protocol

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._in.resume()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data or self._closing:
            return
        out = self._out
        out.buf += data
        if not out.in_up and out.in_flight < out.window:
            self._host._uplink.wake(out)
        if not self._write_paused and len(out.buf) > self._high:
            self._write_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("the simulated network has no half-closed connections")

    def get_write_buffer_size(self) -> int:
        return len(self._out.buf)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._out.fin_pending = True
        if not self._out.in_up:
            self._host._uplink.wake(self._out)

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._out.stop()
        loop = self._out.loop
        at = loop.time() + self._out.latency
        loop.call_at(at, self._peer._reset, _reset_error(), at)
        loop.call_soon(self._lose, None)

    # -- driven by the flows ---------------------------------------------------

    def _queue_shrank(self) -> None:
        if self._write_paused and len(self._out.buf) <= self._low and not self._lost:
            self._write_paused = False
            self._protocol.resume_writing()

    def _receive(self, chunk: bytes) -> None:
        if chunk:
            if self._closing:  # once closed here, nothing reads any more
                return
            protocol = self._protocol
            if not isinstance(protocol, asyncio.BufferedProtocol):
                protocol.data_received(chunk)
                return
            # As asyncio's socket transports do: into the protocol's buffer, as much as it takes at a time.
            view = memoryview(chunk)
            while view and not self._closing:
                buf = memoryview(protocol.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                view = view[n:]
                protocol.buffer_updated(n)
            return
        if not self._closing:
            self._protocol.eof_received()
        # The other end is gone: what this end still had to send (even while
        # closing) has no reader, so this end is done too.
        self._out.kill()
        self._lose(None)

    def _reset(self, exc: OSError, flush_until: float | None) -> None:
        if self._lost:
            return
        if flush_until is not None:  # what arrived before the reset is read first
            self._in.release(flush_until)
            if self._lost:
                return
        self._out.kill()
        self._lose(exc)

    def _lose(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._closing = True
        self._lost = True
        self._in.kill()
        self._host._transports.pop(self._serial, None)
        self._protocol.connection_lost(exc)


class _SimListener:
    def __init__(self, host: SimHost, port: int, handler: ConnectionHandler) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.closed = False

    def addresses(self) -> list[Address]:
        return [] if self.closed else [(self.host.ip, self.port)]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.host._listeners.get(self.port) is self:
                del self.host._listeners[self.port]

    async def wait_closed(self) -> None:
        return None


class SimHost:
    """A machine on a :class:`SimNetwork`: an IP, a link, listeners and connections.

    ``bytes_up`` / ``bytes_down`` count what has passed its upload and
    download pipes.  The host is itself a ``Network`` (``host.network``):
    connections made through it leave from its IP, and it listens on its IP
    (``"0.0.0.0"``, ``""`` or its own IP; port 0 picks a free port).
    """

    def __init__(
        self, net: SimNetwork, ip: str, up: float | None, down: float | None, latency: float
    ) -> None:
        for what, rate in (("up", up), ("down", down)):
            if rate is not None and not rate > 0:
                raise ValueError(f"host {ip}: {what} must be a positive number of bytes/s or None, not {rate!r}")
        if not 0 <= latency < math.inf:
            raise ValueError(f"host {ip}: latency must be a finite number of seconds >= 0, not {latency!r}")
        self._net = net
        self.ip = ip
        self.up = None if up == math.inf else up
        self.down = None if down == math.inf else down
        self.latency = latency
        self.online = True
        self.bytes_up = 0
        self.bytes_down = 0
        self._uplink = _Pipe(net.loop, self.up, net.chunk, upload=True)
        self._downlink = _Pipe(net.loop, self.down, net.chunk, upload=False)
        self._listeners: dict[int, _SimListener] = {}
        self._transports: dict[int, _SimTransport] = {}
        self._ports: Iterator[int] = itertools.cycle(EPHEMERAL_PORTS)

    def __repr__(self) -> str:
        return f"<SimHost {self.ip} up={self.up} down={self.down} latency={self.latency}>"

    @property
    def network(self) -> Network:
        return self

    @property
    def connections(self) -> int:
        return len(self._transports)

    async def connect(
        self, host: str, port: int, *, local_host: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if local_host not in (None, "", "0.0.0.0", self.ip):
            raise OSError(errno.EADDRNOTAVAIL, f"{local_host} is not an address of host {self.ip}")
        return await self._net._connect(self, host, port)

    async def listen(self, handler: ConnectionHandler, host: str, port: int) -> Listener:
        if host not in ("", "0.0.0.0", self.ip):
            raise OSError(errno.EADDRNOTAVAIL, f"{host} is not an address of host {self.ip}")
        if port == 0:
            port = self._free_port()
        elif port in self._listeners:
            raise OSError(errno.EADDRINUSE, f"{self.ip}:{port} is already listened on")
        listener = _SimListener(self, port, handler)
        self._listeners[port] = listener
        return listener

    def go_offline(self) -> None:
        """Cut the host off: every connection to or from it is reset at both ends; listeners refuse."""
        self.online = False
        loop = self._net.loop
        for other in self._net._hosts.values():
            for t in list(other._transports.values()):
                if t._host is self or t._peer._host is self:
                    loop.call_soon(t._reset, _reset_error(), None)
                    t._out.stop()
                    t._in.stop()

    def go_online(self) -> None:
        self.online = True

    def _free_port(self) -> int:
        for _ in EPHEMERAL_PORTS:
            port = next(self._ports)
            if port not in self._listeners:
                return port
        raise OSError(errno.EADDRINUSE, f"host {self.ip} has no free port")


class SimNetwork:
    """Hosts joined by in-memory links; see the module docstring for the model.

    Made on (or given) the event loop that will run it.  It is a ``Network``
    too: ``connect(..., local_host=ip)`` dials from host ``ip`` and
    ``listen(handler, ip, port)`` listens at it.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        chunk: int = DEFAULT_CHUNK,
        window: int = DEFAULT_WINDOW,
        unreachable_delay: float = UNREACHABLE_DELAY,
    ) -> None:
        if chunk <= 0 or window <= 0:
            raise ValueError("chunk and window must be positive")
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self.chunk = chunk
        self.window = window
        self.unreachable_delay = unreachable_delay
        self._hosts: dict[str, SimHost] = {}
        self._serials = itertools.count()

    def add_host(
        self, ip: str, *, up: float | None = None, down: float | None = None, latency: float = 0.0
    ) -> SimHost:
        """A new host at ``ip``: ``up``/``down`` in bytes/s (``None``: unlimited), one-way ``latency`` in s."""
        if ip in self._hosts:
            raise ValueError(f"there is already a host at {ip}")
        host = SimHost(self, ip, up, down, latency)
        self._hosts[ip] = host
        return host

    def host(self, ip: str) -> SimHost:
        return self._hosts[ip]

    @property
    def hosts(self) -> list[SimHost]:
        return list(self._hosts.values())

    def disconnect(self, ip: str) -> None:
        self._hosts[ip].go_offline()

    async def connect(
        self, host: str, port: int, *, local_host: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Dial ``host:port`` from the host at ``local_host`` (required here)."""
        src = self._hosts.get(local_host or "")
        if src is None:
            raise OSError(errno.EADDRNOTAVAIL, f"no host at local address {local_host!r} to dial from")
        return await src.connect(host, port)

    async def listen(self, handler: ConnectionHandler, host: str, port: int) -> Listener:
        """Listen at ``host:port``, ``host`` being a host's IP."""
        h = self._hosts.get(host)
        if h is None:
            raise OSError(errno.EADDRNOTAVAIL, f"no host at {host!r} to listen on")
        return await h.listen(handler, host, port)

    # -- connection set-up ---------------------------------------------------

    async def _connect(self, src: SimHost, ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not src.online:
            raise OSError(errno.ENETUNREACH, f"host {src.ip} is offline")
        dst = self._hosts.get(ip)
        if dst is None:
            await asyncio.sleep(self.unreachable_delay)
            raise OSError(errno.EHOSTUNREACH, f"no route to host {ip}")
        waiter: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = self.loop.create_future()
        rtt = 2 * (src.latency + dst.latency)
        self.loop.call_at(self.loop.time() + rtt, self._establish, src, dst, port, waiter)
        return await waiter

    def _establish(
        self,
        src: SimHost,
        dst: SimHost,
        port: int,
        waiter: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    ) -> None:
        if waiter.done():
            return  # the dial was cancelled (timed out) meanwhile
        if not src.online:
            waiter.set_exception(OSError(errno.ENETUNREACH, f"host {src.ip} is offline"))
            return
        listener = dst._listeners.get(port)
        if listener is None or not dst.online:
            waiter.set_exception(ConnectionRefusedError(errno.ECONNREFUSED, f"connect to {dst.ip}:{port} refused"))
            return
        loop = self.loop
        a2b = _Flow(loop, src, dst, self.window)
        b2a = _Flow(loop, dst, src, self.window)
        client_addr = (src.ip, src._free_port())
        server_addr = (dst.ip, port)
        client = _SimTransport(src, client_addr, server_addr, a2b, b2a)
        server = _SimTransport(dst, server_addr, client_addr, b2a, a2b)
        a2b.sender = b2a.receiver = client
        b2a.sender = a2b.receiver = server
        client._peer = server
        server._peer = client
        src._transports[client._serial] = client
        dst._transports[server._serial] = server

        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        client.set_protocol(protocol)
        protocol.connection_made(client)
        writer = asyncio.StreamWriter(client, protocol, reader, loop)

        server_protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), listener.handler, loop=loop)
        server.set_protocol(server_protocol)
        server_protocol.connection_made(server)
        waiter.set_result((reader, writer))


def _reset_error() -> ConnectionResetError:
    return ConnectionResetError(errno.ECONNRESET, "connection reset by peer")
