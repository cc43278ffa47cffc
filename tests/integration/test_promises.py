"""Each promise of the design (../shared/design.md), against real Postgres and a real chipmock."""

import hashlib
import struct

from actors import open_emitter
from chipmock import ChipModel
from chippb import cloudevent_pb2 as ce
from tests.helpers import dead_letters, emit_concurrently, pending_ids, query, wait_until


async def test_emit_returns_only_after_commit(start_chipmock, make_config, database_url) -> None:
    slow_chip = start_chipmock(ChipModel(latency=3.0))  # keeps the row in the table a while
    async with open_emitter(make_config(slow_chip)) as emitter:
        event_id = await emitter.emit(b"body", source="wf", type="tick")
        # A separate connection sees the committed row the moment emit returns.
        rows = query(database_url, "SELECT payload FROM chip_durable_events WHERE id = %s", (event_id,))
        assert len(rows) == 1
        assert ce.CloudEvent.FromString(rows[0][0]).binary_data == b"body"


async def test_every_committed_event_is_delivered_and_its_row_deleted(chip, make_config, database_url) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        ids = await emit_concurrently(emitter, 200, emitters=5)
        await emitter.flush(timeout=30)
    assert len(ids) == 200
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


async def test_rows_are_deleted_only_after_chip_acknowledged(start_chipmock, make_config, database_url) -> None:
    failing_chip = start_chipmock(ChipModel(failure_rate=1.0))
    async with open_emitter(make_config(failing_chip)) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(20)}
        await wait_until(lambda: failing_chip.counters.snapshot().failed_calls >= 5, what="failed publishes")
        assert pending_ids(database_url) == ids


async def test_permanent_rejections_move_to_dead_letter_with_reason(start_chipmock, make_config, database_url) -> None:
    rejecting_chip = start_chipmock(ChipModel(event_failure_rate=1.0))
    async with open_emitter(make_config(rejecting_chip)) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(10)}
        await emitter.flush(timeout=30)
    letters = dead_letters(database_url)
    assert set(letters) == ids
    assert {code for code, _ in letters.values()} == {"SCHEMA_MISSING"}
    assert all("injected permanent error" in reason for _, reason in letters.values())
    assert pending_ids(database_url) == set()


async def test_retries_keep_the_id_and_idempotency_key(start_chipmock, make_config) -> None:
    flaky_chip = start_chipmock(ChipModel(failure_rate=0.5, seed=5), keep_payloads=True)
    async with open_emitter(make_config(flaky_chip, publish_batch_size=5)) as emitter:
        ids = {await emitter.emit(f"body {i}".encode(), source="wf", type="tick") for i in range(50)}
        await emitter.flush(timeout=30)
    snap = flaky_chip.counters.snapshot()
    assert snap.failed_calls > 0, "the test needs retries to mean anything"
    assert set(flaky_chip.counters.payloads) == ids  # no new ids were minted for retries
    for payload in flaky_chip.counters.payloads.values():
        event = ce.CloudEvent.FromString(payload)
        digest = hashlib.sha256()
        for part in (event.source.encode(), event.type.encode(), event.binary_data):
            digest.update(struct.pack(">Q", len(part)) + part)
        assert event.attributes["idempotencykey"].ce_string == digest.hexdigest()


async def test_short_responses_are_retried_until_every_event_is_acknowledged(start_chipmock, make_config, database_url) -> None:
    terse_chip = start_chipmock(ChipModel(short_response=1))
    async with open_emitter(make_config(terse_chip, publish_attempts=50)) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(15)}
        await emitter.flush(timeout=30)
    assert terse_chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


async def test_memory_buffer_spills_to_the_table_and_everything_still_arrives(chip, make_config, database_url) -> None:
    config = make_config(chip, dispatch_buffer=5, publishes_in_flight=1, publish_batch_size=5)
    async with open_emitter(config) as emitter:
        ids = await emit_concurrently(emitter, 400, emitters=8, size=100)
        await emitter.flush(timeout=30)
        spilled = emitter.statistics().spilled
    assert spilled > 0, "the buffer never filled: the spill path was not exercised"
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


async def test_expired_rows_are_dead_lettered_not_dropped(start_chipmock, make_config, database_url) -> None:
    down_chip = start_chipmock(ChipModel(failure_rate=1.0))
    # Chip being down pauses delivery with the rows leased to this instance, and the
    # TTL sweep never takes a row a live lease holds: a short lease lets it see them.
    async with open_emitter(make_config(down_chip, event_ttl=0.3, lease_duration=5.0)) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(5)}
        await wait_until(lambda: set(dead_letters(database_url)) == ids, what="expiry to dead-letter")
    assert {code for code, _ in dead_letters(database_url).values()} == {"EXPIRED"}
    assert pending_ids(database_url) == set()


async def test_memory_stays_bounded_while_chip_is_down(start_chipmock, make_config, database_url) -> None:
    down_chip = start_chipmock(ChipModel(failure_rate=1.0))
    config = make_config(down_chip, dispatch_buffer=20, dispatch_buffer_bytes=50_000, publishes_in_flight=2,
                         publish_batch_size=10)
    async with open_emitter(config) as emitter:
        most_buffered = most_bytes = 0
        for _ in range(500):
            await emitter.emit(b"x" * 1000, source="wf", type="tick")
            stats = emitter.statistics()
            most_buffered = max(most_buffered, stats.buffered_events)
            most_bytes = max(most_bytes, stats.buffered_bytes)
        assert len(pending_ids(database_url)) == 500  # the backlog is in the table...
    assert most_buffered <= 20 and most_bytes <= 50_000  # ...not in memory
    assert emitter.statistics().spilled > 0  # the spill path carried the overflow
