"""What each actor counts, and the frozen records it hands readers.

Every counter has one writer: the actor that owns the state object (the tree
makes one per actor and hands it to that actor alone). Readers, which are
``Emitter.statistics()``, the admission decision and the Prometheus
collector, call ``statistics()`` and get a frozen record, as trio's memory
channels do. A restarted actor keeps its state object, so counts survive
restarts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .core.admission import TableSample
from .core.instruments import (
    LATENCY_BUCKETS,
    SIZE_BUCKETS,
    Histogram,
    HistogramSnapshot,
    LabelledCounts,
    Tally,
)

PHASES = ("batch", "retransmit")  # fresh events from memory; rows claimed back from the table
EMIT_FAILURES = ("store", "too_large", "backlog_full", "outcome_unknown")
RETRY_REASONS = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "NOT_ACKNOWLEDGED", "SCHEMA_MISSING",
                 "DOMAIN_MISCONFIGURATION")
DEAD_LETTER_REASONS = ("VALIDATION_FAILED", "SCHEMA_MISSING", "ENCODE_ERROR", "DOMAIN_MISCONFIGURATION", "EXPIRED",
                       "TOO_LARGE")
DELIVERY_STATES = ("up", "limited", "down", "refused")


@dataclass(frozen=True, slots=True)
class EmitStatistics:
    succeeded: int
    failed: dict[str, int]  # by reason: store, too_large, backlog_full, outcome_unknown (CommitOutcomeUnknown)
    seconds: HistogramSnapshot  # emit() call to commit


class EmitState:
    """Owned by the :class:`Emitter` handle: every emit returns through it."""

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed = LabelledCounts(EMIT_FAILURES)
        self.seconds = Histogram(LATENCY_BUCKETS)

    def statistics(self) -> EmitStatistics:
        return EmitStatistics(self.succeeded, self.failed.snapshot(), self.seconds.snapshot())


@dataclass(frozen=True, slots=True)
class PersisterStatistics:
    committed: int
    spilled: int  # committed while the memory buffer was full: read back from the table
    group_sizes: HistogramSnapshot


class PersisterState:
    def __init__(self) -> None:
        self.committed = Tally()
        self.spilled = 0
        self.group_sizes = Histogram(SIZE_BUCKETS)

    def statistics(self) -> PersisterStatistics:
        return PersisterStatistics(self.committed.value, self.spilled, self.group_sizes.snapshot())


@dataclass(frozen=True, slots=True)
class DispatcherStatistics:
    in_flight: int  # PublishBatch calls under way
    published: dict[str, int]  # events Chip acknowledged, by phase
    not_published: dict[str, int]  # events a publish attempt did not deliver, by phase
    retries: dict[str, int]  # attempts to be retried, by reason
    released: int  # handed back to the table after the in-memory attempts
    claimed: int  # rows claimed back from the table
    expired: int  # moved to the dead-letter table by the TTL sweep
    publish_seconds: dict[str, HistogramSnapshot]  # by phase
    batch_sizes: HistogramSnapshot
    delivery: str  # "up"; "limited" (Chip rate-limits us), "down" (Chip does not answer), "refused" (alert)
    held: int  # events held in memory while delivery is paused
    paused_calls: int  # calls that failed since delivery last worked
    paused_by: str  # while paused: the code that paused it (e.g. UNAVAILABLE, UNAUTHENTICATED, SCHEMA_MISSING)


class DispatcherState:
    def __init__(self) -> None:
        self.in_flight = 0
        self.published = LabelledCounts(PHASES)
        self.not_published = LabelledCounts(PHASES)
        self.retries = LabelledCounts(RETRY_REASONS)
        self.released = 0
        self.claimed = 0
        self.expired = 0
        self.publish_seconds = {phase: Histogram(LATENCY_BUCKETS) for phase in PHASES}
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.delivery = "up"
        self.held = 0
        self.paused_calls = 0
        self.paused_by = ""

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            self.in_flight, self.published.snapshot(), self.not_published.snapshot(), self.retries.snapshot(),
            self.released, self.claimed, self.expired,
            {phase: h.snapshot() for phase, h in self.publish_seconds.items()}, self.batch_sizes.snapshot(),
            self.delivery, self.held, self.paused_calls, self.paused_by,
        )


@dataclass(frozen=True, slots=True)
class AckerStatistics:
    deleted: int
    dead_lettered: dict[str, int]  # by reason code


class AckerState:
    def __init__(self) -> None:
        self.settled = Tally()  # rows removed from the table: deleted or dead-lettered
        self.deleted = 0
        self.dead_lettered = LabelledCounts(DEAD_LETTER_REASONS)

    def statistics(self) -> AckerStatistics:
        return AckerStatistics(self.deleted, self.dead_lettered.snapshot())


class SamplerState:
    def __init__(self) -> None:
        self.sample = TableSample()
        self.metrics_port: int | None = None  # where /metrics is served, once it is
        self.liveness_held = True  # taken before the tree started; kept (or re-taken) every sample

    def statistics(self) -> TableSample:
        return self.sample


@dataclass(frozen=True, slots=True)
class EmitterStatistics:
    """A snapshot of one emitter: what it holds in memory and what it has done since it opened."""

    pending_rows: int  # approximate: last count of the table, plus commits, minus removals since
    queued_emits: int  # emit() calls waiting for the persister
    buffered_events: int  # committed events waiting in memory for the dispatcher
    buffered_bytes: int
    publishes_in_flight: int
    emitted: int
    spilled: int  # committed while the memory buffer was full: read back from the table
    delivered: int  # acknowledged by Chip and deleted
    dead_lettered: int
    publish_retries: int
    restarts: dict[str, int]  # by actor
    delivery: str  # "up", or why delivery waits: "limited" (Chip rate-limits us: events still go at its pace),
    # "down" (Chip does not answer), "refused" (alert: Chip refuses us, or no token can be signed)
    emit_seconds: HistogramSnapshot
    publish_seconds: HistogramSnapshot  # PublishBatch calls of fresh events
    paused_by: str = ""  # while paused: the code that paused delivery (a rejection storm names its per-event code)


@dataclass(frozen=True)
class Sources:
    """Where readers get the records: each actor's ``statistics()``, and the supervisor's restart counts."""

    emit: Callable[[], EmitStatistics]
    persister: Callable[[], PersisterStatistics]
    dispatcher: Callable[[], DispatcherStatistics]
    acker: Callable[[], AckerStatistics]
    table: Callable[[], TableSample]
    restarts: Callable[[], dict[str, int]]
