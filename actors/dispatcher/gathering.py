"""Cutting committed groups from the persister into publish batches, within the linger and size caps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..core.events import framed_size
from ..core.publishing import fitting
from ..handoff import HandOffReceiver
from ..messages import Outgoing


async def _receive_until(inbox: HandOffReceiver, deadline: float) -> Outgoing | None:
    """The next committed group; None if the inbox ended or ``deadline`` passed."""
    try:
        return inbox.receive_nowait()
    except trio.WouldBlock:
        pass
    except trio.EndOfChannel:
        return None
    with trio.move_on_at(deadline):
        try:
            return await inbox.receive()
        except trio.EndOfChannel:
            return None
    return None


class Gatherer:
    """Cuts committed groups into publish batches: up to the size limits, or what arrives within the linger.

    Whole groups at a time: a group's events share one deadline, so freshness
    is checked per group, and a run of events is taken with one slice. Groups
    past their ``publish_by`` (they waited while Chip was away), and groups whose
    ``publish_by`` is before ``stale_before`` (committed before this dispatcher
    run ended its instance's leases), ``leave`` hands to the table, claimable at
    once: left to their leases, they would come back one by one as each lapsed.
    """

    def __init__(self, inbox: HandOffReceiver, batch_size: int, max_bytes: int, linger: float, *,
                 stale_before: float = float("-inf"),
                 leave: Callable[[list[str]], Awaitable[None]] | None = None) -> None:
        self.inbox = inbox
        self.batch_size, self.max_bytes, self.linger = batch_size, max_bytes, linger
        self.stale_before, self.leave = stale_before, leave
        self.stale: list[str] = []  # ids of stale groups taken off the inbox, not yet left to the table
        self.group: Outgoing | None = None  # taken off the inbox, partly gathered
        self.taken = 0  # how many of self.group went into batches

    def _left(self, group: Outgoing) -> bool:
        """Whether ``group`` is not to be published from memory: committed before this run ended the
        instance's leases, or past its lease's margin (published now, it could go twice)."""
        return group.publish_by < self.stale_before or group.publish_by < trio.current_time()

    async def _refill(self, deadline: float) -> bool:
        """Queue the next group still within its lease (others are left to the table, claimable at
        once, in one statement with the ones queued behind them); False at the deadline."""
        while True:
            group = await _receive_until(self.inbox, deadline)
            if group is not None and self._left(group):
                self.stale += group.event_ids
                if len(self.stale) < self.batch_size and self.inbox.statistics().events:
                    continue
            await self._leave_stale()
            if group is None:
                return False
            if not self._left(group):
                self.group, self.taken = group, 0
                return True

    async def _leave_stale(self) -> None:
        if self.stale:
            ids, self.stale = self.stale, []
            if self.leave is not None:
                await self.leave(ids)

    def _queued(self) -> int:
        return len(self.group) - self.taken if self.group is not None else 0

    async def wait_for_work(self) -> bool:
        """Until a fresh group is queued; False when the inbox has ended."""
        return bool(self._queued()) or await self._refill(float("inf"))

    async def gather(self) -> Outgoing:
        """Queued events plus whatever arrives within the linger, up to the batch limits."""
        ids: list[str] = []
        payloads: list[bytes] = []
        publish_by = float("inf")
        size = 0
        deadline = trio.current_time() + self.linger
        while len(ids) < self.batch_size:
            if not self._queued() and not await self._refill(deadline):
                break
            group = self.group
            assert group is not None  # _queued() or _refill() made sure
            if group.publish_by < trio.current_time():
                self.stale += group.event_ids[self.taken:]  # lapsed while queued: left to the table
                self.group = None
                continue
            stop = min(len(group), self.taken + self.batch_size - len(ids))
            count, group_size = fitting(group.payloads, self.taken, stop, self.max_bytes - size)
            if count == 0:
                if ids:
                    break  # its next event starts the next batch
                # An event alone above the cap still goes, alone (Chip's answer decides).
                count, group_size = 1, framed_size(group.payloads[self.taken])
            ids += group.event_ids[self.taken:self.taken + count]
            payloads += group.payloads[self.taken:self.taken + count]
            publish_by = min(publish_by, group.publish_by)
            size += group_size
            self.taken += count
            if count < stop - (self.taken - count):
                break  # the byte cap is reached
        return Outgoing(ids, payloads, publish_by)
