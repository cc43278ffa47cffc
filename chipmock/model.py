"""The chipmock's behaviour as pure decisions: latency, failures, outages, counters.

No sockets here, so every rule is unit-tested directly; ``server.py`` asks
these functions what to do and does it.
"""

from __future__ import annotations

import builtins
import random
import re
import threading
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field

UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAUTHENTICATED = "UNAUTHENTICATED"
# Whole-call codes a misconfigured server answers with; the mock can be told to answer one.
REFUSING = frozenset({INVALID_ARGUMENT, "FAILED_PRECONDITION", "PERMISSION_DENIED", UNAUTHENTICATED,
                      "UNIMPLEMENTED", "NOT_FOUND"})

_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)"
_DURATION = re.compile(f"(?:{_DURATION_PART})+")
_UNITS: dict[str, float] = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from a duration with units, Go's spelling included: ``50ms``, ``2s``, ``1m30s``. Raises ValueError.

    chipmock's own copy of ``actors.config.parse_duration`` (a test keeps the
    two in step), so the mock never imports the library it stands in for.
    """
    stripped = text.strip()
    if stripped == "0":
        return 0.0
    if re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", stripped):
        raise ValueError(f"{text!r} has no unit: write {stripped}s or {stripped}ms")
    if not _DURATION.fullmatch(stripped):
        raise ValueError(f"{text!r} is not a duration (examples: 50ms, 2s, 1m30s, 1h)")
    return sum(float(number) * _UNITS[unit] for number, unit in re.findall(_DURATION_PART, stripped))


@dataclass(frozen=True)
class Outage:
    """Every call between ``start`` and ``start + duration`` seconds after server start fails."""

    start: float
    duration: float

    @classmethod
    def parse(cls, text: str) -> Outage:
        """``"10s:15s"``: from 10 s after start, for 15 s."""
        start, sep, duration = text.partition(":")
        if not sep:
            raise ValueError(f"{text!r} is not START:DURATION (example: 10s:15s)")
        return cls(parse_duration(start), parse_duration(duration))

    def covers(self, elapsed: float) -> bool:
        return self.start <= elapsed < self.start + self.duration


@dataclass(frozen=True)
class ChipModel:
    """How the mock behaves. Rates are fractions in [0, 1]."""

    latency: float = 0.0
    jitter: float = 0.0
    failure_rate: float = 0.0  # whole call fails with UNAVAILABLE
    resource_exhausted_rate: float = 0.0  # whole call fails with RESOURCE_EXHAUSTED
    event_failure_rate: float = 0.0  # per event: permanent error in its result
    outages: tuple[Outage, ...] = ()
    max_batch: int | None = None  # larger batches fail with INVALID_ARGUMENT
    # Answer only the first N results of a batch (a short response), for tests.
    short_response: int | None = None
    # Windows (like outages) in which every call, Ping included, fails UNAUTHENTICATED.
    unauthenticated: tuple[Outage, ...] = ()
    # Every publish fails with this whole-call status (a server-side misconfiguration), e.g. FAILED_PRECONDITION.
    refuse: str | None = None
    # Requests larger than this fail RESOURCE_EXHAUSTED "message larger than max", as grpc's own limit does.
    max_request_bytes: int | None = None
    # The reason given with injected per-event errors (may hold any text: NUL bytes, control characters).
    reject_reason: str = "chipmock: injected permanent error"
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("failure_rate", "resource_exhausted_rate", "event_failure_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.failure_rate + self.resource_exhausted_rate > 1.0:
            raise ValueError("failure_rate + resource_exhausted_rate must not exceed 1")
        if self.latency < 0 or self.jitter < 0:
            raise ValueError("latency and jitter must not be negative")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.refuse is not None and self.refuse not in REFUSING:
            raise ValueError(f"refuse must be one of {', '.join(sorted(REFUSING))}, got {self.refuse!r}")


@dataclass(frozen=True)
class CallDecision:
    delay: float
    status: str | None  # None: the call succeeds
    detail: str = ""


def decide_ping(model: ChipModel, *, elapsed: float) -> CallDecision:
    """What a Ping does: fails in outage and UNAUTHENTICATED windows, answers otherwise."""
    if any(outage.covers(elapsed) for outage in model.outages):
        return CallDecision(0.0, UNAVAILABLE, "chipmock: outage window")
    if any(window.covers(elapsed) for window in model.unauthenticated):
        return CallDecision(0.0, UNAUTHENTICATED, "chipmock: credentials refused (window)")
    return CallDecision(0.0, None)


def decide_call(model: ChipModel, rng: random.Random, *, elapsed: float, batch_size: int = 1,
                request_bytes: int = 0) -> CallDecision:
    """What one RPC does: how long it takes and whether it fails as a whole."""
    delay = model.latency + (rng.uniform(-model.jitter, model.jitter) if model.jitter else 0.0)
    delay = max(0.0, delay)
    ping = decide_ping(model, elapsed=elapsed)
    if ping.status is not None:
        return ping
    if model.refuse is not None:
        return CallDecision(delay, model.refuse, f"chipmock: refusing every call ({model.refuse})")
    if model.max_request_bytes is not None and request_bytes > model.max_request_bytes:
        return CallDecision(0.0, RESOURCE_EXHAUSTED,
                            f"Received message larger than max ({request_bytes} vs. {model.max_request_bytes})")
    if model.max_batch is not None and batch_size > model.max_batch:
        return CallDecision(delay, INVALID_ARGUMENT, f"batch of {batch_size} exceeds max {model.max_batch}")
    roll = rng.random()
    if roll < model.failure_rate:
        return CallDecision(delay, UNAVAILABLE, "chipmock: injected failure")
    if roll < model.failure_rate + model.resource_exhausted_rate:
        return CallDecision(delay, RESOURCE_EXHAUSTED, "chipmock: injected overload")
    return CallDecision(delay, None)


def decide_event_failures(model: ChipModel, rng: random.Random, count: int) -> list[bool]:
    """For each event of a batch: True if it is answered with a permanent error."""
    if not model.event_failure_rate:
        return [False] * count
    return [rng.random() < model.event_failure_rate for _ in range(count)]


@dataclass(frozen=True)
class Snapshot:
    calls: int
    failed_calls: int
    received: int
    unique: int
    duplicates: int
    rejected: int
    bytes: int
    ages: tuple[int, ...]  # events per AGE_BUCKETS bucket (the last: older than the last bound)


# Bounds (seconds) of the event-age histogram: fine where delivery latency is judged (1-100 ms).
AGE_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
               0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass
class Counters:
    """What the mock received. Thread-safe: gRPC handlers run on a thread pool."""

    keep_payloads: bool = False
    calls: int = 0
    failed_calls: int = 0
    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    bytes: int = 0
    ids: set[str] = field(default_factory=set)
    # builtins.bytes: inside this class body, ``bytes`` names the counter above.
    payloads: dict[str, builtins.bytes] = field(default_factory=dict)
    ages: list[int] = field(default_factory=lambda: [0] * (len(AGE_BUCKETS) + 1))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_call(self, *, failed: bool) -> None:
        with self._lock:
            self.calls += 1
            self.failed_calls += failed

    def record_events(self, events: Iterable[tuple[str, builtins.bytes | int]], *, rejected: int = 0,
                      ages: Iterable[float] = ()) -> None:
        """Count produced events: (id, serialized bytes, or just their size when not kept).

        ``rejected`` events were refused and are only counted. ``ages`` are how old
        events were on arrival (seconds since their ``recordedtime``).
        """
        buckets = [bisect_left(AGE_BUCKETS, age) for age in ages]
        with self._lock:
            for bucket in buckets:
                self.ages[bucket] += 1
            self.rejected += rejected
            for event_id, payload in events:
                self.received += 1
                self.bytes += payload if isinstance(payload, int) else len(payload)
                if event_id in self.ids:
                    self.duplicates += 1
                else:
                    self.ids.add(event_id)
                if self.keep_payloads and not isinstance(payload, int):  # a size alone has no payload
                    self.payloads[event_id] = payload

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self.calls, self.failed_calls, self.received, len(self.ids),
                            self.duplicates, self.rejected, self.bytes, tuple(self.ages))

    def seen(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` were produced."""
        with self._lock:
            return {i for i in event_ids if i in self.ids}
