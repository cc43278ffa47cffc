"""A small TCP proxy between the emitter and Postgres or Chip that can go dark, drop connections, and heal.

For the fault tests (``tests/fix_proxy.py``) and the soak. ``black_hole()`` stops forwarding in both directions while keeping every
connection open (and accepting new ones that lead nowhere): a path that went
dark after a failover, where nothing answers and nothing is reset. What is
sent meanwhile is lost, as dropped packets are.
``refuse()`` resets every new connection at once (counted in ``refused``), as
a server that is down or restarting does: each attempt fails fast.
``drop_connections()`` resets every open connection, as a restarting server or
a load balancer does. ``cut_at(marker, ...)`` resets the one connection whose
client sends ``marker``, once: after the server had those bytes and answered
them (the answer lost on the way back), or before it had them; and may go dark,
or start refusing, at that instant. ``stall()`` stops reading in both directions, losing
nothing: what was sent waits in the kernel's buffers and arrives once healed, as it does
after a real black hole that TCP's retransmissions outlived. ``heal()`` forwards (and
accepts) again. ``target`` may be changed while it runs (a failover, a restarted server
on a new port): new connections go there. Threads, not Trio: the proxy must keep its
sockets whatever the test's event loop is doing.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Cut:
    """A one-shot :meth:`TcpProxy.cut_at`; ``done`` is set once the connection was cut."""

    marker: bytes
    delivered: bool
    then_dark: bool
    then_refuse: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    answer: bytes = b""  # the server's first answer after the marker, which the client never got


def _reset(sock: socket.socket) -> None:
    """Close with linger 0: a reset, not a polite close."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
    except OSError:
        pass


class TcpProxy:
    """Listens on 127.0.0.1; forwards to ``target``: ``"host:port"``, or the path of a Unix socket."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._refusing = threading.Event()
        self._stalled = threading.Event()
        self.refused = 0  # connections reset at once while refusing
        self.upstream_ports: list[tuple[float, int]] = []  # (unix time, local port) of each connection to the target
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._cut: Cut | None = None
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dark(self) -> bool:
        """Whether the path is dark now (:meth:`black_hole`, or a cut that went dark)."""
        return not self._forwarding.is_set()

    def black_hole(self) -> None:
        self._forwarding.clear()

    def stall(self) -> None:
        self._stalled.set()

    def refuse(self) -> None:
        self._refusing.set()

    def heal(self) -> None:
        self._refusing.clear()
        self._stalled.clear()
        self._forwarding.set()

    def drop_connections(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def cut_at(self, marker: bytes, *, delivered: bool, then_dark: bool = False, then_refuse: bool = False) -> Cut:
        """Once: reset the connection whose client sends ``marker`` (within one read).

        ``delivered``: pass those bytes on, wait for the server's first answer
        after them, and reset both ends instead of passing it back (the server
        did the work; the client never hears). Else reset both ends instead of
        passing the bytes on. ``then_dark``: go dark (see :meth:`black_hole`)
        at that instant, before the client can reconnect; ``then_refuse``:
        refuse (see :meth:`refuse`) from that instant, so its reconnects fail.
        """
        cut = Cut(marker, delivered, then_dark, then_refuse)
        with self._lock:
            self._cut = cut
        return cut

    def _take_cut(self, data: bytes) -> Cut | None:
        """The armed cut, disarmed, if ``data`` carries its marker."""
        with self._lock:
            cut = self._cut
            if cut is None or cut.marker not in data:
                return None
            self._cut = None
            return cut

    def _carry_out(self, cut: Cut, pair: tuple[socket.socket, socket.socket]) -> None:
        if cut.then_dark:
            self._forwarding.clear()
        if cut.then_refuse:
            self._refusing.set()
        for sock in pair:
            _reset(sock)
        cut.done.set()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        self.drop_connections()
        for thread in self._threads:
            thread.join(timeout=5)

    def _connect_upstream(self) -> socket.socket:
        if self.target.startswith("/"):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.settimeout(5)
            upstream.connect(self.target)
        else:
            host, _, port = self.target.rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=5)
        upstream.settimeout(None)
        return upstream

    def _accept(self) -> None:
        self._listener.settimeout(0.05)  # so close() is noticed
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]  # a long run's ended ones go
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        if self._refusing.is_set():
            with self._lock:
                self.refused += 1
            _reset(client)
            return
        while not self._forwarding.is_set() or self._stalled.is_set():  # the connection leads nowhere yet
            if self._closed.wait(0.05):
                client.close()
                return
        try:
            upstream = self._connect_upstream()
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, upstream))
            if upstream.family == socket.AF_INET:  # which of our connections the server sees (its peer)
                self.upstream_ports.append((time.time(), upstream.getsockname()[1]))
        peers = {client: upstream, upstream: client}
        awaiting: Cut | None = None  # delivered the marker; the server's answer is to be swallowed
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while not self._closed.is_set():
                if self._stalled.is_set():  # nothing read: what was sent waits in the kernel's buffers
                    self._closed.wait(0.05)
                    continue
                try:
                    for key, _ in selector.select(timeout=0.05):
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        data = sock.recv(65536)
                        if not data:
                            raise OSError("closed")
                        if awaiting is not None and sock is upstream:
                            awaiting.answer = data
                            self._carry_out(awaiting, (client, upstream))
                            raise OSError("cut")
                        cut = self._take_cut(data) if sock is client else None
                        if cut is not None and not cut.delivered:
                            self._carry_out(cut, (client, upstream))
                            raise OSError("cut")
                        awaiting = cut
                        if self._forwarding.is_set():  # dark: what was sent is lost, like dropped packets
                            peers[sock].sendall(data)
                except (OSError, ValueError):
                    break
        for sock in peers:
            try:
                sock.close()
            except OSError:
                pass

