"""All SQL, in one place: schema, insert, claim, release, delete, dead-letter, stats.

Each actor owns one :class:`Store` (one connection). Statements run on Trio
itself: psycopg builds every operation as a sans-I/O generator that says when
it needs the socket readable or writable, and :func:`_wait` answers it with
``trio.lowlevel.wait_readable``/``wait_writable``. No worker thread, no
hand-off through the GIL per statement (measured: a thread hop cost about
80 us, as much as the 10-row INSERT it wrapped). Only connecting, which
resolves names, runs in a thread. A broken or cancelled connection is closed
and reopened on the next call, so a Postgres restart costs the calls made while
it was down, not the actor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import trio
from psycopg.abc import PQGen
from psycopg.waiting import Ready, Wait

from ..core.failures import storable_text
from ..errors import StoreUnavailable
from .postgres import connect

SCHEMA_LOCK = 0x63686970  # pg_advisory_xact_lock key: "chip"

# One statement, binary parameters: one round trip, little client CPU, and the
# lease measured on the database's clock like every comparison made with it.
INSERT_EVENTS = """
INSERT INTO chip_durable_events (id, payload, lease_owner, lease_expires_at)
SELECT id, payload, %(owner)b,
       CASE WHEN %(spilled)b THEN '-infinity'::timestamptz
            ELSE now() + make_interval(secs => %(lease)b) END
FROM unnest(%(ids)b::text[], %(payloads)b::bytea[]) AS t(id, payload)
"""

# Rows nobody holds: lease expired (dead instance, spilled, released for retry),
# or rows this instance id leased before it (re)started (such a lease ends before
# reclaim_before + lease; every lease granted since ends after).
CLAIM_EVENTS = """
WITH claimable AS (
    SELECT id FROM chip_durable_events
    WHERE (lease_expires_at < now()
           OR (lease_owner = %(owner)s
               AND lease_expires_at < %(reclaim_before)s + make_interval(secs => %(lease)s)))
      AND (NOT %(writer_only)s OR lease_owner = %(owner)s)
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE chip_durable_events e
SET lease_owner = %(owner)s, lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM claimable WHERE e.id = claimable.id
RETURNING e.id, e.payload, e.created_at
"""

# A row's wait grows with the attempts it already had (the value before this update).
RELEASE_EVENTS = """
UPDATE chip_durable_events
SET attempts = attempts + %(attempts)s, last_error = %(error)s,
    lease_expires_at = now() + make_interval(secs => least(
        %(retry_max)s::float8, %(retry_after)s::float8 * power(%(multiplier)s::float8, least(attempts, 64))))
WHERE id = ANY(%(ids)b) AND lease_owner = %(owner)s
"""

# Only rows this instance holds: a row whose lease lapsed may be another's now.
DELETE_EVENTS = "DELETE FROM chip_durable_events WHERE id = ANY(%(ids)b) AND lease_owner = %(owner)b"

DEAD_LETTER_EVENTS = """
WITH reasons AS (
    SELECT * FROM unnest(%(ids)b::text[], %(codes)b::text[], %(reasons)b::text[])
        AS r(id, reason_code, reason)
), moved AS (
    DELETE FROM chip_durable_events e USING reasons r WHERE e.id = r.id AND e.lease_owner = %(owner)s
    RETURNING e.id, e.payload, e.created_at, e.attempts
)
INSERT INTO chip_durable_events_dead_letter (id, payload, created_at, attempts, reason_code, reason)
SELECT m.id, m.payload, m.created_at, m.attempts, r.reason_code, r.reason
FROM moved m JOIN reasons r USING (id)
ON CONFLICT (id) DO UPDATE SET reason_code = EXCLUDED.reason_code, reason = EXCLUDED.reason,
    dead_lettered_at = now()
"""

EXPIRE_EVENTS = """
WITH moved AS (
    DELETE FROM chip_durable_events
    WHERE id IN (SELECT id FROM chip_durable_events
                 WHERE created_at < now() - make_interval(secs => %(ttl)s)
                 ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING id, payload, created_at, attempts, last_error
)
INSERT INTO chip_durable_events_dead_letter (id, payload, created_at, attempts, reason_code, reason)
SELECT id, payload, created_at, attempts, 'EXPIRED',
       'not delivered within the TTL; last error: ' || coalesce(last_error, 'none')
FROM moved
ON CONFLICT (id) DO NOTHING
"""

PENDING_STATS = """
SELECT count(*), coalesce(sum(octet_length(payload)), 0),
       coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
FROM chip_durable_events
"""

# Upstream's acceptance tests read these counters; so do run-local and `status`.
TABLE_ACTIVITY = """
SELECT coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_del), 0)::bigint,
       coalesce(sum(n_dead_tup), 0)::bigint, max(greatest(last_autovacuum, last_vacuum))
