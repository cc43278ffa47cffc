"""The schema's lifecycle in Postgres: read the catalog, show and apply ``schema.sql`` or migrations.

A normal start only reads the catalog (:func:`check`); nothing here takes a
lock or runs DDL except :func:`apply`, which runs every step of a plan in one
transaction under an advisory lock and ``lock_timeout``: all of it is applied,
or none. Migrations are ``migrations/NNNN_what.sql`` beside this file, applied
in order; the version table records each. Adding one: write the next numbered
file, make the same change to ``schema.sql``, and the catalog-comparison test
tells whether the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import errors, sql

from ..core.schema_plan import (
    EVENTS,
    READER_RIGHTS,
    TABLES,
    VERSIONS,
    WRITER_RIGHTS,
    Catalog,
    Plan,
    Start,
    missing_rights,
    on_start,
    plan,
)
from ..errors import SchemaError, StoreUnavailable
from .postgres import connect

SCHEMA_LOCK = 0x63686970  # pg_advisory_xact_lock key: "chip"
HERE = Path(__file__).parent
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

TABLE_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       has_table_privilege(c.oid, 'SELECT'), has_table_privilege(c.oid, 'INSERT'),
       has_table_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = %(schema)s AND c.relname = ANY(%(tables)s) AND c.relkind IN ('r', 'p')
"""

SCHEMA_ACCESS = """
SELECT current_user, n.oid IS NOT NULL, coalesce(has_schema_privilege(n.oid, 'USAGE'), false)
FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %(schema)s
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """Every numbered migration, in order; numbers run 1, 2, 3 ... without gaps."""
    found = []
    for path in sorted((HERE / "migrations").glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise RuntimeError(f"{path.name}: migrations are named NNNN_what.sql")
        found.append(Migration(int(match.group(1)), path.stem, path.read_text()))
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("migrations must be numbered 0001, 0002, ... without gaps")
    return found


def expected_version() -> int:
    return migrations()[-1].version


def schema_sql() -> str:
    return (HERE / "schema.sql").read_text()


# One catalog read: a query (text, or composed with the schema's name) and its parameters.
Read = tuple[str | sql.Composed, dict[str, Any] | None]
CatalogReads = Generator[Read, list[tuple[Any, ...]], Catalog]


def catalog_reads(schema: str) -> CatalogReads:
    """The reads behind :func:`read_catalog`, without I/O: yields each query, is sent its rows, returns the Catalog.

    A sync connection runs it here; :mod:`actors.outbox` runs it on the host's
    sync or async connection, inside the host's transaction: reads only, and
    none that can fail on rights (the version table is read only once the
    catalog says it may be), so a refusal leaves that transaction usable.
    """
    role, exists, usage = _first((yield SCHEMA_ACCESS, {"schema": schema}))
    if exists and not usage:
        raise SchemaError(f"role {role!r} may not use schema {schema!r}: GRANT USAGE ON SCHEMA {schema} TO {role}")
    tables: dict[str, dict[str, str]] = {}
    rights: dict[str, frozenset[str]] = {}
    for table, column, kind, *held in (yield TABLE_COLUMNS, {"schema": schema, "tables": list(TABLES)}):
        columns = tables.setdefault(table, {})
        if column is not None:
            columns[column] = kind
        rights[table] = frozenset(r for r, ok in zip(("SELECT", "INSERT", "UPDATE", "DELETE"), held, strict=True)
                                  if ok)
    version = None
    if VERSIONS in tables:
        if "SELECT" not in rights[VERSIONS]:
            raise SchemaError(f"role {role!r} may not read {schema}.{VERSIONS}, so the schema's version "
                              f"is unknown: GRANT SELECT ON {schema}.{VERSIONS} TO {role}")
        query = sql.SQL("SELECT coalesce(max(version), 0) FROM {}").format(sql.Identifier(schema, VERSIONS))
        version = int(_first((yield query, None))[0])
    return Catalog(schema, role, tables, rights, version)


def read_catalog(conn: psycopg.Connection, schema: str) -> Catalog:
    """Our tables in ``schema``, their columns, the role's rights, the recorded version: reads only."""
    reads = catalog_reads(schema)
    try:
        query, params = next(reads)
        while True:
            query, params = reads.send(conn.execute(query, params).fetchall())
    except StopIteration as done:
        catalog: Catalog = done.value
        return catalog


