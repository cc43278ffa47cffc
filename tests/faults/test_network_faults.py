"""Dark network paths and dropped connections, through a real TCP proxy: every wait has a deadline."""

import pytest
import trio

from actors import StoreUnavailable, open_emitter
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
