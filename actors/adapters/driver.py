"""psycopg on Trio: one connection, its statements and transactions; the one module on psycopg's internals.

Statements run on Trio itself: psycopg builds every operation as a sans-I/O
generator that says when it needs the socket readable or writable, and
:func:`_wait` answers it with ``trio.lowlevel.wait_readable``/``wait_writable``.
No worker thread, no hand-off through the GIL per statement (measured: a thread
hop cost about 80 us, as much as the 10-row INSERT it wrapped). Connecting is
driven the same way, host by host, each within ``connect_timeout``; only name
resolution runs in a thread, abandoned if its caller gives up. So every wait,
connecting included, ends when its caller's deadline does (with a multi-host DSN
a dark host cannot hold a caller for connect_timeout per host). A broken or
cancelled connection is closed and reopened on the next call, so a Postgres
restart costs the calls made while it was down, not the actor.

This leans on psycopg internals (``Cursor._execute_gen``, ``Connection._connect_gen``,
``psycopg.generators``, ``psycopg.waiting``, ``conninfo_attempts``, ``PGconn.socket``),
which is why psycopg is pinned below its
next minor; ``tests/unit/test_packaging.py`` fails loudly if they move. Nothing
else in the library touches them. Every psycopg error leaves here as a
:class:`StoreUnavailable` whose ``kind`` says what it means.
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain
from types import TracebackType
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import pq
from psycopg.abc import PQGen, PQGenConn
from psycopg.conninfo import (
    conninfo_attempts,
    conninfo_to_dict,
    make_conninfo,
    timeout_from_conninfo,
)
from psycopg.generators import execute, fetch_many, send
from psycopg.waiting import Ready, Wait

from ..core.failures import StoreFailure, stale_session, wrong_server
from ..errors import StoreUnavailable
from .hot import HotStatement as HotStatement  # defined apart so queries.py imports no trio
from .postgres import connection_options, remember, unreachable

_T = TypeVar("_T")
_LENGTH = struct.Struct(">i").pack
_ONE_DIMENSION = struct.Struct(">iiIii").pack
TEXT_OID, BYTEA_OID = 25, 17


def binary_array(items: Sequence[bytes], element_oid: int) -> bytes:
    """Postgres' binary array format (one dimension, no NULLs), built with no Python step per element.

    psycopg dumps a list element by element in Python; for the thousands of
    ids and payloads a second that the hot statements carry, that showed in
    profiles of emit.
    """
    header = _ONE_DIMENSION(1, 0, element_oid, len(items), 1)
    return header + b"".join(chain.from_iterable(zip(map(_LENGTH, map(len, items)), items, strict=True)))


@dataclass(frozen=True, slots=True)
class Session:
    """What every connection of a Store sets: deadlines on each wait, the commit durability, the schema.

    Writers set ``synchronous_commit = on`` themselves, so a role- or
    database-level ``off`` cannot silently weaken "emit returned: durable".

    ``pooled=False`` (session liveness on: the deployment says sessions are
    ours): the settings are made once per connection (``SET``), and the hot
    statements are prepared once per connection under their names.
    ``pooled=True`` (session liveness off, as behind a transaction pooler):
    nothing is left on the server session, since the next transaction may run
    on another server connection and this one may serve another client. Each
    transaction makes its own settings (``set_config(..., true)``, undone at its
    end) and every statement is sent unnamed, both in one round trip.
    """

    statement_timeout: float = 30.0
    lock_timeout: float = 5.0
    tcp_user_timeout: float = 10.0
    keepalive_idle: float = 10.0
    synchronous_commit: bool = True
    schema: str = "public"  # a plain identifier (EmitterConfig checks it): the tables' schema
    application_name: str = "durable-emitter"  # shown in pg_stat_activity
    pooled: bool = False

    @property
    def answer_timeout(self) -> float:
        """How long the client waits for any answer: the server's own deadline first, plus a margin."""
        return self.statement_timeout + 5.0

    def settings(self) -> dict[str, str]:
        return {"statement_timeout": str(round(self.statement_timeout * 1000)),
                "lock_timeout": str(round(self.lock_timeout * 1000)),
                "synchronous_commit": "on" if self.synchronous_commit else "off",
                "search_path": f'"{self.schema}"'}

    def statements(self) -> str:
        """The settings for the whole session (``pooled=False``)."""
        return "; ".join(f"SET {name} = {value}" for name, value in self.settings().items())

    def per_transaction(self) -> bytes:
        """The settings for the transaction it runs in (``pooled=True``): one statement, undone at commit."""
        return ("SELECT " + ", ".join(f"set_config('{name}', '{value}', true)"
                                      for name, value in self.settings().items())).encode()


