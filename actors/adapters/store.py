"""All SQL of the running emitter, in one place: insert, claim, release, delete, dead-letter, stats.

The schema itself (``schema.sql``, migrations, catalog reads) is ``schema.py``'s.

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

import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from itertools import chain
from types import TracebackType
from typing import Any, TypeVar

import psycopg
import trio
from psycopg import pq
from psycopg.abc import PQGen
from psycopg.generators import execute
from psycopg.waiting import Ready, Wait

from ..core.events import Rejection
from ..core.failures import storable_text
from ..errors import StoreUnavailable
from .postgres import connect

_T = TypeVar("_T")
_LENGTH = struct.Struct(">i").pack
_ONE_DIMENSION = struct.Struct(">iiIii").pack
_TEXT_OID, _BYTEA_OID = 25, 17


def binary_array(items: Sequence[bytes], element_oid: int) -> bytes:
    """Postgres' binary array format (one dimension, no NULLs), built with no Python step per element.

    psycopg dumps a list element by element in Python; for the thousands of
    ids and payloads a second that the hot statements carry, that showed in
    profiles of emit.
    """
    header = _ONE_DIMENSION(1, 0, element_oid, len(items), 1)
    return header + b"".join(chain.from_iterable(zip(map(_LENGTH, map(len, items)), items, strict=True)))


@dataclass(frozen=True, slots=True)
class _Hot:
    """A statement on every event's path: prepared once per connection and run without a cursor.

    Its parameters are dumped here (binary, :func:`binary_array` for arrays), so
    a run is one send and one answer with no per-statement Python in between
    (psycopg's cursor, query conversion and adapters cost more than the
    10-row INSERT they carried).
    """

    name: bytes
    sql: bytes
    types: tuple[int, ...]  # parameter type oids


_FLOAT8 = struct.Struct(">d").pack


def insert_parameters(ids: Sequence[str], payloads: Sequence[bytes], *, owner: str, lease: float,
                      spilled: bool) -> list[bytes]:
    """:data:`INSERT_EVENTS`' parameters, binary, in its order."""
    return [binary_array(list(map(str.encode, ids)), _TEXT_OID), binary_array(payloads, _BYTEA_OID),
            owner.encode(), _FLOAT8(lease), b"\x01" if spilled else b"\x00"]


# One statement, binary parameters: one round trip, little client CPU, and the
# lease measured on the database's clock like every comparison made with it.
# Spilled rows are claimable at once, in their turn: their lease lapses as they
# are written, so claims (oldest lapse first) take them after rows that became
# claimable earlier (released or spilled before them), never ahead of all of them.
INSERT_EVENTS = _Hot(b"durable_emitter_insert", b"""
INSERT INTO chip_durable_events (id, payload, lease_owner, emitted_by, lease_expires_at)
SELECT id, payload, $3, $3,
       CASE WHEN $5 THEN now()
            ELSE now() + make_interval(secs => $4) END
FROM unnest($1::text[], $2::bytea[]) AS t(id, payload)
""", (1009, 1001, 25, 701, 16))  # ids text[], payloads bytea[], owner text, lease seconds float8, spilled bool

def _claim(rows: str) -> str:
    """Lease the rows ``rows`` selects (ids, ordered and limited) to the claimer; SKIP LOCKED keeps claims apart."""
    return f"""
WITH claimable AS (
    {rows.strip()}
    FOR UPDATE SKIP LOCKED
)
UPDATE chip_durable_events e
SET lease_owner = %(owner)s, lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM claimable WHERE e.id = claimable.id
RETURNING e.id, e.payload, e.created_at
"""


# Rows nobody holds: lease lapsed (spilled, released for retry, or lapsed by a
# restart: see LAPSE_LEASES), oldest lapse first. A range scan of the lease index
# however few rows are claimable: live leases sit at its far end.
CLAIM_EVENTS = _claim("""
    SELECT id FROM chip_durable_events
    WHERE lease_expires_at < now()
      AND (NOT %(writer_only)s OR lease_owner = %(owner)s)
    ORDER BY lease_expires_at
    LIMIT %(limit)s
""")

# A (re)started dispatcher ends the leases its instance id holds: what an earlier
# run held in memory or in flight is gone with it, so those rows are claimable
# at once (by it, or by any instance) instead of after their lease.
LAPSE_LEASES = """
UPDATE chip_durable_events SET lease_expires_at = now()
WHERE lease_owner = %(owner)s AND lease_expires_at > now()
"""

