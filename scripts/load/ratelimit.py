"""``just load ratelimit``: offered load above Chip's rate limit for a while, then the limit lifted.

chipmock (in its own process) lets ``--limit`` events/s through (default: half of
``--rate``) while ``--rate`` events/s are offered for ``--duration``; at the end of
that window the limit lifts (``--rate-limit-window``, so one process counts
everything, duplicates across the lift included), emission stops, and the backlog
drains, for at most ``CATCH_UP_TIMEOUT``. Per interval (``INTERVAL`` seconds, cut
at the lift): what Chip delivered and refused, the calls it received, the exact
backlog, the emitter's retries and its delivery state; then the catch-up time,
dead letters and duplicates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import trio

from .chip import ChipFigures, chip_args
from .measure import Latencies, measured, paced_emits, quantile
from .progress import Progress
from .report import Run

LEAD = 2.0  # seconds from chipmock's start to the first emit and the limit (the emitter opens meanwhile)
INTERVAL = 5.0
STATE_EVERY = 0.05  # how often the emitter's delivery state is read (its share of readings is reported)
DRAIN_POLL = 0.25
CATCH_UP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Reading:
    at: float  # seconds since the first emit
    chip: ChipFigures
    pending: int  # rows in the table, counted exactly
    released: int  # of which handed back after failed attempts (waiting on the row backoff, or claimed again)
    retries: int  # the emitter's publish retries so far


class Table:
    """Exact counts of both tables on a connection of its own (the sampler's count is an estimate when large)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True)

    async def count(self, table: str = "chip_durable_events") -> int:
        return (await self._counts(f"SELECT count(*) FROM {table}"))[0]

    async def pending(self) -> tuple[int, int]:
        """Rows pending, and of those the ones released after failed attempts."""
        rows, released = await self._counts(
            "SELECT count(*), count(*) FILTER (WHERE attempts > 0) FROM chip_durable_events")
        return rows, released

    async def _counts(self, sql: str) -> tuple[int, ...]:
        row = await trio.to_thread.run_sync(lambda: self.conn.execute(sql).fetchone())
        return tuple(map(int, row or (0, 0)))

    def close(self) -> None:
        self.conn.close()


def boundaries(duration: float) -> Iterator[float]:
    """Interval ends (seconds since the first emit): every INTERVAL while limited, the lift, then every INTERVAL."""
    at = INTERVAL
    while at < duration:
        yield at
        at += INTERVAL
    at = duration
    while True:
        yield at
        at += INTERVAL


async def ratelimit(args, url: str, run: Run, progress: Progress) -> None:
    """Offer ``--rate`` for ``--duration`` against a limit of ``--limit``, then lift it and time the catch-up."""
    limit = args.limit or args.rate / 2
    limited = [f"--rate-limit={limit:g}/s", f"--rate-limit-window={LEAD:g}s:{args.duration:g}s"]
    latencies = Latencies()
    errors: list[str] = []
    states: list[tuple[float, str]] = []  # (seconds since the first emit, delivery state)
    readings: list[Reading] = []
    table = Table(url)
    try:
        async with measured(url, chip_args(args.chip_latency, *limited)) as m:
            start = m.chip.started + LEAD  # chipmock's clock: the window opens here
            lift = start + args.duration
            await trio.sleep(max(0.0, start - time.monotonic()))

            async def read(at: float | None = None) -> None:
                figures = await trio.to_thread.run_sync(m.chip.figures)
                readings.append(Reading(round(time.monotonic() - start if at is None else at, 2), figures,
                                        *await table.pending(), m.emitter.statistics().publish_retries))

            async def read_each_interval() -> None:
                for end in boundaries(args.duration):
                    await trio.sleep(max(0.0, start + end - time.monotonic()))
                    await read(end)
                    last = readings[-1]
                    progress.show(f"ratelimit {args.rate:,.0f}/s, limit {limit:,.0f}/s", end, args.duration,
                                  f"{end:,.0f} s, pending {last.pending:,}, refused {last.chip.rate_limited:,}")

            async def watch_state() -> None:
                while True:
                    states.append((time.monotonic() - start, m.emitter.statistics().delivery))
                    await trio.sleep(STATE_EVERY)

            async with trio.open_nursery() as watchers:
                await read(0.0)
                watchers.start_soon(read_each_interval)
                watchers.start_soon(watch_state)
                emitted = await paced_emits(m.emitter, args.rate, max(0.0, lift - time.monotonic()),
                                            args.concurrency[0], os.urandom(args.size), latencies, errors)
                caught_up = await _wait_drained(table, lift)
                watchers.cancel_scope.cancel()
            await read()
        dead_letters = await table.count("chip_durable_events_dead_letter")
    finally:
        table.close()
    progress.done()
    figures = m.chip_figures or readings[-1].chip
    run.rows.extend(interval_rows(readings, states, args.duration))
    run.summary.update(summarize(args, limit, readings, states, caught_up))
    run.summary.update({
        "emitted": emitted, "emit_errors": len(errors), "emit_p99_ms": round(quantile(latencies, 0.99) * 1000, 2),
        "delivered_unique": figures.unique, "duplicates": figures.duplicates, "dead_lettered": dead_letters,
    })
    run.notes.append(f"chipmock --rate-limit {limit:g}/s from the first emit for {args.duration:g} s; then no limit "
                     "and no new events. Calls are PublishBatch calls Chip received, refused ones included; "
                     f"delivery is the share of the emitter's delivery state, read every {STATE_EVERY * 1000:g} ms "
                     "(it stays 'limited' while a Ping-answered trial publishes, until a publish works)")
    run.series["pending"] = m.sampler.points


async def _wait_drained(table: Table, lift: float) -> float | None:
    """Seconds from the lift until the table is empty (polled), or None past CATCH_UP_TIMEOUT."""
    await trio.sleep(max(0.0, lift - time.monotonic()))
    with trio.move_on_after(CATCH_UP_TIMEOUT):
        while await table.count():  # noqa: ASYNC110  (the table, outside Trio)
            await trio.sleep(DRAIN_POLL)
        return round(time.monotonic() - lift, 2)
    return None


def _state_share(states: list[tuple[float, str]], begin: float, end: float) -> str:
    """The delivery states read in [begin, end), as shares of the readings: ``up 80% down 20%``."""
    seen = [state for at, state in states if begin <= at < end]
    counts = {state: seen.count(state) for state in dict.fromkeys(seen)}
    return " ".join(f"{state} {count * 100 / len(seen):.0f}%" for state, count in counts.items())


def interval_rows(readings: list[Reading], states: list[tuple[float, str]], duration: float) -> list[dict]:
    rows = []
    for a, b in zip(readings, readings[1:], strict=False):
        seconds = b.at - a.at
        if seconds <= 0:
            continue
        rows.append({
            "seconds": f"{a.at:g}-{b.at:g}", "limit": "on" if a.at < duration else "lifted",
            "delivered_per_s": round((b.chip.unique - a.chip.unique) / seconds),
            "calls_per_s": round((b.chip.calls - a.chip.calls) / seconds, 1),
            "refused_per_s": round((b.chip.rate_limited - a.chip.rate_limited) / seconds, 1),
            "retries_per_s": round((b.retries - a.retries) / seconds, 1),
            "backlog_end": b.pending, "released_end": b.released, "delivery": _state_share(states, a.at, b.at),
        })
    return rows


def summarize(args, limit: float, readings: list[Reading], states: list[tuple[float, str]],
              caught_up: float | None) -> dict:
    """The limited phase as a whole (and without its first interval, which spends the bucket's initial burst)."""
    begin, end = readings[0], next((r for r in readings if r.at >= args.duration), readings[-1])
    first = next((r for r in readings if r.at > begin.at), end)
    span, steady = max(end.at - begin.at, 1e-6), max(end.at - first.at, 1e-6)
    return {
        "offered_per_s": args.rate, "limit_per_s": limit, "limited_s": args.duration,
        "delivered_per_s_limited": round((end.chip.unique - begin.chip.unique) / span, 1),
        "delivered_per_s_after_first_interval": round((end.chip.unique - first.chip.unique) / steady, 1),
        "calls_per_s_limited": round((end.chip.calls - begin.chip.calls) / span, 1),
        "refused_per_s_limited": round((end.chip.rate_limited - begin.chip.rate_limited) / span, 1),
        "retries_limited": end.retries - begin.retries, "delivery_limited": _state_share(states, 0.0, args.duration),
        "backlog_at_lift": end.pending, "released_at_lift": end.released, "catch_up_s": caught_up,
        "drain_per_s": round(end.pending / caught_up) if caught_up else None,
        "events_per_accepted_call": round(readings[-1].chip.unique
                                          / max(readings[-1].chip.calls - readings[-1].chip.rate_limited, 1), 1),
    }