def _read_catalog(conn: psycopg.Connection, schema: str) -> Catalog:
    """:func:`read_catalog` on a connection of ours: a failed read is our error, classified by its SQLSTATE
    (a pooler's "server login has been failing", 08P01, while Postgres restarts: transient)."""
    try:
        return read_catalog(conn, schema)
    except psycopg.Error as exc:
        raise StoreUnavailable(f"Postgres: {_one_line(exc)}", sqlstate=exc.sqlstate) from exc


def _first(rows: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    if not rows:
        raise StoreUnavailable("Postgres returned no row where one was certain")
    return rows[0]


def statements(found: Plan) -> list[tuple[str, str]]:
    """(what, SQL) for each step of the plan, in the order :func:`apply` runs them."""
    if found.install:
        return [("schema.sql", schema_sql())]
    known = {m.version: m for m in migrations()}
    return [(known[v].name, known[v].sql) for v in found.steps]


def inspect(url: str, schema: str) -> Plan:
    """The version found and the steps to the current one (catalog reads only)."""
    with _connection(url) as conn:
        return plan(_read_catalog(conn, schema), expected_version())


def check(url: str, schema: str, *, auto_migrate: bool, writer: bool, lock_timeout: float = 10.0) -> Plan:
    """Before a start or a command: go on if current, migrate if allowed, else one clear refusal.

    ``writer``: the caller inserts and deletes (emitter, drain, replay), else it only reads.
    """
    with _connection(url) as conn:
        catalog = _read_catalog(conn, schema)
    found = plan(catalog, expected_version())
    if on_start(found, auto_migrate=auto_migrate) is Start.MIGRATE:
        apply(url, schema, lock_timeout=lock_timeout)
        return check(url, schema, auto_migrate=False, writer=writer)
    return _with_rights(catalog, found, writer=writer)


def check_current(conn: psycopg.Connection, schema: str, *, writer: bool) -> Plan:
    """:func:`check` without migrating, on a connection the caller goes on using (status reads on it)."""
    catalog = read_catalog(conn, schema)
    found = plan(catalog, expected_version())
    on_start(found, auto_migrate=False)  # raises unless current
    return _with_rights(catalog, found, writer=writer)


def _with_rights(catalog: Catalog, found: Plan, *, writer: bool) -> Plan:
    problem = missing_rights(catalog, WRITER_RIGHTS if writer else READER_RIGHTS)
    if problem:
        raise SchemaError(problem)
    return found


def apply(url: str, schema: str, *, lock_timeout: float, dry_run: bool = False) -> Plan:
    """Bring ``schema`` to the current version in one transaction; with ``dry_run``, roll it back.

    Takes the advisory lock first and reads the catalog again under it, so
    instances starting together migrate once. Any failure rolls everything back.
    """
    with _connection(url) as conn:
        step = "taking the schema lock"
        try:
            with conn.transaction() as transaction:
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(f"{int(lock_timeout * 1000)}ms"))
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                catalog = read_catalog(conn, schema)
                found = plan(catalog, expected_version())
                if found.current:
                    return found
                step = f"creating schema {schema}"
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
                for name, text in statements(found):
                    step = f"running {name}"
                    conn.execute(text.encode())
                step = "recording the version"
                with conn.cursor() as cursor:
                    # Every version not recorded yet: a 0.1.0 database (no version table) records 0001 too.
                    unrecorded = [(m.version, m.name) for m in migrations() if m.version > (catalog.version or 0)]
                    cursor.executemany(f"INSERT INTO {VERSIONS} (version, name) VALUES (%s, %s)", unrecorded)
                if dry_run:
                    raise psycopg.Rollback(transaction)
        except errors.LockNotAvailable:
            raise SchemaError(
                f"could not take a lock within lock_timeout ({lock_timeout:g}s) while {step}: another "
                f"session holds it (another instance migrating, or a long transaction on {schema}.{EVENTS}); "
                "nothing was changed; retry, or give more time with --lock-timeout") from None
        except errors.InsufficientPrivilege as exc:
            raise SchemaError(f"role may not change schema {schema!r} ({_one_line(exc)}) while {step}: "
                              f"run `durable-emitter schema apply` as the tables' owner; nothing was changed"
                              ) from None
        except psycopg.Error as exc:
            raise SchemaError(f"{step} failed: {_one_line(exc)}; everything was rolled back, the schema is "
                              "unchanged and no row was touched") from None
        return found


def _connection(url: str) -> psycopg.Connection:
    return connect(url)


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
