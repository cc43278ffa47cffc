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
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from actors import outbox as host_outbox
from scripts import ROOT

from .chip import ChipProcess, chip_args, wait_for_unique
from .measure import MAX_SECONDS_PER_PHASE, quantile
from .progress import Progress

BATCH, CONNECTIONS = 100, 10


class Deliverer:
    """An emitter instance in its own process that emits nothing and delivers what the table holds."""

    def __init__(self, url: str, endpoint: str, *, listening: bool, seconds: float) -> None:
        self.instance_id = f"outbox-deliverer-{os.getpid()}"
        self.url = url
        env = {**os.environ, "DATABASE_URL": url, "CHIP_INGRESS_ENDPOINT": endpoint,
               "DURABLE_EMITTER_INSTANCE_ID": self.instance_id, "DURABLE_EMITTER_LOG_INTERVAL": "1h",
               "DURABLE_EMITTER_SESSION_LIVENESS": "true" if listening else "false"}
        ids = Path(tempfile.mkdtemp(prefix="outbox-load-")) / "ids.txt"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scripts.workload", "--ids-file", str(ids), "--deliver-only",
             "--duration", f"{seconds:g}s"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            self._ready(listening)
        except BaseException:
            self.stop()
            raise

    def _ready(self, listening: bool, timeout: float = 60.0) -> None:
        """Its tree is up ("workload ready"); when listening, its LISTEN is sent too."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout) or "workload ready" not in self.proc.stdout.readline():
                raise RuntimeError("the delivering emitter process did not start")
        with psycopg.connect(self.url, autocommit=True) as conn:
            while listening and not conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND query LIKE 'LISTEN%%'",
                    (f"durable-emitter {self.instance_id}",)).fetchall():
                if time.monotonic() > deadline:
                    raise RuntimeError("the delivering emitter never listened")
                time.sleep(0.02)  # polling another process's state

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after 10 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


def latency(args, url: str, listening: bool, progress: Progress) -> dict:
    """Commit -> Chip, ``args.rate`` single-event transactions a second for ``args.duration``."""
    label = "LISTEN" if listening else "scan only (LISTEN off)"
    body = os.urandom(args.size)
    total = int(args.rate * args.duration)
    commits: list[float] = []
    with ChipProcess(*chip_args(args.chip_latency)) as chip:
        deliverer = Deliverer(url, chip.endpoint, listening=listening, seconds=args.duration + 180)
        try:
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
        finally:
            deliverer.stop()
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


def throughput(args, url: str, progress: Progress) -> dict:
    """``outbox.emit_many`` of 100 from 10 connections, ``args.events`` in all: write and end-to-end rates."""
    body = os.urandom(args.size)
    batches = max(1, args.events // BATCH)
    events = batches * BATCH
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

    with ChipProcess(*chip_args(args.chip_latency)) as chip:
        deliverer = Deliverer(url, chip.endpoint, listening=True, seconds=MAX_SECONDS_PER_PHASE)
        try:
            started = time.perf_counter()
            threads = [threading.Thread(target=writer, name=f"outbox-writer-{i}") for i in range(CONNECTIONS)]
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    progress.show("outbox.emit_many", len(calls) * BATCH, events, f"{len(calls) * BATCH:,} written")
                    thread.join(0.5)
            writes_done = time.perf_counter()
            stop_at = writes_done + MAX_SECONDS_PER_PHASE
            while (figures := chip.figures()).unique < events and time.perf_counter() < stop_at:
                time.sleep(0.02)  # polling another process's counters
            finished = time.perf_counter()
        finally:
            deliverer.stop()
    progress.done()
    return {"implementation": "durable-emitter", "instances": 1,
            "callers": f"outbox.emit_many({BATCH}), {CONNECTIONS} connections, emitter in another process",
            "events": events, "emit_per_s": round(events / (writes_done - started), 1),
            "end_to_end_per_s": round(figures.unique / (finished - started), 1),
            "emit_call_p50_ms": round(quantile(calls, 0.5) * 1000, 2),
            "emit_call_p99_ms": round(quantile(calls, 0.99) * 1000, 2),
            "drain_s": round(finished - writes_done, 2), "delivered_unique": figures.unique}