FROM pg_stat_user_tables WHERE relname = 'chip_durable_events'
"""

LEASE_OWNERS = """
SELECT lease_owner, count(*), count(*) FILTER (WHERE lease_expires_at < now())
FROM chip_durable_events GROUP BY lease_owner ORDER BY count(*) DESC
"""

DEAD_LETTERS_BY_REASON = """
SELECT reason_code, count(*) FROM chip_durable_events_dead_letter GROUP BY reason_code ORDER BY count(*) DESC
"""

LIST_DEAD_LETTERS = """
SELECT id, reason_code, reason, attempts, created_at, dead_lettered_at
FROM chip_durable_events_dead_letter
WHERE %(reason_code)s::text IS NULL OR reason_code = %(reason_code)s
ORDER BY dead_lettered_at DESC LIMIT %(limit)s
"""

# Replayed rows are new pending rows (created now, so the TTL starts again),
# claimable at once by any instance.
REPLAY_DEAD_LETTERS = """
WITH moved AS (
    DELETE FROM chip_durable_events_dead_letter
    WHERE %(all)s OR id = ANY(%(ids)s::text[])
    RETURNING id, payload, attempts
)
INSERT INTO chip_durable_events (id, payload, attempts, last_error, lease_owner, lease_expires_at)
SELECT id, payload, attempts, 'replayed from the dead-letter table', 'replay', '-infinity'
FROM moved
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# How long the oldest open transaction has pinned the MVCC horizon: while it
# does, vacuum cannot remove the dead tuples our deletes leave.
OLDEST_TRANSACTION = """
SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8
FROM pg_stat_activity WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
"""

HAS_PENDING_BEFORE = """
SELECT EXISTS (SELECT 1 FROM chip_durable_events
               WHERE created_at <= %(before)s AND lease_owner = %(owner)s)
"""


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: str
    payload: bytes
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TableActivity:
    inserts: int
    deletes: int
    dead_tuples: int
    last_vacuum: datetime | None


@dataclass(frozen=True, slots=True)
class PendingStats:
    rows: int
    payload_bytes: int
    oldest_age_seconds: float


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return StoreUnavailable(f"Postgres: {reason}", sqlstate=exc.sqlstate)


@dataclass(frozen=True, slots=True)
class Session:
    """What every connection of a Store sets: deadlines on each wait, and the commit durability.

    Writers set ``synchronous_commit = on`` themselves, so a role- or
    database-level ``off`` cannot silently weaken "emit returned: durable".
    """

    statement_timeout: float = 30.0
    lock_timeout: float = 5.0
    tcp_user_timeout: float = 10.0
    keepalive_idle: float = 10.0
    synchronous_commit: bool = True

    @property
    def answer_timeout(self) -> float:
        """How long the client waits for any answer: the server's own deadline first, plus a margin."""
        return self.statement_timeout + 5.0

    def statements(self) -> str:
        return (f"SET statement_timeout = {round(self.statement_timeout * 1000)}; "
                f"SET lock_timeout = {round(self.lock_timeout * 1000)}; "
                f"SET synchronous_commit = {'on' if self.synchronous_commit else 'off'}")


