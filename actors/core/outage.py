"""Outage mode: when to stop publishing and claiming, when to probe, when to resume. Pure: pass the time in.

A few consecutive failed calls mean Chip is down (or one call said it refuses
us): the dispatcher then holds what it has in memory, stops claiming and
releasing rows, and probes Chip with a Ping on backoff up to ``retry_max`` (a
second while Chip does not answer), never before the server's retry hint (a rate
limiter answers Ping whatever the limit).
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
    LIMITED = "limited"  # Chip answers but rate-limits us: delivery goes at the pace Chip allows
    REFUSED = "refused"  # Chip answers but refuses us: credentials, rights, its own set-up. Alert.


_STATES = {CallKind.REFUSED: Delivery.REFUSED, CallKind.LIMITED: Delivery.LIMITED}  # else DOWN


@dataclass(frozen=True, slots=True)
class Change:
    """The delivery state changed (or a reminder is due); ``line`` says what to log, if anything."""

    state: Delivery
    reason: str
    failed_calls: int  # since delivery last worked
    down_for: float  # seconds since delivery stopped
    # "paused", "still paused", "resumed", or None: not worth a line. Brief blips stay quiet:
    # a pause for Chip not answering is announced when the first probe fails too, and only a
    # publish that works after an announced pause says "resumed" (Chip may answer Ping while
    # refusing publishes). A refusal is announced at once: a human must act.
    line: str | None = None


class ChipHealth:
    """Tracks consecutive failed calls and the outage they make. Owned by the dispatcher."""

    def __init__(self, *, failures_to_pause: int, probe_backoff: Backoff, reminder_interval: float = 60.0,
                 down_probe_cap: float = 1.0) -> None:
        self.failures_to_pause = failures_to_pause
        self.probe_backoff = probe_backoff
        # While Chip does not answer, probes at least this often: delivery (and the drain of what
        # waited) resumes about a second after Chip is back, and a Ping a second costs nothing. Not
        # while it answers and refuses or limits us: each trial then is a batch, or a signing.
        self.down_probe_cap = down_probe_cap
        self.reminder_interval = reminder_interval
        self.state = Delivery.UP
        self.consecutive_failures = 0
        self.failed_since_up = 0
        self.probes = 0
        self.reason = ""
        self.trial = False  # Ping answered: publishing again, not yet confirmed by a publish that worked
        self.retry_after = 0.0  # the server's hint on the last failed call: the next probe waits at least this
        self.announced = False  # the pause was logged, so its end will be too
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
        self.retry_after = 0.0
        if self.state is Delivery.UP:
            self.failed_since_up = 0
            return None
        change = Change(Delivery.UP, self.reason, self.failed_since_up, now - self._down_since,
                        "resumed" if self.announced else None)
        self.state, self.reason, self.failed_since_up, self.announced = Delivery.UP, "", 0, False
        return change

    def call_failed(self, kind: CallKind, reason: str, now: float, retry_after: float | None = None
                    ) -> Change | None:
        """A whole call failed; returns the change if this one stopped delivery.

        ``retry_after``: the server's own hint (a rate limit says when the call would pass).
        A Ping answers whatever the limit, so the probe that reopens delivery waits for it.
        """
        if kind is CallKind.TOO_LARGE:
            return None  # about the request, not about Chip: the split answers it
        self.retry_after = retry_after or 0.0
        self.consecutive_failures += 1
        self.failed_since_up += 1
        state = _STATES.get(kind, Delivery.DOWN)
        if self.trial:  # Ping answered but publishing still fails: paused again
            self.trial = False
            return self._enter(state, reason, now)
        if self.state is Delivery.UP and (state is Delivery.REFUSED
                                          or self.consecutive_failures >= self.failures_to_pause):
            self._down_since = now
            self._next_reminder = now + self.reminder_interval
            return self._enter(state, reason, now)
        if self.paused and state is not self.state:
            return self._enter(state, reason, now)
        return None

    def next_probe_delay(self, rng: random.Random) -> float:
        """Seconds to wait before the next probe: backoff on the probes made since delivery last worked,
        or the server's retry hint if that is longer."""
        ceiling = self.probe_backoff.ceiling(self.probes)
        if self.state is Delivery.DOWN:
            ceiling = min(ceiling, self.down_probe_cap)
        delay = ceiling * rng.uniform(0.5, 1.0)  # half jitter: never 0
        self.probes += 1
        delay, self.retry_after = max(delay, self.retry_after), 0.0
        return delay

    def probe_answered(self, now: float) -> Change:
        """Chip answered a Ping: publish again on trial. Probes keep backing off until a publish works."""
        self.consecutive_failures = 0
        self.trial = True
        return Change(Delivery.UP, self.reason, self.failed_since_up, now - self._down_since)

    def probe_failed(self, kind: CallKind, reason: str, now: float) -> Change | None:
        """The probe failed: announce the pause if not yet done, else remind once per ``reminder_interval``."""
        self.failed_since_up += 1
        state = _STATES.get(kind, Delivery.DOWN)
        if state is not self.state or not self.announced:
            return self._enter(state, reason, now, announce=True)
        if now >= self._next_reminder:
            self._next_reminder = now + self.reminder_interval
            return Change(self.state, reason, self.failed_since_up, now - self._down_since, "still paused")
        return None

    def _enter(self, state: Delivery, reason: str, now: float, *, announce: bool = False) -> Change:
        """Paused in ``state``; logged if it is a refusal or ``announce``, once per state."""
        line = None
        if (announce or state is Delivery.REFUSED) and (not self.announced or state is not self.state):
            line = "paused"
            self.announced = True
        self.state, self.reason = state, reason
        return Change(state, reason, self.failed_since_up, now - self._down_since, line)
