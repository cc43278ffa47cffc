"""The chipmock's behaviour as pure decisions: latency, failures, windows, rate limit, schemas, counters.

No sockets and no clock here, so every rule is unit-tested directly; ``server.py``
asks these functions what to do (passing the time since it started) and does it.
"""

from __future__ import annotations

import builtins
import random
import re
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import NamedTuple, TypeVar

UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNAUTHENTICATED = "UNAUTHENTICATED"
# Whole-call codes a misconfigured server answers with; the mock can be told to answer one.
REFUSING = frozenset({INVALID_ARGUMENT, "FAILED_PRECONDITION", "PERMISSION_DENIED", UNAUTHENTICATED,
                      "UNIMPLEMENTED", "NOT_FOUND"})

# PublishErrorCode by name (tests/unit/test_proto_stubs.py keeps this in step with the proto).
ERROR_CODES: Mapping[str, int] = MappingProxyType({
    "PUBLISH_ERROR_CODE_UNKNOWN": 0, "VALIDATION_FAILED": 1, "SCHEMA_MISSING": 2, "ENCODE_ERROR": 3,
    "DOMAIN_MISCONFIGURATION": 4,
})
RATE_LIMITED = "request rate exceeds the maximum allowed"  # a real Chip's words; never "larger than max"

_DURATION_PART = r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)"
_DURATION = re.compile(f"(?:{_DURATION_PART})+")
_UNITS: dict[str, float] = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from a duration with units, Go's spelling included: ``50ms``, ``2s``, ``1m30s``. Raises ValueError.

    chipmock's own copy of ``actors.config_env.parse_duration`` (a test keeps the
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

    def __str__(self) -> str:
        return f"{format_duration(self.start)}:{format_duration(self.duration)}"


def format_duration(seconds: float) -> str:
    """A duration as ``parse_duration`` reads it back: ``0``, ``50ms``, ``2.5s``."""
    if not seconds:
        return "0"
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def code_number(code: str) -> int:
    """A PublishErrorCode's number from its name, or from digits (a code this proto does not know). Raises ValueError."""
    if code in ERROR_CODES:
        return ERROR_CODES[code]
    if code.isdigit():
        return int(code)
    raise ValueError(f"{code!r} is not a per-event error code: one of {', '.join(ERROR_CODES)}, "
                     "or a number for a code unknown to this proto")


def parse_rate(text: str) -> float:
    """Events per second from ``N/s`` (``100/s``, ``2.5/s``). Raises ValueError."""
    number, _, unit = text.strip().partition("/")
    try:
        rate = float(number)
    except ValueError:
        rate = 0.0
    if unit != "s" or not rate > 0:
        raise ValueError(f"{text!r} is not a rate: write N/s with N > 0 (example: 100/s)")
    return rate


_T = TypeVar("_T")


def _at_window(text: str, what: str, example: str, parse: Callable[[str], _T]) -> tuple[_T, Outage]:
    """``X@START:DURATION`` read as (``parse(X)``, the window). Raises ValueError naming the form."""
    head, sep, window = text.partition("@")
    try:
        if not sep:
            raise ValueError("no @")
        return parse(head), Outage.parse(window)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not {what}@START:DURATION (example: {example}): {exc}") from None


@dataclass(frozen=True)
class RejectWindow:
    """Between ``window``'s start and end (after server start), every event is answered ``code``.

    A registry outage is ``SCHEMA_MISSING`` for everyone, a wrong domain configuration
    ``DOMAIN_MISCONFIGURATION``: the event's bytes are fine, Chip is not.
    """

    code: str
    window: Outage

    def __post_init__(self) -> None:
        code_number(self.code)

    @classmethod
    def parse(cls, text: str) -> RejectWindow:
        """``"SCHEMA_MISSING@5s:10s"``: from 5 s after start, for 10 s."""
        code, window = _at_window(text, "CODE", "SCHEMA_MISSING@5s:10s", str)
        return cls(code.strip(), window)

    def __str__(self) -> str:
        return f"{self.code}@{self.window}"


