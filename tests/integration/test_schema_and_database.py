"""schema.sql, the embedded PostgreSQL, and clear errors for an unreachable DATABASE_URL."""

import subprocess
import sys

import psycopg
import pytest

from actors.adapters.postgres import connect, start_embedded
from actors.adapters.store import Store
from actors.errors import StoreUnavailable


def _names(url: str, kind: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = %s", (kind,)
        ).fetchall()
    return {r[0] for r in rows}


async def test_schema_applies_twice_and_creates_tables_and_indexes(database_url: str) -> None:
    store = Store(database_url)
    await store.apply_schema()
    await store.insert_events(["a"], [b"x"], owner="me", lease=60, spilled=False)
    await store.apply_schema()  # no error, nothing lost
    assert {"chip_durable_events", "chip_durable_events_dead_letter"} <= _names(database_url, "r")
    assert {"chip_durable_events_pkey", "chip_durable_events_lease_idx",
            "chip_durable_events_created_idx"} <= _names(database_url, "i")
    assert (await store.pending_stats()).rows == 1
    store.close()


async def test_concurrent_schema_application_is_serialised(database_url: str) -> None:
    import trio

    stores = [Store(database_url) for _ in range(4)]
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(store.apply_schema)
    for store in stores:
        store.close()
    assert "chip_durable_events" in _names(database_url, "r")


async def test_table_carries_its_autovacuum_settings(database_url: str) -> None:
    store = Store(database_url)
    await store.apply_schema()
    store.close()
    with psycopg.connect(database_url) as conn:
        (options,) = conn.execute("SELECT reloptions FROM pg_class WHERE relname = 'chip_durable_events'").fetchone()
    assert "autovacuum_vacuum_scale_factor=0.01" in options and "fillfactor=80" in options


def test_embedded_postgres_keeps_rows_across_a_restart(tmp_path) -> None:
    # Each start is its own process, as a user's restarts would be.
    data_dir = tmp_path / "pgdata"
    script = (
        "import sys, trio; from actors.adapters.postgres import start_embedded; from actors.adapters.store import Store\n"
        "async def main():\n"
        "    s = Store(start_embedded(sys.argv[1])); await s.apply_schema()\n"
        "    if sys.argv[2] == 'write': await s.insert_events(['kept'], [b'x'], owner='o', lease=60, spilled=False)\n"
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


async def test_a_released_row_waits_longer_the_more_attempts_it_had(database_url: str) -> None:
    from tests.fix_postgres import query

    store = Store(database_url)
    try:
        await store.apply_schema()
        await store.insert_events(["fresh", "tired", "exhausted"], [b"x"] * 3, owner="me", lease=60, spilled=False)
        query(database_url, "UPDATE chip_durable_events SET attempts = CASE id WHEN 'tired' THEN 3 "
                            "WHEN 'exhausted' THEN 40 ELSE 0 END")
        await store.release(["fresh", "tired", "exhausted"], owner="me", error="UNAVAILABLE", attempts=5,
                            retry_after=1.0, multiplier=2.0, retry_max=60.0)
    finally:
        store.close()
    waits = dict(query(database_url, "SELECT id, extract(epoch FROM lease_expires_at - now())::float8 "
                                     "FROM chip_durable_events"))
    assert waits["fresh"] == pytest.approx(1.0, abs=0.5)
    assert waits["tired"] == pytest.approx(8.0, abs=0.5)  # 1 s x 2^3
    assert waits["exhausted"] == pytest.approx(60.0, abs=0.5)  # capped at row_retry_max