def _one(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The single row a statement returns by its shape (an aggregate, EXISTS, now())."""
    row: tuple[Any, ...] | None = cursor.fetchone()
    if row is None:
        raise StoreUnavailable("Postgres returned no row where one was certain")
    return row


def schema_sql() -> str:
    return Path(__file__).with_name("schema.sql").read_text()


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


class _transaction:
    """BEGIN ... COMMIT (ROLLBACK on error) around statements run through the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def __aenter__(self) -> None:
        await self.store._run("BEGIN")

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.store._run("ROLLBACK" if kind else "COMMIT")


class Store:
    """One connection and the statements an actor runs on it.

    A connection runs one statement at a time; tasks sharing a Store take turns.
    """

    def __init__(self, url: str, session: Session | None = None) -> None:
        self._url = url
        self._session = session or Session()
        self._conn: psycopg.Connection | None = None
        self._turn = trio.Lock()

    async def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            session = self._session
            # Connecting resolves names, so it runs in a thread; connect_timeout bounds it.
            conn = await trio.to_thread.run_sync(partial(
                connect, self._url, tcp_user_timeout=session.tcp_user_timeout, keepalive_idle=session.keepalive_idle))
            try:
                await _wait(conn.cursor()._execute_gen(session.statements()), conn.pgconn.socket)
            except psycopg.Error as exc:
                conn.close()
                raise _unavailable(exc) from exc
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _run(self, sql: str, params: dict[str, Any] | None = None) -> psycopg.Cursor[Any]:
        try:
            self._turn.acquire_nowait()  # the usual case, without a trip through the scheduler
        except trio.WouldBlock:
            await self._turn.acquire()
        try:
            # The server cancels a statement after statement_timeout; this deadline covers a
            # server that cannot answer at all (a path that went dark without a reset).
            with trio.move_on_after(self._session.answer_timeout):
                conn = await self._connection()
                cursor = conn.cursor()
                try:
                    await _wait(cursor._execute_gen(sql, params), conn.pgconn.socket)
                except psycopg.Error as exc:
                    raise _unavailable(exc) from exc
                except BaseException:
                    self.close()  # cancelled mid-statement: the protocol state is unknown
                    raise
                return cursor
            raise StoreUnavailable(f"Postgres did not answer within {self._session.answer_timeout:g}s "
                                   "(statement_timeout plus 5 s); the connection was dropped")
        finally:
            self._turn.release()

    async def apply_schema(self) -> None:
        """Create the tables and indexes if missing; safe to run concurrently and repeatedly."""
        await self._run(f"BEGIN; SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {schema_sql()}; COMMIT;")

    async def insert_events(
        self, ids: Sequence[str], payloads: Sequence[bytes], *, owner: str, lease: float, spilled: bool
    ) -> None:
        """Commit the rows in one statement. ``spilled`` rows are claimable at once."""
        await self._run(INSERT_EVENTS, {
            "ids": list(ids), "payloads": list(payloads), "owner": owner,
            "lease": float(lease), "spilled": spilled,
        })

    async def claim(self, *, owner: str, lease: float, limit: int, reclaim_before: datetime | None,
                    writer_only: bool) -> list[StoredEvent]:
        """Lease up to ``limit`` claimable rows to ``owner``; SKIP LOCKED keeps instances apart."""
        cursor = await self._run(CLAIM_EVENTS, {
            "owner": owner, "reclaim_before": reclaim_before, "lease": lease, "limit": limit,
            "writer_only": writer_only,
        })
        return [StoredEvent(*row) for row in cursor.fetchall()]

    async def release(self, ids: Sequence[str], *, owner: str, error: str, attempts: int, retry_after: float,
                      multiplier: float = 1.0, retry_max: float = 0.0) -> None:
        """Hand rows back to the table to be claimed again after ``retry_after`` seconds, times
        ``multiplier`` for each attempt a row already had, up to ``retry_max`` (if larger than 0)."""
        await self._run(RELEASE_EVENTS, {
            "ids": list(ids), "owner": owner, "error": storable_text(error),
            "attempts": attempts, "retry_after": retry_after, "multiplier": multiplier,
            "retry_max": retry_max if retry_max > 0 else retry_after,
        })

    async def delete(self, ids: Sequence[str], *, owner: str) -> int:
        """Delete acknowledged rows that ``owner`` holds; return how many."""
        return (await self._run(DELETE_EVENTS, {"ids": list(dict.fromkeys(ids)), "owner": owner})).rowcount

    async def dead_letter(self, entries: Sequence[tuple[str, str, str]], *, owner: str) -> int:
        """Move rows ``owner`` holds to the dead-letter table: ``entries`` are (id, reason code, reason).

        Reasons and codes are made storable (no NUL bytes); an id given twice is moved once, with its last reason.
        """
        unique = {e[0]: e for e in entries}
        return (await self._run(DEAD_LETTER_EVENTS, {
            "ids": list(unique), "codes": [storable_text(e[1], 100) for e in unique.values()],
            "reasons": [storable_text(e[2]) for e in unique.values()], "owner": owner,
        })).rowcount

    async def expire(self, *, ttl: float, limit: int = 10_000) -> int:
        return (await self._run(EXPIRE_EVENTS, {"ttl": ttl, "limit": limit})).rowcount

    async def pending_stats(self) -> PendingStats:
        return PendingStats(*_one(await self._run(PENDING_STATS)))

    async def table_activity(self) -> TableActivity:
        """Cumulative inserts/deletes and dead tuples from ``pg_stat_user_tables`` (lags up to ~1 s)."""
        return TableActivity(*_one(await self._run(TABLE_ACTIVITY)))

    async def lease_owners(self) -> list[tuple[str, int, int]]:
        """(owner, rows, rows whose lease has lapsed), largest first."""
        return (await self._run(LEASE_OWNERS)).fetchall()

    async def dead_letters_by_reason(self) -> list[tuple[str, int]]:
        return (await self._run(DEAD_LETTERS_BY_REASON)).fetchall()

    async def list_dead_letters(self, *, limit: int, reason_code: str | None = None) -> list[tuple[Any, ...]]:
        return (await self._run(LIST_DEAD_LETTERS, {"limit": limit, "reason_code": reason_code})).fetchall()

    async def replay_dead_letters(self, ids: Sequence[str] | None) -> list[str]:
        """Move dead letters back to pending (``ids`` None: all of them); return the ids moved.

        Unknown ids are an error and nothing is moved.
        """
        async with _transaction(self):
            if ids is not None:
                cursor = await self._run(
                    "SELECT array_agg(i) FROM unnest(%(ids)s::text[]) i "
                    "WHERE i NOT IN (SELECT id FROM chip_durable_events_dead_letter)", {"ids": list(ids)})
                (unknown,) = _one(cursor)
                if unknown:
                    raise KeyError(", ".join(unknown))
            cursor = await self._run(REPLAY_DEAD_LETTERS, {"all": ids is None, "ids": list(ids or [])})
            return [row[0] for row in cursor.fetchall()]

    async def oldest_transaction_seconds(self) -> float:
        return float(_one(await self._run(OLDEST_TRANSACTION))[0])

    async def now(self) -> datetime:
        now: datetime = _one(await self._run("SELECT clock_timestamp()"))[0]
        return now

    async def has_pending_before(self, before: datetime, *, owner: str) -> bool:
        cursor = await self._run(HAS_PENDING_BEFORE, {"before": before, "owner": owner})
        return bool(_one(cursor)[0])
