"""What the actors and the emitter ask of the table: insert, claim, release, delete, dead-letter, stats.

Each actor owns one :class:`Store` (one connection, :mod:`.driver`'s); the SQL is
:mod:`.queries`'. The operator's reads and dead-letter maintenance are
:mod:`.operations`'.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from ..core.answers import Rejection
from ..core.failures import storable_text
from ..errors import StoreUnavailable
from .driver import (
    BYTEA_OID,
    TEXT_OID,
    Connection,
    HotStatement,
    Transaction,
    binary_array,
    one_row,
)
from .driver import Session as Session  # what tree.py and the scripts configure a Store with
from .liveness_queries import FREE_OWNERS, HOLD_LIVENESS, RECORD_INSTANCE
from .processes import this_process
from .queries import (
    BACKEND_PID,
    CLAIM_EVENTS,
    CLAIM_ORPHANS,
    CLAIM_OWN_EVENTS,
    CONFIRM_EVENTS,
    COUNT_EVENTS,
    DATABASE_NOW,
    DEAD_LETTER_EVENTS,
    DELETE_EVENTS,
    EXPIRE_EVENTS,
    HAS_PENDING_BEFORE,
    INSERT_EVENTS,
    LAPSE_LEASES,
    LAPSE_ROWS,
    LEAVE,
    PENDING_STATS,
    RELEASE_EVENTS,
)
from .table_report import EXACT_COUNT_BELOW_BYTES as EXACT_COUNT_BELOW_BYTES
from .table_report import PendingStats as PendingStats

_FLOAT8 = struct.Struct(">d").pack


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: str
    payload: bytes
    created_at: datetime
    lease_token: int  # the claim's: a release must name it (queries.RELEASE_EVENTS)


def _insert_parameters(ids: Sequence[str], payloads: Sequence[bytes], *, owner: str, hold: float) -> list[bytes]:
    """INSERT_EVENTS' parameters, binary, in its order."""
    return [binary_array(list(map(str.encode, ids)), TEXT_OID), binary_array(payloads, BYTEA_OID),
            owner.encode(), _FLOAT8(hold)]


def insert_statement(ids: Sequence[str], payloads: Sequence[bytes], *, owner: str,
                     hold: float) -> tuple[HotStatement, list[bytes]]:
    """:meth:`Store.insert_events`' statement and its binary parameters, for a benchmark's own connection."""
    return INSERT_EVENTS, _insert_parameters(ids, payloads, owner=owner, hold=hold)