@dataclass(frozen=True)
class LatencySpike:
    """Between ``window``'s start and end (after server start), every publish takes ``delay`` instead of the latency."""

    delay: float
    window: Outage

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"a latency spike's delay must not be negative, got {self.delay}")

    @classmethod
    def parse(cls, text: str) -> LatencySpike:
        """``"2s@10s:5s"``: publishes take 2 s from 10 s after start, for 5 s."""
        delay, window = _at_window(text, "DELAY", "2s@10s:5s", parse_duration)
        return cls(delay, window)

    def __str__(self) -> str:
        return f"{format_duration(self.delay)}@{self.window}"


@dataclass(frozen=True)
class RejectContaining:
    """Every event whose id or data contains ``text`` is answered ``code``, at any time: a test's chosen events.

    Data is the event's ``binary_data``, its ``text_data`` (UTF-8) or its ``proto_data`` value.
    """

    code: str
    text: str

    def __post_init__(self) -> None:
        code_number(self.code)
        if not self.text:
            raise ValueError("an empty text would match every event")

    @classmethod
    def parse(cls, text: str) -> RejectContaining:
        """``"VALIDATION_FAILED=poison"``; the text is everything after the first ``=``."""
        code, sep, needle = text.partition("=")
        if not sep:
            raise ValueError(f"{text!r} is not CODE=TEXT (example: VALIDATION_FAILED=poison)")
        return cls(code.strip(), needle)

    def matches(self, event: EventView) -> bool:
        return self.text in event.id or self.text.encode() in event.data

    def __str__(self) -> str:
        return f"{self.code}={self.text}"


@dataclass(frozen=True)
class ChipModel:
    """How the mock behaves. Rates are fractions in [0, 1]."""

    latency: float = 0.0
    jitter: float = 0.0
    # Windows in which every publish takes the spike's delay instead of latency +/- jitter.
    latency_spikes: tuple[LatencySpike, ...] = ()
    failure_rate: float = 0.0  # whole call fails with UNAVAILABLE
    resource_exhausted_rate: float = 0.0  # whole call fails with RESOURCE_EXHAUSTED
    event_failure_rate: float = 0.0  # per event: answered event_failure_code with reject_reason
    outages: tuple[Outage, ...] = ()
    max_batch: int | None = None  # larger batches fail with INVALID_ARGUMENT
    # Answer only the first N results of a batch (a short response), for tests.
    short_response: int | None = None
    # Windows (like outages) in which every call, Ping included, fails UNAUTHENTICATED.
    unauthenticated: tuple[Outage, ...] = ()
    # Windows in which every publish fails INTERNAL (Chip's schema registry unreachable); Ping answers.
    internal: tuple[Outage, ...] = ()
    # Every publish fails with this whole-call status (a server-side misconfiguration), e.g. FAILED_PRECONDITION.
    refuse: str | None = None
    # Requests larger than this fail RESOURCE_EXHAUSTED "message larger than max", as grpc's own limit does.
    max_request_bytes: int | None = None
    # The reason given with injected per-event errors (may hold any text: NUL bytes, control characters).
    reject_reason: str = "chipmock: injected permanent error"
    # The code of event_failure_rate's errors: a PublishErrorCode name (or digits for an unknown code).
    event_failure_code: str = "SCHEMA_MISSING"
    # Windows in which every event is answered with a code (a registry outage, a wrong domain config).
    reject_windows: tuple[RejectWindow, ...] = ()
    # Chosen events (id or data containing a text) answered with a code, at any time.
    reject_containing: tuple[RejectContaining, ...] = ()
    # Events per second past which a whole call fails RESOURCE_EXHAUSTED (see RateLimiter). None: no limit.
    rate_limit: float | None = None
    # Where ``rate_limit`` applies (seconds after start), e.g. a limit that lifts; None: always.
    rate_limit_window: Outage | None = None
    # Every event needs a registered schema: its dataschema attribute must equal a registered subject
    # or path (or one of ``schemas``), else SCHEMA_MISSING. An event without dataschema is SCHEMA_MISSING too.
    require_schemas: bool = False
    # Subjects (or paths) known from the start, as if registered before the first call.
    schemas: tuple[str, ...] = ()
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
        try:
            code_number(self.event_failure_code)
        except ValueError as exc:
            raise ValueError(f"event_failure_code: {exc}") from None
        if self.rate_limit is not None and not self.rate_limit > 0:
            raise ValueError(f"rate_limit must be above 0 events/s, got {self.rate_limit}")
        if self.rate_limit_window is not None and self.rate_limit is None:
            raise ValueError("rate_limit_window needs rate_limit")

    def rate_limit_at(self, elapsed: float) -> float | None:
        """The rate limit in force ``elapsed`` seconds after start; None: no limit then."""
        window = self.rate_limit_window
        return self.rate_limit if window is None or window.covers(elapsed) else None

    @property
    def reads_contents(self) -> bool:
        """Whether a rule looks at events' data or dataschema (else EventView needs only id and missing)."""
        return self.require_schemas or bool(self.reject_containing)

    def describe(self) -> str:
        """The knobs that differ from the defaults as ``name=value``, durations with units (the banner's words)."""
        shown = []
        for knob in fields(self):
            value = getattr(self, knob.name)
            if value == knob.default:
                continue
            if knob.name in ("latency", "jitter"):
                text = format_duration(value)
            elif knob.name == "rate_limit":
                text = f"{value:g}/s"
            elif isinstance(value, tuple):
                text = ",".join(map(str, value))
            elif isinstance(value, str):
                text = repr(value)
            else:
                text = f"{value:g}" if isinstance(value, float) else str(value)
            shown.append(f"{knob.name}={text}")
        return " ".join(shown) or "defaults"


