"""The host's own transaction: events written in it commit, or roll back, with the host's own rows.

::

    from actors import outbox

    with conn.transaction():                      # the host's psycopg.Connection
        conn.execute("INSERT INTO orders ...")
        event_id = outbox.emit(conn, body, source="orders", type="created")

    async with aconn.transaction():               # a psycopg.AsyncConnection
        ids = await outbox.aemit_many(aconn, bodies, source="orders", type="created")

Usable in any process that has a psycopg 3 connection, with or without an
emitter running in it: the rows are written in the caller's current
transaction, and whichever emitter instance runs against the same table
delivers them once the caller commits. Nothing here commits, rolls back or
changes a session setting; in autocommit mode each call is its own
transaction. Events are built and checked exactly as ``Emitter.emit`` and
``Emitter.emit_many`` build them (same ids, idempotency key, errors).

Row semantics: each row is owned by the marker ``'outbox'`` (also its
``emitted_by``) with a lease that lapsed as it was written, so any running
instance (but a writer-only one) claims it at once, in its turn with spilled
and released rows (oldest lapse first). No emitter's ``flush()`` waits for a
row until an instance claims it: the event was not emitted through that
emitter. The same statement notifies the channel ``durable_emitter_<schema>``;
Postgres delivers that at the commit (and drops it on a rollback), and a
listening instance claims without waiting for its next scan.

Before its first write on a connection, to a schema, the outbox reads the
catalog (in the caller's transaction; reads only, none that can fail on
rights): a schema older than this code, or a role without INSERT on the
events table, is refused with :class:`SchemaError` naming the fix, before
anything is written, and the caller's transaction stays usable. The answer is
remembered for the connection's life.

``docs/outbox.md`` shows psycopg, SQLAlchemy and Django use, and what the
caller's rollbacks, savepoints and autocommit mean.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import tuple_row

from .adapters.outbox_queries import OUTBOX_INSERT, OUTBOX_OWNER, outbox_channel
from .adapters.schema import Read, catalog_reads, expected_version
from .config import EmitterConfig
from .core.events import AttributeValue, Body, build_event, build_events, too_large
from .core.schema_plan import outbox_refusal
from .errors import SchemaError, StoreUnavailable
from .tracing import with_trace_context

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "aemit", "aemit_many", "emit", "emit_many"]

SCHEMA_VARIABLE = "DURABLE_EMITTER_SCHEMA"
DEFAULT_MAX_EVENT_BYTES: int = EmitterConfig.max_event_bytes  # the emitter's default limit

_Steps = Generator[Read, list[tuple[Any, ...]], None]
# The schemas each connection was found fit to write to; forgotten with the connection.
_checked: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()


def emit(conn: psycopg.Connection[Any], body: Body, *, source: str | None = None,
         type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
         attributes: Mapping[str, AttributeValue] | None = None, data_schema: str | None = None,
         schema: str | None = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
         trace_context: bool = True) -> str:
    """Write one event in ``conn``'s current transaction; return its CloudEvent id.

    The event is durable, and will be delivered, once the caller commits; a
    rollback (of the transaction, or of a savepoint around this call) removes
    it. ``body``, ``source``, ``type``, ``attributes`` and ``data_schema`` are
    as for ``Emitter.emit``. ``schema``: where the tables are (default
    ``DURABLE_EMITTER_SCHEMA``, else ``public``). ``max_event_bytes`` and
    ``trace_context`` (the current OpenTelemetry span's ``traceparent``, when
    the ``otel`` extra is installed): as the emitter's settings of those names.

    Raises, with nothing written: :class:`InvalidEvent` / :class:`EventTooLarge`
    for bad input (before any statement), :class:`ConfigError` for a malformed
    schema name, :class:`SchemaError` when the schema is older than this code or
    the role may not insert (the transaction stays usable), and
    :class:`StoreUnavailable` when Postgres refused the write: the transaction
    has then failed, and the caller must roll it back.
    """
    ids, payloads = _one(body, source, type, _traced(attributes, trace_context), data_schema, max_event_bytes)
    _run(conn, _steps(conn, _target(schema), ids, payloads))
    return ids[0]


def emit_many(conn: psycopg.Connection[Any], bodies: Iterable[Body], *, source: str | None = None,
              type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
              attributes: Mapping[str, AttributeValue] | None = None, data_schema: str | None = None,
              schema: str | None = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
              trace_context: bool = True) -> list[str]:
    """Write several events, with the same attributes, in ``conn``'s current transaction; return their ids in order.

    One statement: all of them are written or none, and they commit or roll
    back with the caller's transaction. Every body is checked before anything
    is sent; an error names the first bad one by its index. An empty iterable
    writes nothing and returns ``[]``. No count limit (the rows go in one
    statement; split very large lists to bound its size). Raises as :func:`emit`.
    """
    ids, payloads = build_events(bodies, source=source, type=type, attributes=_traced(attributes, trace_context),
                                 data_schema=data_schema, max_event_bytes=max_event_bytes)
    if ids:
        _run(conn, _steps(conn, _target(schema), ids, payloads))
    return ids


async def aemit(aconn: psycopg.AsyncConnection[Any], body: Body, *, source: str | None = None,
                type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
                attributes: Mapping[str, AttributeValue] | None = None, data_schema: str | None = None,
                schema: str | None = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                trace_context: bool = True) -> str:
    """:func:`emit` on a :class:`psycopg.AsyncConnection`."""
    ids, payloads = _one(body, source, type, _traced(attributes, trace_context), data_schema, max_event_bytes)
    await _arun(aconn, _steps(aconn, _target(schema), ids, payloads))
    return ids[0]


async def aemit_many(aconn: psycopg.AsyncConnection[Any], bodies: Iterable[Body], *, source: str | None = None,
                     type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
                     attributes: Mapping[str, AttributeValue] | None = None, data_schema: str | None = None,
                     schema: str | None = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
                     trace_context: bool = True) -> list[str]:
    """:func:`emit_many` on a :class:`psycopg.AsyncConnection`."""
    ids, payloads = build_events(bodies, source=source, type=type, attributes=_traced(attributes, trace_context),
                                 data_schema=data_schema, max_event_bytes=max_event_bytes)
    if ids:
        await _arun(aconn, _steps(aconn, _target(schema), ids, payloads))
    return ids


def _traced(attributes: Mapping[str, AttributeValue] | None, trace_context: bool
            ) -> Mapping[str, AttributeValue] | None:
    """The current span's trace context added, as ``Emitter.emit`` adds it (unless ``trace_context`` is off)."""
    return with_trace_context(attributes) if trace_context else attributes


