"""Postgres misbehaving: a held MVCC horizon, revoked permissions, statement timeouts."""

import os
import sys

import psycopg
import pytest
import trio

from actors import StoreFailure, StoreUnavailable, open_emitter
from actors.adapters.operations import Operations
from tests.helpers import pending_ids, query, wait_until


async def test_held_mvcc_horizon_delivery_continues_and_status_shows_it(chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
        with psycopg.connect(database_url) as holder:  # a long report in another session
            holder.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            holder.execute("SELECT count(*) FROM chip_durable_events").fetchone()
            for _ in range(5):
                ids = {await emitter.emit(b"x" * 200, source="wf", type="tick") for _ in range(200)}
                await emitter.flush(timeout=30)  # still delivering and deleting
                assert chip.counters.seen(ids) == ids
            store = Operations(database_url)
            try:
                assert await store.oldest_transaction_seconds() > 0
            finally:
                store.close()
            await wait_until(lambda: _dead_tuples(database_url) >= 500, timeout=60, what="dead tuples reported")
            status = await trio.run_process([sys.executable, "-m", "actors.cli", "status"], capture_stdout=True,
                                            env={**os.environ, "DATABASE_URL": database_url})
            holder.rollback()
    assert b"dead tuples" in status.stdout and b"oldest xact" in status.stdout


def _dead_tuples(url: str) -> int:
    rows = query(url, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'chip_durable_events'")
    return rows[0][0] if rows else 0


async def test_revoked_permission_fails_emits_clearly_and_recovers_when_granted(chip, make_config, database_url, limited_role_url) -> None:
    url, role = limited_role_url
    async with open_emitter(make_config(chip, database_url=url)) as emitter:
        await emitter.emit(b"x", source="wf", type="tick")
        query(database_url, f'REVOKE INSERT ON chip_durable_events FROM "{role}"')
        with pytest.raises(StoreUnavailable, match="permission denied") as raised:
            await emitter.emit(b"x", source="wf", type="tick")
        assert (raised.value.sqlstate, raised.value.kind) == ("42501", StoreFailure.PERMANENT)  # not worth a retry
        query(database_url, f'GRANT INSERT ON chip_durable_events TO "{role}"')
        event_id = await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert chip.counters.seen([event_id]) == {event_id}


async def test_statement_timeout_fails_the_commit_and_writes_nothing(chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip)):
        query(database_url, """CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS
                               $$ BEGIN PERFORM pg_sleep(5); RETURN NEW; END $$""")
        query(database_url, "CREATE TRIGGER slow BEFORE INSERT ON chip_durable_events "
                            "FOR EACH ROW EXECUTE FUNCTION slow_insert()")
        try:
            async with open_emitter(make_config(chip, instance_id="timed", statement_timeout=0.2)) as timed:
                with pytest.raises(StoreUnavailable, match="statement timeout"):
                    await timed.emit(b"x", source="wf", type="tick")
        finally:
            query(database_url, "DROP TRIGGER slow ON chip_durable_events")
    assert pending_ids(database_url) == set()


async def test_a_locked_table_fails_emit_within_its_deadline_and_the_next_emit_succeeds(
        chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        await emitter.emit(b"before", source="wf", type="tick")
        with psycopg.connect(database_url) as holder:  # a migration or a careless LOCK TABLE
            holder.execute("LOCK TABLE chip_durable_events IN ACCESS EXCLUSIVE MODE")
            # Which deadline answered is in the error, not in a stopwatch: Postgres' lock_timeout
            # (5 s), not commit_timeout (10 s, "did not confirm the commit") nor a hang.
            with pytest.raises(StoreUnavailable, match="lock timeout"):
                await emitter.emit(b"locked out", source="wf", type="tick")
            holder.rollback()
        after = await emitter.emit(b"after", source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert chip.counters.seen([after]) == {after}
    assert pending_ids(database_url) == set()


async def test_writers_commit_synchronously_whatever_the_database_default(chip, make_config, database_url) -> None:
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    query(database_url, f"ALTER DATABASE {dbname} SET synchronous_commit = off")
    async with open_emitter(make_config(chip)) as emitter:
        # A trigger reports the setting in force in the session that commits the emit.
        query(database_url, "CREATE TABLE seen_setting (value text)")
        query(database_url, """CREATE FUNCTION note_setting() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                                   INSERT INTO seen_setting VALUES (current_setting('synchronous_commit'));
                                   RETURN NEW; END $$""")
        query(database_url, "CREATE TRIGGER note BEFORE INSERT ON chip_durable_events "
                            "FOR EACH ROW EXECUTE FUNCTION note_setting()")
        await emitter.emit(b"x", source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert query(database_url, "SELECT DISTINCT value FROM seen_setting") == [("on",)]
