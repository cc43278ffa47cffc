"""``just load outbox``: events written in the host's own transaction, delivered by an emitter in another process.

Three measurements, one run, chipmock in its own process for each:

1. delivery latency, the caller's commit -> Chip's receipt, ``--rate`` outbox
   events/s (one transaction each, one connection) for ``--duration``, with
   one emitter instance in another process that LISTENs;
2. the same with that instance not listening (``session_liveness`` off, as
   behind a transaction pooler): the scan every ``scan_interval`` finds the rows;
3. ``outbox.emit_many`` batches of 100 from 10 connections (one transaction a
   batch, threads in this process, an emitter process delivering) beside
   ``Emitter.emit_many`` batches of 100 from 10 callers (``sustained``'s row,
   the emitter in this process), ``--events`` each.

``scenarios.outbox`` runs them in that order; the functions here block (threads,
processes, psycopg's sync connections) and run in Trio's worker threads.

Latency comes from chipmock's ``chipmock_event_age_seconds``: arrival minus the
event's ``recordedtime``, which the outbox sets when it builds the event, just
before the INSERT and the commit (so a figure is at most a millisecond or two
high), as ``just load latency`` measures emit -> Chip.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psycopg

from actors import outbox as host_outbox

from .chip import ChipProcess, chip_args, wait_for_unique
from .emitter_process import EmitterProcess
from .measure import MAX_SECONDS_PER_PHASE, quantile
from .progress import Progress

BATCH, CONNECTIONS = 100, 10


def deliverer(url: str, endpoint: str, *, listening: bool, seconds: float) -> EmitterProcess:
    """An emitter instance in its own process that emits nothing and delivers what the table holds;
    when listening, its LISTEN is sent before this returns."""
    process = EmitterProcess(url, endpoint, seconds=seconds,
                             env={"DURABLE_EMITTER_SESSION_LIVENESS": "true" if listening else "false"})
    try:
        deadline = time.monotonic() + 60
        with psycopg.connect(url, autocommit=True) as conn:
            while listening and not conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                    (f"durable-emitter {process.instance_id}",)).fetchall():
                if time.monotonic() > deadline:
                    raise RuntimeError("the delivering emitter never listened")
                time.sleep(0.02)  # polling another process's state
    except BaseException:
        process.stop()
        raise
    return process


def latency(args, url: str, listening: bool, progress: Progress) -> dict:
    """Commit -> Chip, ``args.rate`` single-event transactions a second for ``args.duration``."""
    label = "LISTEN" if listening else "scan only (LISTEN off)"
    body = os.urandom(args.size)
    total = int(args.rate * args.duration)
    commits: list[float] = []
    with ChipProcess(*chip_args(args.chip_latency)) as chip, \
            deliverer(url, chip.endpoint, listening=listening, seconds=args.duration + 180):
        with psycopg.connect(url) as conn:
            started = time.perf_counter()
            for i in range(total):  # open loop: never waits when behind
                if (delay := started + i / args.rate - time.perf_counter()) > 0:
                    time.sleep(delay)
                began = time.perf_counter()
                with conn.transaction():
                    host_outbox.emit(conn, body, source="load", type="outbox")
                commits.append(time.perf_counter() - began)
                if i % 100 == 0:
                    progress.show(f"outbox latency, {label}", i, total, f"{i:,}/{total:,}")
            elapsed = time.perf_counter() - started
        figures = wait_for_unique(chip, total, timeout=60)
    progress.done()
    return {"phase": f"latency, {label}", "offered_per_s": args.rate, "achieved_per_s": round(total / elapsed, 1),
            "events": total, "commit_p50_ms": round(quantile(commits, 0.5) * 1000, 2),
            "commit_p99_ms": round(quantile(commits, 0.99) * 1000, 2),
            "delivery_p50_ms": round(figures.ages.quantile(0.5) * 1000, 1),
            "delivery_p99_ms": round(figures.ages.quantile(0.99) * 1000, 1),
            "delivery_max_bucket_s": _max_bucket(figures.ages), "delivered_unique": figures.unique,
            "duplicates": figures.duplicates}


def _max_bucket(ages) -> float | str:
    """The upper bound of the highest non-empty age bucket (the slowest event's age, rounded up)."""
    filled = [bound for bound, count in zip((*ages.bounds, float("inf")), ages.counts, strict=True) if count]
    return filled[-1] if filled else 0.0


@dataclass(frozen=True)
class Written:
    """What :func:`write_rows` wrote, and how long its calls took."""

    events: int
    seconds: float
    calls: list[float]  # seconds per outbox.emit_many call (one transaction each)

    @property
    def per_s(self) -> float:
        return round(self.events / self.seconds, 1)


def write_rows(url: str, events: int, size: int, progress: Progress, label: str = "outbox.emit_many") -> Written:
    """``outbox.emit_many`` of BATCH bodies from CONNECTIONS connections (a thread each, a transaction
    a batch), ``events`` in all, rounded down to whole batches."""
    body = os.urandom(size)
    batches = max(1, events // BATCH)
    calls: list[float] = []
    taken = [0]
    lock = threading.Lock()

    def writer() -> None:
        bodies = [body] * BATCH
        with psycopg.connect(url) as conn:
            while True:
                with lock:
                    if taken[0] == batches:
                        return
                    taken[0] += 1
                began = time.perf_counter()
                with conn.transaction():
                    host_outbox.emit_many(conn, bodies, source="load", type="outbox")
                calls.append(time.perf_counter() - began)

    started = time.perf_counter()
    threads = [threading.Thread(target=writer, name=f"outbox-writer-{i}") for i in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            progress.show(label, len(calls) * BATCH, batches * BATCH, f"{len(calls) * BATCH:,} written")
            thread.join(0.5)
    progress.done()
    return Written(batches * BATCH, time.perf_counter() - started, calls)


def analyzed(url: str) -> None:
    """VACUUM (ANALYZE) the table: autovacuum would, within a minute of a burst of inserts; done here so
    what is measured next does not depend on when it runs."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) chip_durable_events")


def throughput(args, url: str, progress: Progress) -> dict:
    """``outbox.emit_many`` of 100 from 10 connections, ``args.events`` in all: write and end-to-end rates."""
    with ChipProcess(*chip_args(args.chip_latency)) as chip, \
            deliverer(url, chip.endpoint, listening=True, seconds=MAX_SECONDS_PER_PHASE):
        started = time.perf_counter()
        written = write_rows(url, args.events, args.size, progress)
        events = written.events
        writes_done = time.perf_counter()
        stop_at = writes_done + MAX_SECONDS_PER_PHASE
        while (figures := chip.figures()).unique < events and time.perf_counter() < stop_at:
            time.sleep(0.02)  # polling another process's counters
        finished = time.perf_counter()
    return {"implementation": "durable-emitter", "instances": 1,
            "callers": f"outbox.emit_many({BATCH}), {CONNECTIONS} connections, emitter in another process",
            "events": events, "emit_per_s": written.per_s,
            "end_to_end_per_s": round(figures.unique / (finished - started), 1),
            "emit_call_p50_ms": round(quantile(written.calls, 0.5) * 1000, 2),
            "emit_call_p99_ms": round(quantile(written.calls, 0.99) * 1000, 2),
            "drain_s": round(finished - writes_done, 2), "delivered_unique": figures.unique}