def one_row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The single row a statement returns by its shape (an aggregate, EXISTS, now())."""
    row: tuple[Any, ...] | None = cursor.fetchone()
    if row is None:
        raise StoreUnavailable("Postgres returned no row where one was certain")
    return row


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    """The server's answer (or its absence: no SQLSTATE) as our error, classified here once."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return StoreUnavailable(f"Postgres: {reason}", sqlstate=exc.sqlstate)  # its kind, from the SQLSTATE


def _answer(results: list[pq.abc.PGresult]) -> pq.abc.PGresult:
    """The last result of a statement; a failed one raised as psycopg raises it."""
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result)
    return results[-1]


def _unnamed(pgconn: pq.abc.PGconn, settings: bytes | None,
             send_statement: Callable[[], None]) -> PQGen[list[pq.abc.PGresult]]:
    """Send a statement unnamed (Parse, Bind, Execute, Sync), after ``settings`` if given; return its results.

    With ``settings``, both go in one pipeline closed by one Sync: one round trip,
    and one transaction, so ``set_config(..., true)`` covers the statement (each
    Execute re-arms statement_timeout with the value then set) and ends with it.
    Nothing outlives the exchange on the server: a pooler may hand that server
    connection to another client next.
    """
    if settings is None:
        send_statement()
        answer: list[pq.abc.PGresult] = yield from execute(pgconn)
        return answer
    pgconn.enter_pipeline_mode()
    pgconn.send_query_params(settings, None)
    send_statement()
    pgconn.pipeline_sync()
    yield from send(pgconn)
    made = yield from fetch_many(pgconn)
    results: list[pq.abc.PGresult] = yield from fetch_many(pgconn)
    # Up to the Sync's own result: an error of the commit the Sync makes (a deferred
    # constraint, a serialization failure) comes before it and is this exchange's answer.
    tail: list[pq.abc.PGresult] = yield from fetch_many(pgconn)
    while not tail or tail[-1].status != pq.ExecStatus.PIPELINE_SYNC:
        tail += yield from fetch_many(pgconn)
    pgconn.exit_pipeline_mode()
    _answer(made)  # failed settings abort the statement: their error is the one to raise
    _answer(results)
    _answer(tail)
    return results


async def _wait(gen: PQGen[Any], fileno: int) -> Any:
    """Drive a psycopg generator on Trio's I/O; return what it returns."""
    try:
        state = next(gen)
        while True:
            if state == Wait.R:
                await trio.lowlevel.wait_readable(fileno)
                state = gen.send(Ready.R)
            elif state == Wait.W:
                await trio.lowlevel.wait_writable(fileno)
                state = gen.send(Ready.W)
            else:  # RW: a large send the server may answer while it is under way
                ready = await _wait_either(fileno)
                state = gen.send(ready)
    except StopIteration as done:
        return done.value


async def _wait_connected(gen: PQGenConn[_T]) -> _T:
    """Drive a psycopg connection generator on Trio's I/O (its socket may change as it goes)."""
    try:
        fileno, state = next(gen)
        while True:
            if state == Wait.R:
                await trio.lowlevel.wait_readable(fileno)
                fileno, state = gen.send(Ready.R)
            elif state == Wait.W:
                await trio.lowlevel.wait_writable(fileno)
                fileno, state = gen.send(Ready.W)
            else:
                fileno, state = gen.send(await _wait_either(fileno))
    except StopIteration as done:
        connected: _T = done.value
        return connected
    finally:
        gen.close()  # abandoned midway: the half-open connection goes with the generator


