"""Emitter configurations for tests: real Postgres database, real chipmock endpoint."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import trio

from actors import EmitterConfig

# `just chaos` runs the fault suite with CHAOS_SCALE > 1: more rounds, more events.
CHAOS_SCALE = max(1, int(os.environ.get("CHAOS_SCALE", "1") or 1))


@pytest.fixture
def make_config(database_url: str) -> Callable[..., EmitterConfig]:
    """``make_config(chip, **knobs)``: a config on this test's database, quick to react.

    The instance id is the default (host-pid), as a host's would be; the lease
    is the default too, so a row that waits for its lease fails a test's flush.
    """

    def _make(chip, **knobs) -> EmitterConfig:
        defaults = dict(
            database_url=database_url, chip_endpoint=chip.endpoint,
            scan_interval=0.1, sample_interval=0.1, retry_initial=0.02, retry_max=0.2,
            publish_timeout=2.0, shutdown_timeout=2.0,
        )
        return EmitterConfig(**{**defaults, **knobs})

    return _make


async def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` (run in a thread: it may do I/O) until true, or fail after ``timeout``."""
    with trio.move_on_after(timeout):
        # Polls state outside Trio (the database, a gRPC server), which no Event can signal.
        while not await trio.to_thread.run_sync(predicate):  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def emit_concurrently(emitter, count: int, *, emitters: int = 10, size: int | None = None) -> set[str]:
    """``count`` events from ``emitters`` concurrent tasks; return the ids emit() returned.

    Bodies are ``size`` bytes, or short distinct texts when ``size`` is None.
    """
    ids: set[str] = set()

    async def emit_some(n: int) -> None:
        for i in range(n):
            body = f"body {i}".encode() if size is None else b"x" * size
            ids.add(await emitter.emit(body, source="wf", type="tick"))

    async with trio.open_nursery() as nursery:
        for _ in range(emitters):
            nursery.start_soon(emit_some, count // emitters)
    return ids


def ids_from_threads(call: Callable[[], list[str]], threads: int) -> list[str]:
    """Run ``call`` in ``threads`` threads at once (a threaded host's callers); every id they returned."""
    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(call) for _ in range(threads)]
        return [event_id for future in futures for event_id in future.result()]
