"""Retry delays: exponential backoff with full jitter, as an explicit object. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay after attempt ``n`` (0 for the first) is uniform in [0, min(cap, initial * multiplier**n)].

    Full jitter spreads retries of many batches apart, so a Chip coming back
    from an outage is not hit by all of them at once.
    """

    initial: float
    multiplier: float
    cap: float

    def ceiling(self, attempt: int) -> float:
        return min(self.cap, self.initial * self.multiplier**attempt)

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, self.ceiling(attempt))
