"""Retry delays: exponential backoff with full jitter, as an explicit object. Pure."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before retry n is uniform in [0, min(cap, initial * multiplier**n)].

    Full jitter spreads retries of many batches apart, so a Chip coming back
    from an outage is not hit by all of them at once.
    """

    initial: float
    multiplier: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)
    attempts: int = 0

    def ceiling(self) -> float:
        return min(self.cap, self.initial * self.multiplier**self.attempts)

    def next_delay(self) -> float:
        delay = self.rng.uniform(0, self.ceiling())
        self.attempts += 1
        return delay
