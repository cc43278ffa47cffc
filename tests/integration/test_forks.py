"""Forking hosts (gunicorn --preload, Celery prefork, multiprocessing): an emitter opened before a
fork is refused in the child with one error naming the fix, and the parent keeps working."""

from __future__ import annotations

import gc
import multiprocessing
import os

import psycopg
import pytest

from actors import open_blocking_emitter
from tests.helpers import pending_ids

FORK = multiprocessing.get_context("fork")


def _in_child(target) -> str:
    """Run ``target()`` in a forked child; return what it reported (its error's text, or "no error")."""
    reader, writer = FORK.Pipe(duplex=False)

    def child() -> None:
        try:
            target()
        except BaseException as exc:  # reported to the parent, whatever it is
            writer.send(f"{type(exc).__name__}: {exc}")
        else:
            writer.send("no error")

    process = FORK.Process(target=child)
    process.start()
    try:
        assert reader.poll(30), "the child did not answer within 30 s: it hung"
        return reader.recv()
    finally:
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_a_blocking_emitter_opened_before_a_fork_is_refused_in_the_child_and_the_parent_keeps_working(
        chip, make_config, database_url) -> None:
    with open_blocking_emitter(make_config(chip)) as emitter:
        before = emitter.emit(b"before the fork", source="wf", type="t")
        inherited = [obj for obj in gc.get_objects() if isinstance(obj, psycopg.Connection) and not obj.closed]
        assert inherited, "the emitter holds Postgres connections: the test needs some to inherit"

        def child_emits_then_exits_closing_what_it_inherited() -> None:
            try:
                emitter.emit(b"from the child", source="wf", type="t")
            finally:
                for conn in inherited:  # what collecting them at the child's exit does
                    conn.close()

        answer = _in_child(child_emits_then_exits_closing_what_it_inherited)
        assert answer.startswith("EmitterForked:") and f"process {os.getpid()}" in answer
        assert "post_fork" in answer and "nothing was written" in answer
        # The child's closes never reached the parent's sessions: the parent's next emits just work.
        after = [emitter.emit(f"after {i}".encode(), source="wf", type="t") for i in range(20)]
        emitter.flush(timeout=30)
    assert chip.counters.seen([before, *after]) == {before, *after}
    assert chip.counters.snapshot().unique == 21  # nothing from the child
    assert pending_ids(database_url) == set()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
async def test_a_trio_emitter_refuses_in_a_forked_child(chip, make_config) -> None:
    from actors import open_emitter

    async with open_emitter(make_config(chip)) as emitter:
        def child_steps_into_emit() -> None:
            emitter.emit(b"from the child", source="wf", type="t").send(None)  # the first step refuses

        answer = _in_child(child_steps_into_emit)
        assert answer.startswith("EmitterForked:"), answer
        await emitter.emit(b"the parent still emits", source="wf", type="t")