# Liveness: each running instance holds pg_advisory_lock(LIVENESS_KEY, hashtext(its
# instance id)) on a session it keeps for its lifetime. A process that dies ends its
# session and frees the lock, so its rows can be claimed at once instead of after
# their lease (Que frees a dead worker's jobs the same way).
LIVENESS_KEY = 0x64656D74
_ALIVE = f"""EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.classid = {LIVENESS_KEY} AND l.objsubid = 2
                 AND l.objid = hashtext({{owner}})::oid AND l.granted
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""

# Take the lock, or keep it: true while this session holds it. Taken again after a
# reconnect; false means another live session holds this instance id.
HOLD_LIVENESS = f"""
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks
                         WHERE locktype = 'advisory' AND classid = {LIVENESS_KEY} AND objsubid = 2
                           AND objid = hashtext(%(owner)s)::oid AND pid = pg_backend_pid() AND granted)
            THEN true
            ELSE pg_try_advisory_lock({LIVENESS_KEY}, hashtext(%(owner)s)) END
"""

# Whether the lock taken by the previous statement is still this backend's: a
# pooler in transaction mode hands each statement to any backend, and session
# locks mean nothing there.
SESSION_IS_OURS = f"""
SELECT EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND classid = {LIVENESS_KEY} AND objsubid = 2
                 AND objid = hashtext(%(owner)s)::oid AND pid = pg_backend_pid() AND granted)
"""

# Every owner that holds rows, by a skip scan of the owner index: one probe per
# owner, however many rows each holds.
_OWNERS = """
WITH RECURSIVE owners AS (
    SELECT min(lease_owner) AS owner FROM chip_durable_events
    UNION ALL
    SELECT (SELECT min(lease_owner) FROM chip_durable_events WHERE lease_owner > owners.owner)
    FROM owners WHERE owners.owner IS NOT NULL
)
"""

# Owners that hold rows but no liveness lock: dead instances, and 'replay'.
ORPHANED_OWNERS = _OWNERS + f"""
SELECT owner FROM owners
WHERE owner IS NOT NULL AND owner <> %(me)s AND NOT {_ALIVE.format(owner="owner")}
"""

# A dead owner's rows, whatever their lease says, oldest first.
CLAIM_ORPHANS = _claim("""
    SELECT id FROM chip_durable_events
    WHERE lease_owner = ANY(%(orphans)s::text[])
    ORDER BY lease_owner, created_at
    LIMIT %(limit)s
""")

# A row's wait grows with the attempts it already had (the value before this update).
RELEASE_EVENTS = """
UPDATE chip_durable_events
SET attempts = attempts + %(attempts)s, last_error = %(error)s,
    lease_expires_at = now() + make_interval(secs => least(
        %(retry_max)s::float8, %(retry_after)s::float8 * power(%(multiplier)s::float8, least(attempts, 64))))
WHERE id = ANY(%(ids)b) AND lease_owner = %(owner)s
"""

# Only rows this instance holds: a row whose lease lapsed may be another's now.
DELETE_EVENTS = _Hot(b"durable_emitter_delete",
                     b"DELETE FROM chip_durable_events WHERE id = ANY($1) AND lease_owner = $2", (1009, 25))

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
                   AND lease_expires_at < now()  -- never a row a live lease holds: it may be in flight
                 ORDER BY created_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING id, payload, created_at, attempts, last_error
)
INSERT INTO chip_durable_events_dead_letter (id, payload, created_at, attempts, reason_code, reason)
SELECT id, payload, created_at, attempts, 'EXPIRED',
       'not delivered within the TTL; last error: ' || coalesce(last_error, 'none')
FROM moved
ON CONFLICT (id) DO NOTHING
"""