class Store:
    """One connection and the statements an actor runs on it.

    A connection runs one statement at a time; tasks sharing a Store take turns.
    """

    def __init__(self, url: str, session: Session | None = None) -> None:
        self._db = Connection(url, session)

    def close(self) -> None:
        self._db.close()

    def pinned(self) -> Transaction:
        """A transaction (rolled back at its end) that keeps one server connection this Store's, even
        behind a pooler in transaction mode, while the caller looks at what other connections see."""
        return self._db.transaction(rollback=True)

    async def insert_events(self, ids: Sequence[str], payloads: Sequence[bytes], *, owner: str, hold: float) -> None:
        """Commit the rows in one statement, held by ``owner`` for ``hold`` seconds (0: claimable at once)."""
        await self._db.run_hot(INSERT_EVENTS, _insert_parameters(ids, payloads, owner=owner, hold=hold))

    async def claim(self, *, owner: str, lease: float, limit: int, writer_only: bool, max_bytes: int = 2**31,
                    run_floor: int = 0, gone: Sequence[str] = ()) -> list[StoredEvent]:
        """Lease up to ``limit`` claimable rows to ``owner``, as many as fit ``max_bytes`` of payload
        (one at least); SKIP LOCKED keeps instances apart. ``writer_only``: only rows ``owner`` wrote.
        ``run_floor`` (:meth:`lapse_leases`): rows ``owner`` claimed before it are its to take again;
        rows held by the ``gone`` owners are claimable whatever their lease says."""
        cursor = await self._db.run(CLAIM_OWN_EVENTS if writer_only else CLAIM_EVENTS, {
            "owner": owner, "lease": lease, "limit": limit, "max_bytes": max_bytes, "run_floor": run_floor,
            "gone": list(gone),
        }, prepare=False, binary=True)
        return [StoredEvent(*row) for row in cursor.fetchall()]

    async def lapse_leases(self, owner: str, *, lease: float) -> tuple[int, int]:
        """End the leases of rows ``owner`` wrote and still holds as written (``lease``: how long it
        leases what it writes), so they are claimable now; return how many, and the run floor:
        rows ``owner`` claimed before it are an earlier run's (:meth:`claim` takes them again)."""
        lapsed, floor = one_row(await self._db.run(LAPSE_LEASES, {"owner": owner, "lease": lease}))
        return int(lapsed), int(floor)

    async def leave(self, owner: str, *, lease: float) -> int:
        """``owner`` closes: its rows are the others' to claim at once; return how many leases ended."""
        return int(one_row(await self._db.run(LEAVE, {"owner": owner, "lease": lease}))[0])

    async def lapse_rows(self, ids: Sequence[str], *, owner: str) -> int:
        """End ``owner``'s leases of the rows ``ids`` as written (not claimed since): claimable now."""
        return (await self._db.run(LAPSE_ROWS, {"ids": list(ids), "owner": owner})).rowcount

    async def hold_liveness(self, owner: str) -> bool:
        """Take (or keep) ``owner``'s liveness lock on this session; False if a live session holds it."""
        return bool(one_row(await self._db.run(HOLD_LIVENESS, {"owner": owner}))[0])

    async def backend_pid(self) -> int:
        """The server process this statement ran on (a transaction pooler changes it between statements)."""
        pid: int = one_row(await self._db.run(BACKEND_PID))[0]
        return pid

    async def record_instance(self, owner: str, *, session_liveness: bool, grace: float, lease: float,
                              starting: bool = True) -> bool | None:
        """Write ``owner``'s record, by which the others judge whether it runs; at a start, also forget
        other instances' stale records that hold no rows.

        With ``session_liveness`` the liveness lock is taken (or kept) on this session first, and the
        record says the instance is seen only while the lock is held; returns whether it is (None
        without session liveness). ``grace``: how long the others wait, once they found the lock
        free, for it to be taken back; ``lease``: how long a lease of this instance's lasts.
        """
        held = one_row(await self._db.run(RECORD_INSTANCE, {
            "owner": owner, "session_liveness": session_liveness, "grace": grace, "lease": lease,
            "starting": starting, "process": this_process(),
        }, prepare=False))[0]
        return None if held is None else bool(held)

    async def keep_instance(self, owner: str, *, session_liveness: bool, grace: float,
                            lease: float) -> bool | None:
        """:meth:`record_instance`, every sample: keep the lock (take it again after a reconnect), say so."""
        return await self.record_instance(owner, session_liveness=session_liveness, grace=grace, lease=lease,
                                          starting=False)

    async def free_owners(self, *, owner: str) -> list[tuple[str, str, bool]]:
        """The other owners whose liveness lock is free: (instance id, its process, grace passed), the one
        seen longest ago first; notes when each was first found free (its grace counts from there)."""
        cursor = await self._db.run(FREE_OWNERS, {"owner": owner}, prepare=False)
        return [(instance_id, process, bool(passed)) for instance_id, process, passed in cursor.fetchall()]

    async def claim_orphans(self, *, owner: str, lease: float, limit: int, gone: Sequence[str],
                            max_bytes: int = 2**31) -> tuple[list[StoredEvent], set[str]]:
        """Lease up to ``limit`` rows that the ``gone`` owners wrote and held (as many as fit
        ``max_bytes``), each owner's oldest first; return the rows and the owners they were taken from."""
        rows = (await self._db.run(CLAIM_ORPHANS, {"owner": owner, "lease": lease, "limit": limit, "gone": list(gone),
                                                   "max_bytes": max_bytes}, prepare=False, binary=True)).fetchall()
        return [StoredEvent(*row[:4]) for row in rows], {row[4] for row in rows}

    async def release(self, ids: Sequence[str], *, owner: str, token: int, error: str, attempts: int,
                      retry_after: float, multiplier: float = 1.0, retry_max: float = 0.0) -> int:
        """Hand rows back to the table to be claimed again after ``retry_after`` seconds, times
        ``multiplier`` for each attempt a row already had, up to ``retry_max`` (if larger than 0).

        Only rows ``owner`` still holds under the lease ``token`` names (0: as written); return how many.
        """
        return (await self._db.run(RELEASE_EVENTS, {
            "ids": list(ids), "owner": owner, "token": token, "error": storable_text(error),
            "attempts": attempts, "retry_after": retry_after, "multiplier": multiplier,
            "retry_max": retry_max if retry_max > 0 else retry_after,
        })).rowcount

    async def delete(self, ids: Sequence[str], *, owner: str) -> int:
        """Delete acknowledged rows that ``owner`` holds; return how many."""
        return await self._db.run_hot(DELETE_EVENTS, [binary_array(list(map(str.encode, ids)), TEXT_OID),
                                                      owner.encode()])

    async def dead_letter(self, entries: Sequence[Rejection], *, owner: str) -> list[str]:
        """Move rows ``owner`` holds to the dead-letter table, each with its code and reason; return
        the code of each row moved (a row another instance holds now is not).

        Reasons and codes are made storable (no NUL bytes). Each id once: Postgres refuses
        one statement that moves a row twice (the acker de-duplicates what it gathers).
        """
        cursor = await self._db.run(DEAD_LETTER_EVENTS, {
            "ids": [e.event_id for e in entries], "codes": [storable_text(e.code, 100) for e in entries],
            "reasons": [storable_text(e.reason) for e in entries], "owner": owner,
        })
        return [code for (code,) in cursor.fetchall()]

    async def expire(self, *, ttl: float, limit: int = 10_000) -> int:
        return (await self._db.run(EXPIRE_EVENTS, {"ttl": ttl, "limit": limit})).rowcount

    async def pending_stats(self) -> PendingStats:
        """Pending rows (exact when few, the planner's estimate when many), payload bytes, oldest age."""
        return PendingStats(*one_row(await self._db.run(PENDING_STATS, {"exact_below": EXACT_COUNT_BELOW_BYTES})))

    async def now(self) -> datetime:
        now: datetime = one_row(await self._db.run(DATABASE_NOW))[0]
        return now

    async def has_pending_before(self, before: datetime, *, owner: str) -> bool:
        """Whether a row ``owner`` wrote before ``before`` is pending, whoever holds it now."""
        cursor = await self._db.run(HAS_PENDING_BEFORE, {"before": before, "owner": owner}, prepare=False)
        return bool(one_row(cursor)[0])

    async def confirm_events(self, ids: Sequence[str], payloads: Sequence[bytes], *, owner: str, hold: float) -> int:
        """Make certain the rows of an insert whose answer was lost are committed; return how many it wrote.

        Rows the lost commit wrote are kept as they are; the others are written
        now, as :meth:`insert_events` would have. 0: the lost commit had written them.
        """
        return await self._db.run_hot(CONFIRM_EVENTS, _insert_parameters(ids, payloads, owner=owner, hold=hold))

    async def count_events(self, ids: Sequence[str], *, owner: str) -> int:
        """How many of ``ids`` have a row in the events table, once the synchronous standby has them."""
        return int(one_row(await self._db.run(COUNT_EVENTS, {"ids": list(ids), "owner": owner}, prepare=False))[0])


def rolled_back(error: StoreUnavailable) -> bool:
    """Whether a write that raised certainly wrote nothing: Postgres answered it with an ERROR.

    An ERROR ends the transaction it interrupts, and a transaction can no longer
    fail with one once it committed (Postgres turns an error after the commit
    record into a PANIC). Everything else leaves the outcome unknown: a broken
    connection, no answer in time, or a FATAL error, which ends the session and
    may come after the commit (a session terminated while it waited for a
    synchronous standby had committed locally).
    """
    cause = error.__cause__
    return isinstance(cause, psycopg.Error) and cause.diag.severity_nonlocalized == "ERROR"
