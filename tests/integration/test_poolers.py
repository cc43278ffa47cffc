"""PgBouncer 1.18 between the emitter and Postgres, in transaction and session mode, with its default settings.

Transaction mode works with ``session_liveness=False`` (``DURABLE_EMITTER_SESSION_LIVENESS=false``)
and leaves nothing on the pool's server connections; with the defaults it is
refused at start. Session mode works with the defaults, session liveness
included: a SIGKILLed client's server session is reset (``DISCARD ALL``), which
frees its liveness lock, so a survivor takes its rows at once.
"""

import signal
import time

import pytest
import trio
from psycopg.conninfo import conninfo_to_dict

from actors import ConfigError, open_emitter
from actors.adapters.driver import Connection, Session
from actors.errors import StoreUnavailable
from chipmock import ChipModel
from tests.helpers import emit_concurrently, pending_ids, query, wait_until


async def test_transaction_pooling_with_session_liveness_off_delivers_and_leaves_no_setting_behind(
        database_url, start_pgbouncer, chip, make_config) -> None:
    bouncer = start_pgbouncer("transaction")
    emitted: list[set[str]] = []
    restarts: list[dict[str, int]] = []

    async def one_emitter(index: int) -> None:
        config = make_config(chip, database_url=bouncer.url(database_url), session_liveness=False,
                             instance_id=f"pooled-{index}")
        async with open_emitter(config) as emitter:
            emitted.append(await emit_concurrently(emitter, 600))
            await emitter.flush(timeout=30)
            restarts.append(emitter.statistics().restarts)

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(one_emitter, index)

    ids = set().union(*emitted)
    assert len(ids) == 2400
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()
    assert all(not any(counts.values()) for counts in restarts), restarts  # no actor crashed on a statement
    pool = bouncer.server_pids(database_url)
    checked = bouncer.each_server(database_url, "current_setting('synchronous_commit'), "
                                  "current_setting('statement_timeout'), (SELECT count(*) FROM pg_prepared_statements)")
    assert pool and pool <= set(checked)
    assert set(checked.values()) == {("on", "0", 0)}, checked  # the database's defaults, nothing prepared


async def test_through_a_transaction_pooler_each_hot_statement_commits_with_its_own_settings(
        database_url, start_pgbouncer, chip, make_config) -> None:
    # The database's default is off: an INSERT committing without its own setting would show it.
    query(database_url, f'ALTER DATABASE "{conninfo_to_dict(database_url)["dbname"]}" SET synchronous_commit = off')
    query(database_url, "CREATE TABLE seen_setting (statement text, synchronous_commit text, lock_timeout text)")
    query(database_url, """CREATE FUNCTION note_setting() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                               INSERT INTO seen_setting VALUES (TG_OP, current_setting('synchronous_commit'),
                                                                current_setting('lock_timeout'));
                               RETURN NULL; END $$""")
    query(database_url, "CREATE TRIGGER note AFTER INSERT OR DELETE ON chip_durable_events "
                        "FOR EACH ROW EXECUTE FUNCTION note_setting()")
    bouncer = start_pgbouncer("transaction")
    config = make_config(chip, database_url=bouncer.url(database_url), session_liveness=False, lock_timeout=4.0)
    async with open_emitter(config) as emitter:
        ids = await emit_concurrently(emitter, 200)
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids
    # Every write durable (the database's default says off), each with its own transaction's settings.
    assert set(query(database_url, "SELECT DISTINCT * FROM seen_setting")) == {("INSERT", "on", "4s"),
                                                                               ("DELETE", "on", "4s")}


