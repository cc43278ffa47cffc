"""Leaving ``async with open_emitter(...)``: the shutdown sequence README promises, step by step.

Emits handed to the emitter before close are committed; publishes in flight are
given ``shutdown_timeout``; the rest stays in the table and the next start
delivers it. Real Postgres and real chipmock, default settings but for the knob
a test is about.
"""

import socket

import psycopg
import pytest
import trio
import trio.testing

from actors import CommitOutcomeUnknown, EmitterClosed, EmitterConfig, EmitterError, open_emitter
from chipmock import ChipModel
from tests.helpers import pending_ids, query, wait_until

HANDED = 50
LOCK = "LOCK TABLE chip_durable_events IN SHARE MODE"  # commits wait for it (up to lock_timeout, 5 s)


def _config(database_url: str, chip, **knob) -> EmitterConfig:
    return EmitterConfig(database_url=database_url, chip_endpoint=chip.endpoint, **knob)


async def _host(config: EmitterConfig, close: trio.Event, *, task_status: trio.TaskStatus[object]) -> None:
    """An emitter that closes when ``close`` is set."""
    async with open_emitter(config) as emitter:
        task_status.started(emitter)
        await close.wait()


async def _emit_behind_a_waiting_commit(nursery: trio.Nursery, emitter, results: dict[int, object],
                                        answered: trio.Event) -> None:
    """One emit whose commit waits for the lock, then ``HANDED - 1`` handed over behind it, in the intake.

    ``results[i]``: the id emit ``i`` returned, or the error it raised; ``answered`` is set once all have.
    """
    async def emit(index: int) -> None:
        try:
            results[index] = await emitter.emit(f"handed {index}".encode(), source="wf", type="tick")
        except EmitterError as exc:
            results[index] = exc
        if len(results) == HANDED:
            answered.set()

    nursery.start_soon(emit, 0)
    await trio.testing.wait_all_tasks_blocked()  # the persister took it: its commit waits
    for index in range(1, HANDED):
        nursery.start_soon(emit, index)
    await trio.testing.wait_all_tasks_blocked()
    assert emitter.statistics().queued_emits == HANDED - 1 and results == {}


async def test_emits_handed_over_before_close_are_committed_and_later_ones_refused(chip, database_url) -> None:
    results: dict[int, object] = {}
    close, answered = trio.Event(), trio.Event()
    with psycopg.connect(database_url) as holder, trio.fail_after(60):  # a caller left waiting fails, not hangs
        async with trio.open_nursery() as nursery:
            emitter = await nursery.start(_host, _config(database_url, chip), close)
            holder.execute(LOCK)
            await _emit_behind_a_waiting_commit(nursery, emitter, results, answered)
            close.set()
            await trio.testing.wait_all_tasks_blocked()  # the host is in shutdown, waiting for the persister
            with pytest.raises(EmitterClosed):
                await emitter.emit(b"too late", source="wf", type="tick")
            holder.rollback()  # the commit goes through, then the queued ones; shutdown goes on
    ids = [results[index] for index in range(HANDED)]
    assert all(isinstance(event_id, str) for event_id in ids), ids
    # Each committed (delivered, or still in the table); "too late" was never written.
    assert pending_ids(database_url) | chip.counters.ids == set(ids)


async def test_when_shutdown_timeout_cuts_a_commit_short_its_callers_hear_maybe_and_the_queued_ones_not_written(
        chip, database_url) -> None:
    results: dict[int, object] = {}
    close, answered = trio.Event(), trio.Event()
    with psycopg.connect(database_url) as holder:
        async with trio.open_nursery() as nursery:
            emitter = await nursery.start(_host, _config(database_url, chip, shutdown_timeout=0.5), close)
            warm = await emitter.emit(b"warm", source="wf", type="tick")  # the INSERT is prepared: the next one is sent whole
            holder.execute(LOCK)
            await _emit_behind_a_waiting_commit(nursery, emitter, results, answered)
            close.set()  # the waiting commit outlasts shutdown_timeout: the persister is cancelled
            try:
                with trio.fail_after(5):  # stands for "never": the emitter is gone within a second
                    await answered.wait()
            finally:
                holder.rollback()
                nursery.cancel_scope.cancel()
    # The cut INSERT had been sent whole: once the lock is gone it runs on in its session and commits.
    await wait_until(lambda: not query(database_url, "SELECT 1 FROM pg_stat_activity WHERE query LIKE %s",
                                       ("%INSERT INTO chip_durable_events (%",)), what="the cut INSERT to end")
    first, never_taken = results[0], [results[index] for index in range(1, HANDED)]
    assert isinstance(first, CommitOutcomeUnknown) and "may or may not be committed" in str(first), first
    assert all(isinstance(error, EmitterClosed) and "was not written" in str(error) for error in never_taken)
    written = (pending_ids(database_url) | chip.counters.ids) - {warm}
    assert written == set(first.event_ids)  # the first was written after all; none told "not written" was


