"""The outbox: events written in the host's own transaction, delivered by whichever emitter instance runs.

Real Postgres, real chipmock, real processes. Nothing here waits on a clock:
"promptly" is shown by emitters whose scan runs once an hour, so only a
notification can have woken them.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import psycopg
import pytest
import trio
from psycopg.conninfo import make_conninfo

from actors import InvalidEvent, SchemaError, StoreUnavailable, open_emitter, outbox
from actors.adapters import schema
from actors.adapters.outbox_queries import outbox_channel
from actors.adapters.store import Store
from chippb import cloudevent_pb2 as ce
from tests.fix_processes import ROOT
from tests.helpers import pending_ids, query, refuse_rows_containing, wait_until

HOUR = 3600.0  # a scan interval no test waits for: delivery within a test means a notification woke the emitter


@pytest.fixture
def orders(database_url: str) -> str:
    """The host's own table, beside the emitter's."""
    query(database_url, "CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL)")
    return database_url


def _orders(url: str) -> dict[int, str]:
    return dict(query(url, "SELECT id, note FROM orders"))


def _delivered(chip, ids) -> bool:
    return chip.counters.seen(ids) == set(ids)


def _listeners(url: str, instance_id: str) -> list[int]:
    """Backends of ``instance_id``'s LISTEN connection that have sent LISTEN."""
    return [pid for (pid,) in query(url, "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                                         "AND query LIKE 'LISTEN%%'", (f"durable-emitter {instance_id}",))]


async def test_a_commit_writes_the_host_row_and_the_event_together_and_the_event_is_delivered(
        chip, make_config, orders) -> None:
    with psycopg.connect(orders) as conn, conn.transaction():
        conn.execute("INSERT INTO orders VALUES (1, 'placed')")
        event_id = outbox.emit(conn, b"order 1 placed", source="orders", type="created",
                               attributes={"region": "eu"})
        assert _orders(orders) == {} and pending_ids(orders) == set()  # others see nothing before the commit
    assert _orders(orders) == {1: "placed"} and pending_ids(orders) == {event_id}
    (row,) = query(orders, "SELECT lease_owner, emitted_by, lease_expires_at <= now() FROM chip_durable_events")
    assert row == ("outbox", "outbox", True)  # nobody's yet, claimable at once
    async with open_emitter(make_config(chip, scan_interval=HOUR)) as emitter:
        await wait_until(lambda: not pending_ids(orders), what="the outbox row delivered and deleted")
        assert emitter.statistics().emitted == 0  # not emitted through this emitter: it only delivered it
    event = ce.CloudEvent.FromString(chip.counters.payloads[event_id])
    assert event.binary_data == b"order 1 placed" and event.attributes["region"].ce_string == "eu"
    assert len(event.attributes["idempotencykey"].ce_string) == 64 and event.source == "orders"


async def test_a_running_emitter_is_woken_by_the_commit_not_by_its_scan(chip, make_config, orders) -> None:
    config = make_config(chip, scan_interval=HOUR, instance_id="listening")
    async with open_emitter(config):
        await wait_until(lambda: _listeners(orders, "listening"), what="the dispatcher listening")
        for order in range(3):  # one transaction each, while the emitter runs
            with psycopg.connect(orders) as conn, conn.transaction():
                conn.execute("INSERT INTO orders VALUES (%s, 'placed')", (order,))
                ids = outbox.emit_many(conn, [b"a", b"b"], source="orders", type="created")
            await wait_until(lambda ids=ids: _delivered(chip, ids), what=f"order {order}'s events delivered")
    assert pending_ids(orders) == set()


async def test_a_rollback_writes_neither_and_nothing_reaches_chip(chip, make_config, orders) -> None:
    async with open_emitter(make_config(chip, scan_interval=HOUR)):
        with psycopg.connect(orders) as conn:
            with pytest.raises(RuntimeError, match="payment declined"), conn.transaction():
                conn.execute("INSERT INTO orders VALUES (1, 'placed')")
                outbox.emit_many(conn, [b"x", b"y"], source="orders", type="created")
                raise RuntimeError("payment declined")
            assert _orders(orders) == {} and pending_ids(orders) == set()  # nothing was ever committed
            with conn.transaction():  # a later transaction: its notification wakes the same emitter
                later = outbox.emit(conn, b"later", source="orders", type="created")
        await wait_until(lambda: _delivered(chip, [later]), what="the later event delivered")
    assert chip.counters.snapshot().unique == 1  # the rolled-back events were never in the table to deliver


async def test_a_rolled_back_savepoint_drops_only_its_own_events(chip, make_config, orders) -> None:
    with psycopg.connect(orders) as conn, conn.transaction():
        kept = outbox.emit(conn, b"kept", source="orders", type="created")
        with pytest.raises(RuntimeError), conn.transaction():  # a savepoint
            conn.execute("INSERT INTO orders VALUES (1, 'dropped')")
            outbox.emit(conn, b"dropped", source="orders", type="created")
            raise RuntimeError("undo this step")
        conn.execute("INSERT INTO orders VALUES (2, 'kept')")
        kept_too = outbox.emit(conn, b"kept too", source="orders", type="created")
    assert _orders(orders) == {2: "kept"}
    assert pending_ids(orders) == {kept, kept_too}
    async with open_emitter(make_config(chip, scan_interval=HOUR)):
        await wait_until(lambda: not pending_ids(orders), what="the kept events delivered")
    assert set(chip.counters.payloads) == {kept, kept_too}


async def test_autocommit_makes_each_call_its_own_transaction(chip, make_config, orders) -> None:
    async with open_emitter(make_config(chip, scan_interval=HOUR)):
        with psycopg.connect(orders, autocommit=True) as conn:
            event_id = outbox.emit(conn, b"alone", source="orders", type="created")
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # committed, nothing open
        await wait_until(lambda: _delivered(chip, [event_id]), what="the event delivered")


_WRITER = textwrap.dedent("""
    import sys
    import psycopg
    from actors import outbox
    url, count = sys.argv[1], int(sys.argv[2])
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("INSERT INTO orders VALUES (7, 'from another process')")
        ids = outbox.emit_many(conn, [b"order %d" % i for i in range(count)], source="orders", type="created")
    print(" ".join(ids))
    print("trio loaded" if "trio" in sys.modules else "no trio")
""")


async def test_a_process_with_no_emitter_writes_and_another_process_delivers(chip, make_config, orders) -> None:
    async with open_emitter(make_config(chip, scan_interval=HOUR)):
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-c", _WRITER, orders, "50"], capture_output=True, text=True, timeout=60, cwd=ROOT))
        assert done.returncode == 0, done.stderr
        ids_line, loaded = done.stdout.splitlines()
        ids = ids_line.split()
        assert len(set(ids)) == 50 and loaded == "no trio"
        await wait_until(lambda: _delivered(chip, ids), what="the other process's events delivered")
    assert _orders(orders) == {7: "from another process"} and pending_ids(orders) == set()


async def test_an_async_connection_writes_in_its_transaction(chip, make_config, orders) -> None:
    async def host() -> tuple[list[str], str]:
        async with await psycopg.AsyncConnection.connect(orders) as aconn:
            async with aconn.transaction():
                await aconn.execute("INSERT INTO orders VALUES (1, 'async')")
                ids = await outbox.aemit_many(aconn, [b"a", "b"], source="orders", type="created")
            with pytest.raises(RuntimeError):
                async with aconn.transaction():
                    await outbox.aemit(aconn, b"rolled back", source="orders", type="created")
                    raise RuntimeError("undo")
            async with aconn.transaction():
                one = await outbox.aemit(aconn, b"one", source="orders", type="created")
        return ids, one

    async with open_emitter(make_config(chip, scan_interval=HOUR)):
        ids, one = await trio.to_thread.run_sync(asyncio.run, host())  # an asyncio host in its own thread
        await wait_until(lambda: _delivered(chip, [*ids, one]), what="the async host's events delivered")
    assert chip.counters.snapshot().unique == 3 and pending_ids(orders) == set()
    assert ce.CloudEvent.FromString(chip.counters.payloads[ids[1]]).text_data == "b"


def test_emit_many_is_all_or_nothing_inside_the_callers_transaction(orders) -> None:
    with psycopg.connect(orders) as conn:
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (1, 'placed')")
            with pytest.raises(InvalidEvent, match=r"bodies\[2\]: body must be bytes.*no event of this call"):
                outbox.emit_many(conn, [b"a", b"b", 3, b"d"], source="orders", type="created")  # type: ignore[list-item]
            with pytest.raises(InvalidEvent, match=r"bodies\[1\]: .*max_event_bytes is 400"):
                outbox.emit_many(conn, [b"a", b"x" * 500], source="orders", type="created", max_event_bytes=400)
            assert outbox.emit_many(conn, [], source="orders", type="created") == []
            conn.execute("INSERT INTO orders VALUES (2, 'placed')")  # refused before any statement: still usable
        assert _orders(orders) == {1: "placed", 2: "placed"} and pending_ids(orders) == set()

        refuse_rows_containing(orders, "poison")
        with pytest.raises(StoreUnavailable, match="poisoned row.*no event of this call was written.*roll it back"):
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (3, 'placed')")
                outbox.emit_many(conn, [b"fine"] * 49 + [b"poison"] + [b"fine"] * 50, source="orders",
                                 type="created")
        with pytest.raises(StoreUnavailable, match="already failed.*roll it back first"):
            with conn.transaction():
                with pytest.raises(psycopg.errors.UniqueViolation):
                    conn.execute("INSERT INTO orders VALUES (1, 'again')")
                outbox.emit(conn, b"after a failed statement", source="orders", type="created")
    assert _orders(orders) == {1: "placed", 2: "placed"} and pending_ids(orders) == set()


def test_a_schema_older_than_the_code_is_refused_and_the_transaction_stays_usable(orders) -> None:
    # The last migration's record gone: to the outbox, the schema is one version behind.
    (version, name), = query(orders, "DELETE FROM chip_durable_events_version WHERE version = "
                                     "(SELECT max(version) FROM chip_durable_events_version) RETURNING version, name")
    with psycopg.connect(orders) as conn:
        _refused_in_a_usable_transaction(conn, rf"'public' is at version {version - 1}; this durable-emitter "
                                               rf"needs version {version}: run `durable-emitter schema apply`")
        assert _orders(orders) == {1: "placed", 2: "placed"} and pending_ids(orders) == set()
        # The operator upgrades: the same connection may write now (a refusal is not remembered).
        query(orders, "INSERT INTO chip_durable_events_version (version, name) VALUES (%s, %s)", (version, name))
        with conn.transaction():
            event_id = outbox.emit(conn, b"x", source="orders", type="created")
    assert pending_ids(orders) == {event_id}


def _refused_in_a_usable_transaction(conn: psycopg.Connection, match: str) -> None:
    """In one transaction: order 1, an outbox.emit refused with SchemaError, order 2; the commit keeps both."""
    with conn.transaction():
        conn.execute("INSERT INTO orders VALUES (1, 'placed')")
        with pytest.raises(SchemaError, match=match):
            outbox.emit(conn, b"x", source="orders", type="created")
        conn.execute("INSERT INTO orders VALUES (2, 'placed')")  # the transaction is still usable


@pytest.fixture
def host_role(orders):
    """A role of the host's: its own table, and only what the outbox needs of ours (or less, as a test says)."""
    role = "host_" + orders.rsplit("t_", 1)[-1][:12]
    query(orders, f'CREATE ROLE "{role}" LOGIN')
    query(orders, f'GRANT USAGE ON SCHEMA public TO "{role}"')
    query(orders, f'GRANT SELECT, INSERT ON orders, chip_durable_events_version TO "{role}"')
    yield make_conninfo(orders, user=role), role
    query(orders, f'DROP OWNED BY "{role}"')
    query(orders, f'DROP ROLE "{role}"')


def test_a_role_without_insert_is_refused_and_insert_alone_is_enough(host_role, orders) -> None:
    url, role = host_role
    query(orders, f'GRANT SELECT ON chip_durable_events TO "{role}"')
    with psycopg.connect(url) as conn:
        _refused_in_a_usable_transaction(conn, rf"role '{role}' lacks INSERT on public.chip_durable_events: "
                                               rf"GRANT INSERT ON public.chip_durable_events TO {role}")
    assert _orders(orders) == {1: "placed", 2: "placed"}
    query(orders, f'REVOKE SELECT ON chip_durable_events FROM "{role}"')
    query(orders, f'GRANT INSERT ON chip_durable_events TO "{role}"')  # INSERT alone; pg_notify needs no right
    with psycopg.connect(url) as conn, conn.transaction():
        event_id = outbox.emit(conn, b"x", source="orders", type="created")
    assert pending_ids(orders) == {event_id}


async def test_a_schema_of_its_own_is_named_not_put_on_the_search_path(chip, make_config, orders,
                                                                      monkeypatch) -> None:
    schema.apply(orders, "events", lock_timeout=10)
    monkeypatch.setenv("DURABLE_EMITTER_SCHEMA", "events")
    async with open_emitter(make_config(chip, schema="events", scan_interval=HOUR)):
        with psycopg.connect(orders) as conn:
            with conn.transaction():
                conn.execute("INSERT INTO orders VALUES (1, 'placed')")
                by_default = outbox.emit(conn, b"env", source="orders", type="created")
                named = outbox.emit(conn, b"named", source="orders", type="created", schema="events")
                (search_path,) = conn.execute("SHOW search_path").fetchone() or ("",)
            assert search_path == '"$user", public'  # untouched
        await wait_until(lambda: _delivered(chip, [by_default, named]), what="both delivered from schema events")
    assert pending_ids(orders) == set()  # public's table was never written
    assert outbox_channel("events") == "durable_emitter_events"


async def test_without_session_liveness_nothing_listens_and_the_scan_delivers(chip, make_config, orders) -> None:
    config = make_config(chip, session_liveness=False, instance_id="pooled")
    async with open_emitter(config) as emitter:
        with psycopg.connect(orders) as conn, conn.transaction():
            event_id = outbox.emit(conn, b"found by the scan", source="orders", type="created")
        await wait_until(lambda: _delivered(chip, [event_id]), what="the scan to deliver it")
        await emitter.flush(timeout=30)
        assert query(orders, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'") == [(0,)]


async def test_through_a_transaction_pooler_hosts_write_and_the_scan_delivers(chip, make_config, orders,
                                                                            start_pgbouncer) -> None:
    pooled = start_pgbouncer("transaction").url(orders)
    config = make_config(chip, database_url=pooled, session_liveness=False, instance_id="behind-a-pooler")
    async with open_emitter(config):
        ids = []
        # prepare_threshold=None: this PgBouncer keeps no prepared statement across transactions.
        with psycopg.connect(pooled, prepare_threshold=None) as conn:
            for order in range(8):  # more than psycopg's own threshold for preparing, were it on
                with conn.transaction():
                    conn.execute("INSERT INTO orders VALUES (%s, 'pooled')", (order,))
                    ids.append(outbox.emit(conn, b"through the pooler", source="orders", type="created"))
            with pytest.raises(RuntimeError), conn.transaction():
                outbox.emit(conn, b"rolled back", source="orders", type="created")
                raise RuntimeError("undo")
        await wait_until(lambda: _delivered(chip, ids), what="the scan to deliver them")
    assert len(_orders(orders)) == 8 and chip.counters.snapshot().unique == 8


async def test_a_row_committed_while_the_listener_was_away_is_delivered_when_it_listens_again(
        chip, make_config, orders, pg_server_url) -> None:
    config = make_config(chip, scan_interval=HOUR, instance_id="killed-listener")
    dbname, server = psycopg.conninfo.conninfo_to_dict(orders)["dbname"], pg_server_url  # reachable throughout
    with psycopg.connect(orders) as writer:  # opened now: no new session may start below
        async with open_emitter(config):
            await wait_until(lambda: _listeners(server, "killed-listener"), what="the dispatcher listening")
            (first,) = _listeners(server, "killed-listener")
            query(server, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')  # the listener cannot come back
            try:
                query(server, "SELECT pg_terminate_backend(%s)", (first,))
                await wait_until(lambda: not _listeners(server, "killed-listener"), what="the LISTEN session gone")
                with writer.transaction():  # committed while nobody listens: its notification reaches no one
                    lost = outbox.emit(writer, b"while nobody listened", source="orders", type="created")
            finally:
                query(server, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
            await wait_until(lambda: _listeners(server, "killed-listener"), what="a new LISTEN session")
            # No other commit, and no scan within the test: only the listener's ring on reconnecting finds it.
            await wait_until(lambda: _delivered(chip, [lost]), what="the row committed while nobody listened")
    assert pending_ids(orders) == set()


async def test_outbox_rows_take_their_turn_beside_released_and_spilled_rows(orders) -> None:
    """Oldest lapse first across every kind of claimable row; never a writer-only claim; never taken as an orphan."""
    def events(n: int) -> list[bytes]:
        return [ce.CloudEvent(id=f"e{i}", source="wf", spec_version="1.0", type="t").SerializeToString()
                for i in range(n)]

    store = Store(orders)
    try:
        released = [f"released-{i}" for i in range(3)]
        await store.insert_events(released, events(3), owner="a", hold=60)
        await store.release(released, owner="a", token=0, error="UNAVAILABLE", attempts=5, retry_after=0)
        with psycopg.connect(orders) as conn, conn.transaction():
            written = outbox.emit_many(conn, [b"o"] * 3, source="orders", type="created")
        spilled = [f"spilled-{i}" for i in range(3)]
        await store.insert_events(spilled, events(3), owner="a", hold=0)

        assert await store.claim(owner="w", lease=60, limit=10, writer_only=True) == []
        assert await store.free_owners(owner="b") == []  # the marker has no record: never judged gone
        turns = [{row.id for row in await store.claim(owner="b", lease=60, limit=3, writer_only=False)}
                 for _ in range(3)]
    finally:
        store.close()
    assert turns == [set(released), set(written), set(spilled)]


async def test_trace_context_rides_along_and_is_off_with_one_keyword(chip, make_config, orders) -> None:
    pytest.importorskip("opentelemetry.sdk.trace", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("durable-emitter tests")  # a provider of our own: nothing global is set
    with psycopg.connect(orders) as conn, conn.transaction():
        with tracer.start_as_current_span("place order") as span:
            traced = outbox.emit_many(conn, [b"a", b"b"], source="orders", type="created")
            untraced = outbox.emit(conn, b"c", source="orders", type="created", trace_context=False)
    async with open_emitter(make_config(chip, scan_interval=HOUR)):
        await wait_until(lambda: _delivered(chip, [*traced, untraced]), what="the events delivered")
    trace_id = format(span.get_span_context().trace_id, "032x")
    for event_id in traced:
        attributes = ce.CloudEvent.FromString(chip.counters.payloads[event_id]).attributes
        assert trace_id in attributes["traceparent"].ce_string
    assert "traceparent" not in ce.CloudEvent.FromString(chip.counters.payloads[untraced]).attributes
