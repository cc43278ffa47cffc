"""``just load backlog``: a backlog of a million events with Chip down, then what it costs to read and drain.

Phases, each bounded: (1) emit ``--events`` with Chip refusing every call, so
they pile up in the table; (2) with the emitter stopped, time the claim query
(many rows claimable; then few, after every lease is pushed into the future),
the sampler's query, and ``durable-emitter status`` (its queries in process,
and the whole command as a process), and keep each EXPLAIN plan; (3) bring Chip
back, open an emitter and time the drain to an empty table; (4) vacuum, then
measure the sustained end-to-end rate in the same run, for the ratio.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import psycopg
import trio

import chipmock
from actors import open_emitter
from actors.adapters import schema
from actors.adapters.operations import Operations
from chipmock import ChipModel, Outage
from scripts import ROOT

from .measure import MAX_SECONDS_PER_PHASE, emitter_config, paced_emits, quantile
from .progress import Progress
from .report import Run

CLAIM_RUNS = 200
SAMPLER_RUNS = 200
STATUS_RUNS = 20
CLAIM = {"owner": "probe", "lease": 60.0, "limit": 500, "writer_only": False}


async def backlog(args, url: str, run: Run, progress: Progress) -> None:
    mock = chipmock.start(ChipModel(outages=(Outage(0, 24 * 3600),)))  # down until set_model below
    try:
        built = await _build(args, url, mock, progress)
        run.notes.append(f"backlog: {built['events']:,} events of {args.size} B emitted with Chip down in "
                         f"{built['seconds']:,.1f} s ({built['events'] / built['seconds']:,.0f}/s)")
        with psycopg.connect(url, autocommit=True) as conn:
            # Autovacuum would do this within a minute of the inserts; done here so the
            # figures do not depend on when it runs.
            conn.execute("VACUUM (ANALYZE) chip_durable_events")
            measured = await trio.to_thread.run_sync(_measure_reads, conn, url, run, progress)
        mock.set_model(ChipModel())  # Chip is back
        drain = await _drain(url, mock, built["events"], progress)
        with psycopg.connect(url, autocommit=True) as conn:
            # The drain left a million dead tuples; without this, autovacuum cleaning
            # them up would run during (and slow) the sustained measurement.
            conn.execute("VACUUM chip_durable_events")
        sustained = await _sustained(args, url, mock, progress)
    finally:
        mock.stop(0)
    ratio = drain["drain_per_s"] / sustained if sustained else 0.0
    run.rows.append({**measured, **drain, "sustained_end_to_end_per_s": sustained,
                     "drain_vs_sustained": round(ratio, 2)})
    run.notes.append("targets at 1,000,000 rows: claim p99 <= 10 ms, status <= 200 ms, sampler <= 5 ms, "
                     "drain >= 0.8x sustained")


async def _build(args, url: str, mock, progress: Progress) -> dict:
    config = emitter_config(url, mock.endpoint, max_pending=2 * args.events)
    latencies: list[float] = []
    errors: list[str] = []
    async with open_emitter(config) as emitter:
        async def show() -> None:
            while True:  # until cancelled below
                progress.show("backlog build", len(latencies), args.events, f"{len(latencies):,} emitted, Chip down")
                await trio.sleep(0.5)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(show)
            emitted = await paced_emits(emitter, 0, MAX_SECONDS_PER_PHASE, args.concurrency[0], os.urandom(args.size),
                                        latencies, errors, limit=args.events)
            nursery.cancel_scope.cancel()
        took = time.perf_counter() - started
    progress.done()
    if errors:
        raise RuntimeError(f"{len(errors)} emits failed while building the backlog: {sorted(set(errors))}")
    return {"events": emitted, "seconds": took}


async def _timed(runs: int, call: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """p50 and p99 in ms of ``runs`` calls."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        seconds.append(time.perf_counter() - started)
    return round(quantile(seconds, 0.5) * 1000, 2), round(quantile(seconds, 0.99) * 1000, 2)


