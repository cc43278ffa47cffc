"""``just load mixed``: fresh emits at a paced rate while a backlog drains in the same instance.

A backlog of ``--events`` rows (default 500,000) is written through the outbox
(100 a call, 10 connections) before any emitter runs. Then one emitter in this
process delivers it while ``--concurrency`` callers (default 50) emit
``--rate`` events/s (default 5,000) with ``Emitter.emit``, until the backlog is
delivered or ``--duration`` (default 180 s) passes. Every ``--every`` (5 s), and
overall: fresh emit p50/p99, the fresh events' delivery latency (emit to Chip),
the backlog's drain rate and what is left of it. The publish slots are shared
fairly when neither starves: fresh emits reach their offered rate with a
bounded delivery latency, and the backlog drains in every interval.

Chip's age histogram (arrival minus recordedtime) tells the two apart: the
backlog's events are built with a recordedtime an hour back
(:func:`recorded_earlier`), beyond the histogram's last bound (60 s), so an
arrival there is a backlog row, unless a fresh event waited over a minute
(counted once the backlog is delivered). chipmock runs in its own process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import trio

import actors.core.events
from actors.core.instruments import HistogramSnapshot

from .chip import ChipFigures, chip_args
from .measure import Latencies, measured, paced_emits, quantile
from .outbox import analyzed, write_rows
from .progress import Progress
from .report import Run

BACKDATED = 3600.0  # seconds the backlog's recordedtime lies back: past chipmock's last age bound
POLL = 0.25  # seconds between reads of chipmock's counters


@contextmanager
def recorded_earlier(seconds: float) -> Iterator[None]:
    """Events built meanwhile in this process carry a recordedtime (and a UUIDv7 time) ``seconds`` back.

    The library reads the wall clock for both in one place, ``actors.core.events``' ``time.time_ns``; the
    recordedtime is only reported to Chip (the TTL and claims use the database's clock). Only for a
    measurement: no emitter may run in this process meanwhile.
    """
    events = actors.core.events
    real = events.time
    events.time = SimpleNamespace(time_ns=lambda: real.time_ns() - int(seconds * 1e9))  # type: ignore[assignment]
    try:
        yield
    finally:
        events.time = real


class Arrivals:
    """chipmock's figures split by age: the backlog's (past the last bound) and the fresh ones (within)."""

    def __init__(self, figures: ChipFigures) -> None:
        ages = figures.ages
        self.figures = figures
        self.old = ages.counts[-1]
        self.fresh = HistogramSnapshot(ages.bounds, (*ages.counts[:-1], 0), 0.0)

    def since(self, earlier: Arrivals) -> tuple[int, HistogramSnapshot]:
        return self.old - earlier.old, self.fresh.since(earlier.fresh)


class WindowedLatencies:
    """Emit latencies overall and since the last window was taken."""

    def __init__(self) -> None:
        self.overall, self.window = Latencies(), Latencies()

    def append(self, seconds: float) -> None:
        self.overall.append(seconds)
        self.window.append(seconds)

    def __len__(self) -> int:
        return len(self.overall)

    def take_window(self) -> Latencies:
        window, self.window = self.window, Latencies()
        return window


async def mixed(args, url: str, run: Run, progress: Progress) -> None:
    with recorded_earlier(BACKDATED):
        written = await trio.to_thread.run_sync(write_rows, url, args.events, args.size, progress, "mixed: backlog")
    backlog = written.events
    run.notes.append(f"backlog: {backlog:,} outbox rows of {args.size} B written in {written.seconds:,.1f} s "
                     f"({written.per_s:,.0f}/s) before the emitter started")
    await trio.to_thread.run_sync(analyzed, url)
    latencies, errors = WindowedLatencies(), []
    async with measured(url, chip_args(args.chip_latency)) as m:
        started = time.monotonic()
        first = previous = Arrivals(await trio.to_thread.run_sync(m.chip.figures))
        drained_at = None
        next_row = started + args.every
        async with trio.open_nursery() as nursery:
            nursery.start_soon(paced_emits, m.emitter, args.rate, args.duration, args.concurrency[0],
                               os.urandom(args.size), latencies, errors)
            while True:
                await trio.sleep(POLL)
                now = time.monotonic()
                arrivals = Arrivals(await trio.to_thread.run_sync(m.chip.figures))
                if arrivals.old >= backlog and drained_at is None:
                    drained_at = now
                finished = drained_at is not None or now - started >= args.duration
                progress.show("mixed", min(arrivals.old, backlog), backlog,
                              f"backlog {min(arrivals.old, backlog):,} delivered, {len(latencies):,} fresh emitted")
                if now >= next_row or finished:
                    run.rows.append(_interval(now - started, now - (next_row - args.every), args.rate,
                                              latencies.take_window(), arrivals, previous, backlog))
                    previous, next_row = arrivals, now + args.every
                if finished:
                    nursery.cancel_scope.cancel()
                    break
        emitting_s = time.monotonic() - started
    progress.done()
    final = Arrivals(m.chip_figures)
    old, fresh = final.since(first)
    delivered = min(final.old, backlog)
    run.summary.update({
        "backlog_rows": backlog, "backlog_delivered": delivered, "backlog_drained": drained_at is not None,
        "backlog_drain_per_s": round((delivered - min(first.old, backlog)) / ((drained_at or now) - started), 1),
        "fresh_offered_per_s": args.rate, "fresh_callers": args.concurrency[0],
        "fresh_emitted": len(latencies), "fresh_achieved_per_s": round(len(latencies) / emitting_s, 1),
        "fresh_emit_errors": len(errors),
        "fresh_emit_p50_ms": round(quantile(latencies.overall, 0.5) * 1000, 2),
        "fresh_emit_p99_ms": round(quantile(latencies.overall, 0.99) * 1000, 2),
        "fresh_delivery_p50_ms": round(fresh.quantile(0.5) * 1000, 1),
        "fresh_delivery_p99_ms": round(fresh.quantile(0.99) * 1000, 1),
        "fresh_delivered_over_60s": final.old - backlog if drained_at is not None else "unknown (backlog left)",
        "duplicates": final.figures.duplicates,
    })
    run.series["pending"] = m.sampler.points
    run.notes.append("fresh delivery = Chip's arrival - recordedtime (set in emit, ms precision), of the fresh events "
                     "delivered within 60 s; the backlog's events carry a recordedtime an hour back, so Chip's age "
                     "histogram tells them apart; backlog_drain_per_s counts from the emitter's start")


def _interval(t: float, seconds: float, offered: float, window: Latencies, now: Arrivals, before: Arrivals,
              backlog: int) -> dict:
    old, fresh = now.since(before)
    delivered = old + fresh.count
    return {
        "t_s": round(t, 1), "fresh_offered_per_s": offered, "fresh_emitted_per_s": round(len(window) / seconds, 1),
        "emit_p50_ms": round(quantile(window, 0.5) * 1000, 2), "emit_p99_ms": round(quantile(window, 0.99) * 1000, 2),
        "fresh_delivered_per_s": round(fresh.count / seconds, 1),
        "delivery_p50_ms": round(fresh.quantile(0.5) * 1000, 1),
        "delivery_p99_ms": round(fresh.quantile(0.99) * 1000, 1),
        "backlog_delivered_per_s": round(old / seconds, 1), "backlog_left": max(0, backlog - now.old),
        "fresh_share": round(fresh.count / delivered, 2) if delivered else None,
    }
