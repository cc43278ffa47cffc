"""Shared counts on the Trio thread: pending rows (emit backpressure) and buffered bytes.

Backlog: the pending-row count emit() consults for backpressure.

Approximate by design: the persister adds what it commits, the acker
subtracts what it deletes, and the metrics actor resets it from the table
every sample, which also counts rows other instances own.
"""

from __future__ import annotations

import trio

from .errors import BacklogFull


class Backlog:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0
        self.changes = 0  # net adds minus removes since the start: lets a sample be resynced
        self._room = trio.Event()

    def add(self, count: int) -> None:
        self.pending += count
        self.changes += count

    def remove(self, count: int) -> None:
        self.changes -= count
        self._set(max(0, self.pending - count))

    def resync(self, counted: int, changes_at_start: int) -> None:
        """Take a count from the table, plus what changed here while it was being counted.

        Without the correction a count that started before a commit would
        overwrite it, and emit() could run past ``max_pending``.
        """
        self._set(max(0, counted + self.changes - changes_at_start))

    def _set(self, count: int) -> None:
        self.pending = count
        if count < self.limit:
            self._room.set()

    async def wait_for_room(self, timeout: float) -> None:
        """Return at once below the limit; else wait up to ``timeout``, then raise BacklogFull."""
        if self.pending < self.limit:
            return
        with trio.move_on_after(timeout):
            while self.pending >= self.limit:
                if self._room.is_set():
                    self._room = trio.Event()
                await self._room.wait()
            return
        raise BacklogFull(
            f"{self.pending} events are pending (max_pending={self.limit}) and none drained "
            f"for {timeout:g}s: Chip is down or slower than the emit rate; nothing was written"
        )


class BufferBudget:
    """Events and payload bytes held in the persister -> dispatcher memory buffer.

    The persister takes room when it hands a committed group over in memory,
    the dispatcher gives it back as it takes events out; past either limit the
    persister spills to the table instead, so neither many small events nor a
    few large ones can pile up in memory.
    """

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0

    def has_room(self, events: int, size: int) -> bool:
        return self.events + events <= self.max_events and self.bytes + size <= self.max_bytes

    def take(self, events: int, size: int) -> None:
        self.events += events
        self.bytes += size

    def give_back(self, events: int, size: int) -> None:
        self.events = max(0, self.events - events)
        self.bytes = max(0, self.bytes - size)
