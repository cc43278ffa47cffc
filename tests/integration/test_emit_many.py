"""emit_many: one call, one transaction, ids in order; all of the call's events or none of them."""

import asyncio

import pytest

from actors import (
    EventTooLarge,
    InvalidEvent,
    StoreUnavailable,
    open_asyncio_emitter,
    open_blocking_emitter,
    open_emitter,
)
from chipmock import ChipModel
from chippb import cloudevent_pb2 as ce
from tests.helpers import ids_from_threads, pending_ids, query, refuse_rows_containing


async def test_one_call_is_one_transaction_and_its_ids_follow_the_bodies(start_chipmock, make_config,
                                                                       database_url) -> None:
    chip = start_chipmock(ChipModel(failure_rate=1.0), keep_payloads=True)  # rows stay until Chip is back
    bodies = [f"body {i}".encode() for i in range(100)]
    async with open_emitter(make_config(chip)) as emitter:
        ids = await emitter.emit_many(bodies, source="wf", type="tick", attributes={"run": "r1"})
        assert len(ids) == len(set(ids)) == 100
        returned = list(ids)
        ids.clear()  # the caller's list is its own: the events in flight keep theirs
        ids = returned
        assert pending_ids(database_url) == set(ids)  # committed when the call returned
        (transactions,) = query(database_url, "SELECT count(DISTINCT xmin::text) FROM chip_durable_events")[0]
        assert transactions == 1
        assert emitter.statistics().emitted == 100
        chip.set_model(ChipModel())
        await emitter.flush(timeout=30)
    for event_id, body in zip(ids, bodies, strict=True):
        event = ce.CloudEvent.FromString(chip.counters.payloads[event_id])
        assert event.binary_data == body and event.attributes["run"].ce_string == "r1"
    assert pending_ids(database_url) == set()


async def test_a_bad_body_refuses_the_whole_call_and_names_it(chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip, max_event_bytes=2000)) as emitter:
        with pytest.raises(InvalidEvent, match=r"bodies\[3\]: body must be bytes.*no event of this call was written"):
            await emitter.emit_many([b"a", b"b", "c", 4, b"e"], source="wf", type="tick")  # type: ignore[list-item]
        with pytest.raises(EventTooLarge, match=r"bodies\[1\]: .*max_event_bytes is 2000"):
            await emitter.emit_many([b"a", b"x" * 5000], source="wf", type="tick")
        with pytest.raises(InvalidEvent, match=r"at most persist_batch_size \(1000\)"):
            await emitter.emit_many([b"x"] * 1001, source="wf", type="tick")
        with pytest.raises(InvalidEvent, match="source"):
            await emitter.emit_many([b"x"], type="tick")
        with pytest.raises(InvalidEvent, match="a list of bodies, not one body"):
            await emitter.emit_many("one text body", source="wf", type="tick")
        assert await emitter.emit_many([], source="wf", type="tick") == []
        assert pending_ids(database_url) == set()
        assert emitter.statistics().emitted == 0


async def test_a_commit_failing_on_one_row_writes_none_of_the_call(chip, make_config, database_url) -> None:
    refuse_rows_containing(database_url, "poison")
    bodies = [b"fine"] * 49 + [b"poison"] + [b"fine"] * 50
    async with open_emitter(make_config(chip)) as emitter:
        with pytest.raises(StoreUnavailable, match="poisoned row"):
            await emitter.emit_many(bodies, source="wf", type="tick")
        assert pending_ids(database_url) == set()  # the 49 rows before it were rolled back with it
        ids = await emitter.emit_many(bodies[:49], source="wf", type="tick")
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == set(ids)
    assert chip.counters.snapshot().unique == 49  # nothing of the failed call ever reached Chip


def test_both_hosts_emit_many(chip, make_config, database_url) -> None:
    async def asyncio_host() -> list[str]:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            ids = await emitter.emit_many([b"a", b"b"], source="wf", type="tick")
            await emitter.flush(timeout=30)
            return ids

    from_asyncio = asyncio.run(asyncio_host())
    with open_blocking_emitter(make_config(chip)) as emitter:
        from_threads = ids_from_threads(lambda: emitter.emit_many([b"c"] * 10, source="wf", type="tick"), 3)
        emitter.flush(timeout=30)
    every = set(from_asyncio) | set(from_threads)
    assert len(from_asyncio) == 2 and len(from_threads) == 30 and len(every) == 32
    assert chip.counters.seen(every) == every
    assert pending_ids(database_url) == set()