def _one(body: Body, source: str | None, type_: str | None, attributes: Mapping[str, AttributeValue] | None,
         data_schema: str | None, max_event_bytes: int) -> tuple[list[str], list[bytes]]:
    """One event, checked as ``Emitter.emit`` checks it."""
    event_id, payload = build_event(body, source=source, type=type_, attributes=attributes, data_schema=data_schema)
    if len(payload) > max_event_bytes:
        raise too_large(len(payload), max_event_bytes)
    return [event_id], [payload]


@dataclass(frozen=True, slots=True)
class _Target:
    schema: str
    insert: str  # OUTBOX_INSERT for this schema
    channel: str


def _target(schema: str | None) -> _Target:
    return _target_named(schema if schema is not None else os.environ.get(SCHEMA_VARIABLE) or "public")


@functools.lru_cache(maxsize=64)
def _target_named(schema: str) -> _Target:
    EmitterConfig(schema=schema)  # the emitter's own check of the name: ConfigError unless a plain lower-case name
    return _Target(schema, OUTBOX_INSERT.format(schema=schema), outbox_channel(schema))


@functools.cache
def _expected_version() -> int:
    return expected_version()


def _steps(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], target: _Target, ids: list[str],
           payloads: list[bytes]) -> _Steps:
    """Every statement of one write, in order, without I/O: the catalog check on first use, then the rows.

    :func:`_run` and :func:`_arun` send each to the connection and the rows back.
    """
    if conn.info.transaction_status == pq.TransactionStatus.INERROR:
        raise StoreUnavailable("the connection's transaction has already failed (an earlier statement raised): "
                               "roll it back first; nothing was written")
    checked = _checked.setdefault(conn, set())
    if target.schema not in checked:
        problem = outbox_refusal((yield from catalog_reads(target.schema)), _expected_version())
        if problem:
            raise SchemaError(problem)
        checked.add(target.schema)
    yield target.insert, {"ids": ids, "payloads": payloads, "owner": OUTBOX_OWNER, "channel": target.channel}


def _run(conn: psycopg.Connection[Any], steps: _Steps) -> None:
    # A cursor of our own: the host's row factory and cursor class (Django's client-side one) stay the host's.
    try:
        with psycopg.Cursor(conn, row_factory=tuple_row) as cursor:
            query, params = next(steps)
            while True:
                cursor.execute(query, params)
                query, params = steps.send(cursor.fetchall())
    except StopIteration:
        return
    except psycopg.Error as exc:
        raise _refused(conn, exc) from exc


async def _arun(aconn: psycopg.AsyncConnection[Any], steps: _Steps) -> None:
    try:
        async with psycopg.AsyncCursor(aconn, row_factory=tuple_row) as cursor:
            query, params = next(steps)
            while True:
                await cursor.execute(query, params)
                query, params = steps.send(await cursor.fetchall())
    except StopIteration:
        return
    except psycopg.Error as exc:
        raise _refused(aconn, exc) from exc


def _refused(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], exc: psycopg.Error) -> StoreUnavailable:
    """Postgres refused a statement: nothing of this call was written, and the caller's transaction has failed."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    failed = conn.info.transaction_status == pq.TransactionStatus.INERROR
    return StoreUnavailable(f"Postgres: {reason}; no event of this call was written"
                            + ("; the transaction has failed: roll it back" if failed else ""),
                            sqlstate=exc.sqlstate)
