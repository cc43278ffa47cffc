"""Counters, histograms and tallies an actor updates on its own thread, read by anyone as snapshots. No I/O.

Plain integers and lists, no locks: each instrument has one writer (the actor
that owns it), so an update is an addition, not a lock round trip (Prometheus'
own instruments take a lock per update, which showed in profiles of the hot
path). Readers (``Emitter.statistics()``, the Prometheus collector, scrapes
from another thread) take :meth:`Histogram.snapshot` or read the integers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.06, 0.075, 0.1, 0.15, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """Bucket counts at one moment: ``counts[i]`` observations were <= ``bounds[i]`` (the last, +Inf)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]  # per bucket, not cumulative; one more than bounds (+Inf)
    total: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def since(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """The observations made between ``earlier`` and this snapshot of the same histogram."""
        counts = tuple(now - then for now, then in zip(self.counts, earlier.counts, strict=True))
        return HistogramSnapshot(self.bounds, counts, self.total - earlier.total)

    def cumulative(self) -> list[int]:
        running, out = 0, []
        for n in self.counts:
            running += n
            out.append(running)
        return out

    def quantile(self, q: float) -> float:
        """Linear within the bucket the rank falls in, as Prometheus' ``histogram_quantile``."""
        count = self.count
        if not count:
            return 0.0
        rank = q * count
        previous_bound, previous = 0.0, 0
        for bound, seen in zip((*self.bounds, float("inf")), self.cumulative(), strict=True):
            if seen >= rank:
                if bound == float("inf"):
                    return previous_bound
                share = (rank - previous) / max(seen - previous, 1)
                return previous_bound + (bound - previous_bound) * share
            previous_bound, previous = bound, seen
        return previous_bound


class Histogram:
    """Fixed buckets; ``observe`` is a bisect and two additions."""

    __slots__ = ("bounds", "_counts", "_total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)
        self._total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self._counts[bisect_left(self.bounds, value)] += times
        self._total += value * times

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self._counts), self._total)


class LabelledCounts:
    """Counts by label value (a reason, an actor name); known labels start at 0 so they export at once."""

    __slots__ = ("_counts",)

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._counts = dict.fromkeys(known, 0)

    def add(self, label: str, count: int = 1) -> None:
        self._counts[label] = self._counts.get(label, 0) + count

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


class Tally:
    """A running total its owner adds to; readers may wait for it to move."""

    __slots__ = ("value", "_moved")

    def __init__(self) -> None:
        self.value = 0
        self._moved = trio.Event()

    def add(self, count: int) -> None:
        self.value += count
        self._moved.set()
        self._moved = trio.Event()

    async def moved(self) -> None:
        await self._moved.wait()