@dataclass(frozen=True)
class CallDecision:
    delay: float
    status: str | None  # None: the call succeeds
    detail: str = ""
    retry_after: float | None = None  # rate limited: seconds until this call would pass (a hint for the client)


class RateLimiter:
    """A token bucket of events: ``rate`` a second, holding one second's worth (at least one event).

    A call of ``n`` events passes when the bucket holds ``min(n, burst)`` tokens, and then
    takes all ``n``: a batch larger than a second's worth passes once the bucket is full,
    and later calls wait out its debt. So the events let through converge on ``rate`` a
    second whatever the batch sizes, and no batch is refused for ever. A refused call
    takes nothing. The clock is the caller's (``now``, seconds, never going back).
    """

    def __init__(self, rate: float, now: float = 0.0) -> None:
        self.rate = rate
        self.burst = max(rate, 1.0)
        self._tokens = self.burst
        self._at = now

    def admit(self, events: int, now: float) -> float:
        """0.0 when a call of ``events`` may pass (its tokens are taken); otherwise seconds until it would."""
        self._tokens = min(self.burst, self._tokens + max(0.0, now - self._at) * self.rate)
        self._at = max(self._at, now)
        needed = min(events, self.burst)
        if self._tokens >= needed:
            self._tokens -= events
            return 0.0
        return (needed - self._tokens) / self.rate


def decide_ping(model: ChipModel, *, elapsed: float) -> CallDecision:
    """What a Ping does: fails in outage and UNAUTHENTICATED windows, answers otherwise."""
    if any(outage.covers(elapsed) for outage in model.outages):
        return CallDecision(0.0, UNAVAILABLE, "chipmock: outage window")
    if any(window.covers(elapsed) for window in model.unauthenticated):
        return CallDecision(0.0, UNAUTHENTICATED, "chipmock: credentials refused (window)")
    return CallDecision(0.0, None)


def decide_call(model: ChipModel, rng: random.Random, *, elapsed: float, batch_size: int = 1,
                request_bytes: int = 0, limiter: RateLimiter | None = None) -> CallDecision:
    """What one RPC does: how long it takes and whether it fails as a whole.

    In this order: outage and UNAUTHENTICATED windows, INTERNAL windows, ``refuse``, the size limit,
    ``max_batch``, the rate limit (``limiter``, holding ``model.rate_limit``'s bucket;
    None: no limit), then the random failures.
    """
    delay = model.latency + (rng.uniform(-model.jitter, model.jitter) if model.jitter else 0.0)
    delay = max(0.0, delay)
    for spike in model.latency_spikes:
        if spike.window.covers(elapsed):
            delay = spike.delay
            break
    ping = decide_ping(model, elapsed=elapsed)
    if ping.status is not None:
        return ping
    if any(window.covers(elapsed) for window in model.internal):
        return CallDecision(delay, "INTERNAL", "chipmock: schema registry unreachable (internal window)")
    if model.refuse is not None:
        return CallDecision(delay, model.refuse, f"chipmock: refusing every call ({model.refuse})")
    if model.max_request_bytes is not None and request_bytes > model.max_request_bytes:
        return CallDecision(0.0, RESOURCE_EXHAUSTED,
                            f"Received message larger than max ({request_bytes} vs. {model.max_request_bytes})")
    if model.max_batch is not None and batch_size > model.max_batch:
        return CallDecision(delay, INVALID_ARGUMENT, f"batch of {batch_size} exceeds max {model.max_batch}")
    if limiter is not None:
        wait = limiter.admit(batch_size, elapsed)
        if wait:
            return CallDecision(delay, RESOURCE_EXHAUSTED, f"{RATE_LIMITED} ({limiter.rate:g} events/s)",
                                retry_after=wait)
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


