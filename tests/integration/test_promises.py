"""Each promise of the design (../shared/design.md), against real Postgres and a real chipmock."""

import hashlib
import struct

import psycopg
import trio
import trio.testing

from actors import open_emitter
from chipmock import ChipModel
from chippb import cloudevent_pb2 as ce
from tests.helpers import dead_letters, emit_concurrently, pending_ids, query, wait_until

INSERT_WAITING_FOR_A_LOCK = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO chip_durable_events (%%'
"""


async def test_emit_returns_only_after_commit(start_chipmock, make_config, database_url) -> None:
    """While a lock holds its INSERT back, emit waits; when emit returns, another connection sees the row.

    A warm-up emit first: the writer's connection is open and its INSERT
    prepared, so nothing but the commit stands between the request and its
    caller (the first emit's prepare round trip alone once made a persister
    that resolved callers before writing look right).
    """
    down_chip = start_chipmock(ChipModel(failure_rate=1.0))  # nothing is delivered: rows stay in the table
    # Deadlines far away: the INSERT waits for the test's lock, not for a timer.
    config = make_config(down_chip, lock_timeout=60.0, commit_timeout=60.0)
    returned: list[tuple[str, list[tuple]]] = []

    async def emit_and_look(emitter) -> None:
        event_id = await emitter.emit(b"body", source="wf", type="tick")
        # A separate connection, at once (the loop is blocked: nothing else runs meanwhile).
        returned.append((event_id, query(database_url, "SELECT payload FROM chip_durable_events WHERE id = %s",
                                          (event_id,))))

    async with open_emitter(config) as emitter:
        warm_up = await emitter.emit(b"warm-up", source="wf", type="tick")
        # Committed, whatever emit promised: the only INSERT left to wait for the lock is the test's.
        await wait_until(lambda: pending_ids(database_url) == {warm_up}, what="the warm-up row")
        with psycopg.connect(database_url) as blocker:
            # INSERT needs ROW EXCLUSIVE, which SHARE blocks; reads go on. In a thread: a statement of the
            # emitter's that holds a conflicting lock must be free to finish.
            await trio.to_thread.run_sync(blocker.execute, "LOCK TABLE chip_durable_events IN SHARE MODE")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(emit_and_look, emitter)
                await wait_until(lambda: query(database_url, INSERT_WAITING_FOR_A_LOCK)[0][0] == 1,
                                 what="the emit's INSERT to wait for the lock")
                await trio.testing.wait_all_tasks_blocked()  # emit had every chance to return
                assert returned == [], "emit returned while its INSERT was still waiting for the lock"
                await trio.to_thread.run_sync(blocker.rollback)  # the lock goes: the INSERT commits
    [(event_id, rows)] = returned
    assert len(rows) == 1 and ce.CloudEvent.FromString(rows[0][0]).binary_data == b"body", event_id


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
    rejecting_chip = start_chipmock(ChipModel(event_failure_rate=1.0, event_failure_code="VALIDATION_FAILED"))
    async with open_emitter(make_config(rejecting_chip)) as emitter:
        ids = {await emitter.emit(b"x", source="wf", type="tick") for _ in range(10)}
        await emitter.flush(timeout=30)
    letters = dead_letters(database_url)
    assert set(letters) == ids
    assert {code for code, _ in letters.values()} == {"VALIDATION_FAILED"}
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