# Counted exactly while the table is small (a few ms); beyond, the planner's own
# estimate (rows per page at the last vacuum or analyze, times the pages now),
# so a sample is a catalog read, not a scan of a million rows. Never analyzed:
# exact. The oldest row is the first entry of the created_at index.
PENDING_STATS = """
WITH size AS (
    SELECT c.reltuples, c.relpages, pg_relation_size(c.oid) AS bytes,
           pg_relation_size(c.oid) / current_setting('block_size')::int AS pages
    FROM pg_class c WHERE c.oid = 'chip_durable_events'::regclass
), estimate AS (
    SELECT CASE WHEN bytes <= %(exact_below)s OR reltuples < 0 OR relpages = 0 THEN NULL
                ELSE (reltuples / relpages * pages)::bigint END AS rows
    FROM size
), counted AS (
    SELECT count(*) AS rows, sum(octet_length(payload)) AS bytes FROM chip_durable_events
    WHERE (SELECT rows FROM estimate) IS NULL
)
SELECT coalesce((SELECT rows FROM estimate), (SELECT rows FROM counted)),
       coalesce((SELECT bytes FROM counted),
                (SELECT rows FROM estimate) * (SELECT avg_width FROM pg_stats WHERE schemaname = current_schema()
                    AND tablename = 'chip_durable_events' AND attname = 'payload'), 0)::bigint,
       coalesce(extract(epoch FROM now() - (SELECT min(created_at) FROM chip_durable_events)), 0)::float8,
       (SELECT rows FROM estimate) IS NULL
"""
EXACT_COUNT_BELOW_BYTES = 8 * 1024 * 1024  # about 20,000 rows of 256 B: counted in a few ms

# Upstream's acceptance tests read these counters; so do run-local and `status`.
TABLE_ACTIVITY = """
SELECT coalesce(sum(n_tup_ins), 0)::bigint, coalesce(sum(n_tup_del), 0)::bigint,
       coalesce(sum(n_dead_tup), 0)::bigint, max(greatest(last_autovacuum, last_vacuum))
FROM pg_stat_user_tables WHERE relname = 'chip_durable_events' AND schemaname = current_schema()
"""

# Each owner's rows and lapsed leases, and whether it is alive; the rows
# counted up to a cap, so a million-row backlog is not counted row by row.
LEASE_OWNERS = _OWNERS + f"""
SELECT owner,
       (SELECT count(*) FROM (SELECT FROM chip_durable_events
                              WHERE lease_owner = owners.owner LIMIT %(cap)s) held),
       (SELECT count(*) FROM (SELECT FROM chip_durable_events
                              WHERE lease_owner = owners.owner AND lease_expires_at < now() LIMIT %(cap)s) lapsed),
       {_ALIVE.format(owner="owners.owner")}
FROM owners WHERE owner IS NOT NULL ORDER BY 2 DESC, 1 LIMIT 50
"""
LEASE_OWNERS_CAP = 10_000

DEAD_LETTERS_BY_REASON = """
SELECT reason_code, count(*) FROM chip_durable_events_dead_letter GROUP BY reason_code ORDER BY count(*) DESC
"""

LIST_DEAD_LETTERS = """
SELECT id, reason_code, reason, attempts, created_at, dead_lettered_at
FROM chip_durable_events_dead_letter
WHERE %(reason_code)s::text IS NULL OR reason_code = %(reason_code)s
ORDER BY dead_lettered_at DESC LIMIT %(limit)s
"""

DEAD_LETTER_BY_ID = """
SELECT id, payload, reason_code, reason, attempts, created_at, dead_lettered_at
FROM chip_durable_events_dead_letter WHERE id = %(id)s
"""

PURGE_DEAD_LETTERS = """
DELETE FROM chip_durable_events_dead_letter
WHERE dead_lettered_at < now() - make_interval(secs => %(older_than)s)
  AND (%(reason_code)s::text IS NULL OR reason_code = %(reason_code)s)
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
SELECT id, payload, attempts, 'replayed from the dead-letter table', 'replay', now()
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

# Rows this instance holds, and rows it emitted that another instance holds now
# (claimed after a spill, a release, or a lapse): one probe of each index.
HAS_PENDING_BEFORE = """
SELECT EXISTS (SELECT 1 FROM chip_durable_events
               WHERE created_at <= %(before)s AND lease_owner = %(owner)s)
    OR EXISTS (SELECT 1 FROM chip_durable_events
               WHERE created_at <= %(before)s AND emitted_by = %(owner)s AND lease_owner <> emitted_by)
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
    exact: bool = True  # False: the planner's estimate (a large table)


