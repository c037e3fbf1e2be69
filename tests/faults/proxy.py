"""A loopback TCP proxy whose path a test can cut and restore.

The agent is pointed at the proxy instead of the server. Four states:

* ``open``: bytes flow both ways;
* ``replies_dropped``: what the client sends still reaches the server, but nothing comes
  back: the server accepts a batch and the agent never sees the 202 (a lost
  acknowledgement, the case that makes an agent resend what the server already has);
* ``cut``: nothing flows either way; new connections are accepted and then ignored, as a
  dead path looks to a client (its requests time out, they are not refused);
* ``refused``: every live connection is reset at once and every new one is reset as soon
  as it is accepted, as a firewall that rejects, or a host whose server is gone, looks.

:meth:`TcpProxy.restore` goes back to ``open`` and resets every connection that lived
through a fault: like a NAT or firewall that lost its state, those sessions do not
survive. Everything runs on one thread with a selector; control calls are handed to it
through a socket pair and return once it has applied them.
"""

from __future__ import annotations

import contextlib
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support.services import LOOPBACK

OPEN = "open"
REPLIES_DROPPED = "replies_dropped"
CUT = "cut"
REFUSED = "refused"
STATES = (OPEN, REPLIES_DROPPED, CUT, REFUSED)

_CHUNK = 65536
_CONNECT_TIMEOUT = 2.0


@dataclass
class _Pair:
    client: socket.socket
    server: socket.socket | None
    faulted: bool = False  # lived through a fault: reset on restore


@dataclass
class ProxyCounters:
    connections: int = 0
    refused_upstream: int = 0  # the server was not listening
    refused: int = 0  # connections reset on arrival in the ``refused`` state
    bytes_up: int = 0
    bytes_down: int = 0
    dropped_up: int = 0  # bytes the fault swallowed, client to server
    dropped_down: int = 0  # and server to client
    resets: int = 0
    history: list[str] = field(default_factory=list)


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees the path break, not a clean end."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """``127.0.0.1:<port>`` -> ``upstream_port`` on loopback; see the module docstring."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = (LOOPBACK, upstream_port)
        self._listener = socket.create_server((LOOPBACK, 0), backlog=128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self.state = OPEN
        self.counters = ProxyCounters()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._commands: queue.Queue[tuple[Callable[[], None], threading.Event]] = queue.Queue()
        self._pairs: dict[socket.socket, _Pair] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- control (any thread) -------------------------------------------------------------

    def cut(self) -> None:
        """Nothing flows any more, either way, on old or new connections."""
        self._call(lambda: self._set_state(CUT))

    def drop_replies(self) -> None:
        """Requests still reach the server; its replies are swallowed."""
        self._call(lambda: self._set_state(REPLIES_DROPPED))

    def refuse(self) -> None:
        """Reset every live connection, and every new one as soon as it arrives."""
        self._call(lambda: self._set_state(REFUSED))

    def restore(self) -> None:
        """Open again; every connection that lived through the fault is reset."""
        self._call(self._restore)

    def connection_count(self) -> int:
        found: list[int] = []
        self._call(lambda: found.append(len(self._pairs)))
        return found[0]

    def close(self) -> None:
        if self._stopping:
            return
        self._call(self._shutdown)
        self._thread.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, action: Callable[[], None]) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("the proxy thread is not running")
        done = threading.Event()
        self._commands.put((action, done))
        self._wake_w.send(b"x")
        if not done.wait(timeout=10):
            raise RuntimeError("the proxy thread did not answer within 10 s")

    # -- the loop (proxy thread only) -----------------------------------------------------

    def _set_state(self, state: str) -> None:
        assert state in STATES
        self.state = state
        self.counters.history.append(state)
        if state != OPEN:
            for pair in self._pairs.values():
                pair.faulted = True
        if state == REFUSED:
            for pair in {id(p): p for p in self._pairs.values()}.values():
                self._drop_pair(pair, reset=True)

    def _restore(self) -> None:
        for pair in {id(p): p for p in self._pairs.values()}.values():
            if pair.faulted:
                self._drop_pair(pair, reset=True)
        self._set_state(OPEN)

    def _shutdown(self) -> None:
        self._stopping = True
        for pair in {id(p): p for p in self._pairs.values()}.values():
            self._drop_pair(pair, reset=True)
        self._selector.unregister(self._listener)
        self._listener.close()

    def _run(self) -> None:
        while not self._stopping:
            for key, _events in self._selector.select(timeout=1.0):
                if key.data == "wake":
                    self._drain_commands()
                elif key.data == "accept":
                    self._accept()
                else:
                    self._relay(key.fileobj)  # type: ignore[arg-type]
                if self._stopping:
                    break
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def _drain_commands(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                action, done = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                action()
            finally:
                done.set()

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        self.counters.connections += 1
        if self.state == REFUSED:
            self.counters.refused += 1
            _reset(client)
            return
        server: socket.socket | None = None
        if self.state != CUT:
            try:
                server = socket.create_connection(self.upstream, timeout=_CONNECT_TIMEOUT)
            except OSError:
                # The server is down: the client sees its connection reset, as it would.
                self.counters.refused_upstream += 1
                _reset(client)
                return
            server.setblocking(True)
            server.settimeout(5.0)
        client.settimeout(5.0)
        pair = _Pair(client, server, faulted=self.state != OPEN)
        self._pairs[client] = pair
        self._selector.register(client, selectors.EVENT_READ, "relay")
        if server is not None:
            self._pairs[server] = pair
            self._selector.register(server, selectors.EVENT_READ, "relay")

    def _relay(self, sock: socket.socket) -> None:
        pair = self._pairs.get(sock)
        if pair is None:
            return
        try:
            data = sock.recv(_CHUNK)
        except OSError:
            data = b""
        if not data:
            self._drop_pair(pair, reset=False)
            return
        upward = sock is pair.client
        passes = self.state == OPEN or (self.state == REPLIES_DROPPED and upward)
        if not passes or pair.server is None:
            if upward:
                self.counters.dropped_up += len(data)
            else:
                self.counters.dropped_down += len(data)
            return
        target = pair.server if upward else pair.client
        try:
            target.sendall(data)
        except OSError:
            self._drop_pair(pair, reset=True)
            return
        if upward:
            self.counters.bytes_up += len(data)
        else:
            self.counters.bytes_down += len(data)

    def _drop_pair(self, pair: _Pair, *, reset: bool) -> None:
        for sock in (pair.client, pair.server):
            if sock is None or self._pairs.pop(sock, None) is None:
                continue
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                _reset(sock)
                self.counters.resets += 1
            else:
                with contextlib.suppress(OSError):
                    sock.close()