def _measure_reads(conn: psycopg.Connection, url: str, run: Run, progress: Progress) -> dict:
    """Claim, sampler and status timings on the full table, with their plans."""
    progress.show("backlog reads", 0, 1, "claim, sampler, status")
    figures: dict[str, Any] = {"pending_rows": conn.execute("SELECT count(*) FROM chip_durable_events").fetchone()[0]}
    figures.update(trio.run(partial(_store_reads, url, run, every_row_claimable=True)))
    walls = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "actors.cli", "status"], cwd=ROOT, check=True, capture_output=True,
                       timeout=120, env={**os.environ, "DATABASE_URL": url})
        walls.append(time.perf_counter() - started)
    figures["status_command_ms"] = round(min(walls) * 1000, 1)

    progress.show("backlog reads", 0, 1, "few claimable: every lease pushed an hour ahead")
    # Each lease as it was afterwards: '-infinity' for all would leave rows the build held in memory (leased
    # to it, and not available before that lease ends) waiting out their lease, as no restart lapses a lease
    # that already ended.
    conn.execute("CREATE TEMPORARY TABLE leases_as_built AS SELECT id, lease_expires_at, available_at "
                 "FROM chip_durable_events")
    conn.execute("UPDATE chip_durable_events SET lease_expires_at = now() + interval '1 hour', "
                 "available_at = now() + interval '1 hour'")
    conn.execute("VACUUM (ANALYZE) chip_durable_events")
    figures.update(trio.run(partial(_store_reads, url, run, every_row_claimable=False)))
    conn.execute("UPDATE chip_durable_events e SET lease_expires_at = b.lease_expires_at, "
                 "available_at = b.available_at FROM leases_as_built b WHERE e.id = b.id")
    conn.execute("DROP TABLE leases_as_built")
    conn.execute("VACUUM (ANALYZE) chip_durable_events")
    progress.done()
    return figures


async def _store_reads(url: str, run: Run, *, every_row_claimable: bool) -> dict[str, Any]:
    """The reads timed on the library's own connection, with their plans: the claim (each one rolled back,
    so the backlog stays as it is); on the full table also the sampler's, the flush poll and status's."""
    ops = Operations(url)
    try:
        async def claim_once() -> None:
            async with ops.rolled_back():
                await ops.claim(**CLAIM)

        before = datetime.now(UTC)
        figures: dict[str, Any] = {}
        if not every_row_claimable:
            figures["claim_few_p50_ms"], figures["claim_few_p99_ms"] = await _timed(CLAIM_RUNS, claim_once)
            plans = await ops.read_plans(**CLAIM, before=before)
            run.plans["claim, no row claimable (every lease live)"] = plans.claim
            return figures
        figures["claim_many_p50_ms"], figures["claim_many_p99_ms"] = await _timed(CLAIM_RUNS, claim_once)
        figures["sampler_p50_ms"], figures["sampler_p99_ms"] = await _timed(SAMPLER_RUNS, ops.pending_stats)
        figures["flush_poll_p99_ms"] = (await _timed(SAMPLER_RUNS, partial(
            ops.has_pending_before, before, owner=CLAIM["owner"])))[1]
        plans = await ops.read_plans(**CLAIM, before=before)
        run.plans["claim, every row claimable"] = plans.claim
        run.plans["sampler (pending count, bytes, oldest age)"] = plans.pending_stats
        run.plans["flush poll (has this owner rows older than the flush)"] = plans.flush_poll
        run.plans["status: lease owners"] = plans.lease_owners
        figures["status_queries_p50_ms"], figures["status_queries_p99_ms"] = await _timed(
            STATUS_RUNS, partial(_status_queries, url))
        return figures
    finally:
        ops.close()


async def _status_queries(url: str) -> None:
    """What ``durable-emitter status`` asks the database, from its schema check on."""
    await trio.to_thread.run_sync(lambda: schema.check(url, "public", auto_migrate=False, writer=False))
    store = Operations(url)
    try:
        await store.pending_stats()
        await store.table_activity()
        await store.lease_owners()
        await store.dead_letters_by_reason()
        await store.oldest_transaction_seconds()
    finally:
        store.close()


async def _drain(url: str, mock, events: int, progress: Progress) -> dict:
    config = emitter_config(url, mock.endpoint, max_pending=2 * events)
    probe = psycopg.connect(url, autocommit=True)
    try:
        started = time.perf_counter()
        async with open_emitter(config):
            with trio.move_on_after(MAX_SECONDS_PER_PHASE):
                while probe.execute("SELECT EXISTS (SELECT FROM chip_durable_events)").fetchone()[0]:  # noqa: ASYNC110
                    progress.show("backlog drain", mock.counters.snapshot().unique, events, "Chip back")
                    await trio.sleep(0.25)
            took = time.perf_counter() - started
    finally:
        probe.close()
    progress.done()
    delivered = mock.counters.snapshot().unique
    return {"drain_s": round(took, 1), "drain_per_s": round(delivered / took, 1), "delivered_unique": delivered}


async def _sustained(args, url: str, mock, progress: Progress) -> float:
    """End-to-end events/s with the same emitter settings and an empty table, in the same run."""
    events = min(args.events, 200_000)
    config = emitter_config(url, mock.endpoint)
    latencies: list[float] = []
    async with open_emitter(config) as emitter:
        progress.show("sustained", 0, 1, f"{events:,} events end to end")
        started = time.perf_counter()
        emitted = await paced_emits(emitter, 0, MAX_SECONDS_PER_PHASE, args.concurrency[0], os.urandom(args.size),
                                    latencies, [], limit=events)
        await emitter.flush(timeout=MAX_SECONDS_PER_PHASE)
        took = time.perf_counter() - started
    progress.done()
    return round(emitted / took, 1)
