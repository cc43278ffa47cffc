"""No host call hangs at shutdown, in threaded and asyncio hosts (the Trio host: test_shutdown.py): when the
persister cannot finish within the shutdown grace, every caller waiting on it is answered."""

from __future__ import annotations

import asyncio
import threading

import psycopg

from actors import (
    EmitterClosed,
    EmitterError,
    open_asyncio_emitter,
    open_blocking_emitter,
)
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


def _stuck_config(make_config, chip):
    # Batches of 10: one batch is stuck in its INSERT, the next 10 emits wait in the intake (its
    # capacity) and the rest wait to get in. The INSERT waits for the lock longer than the shutdown
    # grace, so the persister cannot finish when asked to stop.
    return make_config(chip, persist_batch_size=QUEUED, lock_timeout=30.0, commit_timeout=30.0, shutdown_timeout=1.0)


def test_threaded_and_asyncio_hosts_callers_are_answered_too(chip, make_config, database_url) -> None:
    answers: list[object] = []
    locks: list[psycopg.Connection] = []
    try:
        with open_blocking_emitter(_stuck_config(make_config, chip)) as emitter:
            locks.append(_table_locked(database_url))
            def call(i: int) -> None:
                try:
                    answers.append(emitter.emit(f"t{i}".encode(), source="wf", type="t"))
                except EmitterError as exc:
                    answers.append(exc)

            threads = [threading.Thread(target=call, args=(i,)) for i in range(CALLERS)]
            for thread in threads:
                thread.start()
            while emitter.statistics().queued_emits < QUEUED:
                threading.Event().wait(0.01)  # polls the emitter's state: no event signals it
        locks.pop().rollback()  # the next host finds the table free at its start
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads), "a thread still waits: it hung"

        async def asyncio_host() -> list[object]:
            async with open_asyncio_emitter(_stuck_config(make_config, chip)) as emitter:
                locks.append(await asyncio.to_thread(_table_locked, database_url))
                calls = [asyncio.ensure_future(emitter.emit(f"a{i}".encode(), source="wf", type="t"))
                         for i in range(CALLERS)]
                while emitter.statistics().queued_emits < QUEUED:  # noqa: ASYNC110  (no event signals it)
                    await asyncio.sleep(0.01)
            done = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 30)
            return list(done)

        asyncio_answers = asyncio.run(asyncio_host())
    finally:
        for lock in locks:
            lock.rollback()
            lock.close()
    assert len(answers) == CALLERS and all(isinstance(a, EmitterError) for a in answers)
    assert any(isinstance(a, EmitterClosed) for a in answers)
    assert len(asyncio_answers) == CALLERS and all(isinstance(a, EmitterError) for a in asyncio_answers)


def test_a_cancelled_asyncio_caller_hears_whether_its_event_may_have_been_written(chip, make_config,
                                                                                   database_url) -> None:
    async def host() -> tuple[str, list[str]]:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            lock = await asyncio.to_thread(_table_locked, database_url)
            try:
                stuck = asyncio.ensure_future(emitter.emit(b"x", source="wf", type="t"))
                while not await asyncio.to_thread(_insert_waits_for_the_lock, database_url):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)  # Postgres' state: no event signals it
                stuck.cancel()
                try:
                    await stuck
                except asyncio.CancelledError as cancelled:
                    answer = str(cancelled)
            finally:
                await asyncio.to_thread(lock.rollback)
                lock.close()
            await emitter.flush(timeout=30)
        return answer, sorted(pending_ids(database_url))

    answer, pending = asyncio.run(asyncio.wait_for(host(), timeout=60))
    assert "may have been written" in answer  # it was: the INSERT was under way and went through
    assert pending == []


def test_asyncio_callers_told_nothing_was_written_really_wrote_nothing(chip, make_config) -> None:
    async def host() -> tuple[list[str], int]:
        async with open_asyncio_emitter(make_config(chip)) as emitter:
            calls = [asyncio.ensure_future(emitter.emit(f"c{i}".encode(), source="wf", type="t")) for i in range(20)]
            await asyncio.sleep(0)  # each call is on its way into Trio, none has run there yet
            for call in calls:
                call.cancel()
            answers = []
            for call in calls:
                try:
                    await call
                    answers.append("returned")
                except asyncio.CancelledError as cancelled:
                    answers.append(str(cancelled))
            await emitter.flush(timeout=30)
        return answers, chip.counters.snapshot().unique

    answers, delivered = asyncio.run(asyncio.wait_for(host(), timeout=60))
    maybe = sum("may have been written" in a or a == "returned" for a in answers)
    assert all("nothing was written" in a or "may have been written" in a or a == "returned" for a in answers)
    assert delivered <= maybe  # every caller told "nothing was written" is right
