"""The closed vocabulary passed between actors over memory channels.

Each message names the events it concerns by id. Only :class:`EmitRequest`
is mutable: the persister resolves it once, and the caller waits on ``done``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .core.answers import Rejection


class EmitRequest:
    """emit()/emit_many() -> persister: commit these events in one transaction, then set ``done``
    (``error`` if it failed: then none of them was written, unless it is CommitOutcomeUnknown)."""

    __slots__ = ("event_ids", "payloads", "done", "error")

    def __init__(self, event_ids: list[str], payloads: list[bytes]) -> None:
        self.event_ids = event_ids
        self.payloads = payloads
        self.done = trio.Event()
        self.error: BaseException | None = None

    def resolve(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """persister/claims -> dispatcher: committed events to publish while our lease holds.

    Columns, ids and payloads in step: a group of events moves, is cut and is
    published as two lists, with no object per event. ``publish_by`` is on the
    Trio clock, the earliest any of them allows; after it the rows are left to
    the table (their leases lapse and they are claimed again), never published
    from memory. ``lease_token`` names the lease they are held under: 0 as the
    persister wrote them, a claim's own token when claimed (a release names it).
    """

    event_ids: list[str]
    payloads: list[bytes]
    publish_by: float
    lease_token: int = 0

    def __len__(self) -> int:
        return len(self.event_ids)

    def slice(self, start: int, stop: int) -> Outgoing:
        return Outgoing(self.event_ids[start:stop], self.payloads[start:stop], self.publish_by, self.lease_token)

    def pick(self, indexes: Sequence[int]) -> Outgoing:
        return Outgoing([self.event_ids[i] for i in indexes], [self.payloads[i] for i in indexes], self.publish_by,
                        self.lease_token)


@dataclass(frozen=True, slots=True)
class Delivered:
    """dispatcher -> acker: Chip acknowledged these ids; delete their rows."""

    event_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """dispatcher -> acker: Chip refused these for good; move them to the dead-letter table."""

    entries: tuple[Rejection, ...]  # as Chip answered


@dataclass(frozen=True, slots=True)
class Barrier:
    """dispatcher -> acker: set ``passed`` once every outcome sent before this one is written.

    A restarted dispatcher ends its earlier run's leases only then: a row delivered but
    not yet deleted would otherwise be claimed and published again.
    """

    passed: trio.Event


Outcome = Delivered | Rejected | Barrier
