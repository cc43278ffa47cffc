"""Chip misbehaving: outages, flakiness, slowness. Everything is delivered or dead-lettered, counted."""

import trio

from actors import open_emitter
from chipmock import ChipModel, Outage
from tests.helpers import CHAOS_SCALE, dead_letters, emit_concurrently, pending_ids


async def test_outage_backlog_grows_in_the_table_and_retries_back_off(start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock()
    config = make_config(chip, publishes_in_flight=4, retry_initial=0.05, retry_max=0.5, publish_attempts=3,
                         scan_interval=0.2, dispatch_buffer=50)
    async with open_emitter(config) as emitter:
        chip.set_model(ChipModel(outages=(Outage(0, 3600),)))  # down from now on
        calls_before = chip.counters.snapshot().calls
        ids = await emit_concurrently(emitter, 1000)
        with trio.move_on_after(2.0):  # watch the outage for two seconds (bounded, by design)
            while True:
                assert emitter.statistics().buffered_events <= 50
                await trio.sleep(0.05)
        outage_calls = chip.counters.snapshot().calls - calls_before
        assert len(pending_ids(database_url)) == 1000  # the backlog is in the table
        chip.set_model(ChipModel())
        await emitter.flush(timeout=60)
    # 4 slots, backoff from 50 ms doubling to 500 ms: a few dozen calls in 2 s, not a hot loop.
    assert 0 < outage_calls < 200, outage_calls
    assert chip.counters.seen(ids) == ids


async def test_flaky_chip_every_event_is_delivered_and_none_dead_lettered_for_chips_state(
        start_chipmock, make_config, database_url, capsys) -> None:
    # 1% of events answered SCHEMA_MISSING at random: Chip's registry, not the event, is at fault,
    # so each such event waits in the table and goes again; none may reach the dead-letter table.
    chip = start_chipmock(ChipModel(failure_rate=0.30, resource_exhausted_rate=0.05, event_failure_rate=0.01,
                                    latency=0.005, jitter=0.005))
    config = make_config(chip, publish_batch_size=50, publish_attempts=4)
    async with open_emitter(config) as emitter:
        ids = await emit_concurrently(emitter, 2000 * CHAOS_SCALE)
        await emitter.flush(timeout=120)
        retried = emitter.statistics()
    snap = chip.counters.snapshot()
    assert snap.failed_calls > 0 and snap.rejected > 0, "the model injected nothing: the test proves nothing"
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}
    assert snap.unique == len(ids) and pending_ids(database_url) == set()
    assert retried.publish_retries > 0
    with capsys.disabled():
        print(f"\n  flaky Chip: {len(ids)} emitted = {snap.unique} delivered, 0 dead-lettered; {snap.rejected} "
              f"answered SCHEMA_MISSING and retried; "
              f"{snap.failed_calls} of {snap.calls} calls failed on purpose")


async def test_slow_chip_timeouts_are_retried_and_duplicates_counted(start_chipmock, make_config, database_url, capsys) -> None:
    # Half the calls take longer than the publish timeout; Chip still produces them.
    chip = start_chipmock(ChipModel(latency=0.3, jitter=0.3))
    config = make_config(chip, publish_timeout=0.3, lease_duration=5.0, publish_attempts=10,
                         publish_batch_size=10, publish_linger=0)
    async with open_emitter(config) as emitter:
        ids = await emit_concurrently(emitter, 300)
        await emitter.flush(timeout=120)
    snap = chip.counters.snapshot()
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()
    assert snap.received == snap.unique + snap.duplicates
    assert snap.duplicates > 0, "no call outlived its timeout: the test proves nothing"
    with capsys.disabled():
        print(f"\n  slow Chip: {len(ids)} events, {snap.calls} calls, {snap.duplicates} duplicates from timeouts")


async def test_no_hot_loop_when_chip_refuses_everything_in_a_batch(start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock(ChipModel(max_batch=1))  # any batch of 2+ is INVALID_ARGUMENT
    async with open_emitter(make_config(chip)) as emitter:
        ids = await emit_concurrently(emitter, 40)
        await emitter.flush(timeout=60)
    # Bisection found that single events go through: nothing was dead-lettered for the batch's sake.
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}


async def test_an_internal_window_registry_trouble_dead_letters_nothing_and_delivery_resumes(
        start_chipmock, make_config, database_url) -> None:
    # Chip answers INTERNAL while its schema registry is unreachable (the proto's word for it), for
    # every publish in the window; Ping answers throughout. The events are not at fault.
    chip = start_chipmock(ChipModel(internal=(Outage(0, 3.0),)))
    async with open_emitter(make_config(chip, publish_batch_size=50)) as emitter:
        ids = await emit_concurrently(emitter, 500)
        await emitter.flush(timeout=60)
        assert emitter.statistics().delivery == "up"
    snap = chip.counters.snapshot()
    assert snap.failed_calls > 0, "no call fell in the window: the test proves nothing"
    assert chip.counters.seen(ids) == ids and dead_letters(database_url) == {}
    assert pending_ids(database_url) == set()
