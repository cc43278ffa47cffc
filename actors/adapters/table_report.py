"""What ``durable-emitter status`` reads about the table, on one blocking connection.

It loads psycopg and the SQL alone (no Trio, gRPC or protobuf), so status answers in a
fraction of a second. The records and caps live here; the running emitter's
:class:`~.store.Store` and the operator's :class:`~.operations.Operations` (on Trio) run
the same statements and return the same records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

import psycopg

from ..errors import StoreUnavailable
from . import schema
from .operator_queries import (
    DEAD_LETTERS_BY_REASON,
    LEASE_OWNERS,
    OLDEST_TRANSACTION,
    TABLE_ACTIVITY,
)
from .postgres import connect
from .queries import PENDING_STATS

EXACT_COUNT_BELOW_BYTES = 8 * 1024 * 1024  # about 10,000 rows of 256 B (pages half full): counted in a few ms
LEASE_OWNERS_CAP = 10_000  # lease_owners counts each owner's rows up to this


@dataclass(frozen=True, slots=True)
class PendingStats:
    rows: int
    payload_bytes: int
    oldest_age_seconds: float
    exact: bool = True  # False: the planner's estimate (a large table)


@dataclass(frozen=True, slots=True)
class TableActivity:
    inserts: int
    deletes: int
    dead_tuples: int
    last_vacuum: datetime | None


class OwnerLiveness(Enum):
    """How an owner of rows is judged (liveness_queries.py ``judged``): the claims' judgement, for status."""

    RUNNING = "running"  # holds its liveness lock
    GONE = "gone"  # lock free past its grace, or its death proven: its rows are claimed at once
    LOCK_LOST = "lock lost"  # lock free, within its grace: it takes the lock back if it runs
    LEASE = "lease"  # runs without session liveness: its rows wait for their lease
    UNKNOWN = "unknown"  # no record (an older version, 'replay'): its rows wait for their lease


@dataclass(frozen=True, slots=True)
class TableReport:
    pending: PendingStats
    activity: TableActivity
    owners: list[tuple[str, int, int, OwnerLiveness]]  # (owner, rows, lapsed, how it is judged), largest first
    dead_letters: list[tuple[str, int]]  # (reason code, count), largest first
    oldest_transaction_seconds: float


def read_report(url: str, schema_name: str, *, statement_timeout: float) -> TableReport:
    """Check the schema is current and readable (never migrating), then read it all in one transaction.

    The settings are the transaction's own (``set_config(..., true)``), so nothing is left on a
    server connection a pooler hands on, as in the emitter's pooled sessions.
    """
    with connect(url) as conn:
        schema.check_current(conn, schema_name, writer=False)
        try:
            return _read(conn, schema_name, statement_timeout)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"reading the table failed: {exc}", sqlstate=exc.sqlstate) from None


def _read(conn: psycopg.Connection, schema_name: str, statement_timeout: float) -> TableReport:
    with conn.transaction():
        conn.execute("SELECT set_config('search_path', %s, true), set_config('statement_timeout', %s, true)",
                     (f'"{schema_name}"', str(round(statement_timeout * 1000))))
        pending = PendingStats(*_one(conn, PENDING_STATS, {"exact_below": EXACT_COUNT_BELOW_BYTES}))
        activity = TableActivity(*_one(conn, TABLE_ACTIVITY))
        owners = [(owner, held, lapsed, OwnerLiveness(judged)) for owner, held, lapsed, judged
                  in conn.execute(LEASE_OWNERS, {"cap": LEASE_OWNERS_CAP}).fetchall()]
        letters = [(code, count) for code, count in conn.execute(DEAD_LETTERS_BY_REASON).fetchall()]
        oldest = float(_one(conn, OLDEST_TRANSACTION)[0])
    return TableReport(pending, activity, owners, letters, oldest)


def _one(conn: psycopg.Connection, sql: str, params: dict[str, Any] | None = None) -> tuple[Any, ...]:
    row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
    assert row is not None, sql  # each of these answers one row
    return row
