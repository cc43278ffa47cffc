"""No host call hangs at shutdown, in threaded and asyncio hosts (the Trio host: test_shutdown.py): when the
persister cannot finish within the shutdown grace, every caller waiting on it is answered, and what each is
told holds. The witnesses are the table and chipmock: a caller that raised anything but CommitOutcomeUnknown
(or was told "nothing was written") finds its body in neither."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

import psycopg

from actors import (
    CommitOutcomeUnknown,
    EmitterClosed,
    EmitterError,
    open_asyncio_emitter,
    open_blocking_emitter,
)
from chippb import cloudevent_pb2 as ce
from tests.helpers import pending_ids, query

CALLERS = 40
QUEUED = 10  # persist_batch_size, and so the intake's capacity


def _table_locked(database_url: str) -> psycopg.Connection:
    """A connection holding the events table locked, so every INSERT waits (up to lock_timeout)."""
    conn = psycopg.connect(database_url)
    conn.execute("LOCK TABLE chip_durable_events IN ACCESS EXCLUSIVE MODE")
    return conn


def _insert_waits_for_the_lock(database_url: str) -> bool:
    rows = query(database_url, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                               "AND query LIKE %s", ("%INSERT INTO chip_durable_events%",))
    return bool(rows)


def _inserting(database_url: str) -> bool:
    """Whether an INSERT into the events table still runs (a cut one runs on in its session)."""
    return bool(query(database_url, "SELECT 1 FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                      ("%INSERT INTO chip_durable_events%",)))


def _written_bodies(database_url: str, chip) -> set[bytes]:
    """Bodies of the events in the table or received by chipmock (which keeps payloads)."""
    payloads = [row[0] for row in query(database_url, "SELECT payload FROM chip_durable_events")]
    payloads += chip.counters.payloads.values()
    return {ce.CloudEvent.FromString(payload).binary_data for payload in payloads}


def _told_not_written(answers: dict[bytes, object]) -> set[bytes]:
    """The bodies whose callers were told their event was not written: any error but CommitOutcomeUnknown."""
    return {body for body, answer in answers.items()
            if isinstance(answer, EmitterError) and not isinstance(answer, CommitOutcomeUnknown)}


def _stuck_config(make_config, chip):
    # Batches of 10: one batch is stuck in its INSERT, the next 10 emits wait in the intake (its
    # capacity) and the rest wait to get in. The INSERT waits for the lock longer than the shutdown
    # grace, so the persister cannot finish when asked to stop.
    return make_config(chip, persist_batch_size=QUEUED, lock_timeout=30.0, commit_timeout=30.0, shutdown_timeout=1.0)


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll Postgres' state (no event signals it) from a host's thread, bounded."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_threaded_and_asyncio_hosts_callers_are_answered_at_shutdown_and_every_answer_holds(chip, make_config, database_url) -> None:
    threaded: dict[bytes, object] = {}
    locks: list[psycopg.Connection] = []
    try:
        with open_blocking_emitter(_stuck_config(make_config, chip)) as emitter:
            emitter.emit(b"warm", source="wf", type="t")  # the INSERT is prepared: the stuck one is sent whole
            locks.append(_table_locked(database_url))

            def call(body: bytes) -> None:
                try:
                    threaded[body] = emitter.emit(body, source="wf", type="t")
                except EmitterError as exc:
                    threaded[body] = exc

            threads = [threading.Thread(target=call, args=(f"thread {i:02d}".encode(),)) for i in range(CALLERS)]
            for thread in threads:
                thread.start()
            _wait_for(lambda: _insert_waits_for_the_lock(database_url), "a batch's INSERT waiting for the lock")
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "a thread still waits: it hung"
        locks.pop().rollback()  # the next host finds the table free at its start

        async def asyncio_host() -> dict[bytes, object]:
            bodies = [f"asyncio {i:02d}".encode() for i in range(CALLERS)]
            async with open_asyncio_emitter(_stuck_config(make_config, chip)) as emitter:
                await emitter.emit(b"warm", source="wf", type="t")
                locks.append(await asyncio.to_thread(_table_locked, database_url))
                calls = [asyncio.ensure_future(emitter.emit(body, source="wf", type="t")) for body in bodies]
                await asyncio.to_thread(_wait_for, lambda: _insert_waits_for_the_lock(database_url),
                                        "a batch's INSERT waiting for the lock")
            done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
            return dict(zip(bodies, done, strict=True))

        asyncio_answers = asyncio.run(asyncio_host())
    finally:
        for lock in locks:
            lock.rollback()
            lock.close()
    _wait_for(lambda: not _inserting(database_url), "the cut INSERTs to end")
    for answers in (threaded, asyncio_answers):
        assert len(answers) == CALLERS and all(isinstance(a, EmitterError) for a in answers.values())
        assert any(isinstance(a, EmitterClosed) for a in answers.values())
    answers = {**threaded, **asyncio_answers}
    told_not_written = _told_not_written(answers)
    wrong = {body: repr(answers[body]) for body in told_not_written & _written_bodies(database_url, chip)}
    assert told_not_written and not wrong, f"told 'not written', yet written: {wrong}"


def test_a_cancelled_asyncio_caller_hears_whether_its_event_may_have_been_written(chip, make_config,
                                                                                   database_url) -> None:
    async def host() -> str:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            await emitter.emit(b"warm", source="wf", type="t")  # the INSERT is prepared: the next one is sent whole
            lock = await asyncio.to_thread(_table_locked, database_url)
            try:
                stuck = asyncio.ensure_future(emitter.emit(b"stuck", source="wf", type="t"))
                await asyncio.to_thread(_wait_for, lambda: _insert_waits_for_the_lock(database_url),
                                        "the INSERT waiting for the lock")
                stuck.cancel()
                try:
                    await stuck
                except asyncio.CancelledError as cancelled:
                    answer = str(cancelled)
            finally:
                await asyncio.to_thread(lock.rollback)
                lock.close()
            await emitter.flush(timeout=30)
        return answer

    answer = asyncio.run(asyncio.wait_for(host(), timeout=60))
    assert "may have been written" in answer
    assert b"stuck" in _written_bodies(database_url, chip)  # it was: the INSERT was under way and went through
    assert pending_ids(database_url) == set()


def _cancelled_at_its_first_wait(call: Coroutine[Any, Any, object]) -> str:
    """Run an asyncio call up to its first wait, here and now, cancel it there as ``Task.cancel()`` does
    (the future it waits on, then the coroutine), and return what the caller is told.

    Nothing else runs on the loop meanwhile (as with Python 3.12's eager tasks), so the call has asked
    the emitter's Trio side to start it and Trio cannot have done so yet: no reliance on scheduling.
    """
    waiting_on = call.send(None)
    waiting_on.cancel()
    try:
        call.throw(asyncio.CancelledError())
    except asyncio.CancelledError as cancelled:
        return str(cancelled)
    raise AssertionError("the call went on after it was cancelled")


def test_asyncio_callers_told_nothing_was_written_really_wrote_nothing(chip, make_config, database_url) -> None:
    bodies = [f"cancelled {i:02d}".encode() for i in range(20)]

    async def host() -> list[str]:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            answers = [_cancelled_at_its_first_wait(emitter.emit(body, source="wf", type="t")) for body in bodies]
            await emitter.emit(b"after", source="wf", type="t")  # behind any of them that Trio took up
            await emitter.flush(timeout=30)
        return answers

    answers = asyncio.run(asyncio.wait_for(host(), timeout=60))
    assert all("nothing was written" in answer for answer in answers), answers
    assert _written_bodies(database_url, chip) == {b"after"}  # and nothing was