async def test_a_publish_in_flight_at_close_is_given_shutdown_timeout_to_finish(start_chipmock, database_url) -> None:
    chip = start_chipmock(ChipModel(latency=1.0))  # well within the default shutdown_timeout (5 s)
    async with open_emitter(_config(database_url, chip)) as emitter:
        ids = set(await emitter.emit_many([f"event {i}".encode() for i in range(10)], source="wf", type="tick"))
        await wait_until(lambda: emitter.statistics().publishes_in_flight == 1, what="the batch in flight")
    assert chip.counters.seen(ids) == ids  # the call was let finish...
    assert pending_ids(database_url) == set()  # ...and its rows deleted before the acker stopped


async def test_publishes_that_outlast_shutdown_timeout_leave_their_rows_for_the_next_start(
        start_chipmock, database_url) -> None:
    slow = start_chipmock(ChipModel(latency=3.0))  # longer than the shutdown_timeout below, within publish_timeout
    async with open_emitter(_config(database_url, slow, shutdown_timeout=0.5)) as emitter:
        ids = set(await emitter.emit_many([f"event {i}".encode() for i in range(10)], source="wf", type="tick"))
        await wait_until(lambda: emitter.statistics().publishes_in_flight == 1, what="the batch in flight")
    assert pending_ids(database_url) == ids  # abandoned in flight: nothing deleted, nothing lost
    chip = start_chipmock()
    # The same instance id (this process's host-pid): the next start reclaims its rows at once.
    async with open_emitter(_config(database_url, chip)) as emitter:
        await emitter.flush(timeout=30)
    assert chip.counters.seen(ids) == ids
    assert pending_ids(database_url) == set()


def _unused_port() -> int:
    """A port nothing listens on (bound, then released, so the OS does not hand it out again at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_closing_while_nothing_listens_at_chips_address_returns_at_once_and_keeps_the_event(
        database_url, caplog) -> None:
    """A short-lived host (a CLI, a job) during a Chip outage: open, emit, close. The event waits in the
    table; close does not sit out the shutdown deadline retrying a Chip that is not there."""
    config = EmitterConfig(database_url=database_url, chip_endpoint=f"127.0.0.1:{_unused_port()}")
    async with open_emitter(config) as emitter:
        event_id = await emitter.emit(b"x", source="wf", type="tick")
    assert pending_ids(database_url) == {event_id}
    assert "did not stop within its shutdown deadline" not in caplog.text  # a broken close waits it out (5 s)
    # Handed back, not left leased for lease_duration (60 s): any instance may claim it at once.
    assert query(database_url, "SELECT lease_expires_at <= now() FROM chip_durable_events") == [(True,)]


async def test_closing_under_a_rate_limit_delivers_what_chip_limits_within_shutdown_timeout(
        start_chipmock, database_url, caplog) -> None:
    """Chip answers, but rate-limits: at close a limited call is retried after Chip's hint, not abandoned."""
    chip = start_chipmock(ChipModel(rate_limit=200, latency=0.2))  # 200 events a second, a second's worth at once
    async with open_emitter(_config(database_url, chip)) as emitter:
        ids = set(await emitter.emit_many([f"event {i}".encode() for i in range(200)], source="wf", type="tick"))
        await emitter.flush(timeout=30)  # Chip's bucket is empty now: the next 100 wait for it to refill
        ids |= set(await emitter.emit_many([f"later {i}".encode() for i in range(100)], source="wf", type="tick"))
    # Closing began while those 100 were in flight (0.2 s): Chip limited them, and the close retried them.
    assert chip.counters.snapshot().rate_limited >= 1
    assert chip.counters.seen(ids) == ids and pending_ids(database_url) == set()
    assert "did not stop within its shutdown deadline" not in caplog.text
