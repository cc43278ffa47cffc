"""Who may touch a row: two owners on one table, real Postgres and real chipmock, default settings.

- A writer-only instance publishes what it emits and never claims a row another
  instance wrote, not even one whose lease lapsed or whose owner died.
- Deletes and dead-letter moves touch only the rows the instance holds: once
  another instance claimed a row, an acknowledgement or a rejection the first
  one receives for it changes nothing in the table.
"""

import math
import uuid

import pytest

from actors import EmitterConfig, open_emitter
from actors.adapters.store import Store
from actors.core.answers import Rejection
from chipmock import ChipModel, Outage
from tests.helpers import dead_letters, pending_ids, query, wait_until

OUT_OF_REACH = ChipModel(outages=(Outage(0, math.inf),))  # every call and every Ping fails until set_model


def _owners(database_url: str) -> dict[str, str]:
    return dict(query(database_url, "SELECT id, lease_owner FROM chip_durable_events"))


def _answered(chip) -> int:
    """Events Chip acknowledged or rejected."""
    snapshot = chip.counters.snapshot()
    return snapshot.received + snapshot.rejected


async def _lapse_leases(database_url: str, owner: str) -> None:
    """End ``owner``'s leases, as a restart of it or a release does: its rows are claimable at once."""
    store = Store(database_url)
    try:
        await store.lapse_leases(owner, lease=60)
    finally:
        store.close()


async def test_a_writer_only_instance_never_claims_rows_another_instance_wrote(start_chipmock, database_url) -> None:
    chip = start_chipmock()
    out_of_reach = start_chipmock(OUT_OF_REACH)

    def config(to, instance_id: str, **knobs) -> EmitterConfig:
        return EmitterConfig(database_url=database_url, chip_endpoint=to.endpoint, instance_id=instance_id, **knobs)

    async def emit_undelivered(emitter, count: int) -> set[str]:
        """``count`` events its Chip never takes; returns once delivery paused (no claims from then on)."""
        ids = {await emitter.emit(f"event {i}".encode(), source="wf", type="tick") for i in range(count)}
        await wait_until(lambda: emitter.statistics().delivery == "down", what="delivery paused")
        return ids

    async def rows_left_by(instance_id: str, count: int, **knobs) -> set[str]:
        """Rows an instance wrote and still held when it stopped: leased to it, their owner gone."""
        async with open_emitter(config(out_of_reach, instance_id, **knobs)) as emitter:
            return await emit_undelivered(emitter, count)

    async with open_emitter(config(out_of_reach, "alive")) as alive:  # a running instance, delivery paused
        held_by_alive = await emit_undelivered(alive, 5)
        orphaned = await rows_left_by("gone", 5)  # claimable by any other instance at once: their owner died
        # The writer-only instance's own rows from an earlier run: its next start reclaims them.
        own = await rows_left_by("writer", 2, writer_only=True)
        await _lapse_leases(database_url, "alive")  # lapsed: claimable by any other instance too
        async with open_emitter(config(chip, "writer", writer_only=True)) as writer:
            # Its own rows come back through the same claim (oldest lapse first) that would take
            # the lapsed ones above, and after the orphan claim of the same scan: once they
            # reached Chip, every claim that could have taken the others' rows has run.
            await wait_until(lambda: chip.counters.seen(own) == own, what="the writer's own rows delivered")
            fresh = await writer.emit(b"fresh", source="wf", type="tick")
            await writer.flush(timeout=30)
        assert chip.counters.seen(own | {fresh}) == own | {fresh}  # it publishes what it emits
        assert _owners(database_url) == {**dict.fromkeys(held_by_alive, "alive"), **dict.fromkeys(orphaned, "gone")}
        assert chip.counters.seen(held_by_alive | orphaned) == set()
    # They were claimable all along: an ordinary instance takes them at once.
    async with open_emitter(config(chip, "ordinary")):
        await wait_until(lambda: not pending_ids(database_url), timeout=30, what="an ordinary instance claiming them")
    assert chip.counters.seen(held_by_alive | orphaned) == held_by_alive | orphaned


async def test_the_store_deletes_and_dead_letters_only_rows_the_owner_holds(database_url) -> None:
    ids = [str(uuid.uuid4()) for _ in range(4)]
    store = Store(database_url)
    try:
        await store.insert_events(ids, [b"payload"] * 4, owner="b", hold=60.0)
        for lease in ("live", "lapsed"):  # whatever b's lease says, the rows are b's until someone claims them
            assert await store.delete(ids, owner="a") == 0, lease
            assert await store.dead_letter([Rejection(i, "SCHEMA_MISSING", "refused") for i in ids], owner="a") == []
            assert _owners(database_url) == dict.fromkeys(ids, "b") and dead_letters(database_url) == {}
            await store.lapse_leases("b", lease=60)
        # The holder's own statements do what they say.
        assert await store.delete(ids[:2], owner="b") == 2
        assert await store.dead_letter([Rejection(i, "SCHEMA_MISSING", "refused") for i in ids[2:]], owner="b") == [
            "SCHEMA_MISSING"] * 2
    finally:
        store.close()
    assert pending_ids(database_url) == set()
    assert dead_letters(database_url) == dict.fromkeys(ids[2:], ("SCHEMA_MISSING", "refused"))


@pytest.mark.parametrize("answer", ["acknowledged", "deferred", "rejected"])
async def test_an_outcome_for_a_row_another_instance_claimed_leaves_it_to_that_instance(
        start_chipmock, database_url, answer) -> None:
    chip_a, chip_b = start_chipmock(OUT_OF_REACH), start_chipmock(OUT_OF_REACH)

    def config(to, instance_id: str) -> EmitterConfig:
        return EmitterConfig(database_url=database_url, chip_endpoint=to.endpoint, instance_id=instance_id)

    async with open_emitter(config(chip_b, "b")):
        async with open_emitter(config(chip_a, "a")) as a:
            ids = set(await a.emit_many([f"event {i}".encode() for i in range(10)], source="wf", type="tick"))
            await wait_until(lambda: a.statistics().delivery == "down", what="a holding its batch, paused")
            await _lapse_leases(database_url, "a")  # as a restart of a would: b claims them and holds them
            await wait_until(lambda: _owners(database_url) == dict.fromkeys(ids, "b"), what="b claiming a's rows")
            # a's Chip is back: a publishes the batch it held and gets an outcome for every row of it.
            chip_a.set_model({"acknowledged": ChipModel(), "deferred": ChipModel(event_failure_rate=1.0),
                              "rejected": ChipModel(event_failure_rate=1.0, event_failure_code="VALIDATION_FAILED"),
                              }[answer])
            await wait_until(lambda: _answered(chip_a) >= len(ids), what="a's Chip answering for every row")
        # a has stopped: its acker applied every outcome it was given, and none touched b's rows
        # (nor counted one: the dead-letter counter says what the table holds).
        assert a.statistics().delivered == 0 and a.statistics().dead_lettered == 0
        assert _owners(database_url) == dict.fromkeys(ids, "b") and dead_letters(database_url) == {}
        chip_b.set_model(ChipModel())
        # b delivers what it holds (a's rows: a flush of b's covers what b emitted only).
        await wait_until(lambda: chip_b.counters.seen(ids) == ids and not pending_ids(database_url), timeout=60,
                         what="b delivering the rows it holds")
    assert chip_b.counters.seen(ids) == ids
    assert pending_ids(database_url) == set() and dead_letters(database_url) == {}