async def connect_on_trio(url: str, session: Session) -> psycopg.Connection:
    """Open an autocommit connection on Trio, trying each host (and address) within ``connect_timeout``,
    as libpq does; or raise one clear :class:`StoreUnavailable` line. Cancelling it abandons the attempt."""
    options = connection_options(application_name=session.application_name,
                                 tcp_user_timeout=session.tcp_user_timeout, keepalive_idle=session.keepalive_idle)
    try:
        params = conninfo_to_dict(url, **options)
        timeout = timeout_from_conninfo(params)
        # Name resolution blocks: a thread of its own kind, left behind if the caller gives up (and
        # never holding a token of Trio's default limiter, which hosts use too).
        attempts = await trio.to_thread.run_sync(conninfo_attempts, params, abandon_on_cancel=True,
                                                 limiter=trio.CapacityLimiter(1))
    except psycopg.Error as exc:
        raise unreachable(url, exc) from None
    failures: list[str] = []
    for attempt in attempts:
        with trio.move_on_after(timeout):
            try:
                conn = await _wait_connected(psycopg.Connection._connect_gen(make_conninfo("", **attempt)))
            except psycopg.Error as exc:
                failures.append(" ".join(str(exc).split()))
                continue
            conn.autocommit = True
            remember(conn)
            return conn
        failures.append(f"no connection within connect_timeout ({timeout}s)")
    raise unreachable(url, psycopg.OperationalError("; ".join(failures) or "no host to try"))


async def _wait_either(fileno: int) -> Ready:
    result: list[Ready] = []
    async with trio.open_nursery() as nursery:
        async def wait(waiter: Callable[[int], Awaitable[None]], ready: Ready) -> None:
            await waiter(fileno)
            result.append(ready)
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait, trio.lowlevel.wait_readable, Ready.R)
        nursery.start_soon(wait, trio.lowlevel.wait_writable, Ready.W)
    return result[0]


