"""How the scenarios drive an emitter and measure it: paced emits, the table sampler, publish latency windows."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from actors import EmitterConfig, EmitterError, EmitterStatistics, open_emitter
from actors.adapters.store import Store
from actors.core.instruments import Histogram

from .chip import ChipFigures, ChipProcess, wait_for_unique

MAX_SECONDS_PER_PHASE = 600  # every loop here stops by itself


def publish_window(before: EmitterStatistics, after: EmitterStatistics) -> tuple[float, float]:
    """Mean and p99 (ms) of the publish calls made between two readings of ``Emitter.statistics()``."""
    window = after.publish_seconds.since(before.publish_seconds)
    return round(window.mean * 1000, 2), round(window.quantile(0.99) * 1000, 2)


class Latencies:
    """Emit latencies in 0.1 ms buckets (coarser above 100 ms): constant memory, for runs long enough that a
    list of every sample would show up in the memory being measured."""

    BOUNDS = tuple(i / 10_000 for i in range(1, 1001)) + tuple(0.1 + i / 100 for i in range(1, 991))

    def __init__(self) -> None:
        self.histogram = Histogram(self.BOUNDS)
        self.count = 0

    def append(self, seconds: float) -> None:
        self.histogram.observe(seconds)
        self.count += 1

    def __len__(self) -> int:
        return self.count


def quantile(values: list[float] | Latencies, q: float) -> float:
    """The ``q`` quantile of raw samples (nearest rank), or of a :class:`Latencies`; 0 for none."""
    if isinstance(values, Latencies):
        return values.histogram.snapshot().quantile(q)
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds() -> float:
    """User + system CPU of this process so far (every thread: Trio's, gRPC's, the sampler's)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def current_rss_mb() -> float:
    """Resident memory now (Linux: /proc/self/statm), unlike the lifetime peak that getrusage reports."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_trend(samples: list[tuple[float, float]]) -> dict[str, float]:
    """Resident MB over the first and the last fifth of a run, and the peak: flat memory shows as equal ends."""
    if len(samples) < 10:
        return {}
    fifth = len(samples) // 5
    first, last = [mb for _, mb in samples[:fifth]], [mb for _, mb in samples[-fifth:]]
    return {"rss_first_fifth_mb": round(sum(first) / len(first), 1),
            "rss_last_fifth_mb": round(sum(last) / len(last), 1),
            "rss_max_mb": round(max(mb for _, mb in samples), 1)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def pending_rows(store: Store) -> int:
    return (await store.pending_stats()).rows


async def paced_emits(emitter, rate: float, seconds: float, concurrency: int, body: bytes,
                      latencies: list[float], errors: list[str], *, limit: int | None = None, batch: int = 1) -> int:
    """Offer ``rate`` events/s (0: as fast as possible) for ``seconds``; return how many were emitted.

    Open loop: each worker keeps its own schedule and never sleeps when behind,
    so a saturated system shows up as achieved < offered. ``batch`` > 1 emits
    that many per ``emit_many`` call (latencies are then per call).
    """
    count = claimed = 0
    stop_at = trio.current_time() + min(seconds, MAX_SECONDS_PER_PHASE)
    gap = concurrency * batch / rate if rate else 0.0
    bodies = [body] * batch

    async def worker(offset: float) -> None:
        nonlocal count, claimed
        next_at = trio.current_time() + offset
        while trio.current_time() < stop_at and (limit is None or claimed < limit):
            claimed += batch  # before the await, so concurrent workers stop at exactly ``limit``
            if gap:
                await trio.sleep_until(next_at)
                next_at += gap
            started = time.perf_counter()
            try:
                if batch == 1:
                    await emitter.emit(body, source="load", type="event")
                else:
                    await emitter.emit_many(bodies, source="load", type="event")
            except EmitterError as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - started)
            count += batch

    async with trio.open_nursery() as nursery:
        for index in range(concurrency):
            nursery.start_soon(worker, gap * index / concurrency)
    return count


class Sampler:
    """Pending rows and cumulative counts every ``interval`` seconds, for plots and Q max."""

    def __init__(self, store: Store, emitter, interval: float = 0.25) -> None:
        self.store, self.emitter, self.interval = store, emitter, interval
        self.points: list[tuple[float, int, int, int]] = []  # (t, pending, emitted, delivered)
        self.rss: list[tuple[float, float]] = []  # (t, resident MB of this process)
        self.started = time.monotonic()
        self.one_at_a_time = trio.Lock()  # the loop and measured()'s last sample share one connection

    async def run(self) -> None:
        while True:  # until measured() cancels it
            await self.sample()
            await trio.sleep(self.interval)

    async def sample(self) -> None:
        async with self.one_at_a_time:
            pending = await pending_rows(self.store)
        figures = self.emitter.statistics()
        elapsed = round(time.monotonic() - self.started, 3)
        self.points.append((elapsed, pending, figures.emitted, figures.delivered))
        self.rss.append((elapsed, current_rss_mb()))

    def q_max(self, since: float = 0.0) -> int:
        return max((p for t, p, _, _ in self.points if t >= since), default=0)


@dataclass
class Measured:
    chip: ChipProcess
    emitter: object
    store: Store
    sampler: Sampler
    nursery: trio.Nursery
    chip_figures: ChipFigures | None = None  # what Chip had received once drained, read before it stops


@asynccontextmanager
async def measured(url: str, chip_args: list[str], **overrides) -> AsyncIterator[Measured]:
    """A chipmock process, an emitter publishing to it, and a sampler of the table beside them."""
    chip = ChipProcess(*chip_args)
    try:
        async with open_emitter(emitter_config(url, chip.endpoint, **overrides)) as emitter:
            store = Store(url)
            sampler = Sampler(store, emitter)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sampler.run)
                    m = Measured(chip, emitter, store, sampler, nursery)
                    yield m
                    with trio.move_on_after(MAX_SECONDS_PER_PHASE):  # drain before the next phase
                        await emitter.flush(timeout=MAX_SECONDS_PER_PHASE)
                    await sampler.sample()  # the drained moment, which the interval could step over
                    m.chip_figures = await trio.to_thread.run_sync(wait_for_unique, chip,
                                                                   emitter.statistics().emitted, 30.0)
                    nursery.cancel_scope.cancel()
            finally:
                store.close()
    finally:
        chip.stop()


def emitter_config(url: str, endpoint: str, **overrides) -> EmitterConfig:
    return EmitterConfig.from_env(database_url=url, chip_endpoint=endpoint, instance_id=f"load-{os.getpid()}",
                                  log_interval=3600.0, **overrides)
