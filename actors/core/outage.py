"""Outage mode: when to stop publishing and claiming, when to probe, when to resume. Pure: pass the time in.

A few consecutive failed calls mean Chip is down (or one call said it refuses
us): the dispatcher then holds what it has in memory, stops claiming and
releasing rows, and probes Chip with a Ping on backoff up to ``retry_max``.
The first answer opens delivery again at full speed. During an outage an
emitter costs Postgres nothing but its inserts, and logs a line when delivery
stops, once a minute while it stays stopped, and when it resumes.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from .backoff import Backoff
from .failures import CallKind


class Delivery(enum.Enum):
    UP = "up"
    DOWN = "down"  # Chip does not answer (or answers with transient errors only)
    REFUSED = "refused"  # Chip answers but refuses us: credentials, rights, its own set-up. Alert.


@dataclass(frozen=True, slots=True)
class Change:
    """A change worth one log line: ``state`` entered (or still held, for reminders), and why."""

    state: Delivery
    reason: str
    failed_calls: int  # since delivery last worked
    down_for: float  # seconds since delivery stopped (0 when it just stopped)
    # Not worth a line: a trial after a Ping answered, or the trial failing. Chip may answer
    # Ping while refusing publishes; only a publish that works says delivery is back.
    silent: bool = False


class ChipHealth:
    """Tracks consecutive failed calls and the outage they make. Owned by the dispatcher."""

    def __init__(self, *, failures_to_pause: int, probe_backoff: Backoff, reminder_interval: float = 60.0) -> None:
        self.failures_to_pause = failures_to_pause
        self.probe_backoff = probe_backoff
        self.reminder_interval = reminder_interval
        self.state = Delivery.UP
        self.consecutive_failures = 0
        self.failed_since_up = 0
        self.probes = 0
        self.reason = ""
        self.trial = False  # Ping answered: publishing again, not yet confirmed by a publish that worked
        self._down_since = 0.0
        self._next_reminder = 0.0

    @property
    def paused(self) -> bool:
        return self.state is not Delivery.UP and not self.trial

    def call_succeeded(self, now: float) -> Change | None:
        """Chip answered a publish (whatever each event's result): delivery works."""
        self.consecutive_failures = 0
        self.probes = 0
        self.trial = False
        return self._up(now)

    def call_failed(self, kind: CallKind, reason: str, now: float) -> Change | None:
        """A whole call failed; returns the change if this one stopped delivery."""
        if kind is CallKind.TOO_LARGE:
            return None  # about the request, not about Chip: the split answers it
        self.consecutive_failures += 1
        self.failed_since_up += 1
        state = Delivery.REFUSED if kind is CallKind.REFUSED else Delivery.DOWN
        if self.trial:  # Ping answered but publishing still fails: paused again, quietly
            self.trial = False
            self.state, self.reason = state, reason
            return Change(state, reason, self.failed_since_up, now - self._down_since, silent=True)
        if self.state is Delivery.UP and (state is Delivery.REFUSED
                                          or self.consecutive_failures >= self.failures_to_pause):
            return self._down(state, reason, now)
        if self.paused and state is not self.state:
            self.state, self.reason = state, reason
            return Change(state, reason, self.failed_since_up, now - self._down_since)
        return None

    def next_probe_delay(self, rng: random.Random) -> float:
        """Seconds to wait before the next probe: backoff on the probes made since delivery last worked."""
        delay = self.probe_backoff.ceiling(self.probes) * rng.uniform(0.5, 1.0)  # half jitter: never 0
        self.probes += 1
        return delay

    def probe_answered(self, now: float) -> Change:
        """Chip answered a Ping: publish again on trial. Probes keep backing off until a publish works."""
        self.consecutive_failures = 0
        self.trial = True
        return Change(Delivery.UP, self.reason, self.failed_since_up, now - self._down_since, silent=True)

    def probe_failed(self, kind: CallKind, reason: str, now: float) -> Change | None:
        """The probe failed; returns a reminder once per ``reminder_interval``, or a change of kind."""
        self.failed_since_up += 1
        state = Delivery.REFUSED if kind is CallKind.REFUSED else Delivery.DOWN
        if state is not self.state:
            self.state, self.reason = state, reason
            return Change(state, reason, self.failed_since_up, now - self._down_since)
        if now >= self._next_reminder:
            self._next_reminder = now + self.reminder_interval
            return Change(self.state, reason, self.failed_since_up, now - self._down_since)
        return None

    def _down(self, state: Delivery, reason: str, now: float) -> Change:
        self.state, self.reason = state, reason
        self._down_since = now
        self._next_reminder = now + self.reminder_interval
        return Change(state, reason, self.failed_since_up, 0.0)

    def _up(self, now: float) -> Change | None:
        if self.state is Delivery.UP:
            self.failed_since_up = 0
            return None
        change = Change(Delivery.UP, self.reason, self.failed_since_up, now - self._down_since)
        self.state, self.reason, self.failed_since_up = Delivery.UP, "", 0
        return change
