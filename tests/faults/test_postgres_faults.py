"""Postgres misbehaving: a held MVCC horizon, revoked permissions, statement timeouts."""

import os
import sys

import psycopg
import pytest
import trio
from psycopg.conninfo import make_conninfo

from actors import StoreUnavailable, open_emitter
from actors.adapters.store import Store
from tests.fix_emitter import wait_until
from tests.fix_postgres import pending_ids, query


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
            store = Store(database_url)
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


@pytest.fixture
def limited_role_url(database_url):
    """An ordinary role with only the rights the emitter needs on the tables an operator installed."""
    role = "emitter_" + database_url.rsplit("t_", 1)[-1][:12]
    query(database_url, f'CREATE ROLE "{role}" LOGIN')
    query(database_url, f'GRANT USAGE ON SCHEMA public TO "{role}"')
    query(database_url, f'GRANT SELECT, INSERT, UPDATE, DELETE ON chip_durable_events, '
                        f'chip_durable_events_dead_letter TO "{role}"')
    query(database_url, f'GRANT SELECT ON chip_durable_events_version TO "{role}"')
    yield make_conninfo(database_url, user=role), role
    query(database_url, f'DROP OWNED BY "{role}"')
    query(database_url, f'DROP ROLE "{role}"')


async def test_revoked_permission_fails_emits_clearly_and_recovers_when_granted(chip, make_config, database_url, limited_role_url) -> None:
    url, role = limited_role_url
    async with open_emitter(make_config(chip, database_url=url)) as emitter:
        await emitter.emit(b"x", source="wf", type="tick")
        query(database_url, f'REVOKE INSERT ON chip_durable_events FROM "{role}"')
        with pytest.raises(StoreUnavailable, match="permission denied"):
            await emitter.emit(b"x", source="wf", type="tick")
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
        query(database_url, "ALTER ROLE postgres IN DATABASE "
                            f"{psycopg.conninfo.conninfo_to_dict(database_url)['dbname']} SET statement_timeout = '200ms'")
        try:
            fresh = make_config(chip, instance_id="timed")  # a second instance beside the first
            async with open_emitter(fresh) as timed:  # new connections pick the setting up
                with pytest.raises(StoreUnavailable, match="statement timeout"):
                    await timed.emit(b"x", source="wf", type="tick")
        finally:
            query(database_url, "ALTER ROLE postgres IN DATABASE "
                                f"{psycopg.conninfo.conninfo_to_dict(database_url)['dbname']} RESET statement_timeout")
            query(database_url, "DROP TRIGGER slow ON chip_durable_events")
    assert pending_ids(database_url) == set()
