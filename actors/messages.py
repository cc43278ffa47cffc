"""The closed vocabulary passed between actors over memory channels.

Each message names the events it concerns by id. Only :class:`EmitRequest`
is mutable: the persister resolves it once, and the caller waits on ``done``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import trio


class EmitRequest:
    """emit() -> persister: commit this event, then set ``done`` (``error`` if it failed)."""

    __slots__ = ("event_id", "payload", "done", "error")

    def __init__(self, event_id: str, payload: bytes) -> None:
        self.event_id = event_id
        self.payload = payload
        self.done = trio.Event()
        self.error: BaseException | None = None

    def resolve(self, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.error = error
            self.done.set()


class Outgoing(NamedTuple):
    """persister/claims -> dispatcher: a committed event to publish while our lease holds.

    A NamedTuple rather than a frozen dataclass: one is made per event on the
    hot path, and a tuple is several times cheaper to build.

    ``publish_by`` is on the Trio clock; after it, the row is left to the table
    (its lease lapses and it is claimed again), never published from memory.
    """

    event_id: str
    payload: bytes
    publish_by: float


@dataclass(frozen=True, slots=True)
class Delivered:
    """dispatcher -> acker: Chip acknowledged these ids; delete their rows."""

    event_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """dispatcher -> acker: Chip refused these for good; move them to the dead-letter table."""

    entries: tuple[tuple[str, str, str], ...]  # (event id, reason code, reason), as Chip answered


class CommittedGroup(NamedTuple):
    """persister -> dispatcher: one group commit's events, and the payload bytes it holds of the budget."""

    events: list[Outgoing]
    size: int


Outcome = Delivered | Rejected