def _answer(results: list[pq.abc.PGresult]) -> pq.abc.PGresult:
    """The last result of a statement; a failed one raised as psycopg raises it."""
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise psycopg.errors.error_from_result(result)
    return results[-1]


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
    schema: str = "public"  # a plain identifier (EmitterConfig checks it): the tables' schema
    application_name: str = "durable-emitter"  # shown in pg_stat_activity

    @property
    def answer_timeout(self) -> float:
        """How long the client waits for any answer: the server's own deadline first, plus a margin."""
        return self.statement_timeout + 5.0

    def statements(self) -> str:
        return (f"SET statement_timeout = {round(self.statement_timeout * 1000)}; "
                f"SET lock_timeout = {round(self.lock_timeout * 1000)}; "
                f"SET synchronous_commit = {'on' if self.synchronous_commit else 'off'}; "
                "SET client_encoding = 'UTF8'; "  # hot statements send their text encoded as UTF-8
                f'SET search_path TO "{self.schema}"')


def _one(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The single row a statement returns by its shape (an aggregate, EXISTS, now())."""
    row: tuple[Any, ...] | None = cursor.fetchone()
    if row is None:
        raise StoreUnavailable("Postgres returned no row where one was certain")
    return row


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
        self._prepared: set[bytes] = set()  # _Hot statements prepared on this connection
        self._turn = trio.Lock()

    async def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            session = self._session
            # Connecting resolves names, so it runs in a thread; connect_timeout bounds it.
            conn = await trio.to_thread.run_sync(partial(
                connect, self._url, tcp_user_timeout=session.tcp_user_timeout, keepalive_idle=session.keepalive_idle,
                application_name=session.application_name))
            try:
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
        """Run ``talk`` on this store's connection: one exchange at a time, within ``answer_timeout``.

        The server cancels a statement after statement_timeout; this deadline covers a
        server that cannot answer at all (a path that went dark without a reset). A
        psycopg error becomes :class:`StoreUnavailable`; an exchange cancelled midway
        closes the connection (its protocol state is unknown).
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
                    raise _unavailable(exc) from exc
                except BaseException:
                    self.close()
                    raise
            raise StoreUnavailable(f"Postgres did not answer within {self._session.answer_timeout:g}s "
                                   "(statement_timeout plus 5 s); the connection was dropped")
        finally:
            self._turn.release()

    async def _run(self, sql: str, params: dict[str, Any] | None = None, *,
                   prepare: bool | None = None) -> psycopg.Cursor[Any]:
        """Run one statement. ``prepare=False``: plan it for these parameters every time.

        psycopg prepares a statement after a few runs, and Postgres may then
        keep one generic plan: for a query on one owner's rows, with one owner
        holding a million, that plan is a sequential scan.
        """
        async def talk(conn: psycopg.Connection) -> psycopg.Cursor[Any]:
            cursor = conn.cursor()
            await _wait(cursor._execute_gen(sql, params, prepare=prepare), conn.pgconn.socket)
            return cursor

        return await self._exchange(talk)

    async def _run_hot(self, statement: _Hot, params: list[bytes]) -> int:
        """Run a :class:`_Hot` statement (preparing it on a new connection first); return its row count."""
        async def talk(conn: psycopg.Connection) -> int:
            pgconn = conn.pgconn
            try:
                if statement.name not in self._prepared:
                    pgconn.send_prepare(statement.name, statement.sql, param_types=statement.types)
                    _answer(await _wait(execute(pgconn), pgconn.socket))
                    self._prepared.add(statement.name)
                pgconn.send_query_prepared(statement.name, params, param_formats=[1] * len(params))
                return _answer(await _wait(execute(pgconn), pgconn.socket)).command_tuples or 0
            except psycopg.Error as exc:
                if exc.sqlstate == "26000":  # the statement is gone (DISCARD ALL, a pooler): prepare it again
                    self._prepared.discard(statement.name)
                raise

        return await self._exchange(talk)

    async def insert_events(
        self, ids: Sequence[str], payloads: Sequence[bytes], *, owner: str, lease: float, spilled: bool
    ) -> None:
        """Commit the rows in one statement. ``spilled`` rows are claimable at once."""
        await self._run_hot(INSERT_EVENTS, insert_parameters(ids, payloads, owner=owner, lease=lease, spilled=spilled))

    async def claim(self, *, owner: str, lease: float, limit: int, writer_only: bool) -> list[StoredEvent]:
        """Lease up to ``limit`` claimable rows to ``owner``; SKIP LOCKED keeps instances apart."""
        cursor = await self._run(CLAIM_EVENTS, {
            "owner": owner, "lease": lease, "limit": limit,
            "writer_only": writer_only,
        }, prepare=False)
        return [StoredEvent(*row) for row in cursor.fetchall()]

    async def lapse_leases(self, owner: str) -> int:
        """End every lease ``owner`` holds, so its rows are claimable now; return how many."""
        return (await self._run(LAPSE_LEASES, {"owner": owner})).rowcount

    async def hold_liveness(self, owner: str) -> bool:
        """Take (or keep) ``owner``'s liveness lock on this session; False if a live session holds it."""
        return bool(_one(await self._run(HOLD_LIVENESS, {"owner": owner}))[0])

    async def session_is_ours(self, owner: str) -> bool:
        """Whether the liveness lock survived to the next statement: False behind a transaction-mode pooler."""
        return bool(_one(await self._run(SESSION_IS_OURS, {"owner": owner}))[0])

    async def orphaned_owners(self, *, me: str) -> list[str]:
        """Owners holding rows with no live session: their rows may be claimed at once."""
        return [row[0] for row in (await self._run(ORPHANED_OWNERS, {"me": me}, prepare=False)).fetchall()]

    async def claim_orphans(self, orphans: Sequence[str], *, owner: str, lease: float,
                            limit: int) -> list[StoredEvent]:
        """Lease up to ``limit`` rows of dead ``orphans`` to ``owner``, oldest first."""
        cursor = await self._run(CLAIM_ORPHANS, {"orphans": list(orphans), "owner": owner, "lease": lease,
                                                 "limit": limit}, prepare=False)
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
        return await self._run_hot(DELETE_EVENTS, [binary_array(list(map(str.encode, ids)), _TEXT_OID),
                                                   owner.encode()])

    async def dead_letter(self, entries: Sequence[Rejection], *, owner: str) -> int:
        """Move rows ``owner`` holds to the dead-letter table, each with its code and reason.

        Reasons and codes are made storable (no NUL bytes). Each id once: Postgres refuses
        one statement that moves a row twice (the acker de-duplicates what it gathers).
        """
        return (await self._run(DEAD_LETTER_EVENTS, {
            "ids": [e.event_id for e in entries], "codes": [storable_text(e.code, 100) for e in entries],
            "reasons": [storable_text(e.reason) for e in entries], "owner": owner,
        })).rowcount

    async def expire(self, *, ttl: float, limit: int = 10_000) -> int:
        return (await self._run(EXPIRE_EVENTS, {"ttl": ttl, "limit": limit})).rowcount

    async def pending_stats(self) -> PendingStats:
        """Pending rows (exact when few, the planner's estimate when many), payload bytes, oldest age."""
        return PendingStats(*_one(await self._run(PENDING_STATS, {"exact_below": EXACT_COUNT_BELOW_BYTES})))

    async def table_activity(self) -> TableActivity:
        """Cumulative inserts/deletes and dead tuples from ``pg_stat_user_tables`` (lags up to ~1 s)."""
        return TableActivity(*_one(await self._run(TABLE_ACTIVITY)))

    async def lease_owners(self) -> list[tuple[str, int, int, bool]]:
        """(owner, rows, rows whose lease has lapsed, alive), largest first; counts stop at LEASE_OWNERS_CAP."""
        return (await self._run(LEASE_OWNERS, {"cap": LEASE_OWNERS_CAP}, prepare=False)).fetchall()

    async def dead_letters_by_reason(self) -> list[tuple[str, int]]:
        return (await self._run(DEAD_LETTERS_BY_REASON)).fetchall()

    async def list_dead_letters(self, *, limit: int, reason_code: str | None = None) -> list[tuple[Any, ...]]:
        return (await self._run(LIST_DEAD_LETTERS, {"limit": limit, "reason_code": reason_code})).fetchall()

    async def dead_letter_by_id(self, event_id: str) -> tuple[Any, ...] | None:
        """(id, payload, reason_code, reason, attempts, created_at, dead_lettered_at), or None."""
        row: tuple[Any, ...] | None = (await self._run(DEAD_LETTER_BY_ID, {"id": event_id})).fetchone()
        return row

    async def purge_dead_letters(self, *, older_than: float, reason_code: str | None = None) -> int:
        """Delete dead letters moved there more than ``older_than`` seconds ago; return how many."""
        cursor = await self._run(PURGE_DEAD_LETTERS, {"older_than": float(older_than), "reason_code": reason_code})
        return cursor.rowcount

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
        cursor = await self._run(HAS_PENDING_BEFORE, {"before": before, "owner": owner}, prepare=False)
        return bool(_one(cursor)[0])