class Connection:
    """One Postgres connection driven on Trio, opened on first use and reopened after a break.

    It runs one exchange at a time; tasks sharing it take turns.
    """

    def __init__(self, url: str, session: Session | None = None) -> None:
        self._url = url
        self._session = session or Session()
        self._conn: psycopg.Connection | None = None
        self._prepared: set[bytes] = set()  # HotStatements prepared on this connection
        self._per_transaction = self._session.per_transaction() if self._session.pooled else None
        self._turn = trio.Lock()

    async def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            session = self._session
            conn = await connect_on_trio(self._url, session)
            # Only the hot statements are prepared, under names of ours (run_hot frees a name an
            # earlier client of a pooled session left); psycopg would prepare any statement on its
            # 5th run, under names no one here can free.
            conn.prepare_threshold = None
            try:
                if not session.pooled:
                    await _wait(conn.cursor()._execute_gen(session.statements()), conn.pgconn.socket)
            except psycopg.Error as exc:
                conn.close()
                raise _unavailable(exc) from exc
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._prepared = set()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _exchange(self, talk: Callable[[psycopg.Connection], Awaitable[_T]]) -> _T:
        """Run ``talk`` on the connection: one exchange at a time, within ``answer_timeout``.

        The server cancels a statement after statement_timeout; this deadline covers a
        server that cannot answer at all (a path that went dark without a reset). A
        psycopg error becomes :class:`StoreUnavailable`; an exchange cancelled midway
        closes the connection (its protocol state is unknown), and so does an answer
        from a server that cannot take writes now (a standby, a demoted primary, a
        server shutting down: :func:`~..core.failures.wrong_server`), so the next
        call connects afresh and a multi-host DSN finds the primary.
        """
        try:
            self._turn.acquire_nowait()  # the usual case, without a trip through the scheduler
        except trio.WouldBlock:
            await self._turn.acquire()
        try:
            with trio.move_on_after(self._session.answer_timeout):
                conn = await self._connection()
                try:
                    return await talk(conn)
                except psycopg.Error as exc:
                    # A connection left in pipeline mode, or on a server that cannot take writes now,
                    # is not used again.
                    if wrong_server(exc.sqlstate) or conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
                        self.close()
                    raise _unavailable(exc) from exc
                except BaseException:
                    self.close()
                    raise
            raise StoreUnavailable(f"Postgres did not answer within {self._session.answer_timeout:g}s "
                                   "(statement_timeout plus 5 s); the connection was dropped",
                                   kind=StoreFailure.TRANSIENT)
        finally:
            self._turn.release()

    async def run(self, sql: str, params: dict[str, Any] | None = None, *,
                  prepare: bool | None = None, binary: bool = False) -> psycopg.Cursor[Any]:
        """Run one statement. ``prepare=False``: plan it for these parameters every time.
        ``binary``: results in binary (payloads as they are stored, not hex to decode).

        psycopg prepares a statement after a few runs, and Postgres may then
        keep one generic plan: for a query on one owner's rows, with one owner
        holding a million, that plan is a sequential scan.
        """
        async def talk(conn: psycopg.Connection) -> psycopg.Cursor[Any]:
            cursor = conn.cursor(binary=binary)
            if self._per_transaction is None:
                await _wait(cursor._execute_gen(sql, params, prepare=prepare), conn.pgconn.socket)
            else:
                await _wait(self._execute_unnamed(cursor, sql, params), conn.pgconn.socket)
            return cursor

        return await self._exchange(talk)

    def _execute_unnamed(self, cursor: psycopg.Cursor[Any], sql: str,
                         params: dict[str, Any] | None) -> PQGen[None]:
        """``cursor.execute`` on a pooled connection: unnamed, after the transaction's settings."""
        yield from cursor._start_query(sql)
        query = cursor._convert_query(sql, params)
        pgconn = cursor.connection.pgconn
        results = yield from _unnamed(pgconn, self._settings(pgconn), partial(
            pgconn.send_query_params, query.query, query.params, param_formats=query.formats,
            param_types=query.types, result_format=cursor.format))
        cursor._check_results(results)
        cursor._set_results(results)

    def _settings(self, pgconn: pq.abc.PGconn) -> bytes | None:
        """A pooled connection's settings, before a statement that starts a transaction (None: none due)."""
        if pgconn.transaction_status == pq.TransactionStatus.IDLE:
            return self._per_transaction
        return None  # inside BEGIN ... COMMIT: made at BEGIN

    async def run_hot(self, statement: HotStatement, params: list[bytes]) -> int:
        """Run a :class:`HotStatement` (preparing it on a new connection first); return its row count.

        On a pooled connection it is sent unnamed, with its transaction's settings. A
        prepared statement the session no longer has (26000) is prepared again and run
        once more: nothing ran the first time. A name taken already (42P05: a session an
        earlier client left) is freed and prepared again.
        """
        async def talk(conn: psycopg.Connection) -> int:
            pgconn = conn.pgconn
            if self._per_transaction is not None:
                results = await _wait(_unnamed(pgconn, self._settings(pgconn), partial(
                    pgconn.send_query_params, statement.sql, params, param_types=statement.types,
                    param_formats=[1] * len(params))), pgconn.socket)
                return _answer(results).command_tuples or 0
            for again in (False, True):
                try:
                    if statement.name not in self._prepared:
                        await self._prepare(pgconn, statement)
                    pgconn.send_query_prepared(statement.name, params, param_formats=[1] * len(params))
                    return _answer(await _wait(execute(pgconn), pgconn.socket)).command_tuples or 0
                except psycopg.Error as exc:
                    if again or exc.sqlstate != "26000":
                        raise
                    self._prepared.discard(statement.name)
            raise AssertionError("unreachable")  # the loop returns or raises

        return await self._exchange(talk)

    async def _prepare(self, pgconn: pq.abc.PGconn, statement: HotStatement) -> None:
        for again in (False, True):
            pgconn.send_prepare(statement.name, statement.sql, param_types=statement.types)
            try:
                _answer(await _wait(execute(pgconn), pgconn.socket))
            except psycopg.Error as exc:
                if again or not stale_session(exc.sqlstate):
                    raise
                pgconn.send_query(b"DEALLOCATE " + statement.name)
                _answer(await _wait(execute(pgconn), pgconn.socket))
                continue
            self._prepared.add(statement.name)
            return

    def transaction(self, *, rollback: bool = False) -> Transaction:
        """BEGIN ... COMMIT around the statements run inside (ROLLBACK on error, or always with ``rollback``)."""
        return Transaction(self, rollback)


class Transaction:
    """What :meth:`Connection.transaction` returns: an async context manager, one statement at each end."""

    def __init__(self, connection: Connection, rollback: bool) -> None:
        self._connection = connection
        self._rollback = rollback

    async def __aenter__(self) -> None:
        await self._connection.run("BEGIN")

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self._connection.run("ROLLBACK" if kind or self._rollback else "COMMIT")