class EventView(NamedTuple):  # a tuple, not a dataclass: one per event, built at load-test rates
    """What the model reads of one event; the server takes it from the CloudEvent."""

    id: str
    data: bytes = b""  # binary_data, text_data as UTF-8, or proto_data's value (read only when a rule needs it)
    dataschema: str | None = None  # the dataschema attribute (ce_uri, ce_uri_ref or ce_string)
    missing: tuple[str, ...] = ()  # required attributes left empty


@dataclass(frozen=True)
class EventError:
    """Why one event was not produced: a PublishErrorCode name (or digits) and a reason."""

    code: str
    reason: str


class SchemaRegistry:
    """Schemas registered through RegisterSchema. Not thread-safe: the server decides under one lock."""

    def __init__(self) -> None:
        self._versions: dict[str, list[str]] = {}  # subject -> schema texts, version i+1 at [i]
        self._paths: dict[str, str] = {}  # path -> subject

    def register(self, schemas: Sequence[tuple[str, str, str]]) -> list[int]:
        """Register (subject, path, schema text) entries, all or none; return each one's version.

        Re-registering a subject's latest text returns its version again; a new text is
        the next version. Raises ValueError (nothing registered) for an empty request or
        an entry without a subject.
        """
        if not schemas:
            raise ValueError("no schemas to register")
        for i, (subject, _, _) in enumerate(schemas):
            if not subject:
                raise ValueError(f"schemas[{i}] has no subject")
        versions = []
        for subject, path, text in schemas:
            texts = self._versions.setdefault(subject, [])
            if not texts or texts[-1] != text:
                texts.append(text)
            if path:
                self._paths[path] = subject
            versions.append(len(texts))
        return versions

    def knows(self, dataschema: str) -> bool:
        """Whether ``dataschema`` is a registered subject or path (exact string match)."""
        return dataschema in self._versions or dataschema in self._paths


def decide_events(model: ChipModel, rng: random.Random, events: Sequence[EventView], *, elapsed: float,
                  registry: SchemaRegistry | None = None, transactional: bool = False) -> list[EventError | None]:
    """Each event's answer, positional: None when produced, else why not.

    The first that applies wins: required attributes missing (VALIDATION_FAILED); a
    ``reject_containing`` rule; a ``reject_windows`` window covering ``elapsed``; with
    ``require_schemas``, a dataschema that is absent or neither in ``model.schemas`` nor
    in ``registry`` (SCHEMA_MISSING); the ``event_failure_rate`` roll (one draw per event
    whatever the rest, so a seed replays). ``transactional`` (the batch's
    ``transaction_enabled``): all or nothing, so when one event fails the others are
    answered PUBLISH_ERROR_CODE_UNKNOWN (not produced, nothing wrong with them).
    """
    rolls = decide_event_failures(model, rng, len(events))
    window = next((w for w in model.reject_windows if w.window.covers(elapsed)), None)
    if window is None and not model.reads_contents and not model.event_failure_rate:  # the common case, made cheap
        answers = [_decide_event(model, registry, event, None, False) if event.missing else None for event in events]
    else:
        answers = [_decide_event(model, registry, event, window, rolled)
                   for event, rolled in zip(events, rolls, strict=True)]
    failed = next((answer for answer in answers if answer is not None), None)
    if transactional and failed is not None:
        aborted = EventError("PUBLISH_ERROR_CODE_UNKNOWN",
                             f"chipmock: not produced: the transaction failed ({failed.code} on another event)")
        answers = [answer or aborted for answer in answers]
    return answers


