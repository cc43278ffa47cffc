"""Cancel the tree mid-flight at several points; a new tree on the same database delivers everything."""

import pytest
import trio

from actors import ConfigError, open_emitter
from actors.adapters.operations import Operations, OwnerLiveness
from chipmock import ChipModel
from tests.helpers import pending_ids, query, wait_until


async def _emit_then_cancel(config, count: int, until) -> set[str]:
    """Emit ``count`` events, wait for ``until(emitter)``, then cancel the whole tree."""
    ids: set[str] = set()
    with trio.CancelScope() as scope:
        async with open_emitter(config) as emitter:
            for i in range(count):
                ids.add(await emitter.emit(f"event {i}".encode(), source="wf", type="tick"))
            await until(emitter)
            scope.cancel()
    assert scope.cancelled_caught
    return ids


async def _restart_and_drain(config) -> None:
    async with open_emitter(config) as emitter:
        await emitter.flush(timeout=30)


async def test_after_commit_before_publish(start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock(ChipModel(failure_rate=1.0))

    async def publishes_failing(emitter) -> None:
        await wait_until(lambda: chip.counters.snapshot().failed_calls >= 1, what="a failed publish")

    ids = await _emit_then_cancel(make_config(chip), 30, publishes_failing)
    assert pending_ids(database_url) == ids
    chip.set_model(ChipModel())
    await _restart_and_drain(make_config(chip))
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


async def test_during_publish(start_chipmock, make_config, database_url) -> None:
    chip = start_chipmock(ChipModel(latency=1.0))

    async def publish_in_flight(emitter) -> None:
        await wait_until(lambda: emitter.statistics().publishes_in_flight >= 1, what="a publish in flight")

    ids = await _emit_then_cancel(make_config(chip), 30, publish_in_flight)
    chip.set_model(ChipModel())
    await _restart_and_drain(make_config(chip))
    snap = chip.counters.snapshot()
    assert chip.counters.seen(ids) == ids
    assert snap.duplicates <= len(ids)  # the cancelled call may still have landed: counted, bounded
    assert pending_ids(database_url) == set()


async def test_after_ack_before_delete(chip, make_config, database_url) -> None:
    query(database_url, """
        CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'deletes paused by the test' USING ERRCODE = 'lock_not_available'; END $$""")
    ids: set[str] = set()
    config = make_config(chip)
    with trio.CancelScope() as scope:
        async with open_emitter(config) as emitter:  # creates the table, then the trigger can go on it
            query(database_url, "CREATE TRIGGER pause_deletes BEFORE DELETE ON chip_durable_events "
                                "FOR EACH STATEMENT EXECUTE FUNCTION refuse_delete()")
            for i in range(30):
                ids.add(await emitter.emit(f"event {i}".encode(), source="wf", type="tick"))
            await wait_until(lambda: len(chip.counters.seen(ids)) == 30, what="every event acknowledged")
            scope.cancel()
    assert pending_ids(database_url) == ids  # acknowledged, but never deleted

    query(database_url, "DROP TRIGGER pause_deletes ON chip_durable_events")
    await _restart_and_drain(config)
    snap = chip.counters.snapshot()
    assert snap.unique == 30 and snap.duplicates == 30  # re-sent once each, same ids
    assert pending_ids(database_url) == set()


async def test_a_different_instance_claims_a_stopped_instances_rows_at_once(start_chipmock, make_config,
                                                                          database_url) -> None:
    chip = start_chipmock(ChipModel(failure_rate=1.0))

    async def publishes_failing(emitter) -> None:
        await wait_until(lambda: chip.counters.snapshot().failed_calls >= 1, what="a failed publish")

    ids = await _emit_then_cancel(make_config(chip, instance_id="gone"), 10, publishes_failing)
    chip.set_model(ChipModel())
    # Their 60 s leases have not lapsed, but "gone" left: judged gone at once, no grace to wait.
    operations = Operations(database_url)
    try:
        assert [liveness for owner, _, _, liveness in await operations.lease_owners()] == [OwnerLiveness.GONE]
    finally:
        operations.close()
    # (flush() covers rows the instance emitted; these were another's, so wait on the table.)
    async with open_emitter(make_config(chip, instance_id="another-instance")):
        await wait_until(lambda: not pending_ids(database_url), timeout=20, what="the stopped instance's rows")
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


async def test_a_second_live_process_with_the_same_instance_id_is_refused(chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip, instance_id="node-1")) as first:
        with pytest.raises(ConfigError, match="instance id 'node-1' is held by a live process"):
            async with open_emitter(make_config(chip, instance_id="node-1")):
                pass
        await first.emit(b"still working", source="wf", type="tick")  # the first one goes on
    async with open_emitter(make_config(chip, instance_id="node-1")):  # and once it stopped, the id is free
        pass


async def test_dispatcher_crashes_return_their_memory_budget_and_spill_nothing(chip, make_config, database_url,
                                                                               limited_role_url) -> None:
    """Each crash drops what the dispatcher held; the budget must not shrink with it (or commits would spill)."""
    # Default lease (60 s): rows the dead dispatcher held must be reclaimed by its
    # restart at once, or the flush below times out.
    url, role = limited_role_url
    config = make_config(chip, database_url=url, max_restarts=20, restart_period=60)
    ids: set[str] = set()
    crashes_done = trio.Event()

    async with open_emitter(config) as emitter:

        async def emit_until_the_crashes_are_done() -> None:
            for i in range(50_000):  # bounded; stops as soon as the crashes are done
                ids.add(await emitter.emit(f"body {i}".encode(), source="wf", type="tick"))
                if crashes_done.is_set():
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(emit_until_the_crashes_are_done)
            for crash in range(1, 4):
                # Claims need UPDATE: without it the dispatcher's next scan fails for good and it crashes.
                query(database_url, f'REVOKE UPDATE ON chip_durable_events FROM "{role}"')
                await wait_until(lambda n=crash: emitter.statistics().restarts["dispatcher"] >= n,
                                 what=f"dispatcher crash {crash}")
                query(database_url, f'GRANT UPDATE ON chip_durable_events TO "{role}"')
            crashes_done.set()
        await emitter.flush(timeout=30)
        # Groups committed before a restart are taken off the buffer and left to the table (they
        # may be delivered from there first): all of the budget comes back.
        await wait_until(lambda: emitter.statistics().buffered_events == 0, what="the buffer emptied")
        stats = emitter.statistics()
    assert stats.restarts["dispatcher"] >= 3
    assert (stats.buffered_events, stats.buffered_bytes) == (0, 0)
    assert stats.spilled == 0  # the 20,000-event buffer never filled: nothing was written spilled
    assert chip.counters.seen(ids) == ids

