"""LISTEN on a connection of its own and wait for notifications on Trio's I/O: how an emitter hears the outbox.

Connecting and sending ``LISTEN`` run in a worker thread (connecting resolves
names, as in :mod:`.driver`); from then on the connection only receives, so
waiting is ``trio.lowlevel.wait_readable`` on its socket and libpq's own
``consume_input``/``notifies`` (psycopg's public ``pq`` layer, no internals).
A connection that breaks (the server restarted, the session was terminated,
the path died: TCP keepalives and ``tcp_user_timeout`` find that) fails the
wait with :class:`StoreUnavailable`; the caller reconnects. Notifications sent
while nobody listened are lost, so whoever uses this scans once after each
:meth:`Listener.listen`.
"""

from __future__ import annotations

import psycopg
import trio
from psycopg import pq

from ..errors import StoreUnavailable
from .driver import Session
from .outbox_queries import LISTEN
from .postgres import connect


class Listener:
    """One connection listening on ``channel``; :meth:`wait` returns when notifications arrived."""

    def __init__(self, url: str, channel: str, session: Session) -> None:
        self.channel = channel
        self._url, self._session = url, session
        self._conn: psycopg.Connection | None = None

    async def listen(self) -> None:
        """(Re)connect and LISTEN: every notification from now on wakes :meth:`wait`."""
        self.close()
        self._conn = await trio.to_thread.run_sync(self._connect, abandon_on_cancel=True)

    def _connect(self) -> psycopg.Connection:
        session = self._session
        conn = connect(self._url, tcp_user_timeout=session.tcp_user_timeout, keepalive_idle=session.keepalive_idle,
                       application_name=session.application_name)
        try:
            conn.execute(LISTEN.format(channel=self.channel))
        except psycopg.Error as exc:
            conn.close()
            raise StoreUnavailable(f"LISTEN {self.channel}: {' '.join(str(exc).split())}", sqlstate=exc.sqlstate
                                   ) from exc
        return conn

    async def wait(self) -> int:
        """Wait until at least one notification arrived; return how many did."""
        if self._conn is None:
            raise StoreUnavailable("not listening (call listen() first)")
        pgconn = self._conn.pgconn
        while True:
            count = 0
            while pgconn.notifies() is not None:
                count += 1
            if count:
                return count
            await trio.lowlevel.wait_readable(pgconn.socket)
            try:
                pgconn.consume_input()
            except psycopg.Error as exc:
                raise StoreUnavailable(f"the LISTEN connection failed: {' '.join(str(exc).split())}") from exc
            if pgconn.status != pq.ConnStatus.OK:
                raise StoreUnavailable("the LISTEN connection was closed by the server")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

