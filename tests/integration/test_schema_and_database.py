"""The embedded PostgreSQL, and clear errors for an unreachable DATABASE_URL."""

import subprocess
import sys

import psycopg
import pytest

from actors.adapters import schema
from actors.adapters.postgres import connect, start_embedded
from actors.core.failures import StoreFailure
from actors.errors import StoreUnavailable


def test_embedded_postgres_keeps_rows_across_a_restart(tmp_path) -> None:
    # Each start is its own process, as a user's restarts would be.
    data_dir = tmp_path / "pgdata"
    script = (
        "import sys, trio; from actors.adapters.postgres import start_embedded; from actors.adapters.store import Store\n"
        "from actors.adapters import schema\n"
        "async def main():\n"
        "    url = start_embedded(sys.argv[1]); schema.check(url, 'public', auto_migrate=True, writer=True)\n"
        "    s = Store(url)\n"
        "    if sys.argv[2] == 'write': await s.insert_events(['kept'], [b'x'], owner='o', hold=60)\n"
        "    print((await s.pending_stats()).rows); s.close()\n"
        "trio.run(main)\n"
    )
    run = lambda step: subprocess.run([sys.executable, "-c", script, str(data_dir), step],  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    first = run("write")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "1"
    second = run("read")  # the first process stopped the server at exit; this starts it again
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "1"


def test_unreachable_database_url_is_one_clear_line_without_the_password() -> None:
    with pytest.raises(StoreUnavailable) as info:
        connect("postgresql://alice:hunter2@127.0.0.1:1/events", connect_timeout=2)
    message = str(info.value)
    assert "127.0.0.1:1/events" in message
    assert "hunter2" not in message and "\n" not in message


def test_embedded_start_failure_is_a_store_error(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises((StoreUnavailable, OSError)):
        start_embedded(blocker / "pgdata")


def test_a_data_directory_of_another_major_version_is_one_clear_error(tmp_path) -> None:
    """pgserver made PostgreSQL 16 data directories; the embedded server is now 18 and cannot start them."""
    old = tmp_path / "pgdata"
    old.mkdir()
    (old / "PG_VERSION").write_text("16\n")
    with pytest.raises(StoreUnavailable, match=r"made by PostgreSQL 16, and the embedded server is PostgreSQL 18"):
        start_embedded(old)
    assert sorted(p.name for p in old.iterdir()) == ["PG_VERSION"]  # nothing touched


async def test_a_released_row_waits_longer_the_more_attempts_it_had(database_url: str) -> None:
    from actors.adapters.store import Store
    from tests.helpers import query

    store = Store(database_url)
    try:
        await store.insert_events(["fresh", "tired", "exhausted"], [b"x"] * 3, owner="me", hold=60)
        query(database_url, "UPDATE chip_durable_events SET attempts = CASE id WHEN 'tired' THEN 3 "
                            "WHEN 'exhausted' THEN 40 ELSE 0 END")
        await store.release(["fresh", "tired", "exhausted"], owner="me", token=0, error="UNAVAILABLE", attempts=5,
                            retry_after=1.0, multiplier=2.0, retry_max=60.0)
    finally:
        store.close()
    waits = dict(query(database_url, "SELECT id, extract(epoch FROM lease_expires_at - now())::float8 "
                                     "FROM chip_durable_events"))
    assert waits["fresh"] == pytest.approx(1.0, abs=0.5)
    assert waits["tired"] == pytest.approx(8.0, abs=0.5)  # 1 s x 2^3
    assert waits["exhausted"] == pytest.approx(60.0, abs=0.5)  # capped at row_retry_max


def test_a_catalog_read_that_fails_is_a_store_error_of_its_kind_not_a_psycopg_one(database_url) -> None:
    """A pooler's 'server login has been failing' (08P01) while Postgres restarts reaches the start's catalog
    read as a broken exchange: it must be a StoreUnavailable of its kind, so the start waits for Postgres."""
    conn = psycopg.connect(database_url, autocommit=True)
    conn.pgconn.finish()  # the session is gone under the open connection, as a reset path leaves it
    try:
        with pytest.raises(StoreUnavailable) as raised:
            schema._read_catalog(conn, "public")
        assert raised.value.kind is StoreFailure.TRANSIENT
    finally:
        conn.close()