def _decide_event(model: ChipModel, registry: SchemaRegistry | None, event: EventView,
                  window: RejectWindow | None, rolled: bool) -> EventError | None:
    if event.missing:
        return EventError("VALIDATION_FAILED", f"missing {', '.join(event.missing)}")
    for rule in model.reject_containing:
        if rule.matches(event):
            return EventError(rule.code, f"chipmock: chosen event (contains {rule.text!r})")
    if window is not None:
        return EventError(window.code, f"chipmock: {window.code} window {window.window}")
    if model.require_schemas:
        if not event.dataschema:
            return EventError("SCHEMA_MISSING", "chipmock: the event names no dataschema and schemas are required")
        if event.dataschema not in model.schemas and not (registry and registry.knows(event.dataschema)):
            return EventError("SCHEMA_MISSING", f"chipmock: no registered schema for {event.dataschema!r}")
    if rolled:
        return EventError(model.event_failure_code, model.reject_reason)
    return None


class ChipState:
    """What chipmock remembers between calls: its random stream, the rate limiter's bucket, the registry.

    Not thread-safe: the server calls it under one lock. Each call passes the model in
    force (tests change it while running) and the seconds since start.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.registry = SchemaRegistry()
        self._limiter: RateLimiter | None = None

    def call(self, model: ChipModel, *, elapsed: float, batch_size: int = 1, request_bytes: int = 0) -> CallDecision:
        """``decide_call`` with the bucket of the rate limit in force (a new, full one when the limit changed)."""
        rate = model.rate_limit_at(elapsed)
        if rate is None:
            self._limiter = None
        elif self._limiter is None or self._limiter.rate != rate:
            self._limiter = RateLimiter(rate, elapsed)
        return decide_call(model, self.rng, elapsed=elapsed, batch_size=batch_size, request_bytes=request_bytes,
                           limiter=self._limiter)

    def events(self, model: ChipModel, events: Sequence[EventView], *, elapsed: float,
               transactional: bool = False) -> list[EventError | None]:
        return decide_events(model, self.rng, events, elapsed=elapsed, registry=self.registry,
                             transactional=transactional)


# How a PublishBatch carried CloudEventBatch.options: none at all, options without
# transaction_enabled, or transaction_enabled said false / true.
OPTIONS_KINDS = ("absent", "unset", "false", "true")


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
    rate_limited: int  # calls refused by the rate limit (also in failed_calls)
    batch_options: Mapping[str, int]  # PublishBatch calls by how they carried options (OPTIONS_KINDS)


# Bounds (seconds) of the event-age histogram: fine where delivery latency is judged (1-100 ms), and
# around 1 s too, where rows found by a scan (every scan_interval, 1 s by default) arrive.
AGE_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05,
               0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 0.9, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0)


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
    duplicate_ids: set[str] = field(default_factory=set)  # ids received more than once
    # builtins.bytes: inside this class body, ``bytes`` names the counter above.
    payloads: dict[str, builtins.bytes] = field(default_factory=dict)
    ages: list[int] = field(default_factory=lambda: [0] * (len(AGE_BUCKETS) + 1))
    rate_limited: int = 0
    pings: int = 0  # Ping calls received (a client's probes), answered or not
    batch_options: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OPTIONS_KINDS, 0))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_call(self, *, failed: bool, rate_limited: bool = False) -> None:
        with self._lock:
            self.calls += 1
            self.failed_calls += failed
            self.rate_limited += rate_limited

    def record_ping(self) -> None:
        with self._lock:
            self.pings += 1

    def record_batch_options(self, kind: str) -> None:
        """One PublishBatch received, with its options as one of OPTIONS_KINDS."""
        with self._lock:
            self.batch_options[kind] += 1

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
                    self.duplicate_ids.add(event_id)
                else:
                    self.ids.add(event_id)
                if self.keep_payloads and not isinstance(payload, int):  # a size alone has no payload
                    self.payloads[event_id] = payload

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self.calls, self.failed_calls, self.received, len(self.ids),
                            self.duplicates, self.rejected, self.bytes, tuple(self.ages), self.rate_limited,
                            MappingProxyType(dict(self.batch_options)))

    def duplicated(self) -> set[str]:
        """The ids received more than once."""
        with self._lock:
            return set(self.duplicate_ids)

    def seen(self, event_ids: Iterable[str]) -> set[str]:
        """Which of ``event_ids`` were produced."""
        with self._lock:
            return {i for i in event_ids if i in self.ids}
