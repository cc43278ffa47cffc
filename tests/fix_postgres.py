"""Real PostgreSQL for the tests: ``DATABASE_URL`` if set, else an embedded pgserver.

Each test that asks for ``database_url`` gets a database of its own, created
fresh and dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actors.postgres import start_embedded


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The server every test database lives on.

    Its data directory is not under pytest's tmp_path: pytest deletes old
    tmp_path folders when other pytest runs start, which would pull the data
    out from under a running server. It is deleted when the session ends.
    """
    url = os.environ.get("DATABASE_URL")
    if url:
        return url
    scratch = Path(tempfile.mkdtemp(prefix="durable-emitter-test-pg-"))
    return start_embedded(scratch, delete_at_exit=True)


def with_dbname(url: str, dbname: str) -> str:
    return make_conninfo(url, dbname=dbname)


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_dbname(pg_server_url, name)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def server_dbname(url: str) -> str:
    return conninfo_to_dict(url).get("dbname", "")


def query(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def pending_ids(url: str) -> set[str]:
    return {row[0] for row in query(url, "SELECT id FROM chip_durable_events")}


def dead_letters(url: str) -> dict[str, tuple[str, str]]:
    rows = query(url, "SELECT id, reason_code, reason FROM chip_durable_events_dead_letter")
    return {row[0]: (row[1], row[2]) for row in rows}


class OwnPostgres:
    """A PostgreSQL server of a test's own, which the test may stop and start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = start_embedded(data_dir, stop_at_exit=False)
        self.socket_dir = conninfo_to_dict(self.url)["host"]

    def _pg_ctl(self, *args: str) -> None:
        from pgserver import _commands

        user = "pgserver" if os.geteuid() == 0 else None
        _commands.pg_ctl(list(args), pgdata=self.data_dir, user=user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "stop", "-m", "fast")

    def start(self) -> None:
        self._pg_ctl("-w", "start", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.data_dir / "log"))


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[OwnPostgres]:
    server = OwnPostgres(tmp_path / "own-pgdata")
    yield server
    try:
        server.stop()
    except Exception:  # already stopped by the test
        pass