@pytest.mark.parametrize("server_round_robin", [0, 1])
async def test_transaction_pooling_with_the_defaults_is_refused_at_start(
        database_url, start_pgbouncer, chip, make_config, server_round_robin) -> None:
    # One client, PgBouncer's defaults (LIFO reuse of server connections), and with
    # server_round_robin = 1 (FIFO) too: a lone client gets the same server connection back.
    bouncer = start_pgbouncer("transaction", server_round_robin=server_round_robin)
    config = make_config(chip, database_url=bouncer.url(database_url))
    with pytest.raises(ConfigError, match="DURABLE_EMITTER_SESSION_LIVENESS=false"):
        async with open_emitter(config):
            pytest.fail("started behind a transaction pooler with session liveness on")
    assert pending_ids(database_url) == set()
    # Refused before anything was left on a pooled server connection, which other clients get next.
    left = bouncer.each_server(database_url, "current_setting('statement_timeout'), current_setting('search_path'), "
                                             "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                             "AND pid = pg_backend_pid()), (SELECT count(*) FROM pg_prepared_statements)")
    assert set(left.values()) == {("0", '"$user", public', 0, 0)}, left


async def test_session_pooling_with_the_defaults_emits_and_delivers(database_url, start_pgbouncer, chip,
                                                                     make_config) -> None:
    bouncer = start_pgbouncer("session")
    async with open_emitter(make_config(chip, database_url=bouncer.url(database_url))) as emitter:
        ids = await emit_concurrently(emitter, 1000)
        await emitter.flush(timeout=30)
        assert not any(emitter.statistics().restarts.values())
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


async def test_session_pooling_frees_a_killed_clients_liveness_lock_so_a_survivor_takes_its_rows(
        database_url, start_pgbouncer, start_chipmock, start_workload, make_config, capsys) -> None:
    bouncer = start_pgbouncer("session")
    pooled_url = bouncer.url(database_url)
    chip = start_chipmock(ChipModel(latency=0.05))  # rows stay in flight, and in the table, a while
    # Rows the killed process held could only wait for their lease (10 minutes) if its lock stayed held.
    workload = start_workload(pooled_url, chip.endpoint, "--events", "1000000", name="killed",
                              DURABLE_EMITTER_LEASE_DURATION="10m")
    async with open_emitter(make_config(chip, database_url=pooled_url, instance_id="survivor")) as survivor:
        await trio.to_thread.run_sync(workload.wait_for_ids, 500)
        killed_at = time.monotonic()
        workload.proc.send_signal(signal.SIGKILL)
        await trio.to_thread.run_sync(workload.proc.wait)
        acknowledged = set(workload.ids())
        held = {row[0] for row in query(database_url, "SELECT id FROM chip_durable_events WHERE lease_owner <> %s",
                                        ("survivor",))}
        # Its rows committed but not yet acknowledged to it (the kill came first) go too.
        await wait_until(lambda: chip.counters.seen(acknowledged) == acknowledged and not pending_ids(database_url),
                         timeout=120, what="the killed process's rows delivered and deleted by the survivor")
        took = time.monotonic() - killed_at
        assert not any(survivor.statistics().restarts.values())
    with capsys.disabled():
        print(f"\n  PgBouncer session mode, SIGKILL: {len(held)} rows of the killed process in the table, "
              f"all delivered and deleted {took:.2f} s after the kill ({len(acknowledged)} acknowledged)")


async def test_a_pooled_connection_makes_its_settings_in_each_transaction(database_url) -> None:
    """Whatever the database's own defaults (here an hour's statement_timeout): each transaction's are the Session's."""
    query(database_url, f'ALTER DATABASE "{conninfo_to_dict(database_url)["dbname"]}" SET statement_timeout = 3600000')
    pooled = Connection(database_url, Session(statement_timeout=0.2, synchronous_commit=False, pooled=True))
    try:
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            await pooled.run("SELECT pg_sleep(5)")
        settings = "SELECT current_setting('synchronous_commit'), current_setting('statement_timeout'), %(n)s::int"
        assert (await pooled.run(settings, {"n": 1})).fetchall() == [("off", "200ms", 1)]
        async with pooled.transaction():
            assert (await pooled.run(settings, {"n": 2})).fetchall() == [("off", "200ms", 2)]
        assert (await pooled.run("SELECT count(*) FROM pg_prepared_statements")).fetchall() == [(0,)]
    finally:
        pooled.close()
