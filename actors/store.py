"""All SQL, in one place: schema, insert, claim, release, delete, dead-letter, stats.

Each actor owns one :class:`Store` (one connection) and calls it from a worker
thread with ``trio.to_thread.run_sync``; the methods are plain blocking
functions, easy to test without Trio. A broken connection is reopened on the
next call, so a Postgres restart costs the calls made while it was down, not
the actor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psycopg

from .errors import StoreUnavailable
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

RELEASE_EVENTS = """
UPDATE chip_durable_events
SET attempts = attempts + %(attempts)s, last_error = %(error)s,
    lease_expires_at = now() + make_interval(secs => %(retry_after)s)
WHERE id = ANY(%(ids)b) AND lease_owner = %(owner)s
"""

DELETE_EVENTS = "DELETE FROM chip_durable_events WHERE id = ANY(%(ids)b)"

DEAD_LETTER_EVENTS = """
WITH reasons AS (
    SELECT * FROM unnest(%(ids)b::text[], %(codes)b::text[], %(reasons)b::text[])
        AS r(id, reason_code, reason)
), moved AS (
    DELETE FROM chip_durable_events e USING reasons r WHERE e.id = r.id
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
class PendingStats:
    rows: int
    payload_bytes: int
    oldest_age_seconds: float


def _unavailable(exc: psycopg.Error) -> StoreUnavailable:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    return StoreUnavailable(f"Postgres: {reason}")


def schema_sql() -> str:
    return Path(__file__).with_name("schema.sql").read_text()


class Store:
    """One connection and the statements an actor runs on it.

    Not thread-safe: each actor owns its own and calls it from one worker
    thread at a time.
    """

    def __init__(self, url: str, *, synchronous_commit: bool = True) -> None:
        self._url = url
        self._synchronous_commit = synchronous_commit
        self._conn: psycopg.Connection | None = None

    @property
    def conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self.close()
            self._conn = connect(self._url)
            if not self._synchronous_commit:
                # Lost deletes after a crash only mean re-sends (at least once).
                self._conn.execute("SET synchronous_commit = off")
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self, sql: str, params: dict | None = None) -> psycopg.Cursor:
        try:
            return self.conn.execute(sql, params)
        except psycopg.Error as exc:
            raise _unavailable(exc) from exc

    def apply_schema(self) -> None:
        """Create the tables and indexes if missing; safe to run concurrently and repeatedly."""
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self.conn.execute(schema_sql())

    def insert_events(
        self, ids: Sequence[str], payloads: Sequence[bytes], *, owner: str, lease: float, spilled: bool
    ) -> None:
        """Commit the rows in one statement. ``spilled`` rows are claimable at once."""
        self._run(INSERT_EVENTS, {
            "ids": list(ids), "payloads": list(payloads), "owner": owner,
            "lease": float(lease), "spilled": spilled,
        })

    def claim(self, *, owner: str, lease: float, limit: int, reclaim_before: datetime | None,
              writer_only: bool) -> list[StoredEvent]:
        """Lease up to ``limit`` claimable rows to ``owner``; SKIP LOCKED keeps instances apart."""
        rows = self._run(CLAIM_EVENTS, {
            "owner": owner, "reclaim_before": reclaim_before, "lease": lease, "limit": limit,
            "writer_only": writer_only,
        }).fetchall()
        return [StoredEvent(*row) for row in rows]

    def release(self, ids: Sequence[str], *, owner: str, error: str, attempts: int, retry_after: float) -> None:
        """Hand rows back to the table to be claimed again after ``retry_after`` seconds."""
        self._run(RELEASE_EVENTS, {
            "ids": list(ids), "owner": owner, "error": error[:2000],
            "attempts": attempts, "retry_after": retry_after,
        })

    def delete(self, ids: Sequence[str]) -> int:
        return self._run(DELETE_EVENTS, {"ids": list(ids)}).rowcount

    def dead_letter(self, ids: Sequence[str], codes: Sequence[str], reasons: Sequence[str]) -> int:
        return self._run(DEAD_LETTER_EVENTS, {
            "ids": list(ids), "codes": list(codes), "reasons": [r[:2000] for r in reasons],
        }).rowcount

    def expire(self, *, ttl: float, limit: int = 10_000) -> int:
        return self._run(EXPIRE_EVENTS, {"ttl": ttl, "limit": limit}).rowcount

    def pending_stats(self) -> PendingStats:
        return PendingStats(*self._run(PENDING_STATS).fetchone())

    def now(self) -> datetime:
        return self._run("SELECT clock_timestamp()").fetchone()[0]

    def has_pending_before(self, before: datetime, *, owner: str) -> bool:
        return self._run(HAS_PENDING_BEFORE, {"before": before, "owner": owner}).fetchone()[0]
