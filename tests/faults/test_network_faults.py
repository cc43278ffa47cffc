"""Dark network paths and dropped connections, through a real TCP proxy: every wait has a deadline."""

import pytest
import trio
from psycopg.conninfo import make_conninfo

from actors import StoreUnavailable, open_emitter
from actors.adapters import schema
from tests.helpers import (
    CHAOS_SCALE,
    emit_concurrently,
    pending_ids,
    postgres_socket,
    through_proxy,
    wait_until,
)


async def test_a_dark_path_to_postgres_fails_emit_within_its_deadline_and_heals(chip, make_config, database_url,
                                                                                 start_proxy) -> None:
    proxy = start_proxy(postgres_socket(database_url))
    config = make_config(chip, database_url=through_proxy(database_url, proxy), commit_timeout=1.0,
                         statement_timeout=2.0)
    async with open_emitter(config) as emitter:
        before = await emitter.emit(b"before", source="wf", type="tick")
        await emitter.flush(timeout=30)
        proxy.black_hole()  # nothing answers, nothing resets: a half-open path after a failover
        with trio.fail_after(10):  # a hang would fail here, not after minutes
            with pytest.raises(StoreUnavailable, match="commit_timeout"):
                await emitter.emit(b"lost in the dark", source="wf", type="tick")
        proxy.heal()
        after = await emitter.emit(b"after", source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert chip.counters.seen([before, after]) == {before, after}
    assert pending_ids(database_url) == set()  # the emit that raised wrote nothing


async def test_dropped_postgres_connections_cost_only_the_calls_in_flight(chip, make_config, database_url,
                                                                          start_proxy) -> None:
    proxy = start_proxy(postgres_socket(database_url))
    async with open_emitter(make_config(chip, database_url=through_proxy(database_url, proxy))) as emitter:
        ids = await emit_concurrently(emitter, 200)
        proxy.drop_connections()
        try:  # the one commit on the reset connection may fail (nothing written)...
            ids.add(await emitter.emit(b"on the reset connection", source="wf", type="tick"))
        except StoreUnavailable:
            pass
        ids.add(await emitter.emit(b"after", source="wf", type="tick"))  # ...the next reconnects: it must not
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()


async def test_a_dark_path_to_chip_pauses_delivery_and_resumes_when_it_heals(chip, make_config, database_url,
                                                                              start_proxy) -> None:
    proxy = start_proxy(chip.endpoint)
    config = make_config(chip, chip_endpoint=proxy.endpoint, publish_timeout=0.5, lease_duration=10)
    async with open_emitter(config) as emitter:
        proxy.black_hole()
        ids = await emit_concurrently(emitter, 300)  # emits stay durable while Chip is out of reach
        await wait_until(lambda: emitter.statistics().delivery == "down", what="delivery paused")
        proxy.heal()
        proxy.drop_connections()  # the old connection went stale in the dark
        await emitter.flush(timeout=30)
        assert emitter.statistics().delivery == "up"
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()


async def test_after_chip_was_gone_for_a_while_delivery_resumes_within_about_retry_max(
        start_chipmock, make_config, database_url, start_proxy, capsys) -> None:
    """grpc's own reconnect backoff grows to 120 s; capped at retry_max, a long absence costs seconds, not minutes."""
    chip = start_chipmock()
    # The emitter's address is a proxy the test holds for the whole run: a chipmock restarted on
    # the port it had could find that port taken by another process meanwhile.
    proxy = start_proxy(chip.endpoint)
    absent_s = 6.0 * CHAOS_SCALE  # `just chaos`: 30 s
    config = make_config(chip, chip_endpoint=proxy.endpoint, retry_initial=0.1, retry_max=2.0, publish_timeout=2.0)
    async with open_emitter(config) as emitter:
        # Connections fail at once (the proxy finds nothing behind it and closes them):
        # a Chip that is down, not one answering UNAVAILABLE.
        chip.stop(grace=0)
        ids = await emit_concurrently(emitter, 500)
        await trio.sleep(absent_s)  # the absence itself is the scenario
        chip = start_chipmock()
        proxy.target = chip.endpoint  # the same address for the emitter, a new Chip behind it
        back = trio.current_time()
        await emitter.flush(timeout=60)
        resumed_s = trio.current_time() - back
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
    with capsys.disabled():
        print(f"\n  Chip gone {absent_s:g}s (connections failing): all delivered {resumed_s:.2f}s after it was back "
              f"(retry_max {config.retry_max:g}s)")


async def test_a_dark_first_host_of_a_multi_host_url_holds_no_emit_past_its_deadline(chip, make_config, database_url,
                                                                                     start_proxy) -> None:
    """Connecting is abandoned when its caller's deadline passes: with the failover set-up's multi-host
    URL and its first host dark, each connection attempt there waits connect_timeout (5 s)."""
    socket = postgres_socket(database_url)
    first, second = start_proxy(socket), start_proxy(socket)
    url = make_conninfo(database_url, host="127.0.0.1,127.0.0.1", port=f"{first.port},{second.port}")
    config = make_config(chip, database_url=url, commit_timeout=1.0, shutdown_timeout=1.0)
    async with open_emitter(config) as emitter:
        await emitter.emit(b"before", source="wf", type="tick")
        first.black_hole()  # connections to it are taken and then nothing answers
        first.drop_connections()
        with trio.fail_after(config.commit_timeout + 1.5):  # not connect_timeout, 5 s, per dark host
            with pytest.raises(StoreUnavailable, match="commit_timeout"):
                await emitter.emit(b"into the dark", source="wf", type="tick")
        closing = trio.current_time()
    closed_in = trio.current_time() - closing
    assert closed_in < config.shutdown_timeout + 1.5, closed_in


async def test_opening_the_emitter_waits_for_a_postgres_that_is_away_for_a_moment(chip, make_config, own_postgres,
                                                                                  caplog) -> None:
    """As a failover or a restart looks to a host starting meanwhile: it waits (start_timeout), then starts."""
    schema.apply(own_postgres.url, "public", lock_timeout=10)
    await trio.to_thread.run_sync(own_postgres.stop)
    opened = trio.Event()

    async def open_and_emit() -> None:
        async with open_emitter(make_config(chip, database_url=own_postgres.url)) as emitter:
            opened.set()
            ids.append(await emitter.emit(b"after the wait", source="wf", type="tick"))
            await emitter.flush(timeout=30)

    ids: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_and_emit)
        await wait_until(lambda: any("cannot be reached yet" in r.getMessage() for r in caplog.records),
                         what="the start saying it waits for Postgres")
        assert not opened.is_set()
        await trio.to_thread.run_sync(own_postgres.start)
    assert chip.counters.seen(ids) == set(ids) and len(ids) == 1


async def test_a_server_that_refuses_the_role_or_database_for_good_is_said_at_once(chip, make_config,
                                                                                   database_url) -> None:
    wrong = make_conninfo(database_url, dbname="no_such_database")
    with trio.fail_after(10):  # not start_timeout (30 s)
        with pytest.raises(StoreUnavailable, match='database "no_such_database" does not exist'):
            async with open_emitter(make_config(chip, database_url=wrong)):
                pytest.fail("started on a database that does not exist")


