"""What to do about the schema a database has: the pure decision, apart from the catalog reads.

The catalog is read into a :class:`Catalog`; :func:`plan` says which version
was found and what would bring it to the code's version (install
``schema.sql`` into an empty schema, or run numbered migrations); and
:func:`on_start` says whether a start may go on, must migrate first, or must
refuse. A database made by 0.1.0 has no version table: its tables are checked
column by column against the 0.1.0 shape and then count as version 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ..errors import SchemaError

EVENTS = "chip_durable_events"
DEAD_LETTERS = "chip_durable_events_dead_letter"
VERSIONS = "chip_durable_events_version"
INSTANCES = "chip_durable_events_instances"
TABLES = (EVENTS, DEAD_LETTERS, VERSIONS, INSTANCES)

# The tables a recorded version must have (the version table itself aside): from its migration on.
REQUIRED_SINCE: Mapping[str, int] = {EVENTS: 1, DEAD_LETTERS: 1, INSTANCES: 4}

# The columns 0.1.0 created (migration 0001), by the type Postgres reports.
LEGACY_SHAPE: Mapping[str, Mapping[str, str]] = {
    EVENTS: {"id": "text", "payload": "bytea", "created_at": "timestamp with time zone",
             "attempts": "integer", "last_error": "text", "lease_owner": "text",
             "lease_expires_at": "timestamp with time zone"},
    DEAD_LETTERS: {"id": "text", "payload": "bytea", "created_at": "timestamp with time zone",
                   "attempts": "integer", "reason_code": "text", "reason": "text",
                   "dead_lettered_at": "timestamp with time zone"},
}

# What each kind of user needs on the tables it uses once the schema is current.
WRITER_RIGHTS = ("SELECT", "INSERT", "UPDATE", "DELETE")  # the emitter, drain, dlq replay
READER_RIGHTS = ("SELECT",)  # status, dlq list
OUTBOX_RIGHTS = ("INSERT",)  # actors.outbox, on the events table only

APPLY_COMMAND = "durable-emitter schema apply"


@dataclass(frozen=True)
class Catalog:
    """What the catalog says about our tables in one schema (read, never changed)."""

    schema: str
    role: str
    tables: Mapping[str, Mapping[str, str]]  # our tables that exist: column -> type
    rights: Mapping[str, frozenset[str]]  # table -> privileges the role holds on it
    version: int | None = None  # highest recorded; None when there is no version table


@dataclass(frozen=True)
class Plan:
    schema: str
    found: int  # 0: nothing installed
    expected: int
    install: bool  # empty schema: run schema.sql, then record every version
    steps: tuple[int, ...]  # migrations to run, in order

    @property
    def current(self) -> bool:
        return self.found == self.expected


class Start(Enum):
    GO_ON = "go on"
    MIGRATE = "migrate"


def plan(catalog: Catalog, expected: int) -> Plan:
    """The version found and the way to ``expected``; :class:`SchemaError` for what no step can fix."""
    where = f"schema {catalog.schema!r}"
    found = catalog.version
    if found is None:
        if EVENTS not in catalog.tables:
            if DEAD_LETTERS in catalog.tables:
                raise SchemaError(f"{where} has {DEAD_LETTERS} but no {EVENTS} and no version table: "
                                  "it was not made by durable-emitter, or half dropped; restore or drop it, "
                                  "or set DURABLE_EMITTER_SCHEMA to another schema")
            return Plan(catalog.schema, 0, expected, install=True, steps=())
        for table, columns in LEGACY_SHAPE.items():
            if table in catalog.tables:
                _check_shape(where, table, catalog.tables[table], columns)
        found = 1
    elif found > expected:
        raise SchemaError(f"{where} is at version {found}, newer than this durable-emitter "
                          f"(which knows versions up to {expected}): upgrade durable-emitter; "
                          "nothing was changed")
    elif gone := [t for t, since in REQUIRED_SINCE.items() if since <= found and t not in catalog.tables]:
        missing = " and ".join(gone)
        raise SchemaError(f"{where} records version {found} but {missing} is missing: "
                          "restore it from a backup, or drop the schema's durable-emitter tables "
                          f"and run `{APPLY_COMMAND}`")
    return Plan(catalog.schema, found, expected, install=False, steps=tuple(range(found + 1, expected + 1)))


def _check_shape(where: str, table: str, found: Mapping[str, str], wanted: Mapping[str, str]) -> None:
    missing = [f"{name} {kind}" for name, kind in wanted.items() if name not in found]
    mistyped = [f"{name} is {found[name]}, not {kind}" for name, kind in wanted.items()
                if name in found and found[name] != kind]
    if missing or mistyped:
        raise SchemaError(f"{where} has a table {table} of another shape ("
                          + "; ".join([*(["missing " + ", ".join(missing)] if missing else []), *mistyped])
                          + "): it was not made by durable-emitter; rename or drop it, or set "
                          "DURABLE_EMITTER_SCHEMA to another schema. Nothing was changed")


def on_start(found: Plan, *, auto_migrate: bool) -> Start:
    """Go on when current; migrate when allowed; otherwise one message naming the command."""
    if found.current:
        return Start.GO_ON
    if auto_migrate:
        return Start.MIGRATE
    raise SchemaError(f"{_behind(found)}, or set DURABLE_EMITTER_AUTO_MIGRATE=true")


def _behind(found: Plan) -> str:
    what = "has no durable-emitter tables" if found.install else f"is at version {found.found}"
    return (f"schema {found.schema!r} {what}; this durable-emitter needs version {found.expected}: "
            f"run `{APPLY_COMMAND}` (as a role that may create tables there)")


def outbox_refusal(catalog: Catalog, expected: int) -> str | None:
    """Why :mod:`actors.outbox` may not write to this schema, in one message naming the fix; None if it may.

    The outbox never migrates (it runs in the host's transaction, where DDL
    would hold locks until the host commits): the schema must be current, and
    the role needs INSERT on the events table (``pg_notify`` needs no right).
    Raises :class:`SchemaError` for what :func:`plan` refuses (newer, foreign).
    """
    found = plan(catalog, expected)
    if not found.current:
        return f"{_behind(found)}; nothing was written"
    problem = missing_rights(catalog, OUTBOX_RIGHTS, tables=(EVENTS,))
    return None if problem is None else f"{problem}; nothing was written"


def missing_rights(catalog: Catalog, needed: tuple[str, ...],
                   tables: tuple[str, ...] = (EVENTS, DEAD_LETTERS, INSTANCES)) -> str | None:
    """One message naming the privileges the role lacks on ``tables``, or None."""
    gaps = [(table, [r for r in needed if r not in catalog.rights.get(table, frozenset())]) for table in tables]
    gaps = [(table, lacking) for table, lacking in gaps if lacking]
    if not gaps:
        return None
    listed = "; ".join(f"{', '.join(lacking)} on {catalog.schema}.{table}" for table, lacking in gaps)
    on = ", ".join(f"{catalog.schema}.{table}" for table in tables)
    return (f"role {catalog.role!r} lacks {listed}: GRANT {', '.join(needed)} ON {on} TO {catalog.role} "
            f"(and USAGE ON SCHEMA {catalog.schema}, SELECT ON {catalog.schema}.{VERSIONS})")
