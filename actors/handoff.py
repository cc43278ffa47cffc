"""The persister -> dispatcher hand-off: a memory channel bounded by events and by payload bytes.

Room is taken before a group's commit, so the persister knows whether to write
the group "spilled" (left to the table, claimable after a short hold) or to hand it over
in memory, and is given back the moment the dispatcher takes the group off the
channel. Only this module counts: a reservation that is not sent gives its
room back when its ``with`` block ends, however it ends, so no actor can die
holding room, and the dispatcher holds at most one group beyond the budget
while it cuts it into batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from .messages import Outgoing


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    events: int
    bytes: int
    max_events: int
    max_bytes: int


class _Budget:
    """Events and payload bytes in the channel; written by the two ends below only."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events, self.max_bytes = max_events, max_bytes
        self.events = self.bytes = 0
        self.closed = False  # no room given, whatever is left (delivery paused)

    def try_take(self, events: int, size: int) -> bool:
        if self.closed or self.events + events > self.max_events or self.bytes + size > self.max_bytes:
            return False
        self.events += events
        self.bytes += size
        return True

    def give_back(self, events: int, size: int) -> None:
        self.events -= events
        self.bytes -= size

    def statistics(self) -> BudgetStatistics:
        return BudgetStatistics(self.events, self.bytes, self.max_events, self.max_bytes)


class Reservation:
    """Room for one group, taken before its commit; :meth:`send` hands the committed group over."""

    __slots__ = ("_channel", "events", "size", "sent")

    def __init__(self, channel: trio.MemorySendChannel[tuple[Outgoing, int]], events: int, size: int) -> None:
        self._channel = channel
        self.events, self.size = events, size
        self.sent = False

    def send(self, group: Outgoing) -> None:
        """Never blocks: the channel holds as many groups as the budget allows events."""
        self._channel.send_nowait((group, self.size))
        self.sent = True


class HandOffSender:
    def __init__(self, budget: _Budget, channel: trio.MemorySendChannel[tuple[Outgoing, int]]) -> None:
        self._budget, self._channel = budget, channel

    @contextmanager
    def reserve(self, events: int, size: int) -> Iterator[Reservation | None]:
        """Room for ``events`` events of ``size`` payload bytes, or None past either limit.

        Room not sent by the end of the block is given back.
        """
        if not self._budget.try_take(events, size):
            yield None
            return
        reservation = Reservation(self._channel, events, size)
        try:
            yield reservation
        finally:
            if not reservation.sent:
                self._budget.give_back(events, size)

    def close(self) -> None:
        self._channel.close()


class HandOffReceiver:
    def __init__(self, budget: _Budget, channel: trio.MemoryReceiveChannel[tuple[Outgoing, int]]) -> None:
        self._budget, self._channel = budget, channel

    def _taken(self, item: tuple[Outgoing, int]) -> Outgoing:
        group, size = item
        self._budget.give_back(len(group), size)  # it left the channel the budget bounds
        return group

    def receive_nowait(self) -> Outgoing:
        """The next group; raises trio.WouldBlock or trio.EndOfChannel as a memory channel does."""
        return self._taken(self._channel.receive_nowait())

    async def receive(self) -> Outgoing:
        return self._taken(await self._channel.receive())

    def statistics(self) -> BudgetStatistics:
        return self._budget.statistics()

    def give_no_room(self, closed: bool) -> None:
        """While ``closed``, the persister gets no room: what it commits is written spilled, claimable
        (after its short hold) as soon as delivery resumes, instead of waiting in memory past its lease's margin (it would
        then come back from the table only as each lease lapsed)."""
        self._budget.closed = closed


def open_hand_off(max_events: int, max_bytes: int) -> tuple[HandOffSender, HandOffReceiver]:
    """Both ends of a hand-off that holds at most ``max_events`` events and ``max_bytes`` payload bytes."""
    budget = _Budget(max_events, max_bytes)
    send, receive = trio.open_memory_channel[tuple[Outgoing, int]](max(1, max_events))
    return HandOffSender(budget, send), HandOffReceiver(budget, receive)
