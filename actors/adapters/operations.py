"""What an operator reads from the table and repairs in it, beside the running emitter.

``durable-emitter status``/``drain``/``dlq``, run-local and the load tests use
:class:`Operations`: a :class:`~.store.Store` (its connection and reads) plus
table activity, lease owners, the dead-letter table (list, show, purge,
replay), the oldest transaction, and the plans of the reads that must stay
index scans however large the table grows. The actors never use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import UnknownDeadLetter
from .driver import Transaction, one_row
from .operator_queries import (
    COUNT_PENDING_UP_TO,
    DEAD_LETTER_BY_ID,
    DEAD_LETTERS_BY_REASON,
    LEASE_OWNERS,
    LIST_DEAD_LETTERS,
    OLDEST_TRANSACTION,
    PURGE_DEAD_LETTERS,
    REPLAY_DEAD_LETTERS,
    TABLE_ACTIVITY,
    UNKNOWN_DEAD_LETTERS,
    explain,
)
from .queries import (
    CLAIM_EVENTS,
    CLAIM_ORPHANS,
    CLAIM_OWN_EVENTS,
    HAS_PENDING_BEFORE,
    PENDING_STATS,
)
from .store import Store
from .table_report import EXACT_COUNT_BELOW_BYTES, TableActivity
from .table_report import LEASE_OWNERS_CAP as LEASE_OWNERS_CAP
from .table_report import OwnerLiveness as OwnerLiveness

PENDING_COUNT_CAP = 1_000_000  # count_pending stops here


@dataclass(frozen=True, slots=True)
class ReadPlans:
    """EXPLAIN (ANALYZE, BUFFERS) of the reads that must stay index scans however large the table, as they ran."""

    claim: str  # the dispatcher's claim
    orphan_claim: str  # its claim of the rows of instances judged gone
    flush_poll: str  # has_pending_before, which flush() polls
    pending_stats: str  # the sampler's
    lease_owners: str  # status's


class Operations(Store):
    """A :class:`Store` with the operator's reads and the dead-letter table's maintenance."""

    async def table_activity(self) -> TableActivity:
        """Cumulative inserts/deletes and dead tuples from ``pg_stat_user_tables`` (lags up to ~1 s)."""
        return TableActivity(*one_row(await self._db.run(TABLE_ACTIVITY)))

    async def lease_owners(self) -> list[tuple[str, int, int, OwnerLiveness]]:
        """(owner, rows, rows whose lease has lapsed, how it is judged), largest first; counts stop at
        LEASE_OWNERS_CAP."""
        rows = (await self._db.run(LEASE_OWNERS, {"cap": LEASE_OWNERS_CAP}, prepare=False)).fetchall()
        return [(owner, held, lapsed, OwnerLiveness(judged)) for owner, held, lapsed, judged in rows]

    async def dead_letters_by_reason(self) -> list[tuple[str, int]]:
        return (await self._db.run(DEAD_LETTERS_BY_REASON)).fetchall()

    async def list_dead_letters(self, *, limit: int, reason_code: str | None = None) -> list[tuple[Any, ...]]:
        return (await self._db.run(LIST_DEAD_LETTERS, {"limit": limit, "reason_code": reason_code})).fetchall()

    async def dead_letter_by_id(self, event_id: str) -> tuple[Any, ...] | None:
        """(id, payload, reason_code, reason, attempts, created_at, dead_lettered_at), or None."""
        row: tuple[Any, ...] | None = (await self._db.run(DEAD_LETTER_BY_ID, {"id": event_id})).fetchone()
        return row

    async def purge_dead_letters(self, *, older_than: float, reason_code: str | None = None) -> int:
        """Delete dead letters moved there more than ``older_than`` seconds ago; return how many."""
        cursor = await self._db.run(PURGE_DEAD_LETTERS, {"older_than": float(older_than),
                                                         "reason_code": reason_code})
        return cursor.rowcount

    async def replay_dead_letters(self, ids: Sequence[str] | None) -> list[str]:
        """Move dead letters back to pending (``ids`` None: all of them); return the ids moved.

        Ids not in the dead-letter table raise :class:`UnknownDeadLetter`, and nothing is moved.
        """
        async with self._db.transaction():
            if ids is not None:
                (unknown,) = one_row(await self._db.run(UNKNOWN_DEAD_LETTERS, {"ids": list(ids)}))
                if unknown:
                    raise UnknownDeadLetter(unknown)
            cursor = await self._db.run(REPLAY_DEAD_LETTERS, {"all": ids is None, "ids": list(ids or [])})
            return [row[0] for row in cursor.fetchall()]

    async def oldest_transaction_seconds(self) -> float:
        return float(one_row(await self._db.run(OLDEST_TRANSACTION))[0])

    def rolled_back(self) -> Transaction:
        """A transaction rolled back at its end: try the store's writes at scale and leave the table as it was."""
        return self._db.transaction(rollback=True)

    async def read_plans(self, *, owner: str, lease: float, limit: int, writer_only: bool,
                         before: datetime, gone: Sequence[str] = ()) -> ReadPlans:
        """The plans of :class:`ReadPlans`' reads: a claim as :meth:`claim` takes it, a flush poll of
        ``owner`` from ``before``; each run, then rolled back."""
        async def plan(sql: str, params: dict[str, Any]) -> str:
            async with self.rolled_back():
                rows = (await self._db.run(explain(sql), params, prepare=False)).fetchall()
            return "\n".join(row[0] for row in rows)

        return ReadPlans(
            claim=await plan(CLAIM_OWN_EVENTS if writer_only else CLAIM_EVENTS, {
                "owner": owner, "lease": lease, "limit": limit, "max_bytes": 2**31, "run_floor": 0, "gone": []}),
            orphan_claim=await plan(CLAIM_ORPHANS, {"owner": owner, "lease": lease, "limit": limit,
                                                    "max_bytes": 2**31, "gone": list(gone)}),
            flush_poll=await plan(HAS_PENDING_BEFORE, {"before": before, "owner": owner}),
            pending_stats=await plan(PENDING_STATS, {"exact_below": EXACT_COUNT_BELOW_BYTES}),
            lease_owners=await plan(LEASE_OWNERS, {"cap": LEASE_OWNERS_CAP}),
        )

    async def count_pending(self, *, cap: int = PENDING_COUNT_CAP) -> int:
        """Pending rows, counted exactly up to ``cap`` (``cap`` means at least that many)."""
        return int(one_row(await self._db.run(COUNT_PENDING_UP_TO, {"cap": cap}))[0])
