"""Persister: group commit. Every emit waiting now goes into one INSERT and one commit.

While one commit runs, new emits queue in the inbox; the next batch takes all
of them (up to ``persist_batch_size``), so batches grow exactly as fast as
Postgres is slow. Each caller is resolved after its commit; a failed commit
fails exactly the emits in it. Committed events go on to the dispatcher in
memory when its buffer has room, else they are written "spilled" (claimable
at once) and the dispatcher reads them back from the table.
"""

from __future__ import annotations

import structlog
import trio

from .backlog import Backlog, BufferBudget
from .config import EmitterConfig
from .errors import EmitterError, StoreUnavailable
from .messages import EmitRequest, Outgoing
from .metrics import Metrics
from .store import Store

log = structlog.get_logger("durable_emitter.persister")


def _take_batch(first: EmitRequest, inbox: trio.MemoryReceiveChannel[EmitRequest], limit: int) -> list[EmitRequest]:
    batch = [first]
    while len(batch) < limit:
        try:
            batch.append(inbox.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


class _Handoff:
    """Reserves room in the dispatcher's memory buffer before a commit, so the
    committed group can be handed over without waiting after it.
    """

    def __init__(self, outbox: trio.MemorySendChannel[list[Outgoing]], budget: BufferBudget) -> None:
        self.outbox = outbox
        self.budget = budget

    def reserve(self, batch: list[EmitRequest]) -> bool:
        size = sum(len(r.payload) for r in batch)
        if not self.budget.has_room(len(batch), size):
            return False
        self.budget.take(len(batch), size)
        return True

    def hand_over(self, batch: list[EmitRequest], publish_by: float) -> None:
        # One message per group: the channel holds at most as many groups as the
        # budget allows events, so this never blocks.
        self.outbox.send_nowait([Outgoing(r.event_id, r.payload, publish_by) for r in batch])

    def cancel(self, batch: list[EmitRequest]) -> None:
        self.budget.give_back(len(batch), sum(len(r.payload) for r in batch))


async def _write(
    config: EmitterConfig,
    inbox: trio.MemoryReceiveChannel[EmitRequest],
    handoff: _Handoff,
    doorbell: trio.MemorySendChannel[None],
    store: Store,
    backlog: Backlog,
    metrics: Metrics,
) -> None:
    """One writer: its own connection, one commit at a time."""
    async for first in inbox:
        batch = _take_batch(first, inbox, config.persist_batch_size)
        in_memory = handoff.reserve(batch)
        try:
            await store.insert_events([r.event_id for r in batch], [r.payload for r in batch],
                                      owner=config.instance_id, lease=config.lease_duration,
                                      spilled=not in_memory)
        except StoreUnavailable as exc:
            if in_memory:
                handoff.cancel(batch)
            log.warning("commit failed", events=len(batch), error=str(exc))
            metrics.emit_failure.labels("store").inc(len(batch))
            for request in batch:
                request.resolve(exc)
            continue
        except BaseException as exc:
            # Crashing (or cancelled): nobody in this batch may hang. Their rows
            # may or may not be committed; the error says so.
            if in_memory:
                handoff.cancel(batch)
            error = EmitterError(f"persister stopped before confirming the commit: {exc!r}")
            for request in batch:
                request.resolve(error)
            raise
        for request in batch:
            request.resolve()
        backlog.add(len(batch))
        metrics.emit_success.inc(len(batch))
        metrics.commit_batch_size.observe(len(batch))
        if in_memory:
            handoff.hand_over(batch, trio.current_time() + config.lease_duration - 2 * config.publish_timeout)
        else:
            metrics.buffer_full.inc(len(batch))
            try:
                doorbell.send_nowait(None)
            except trio.WouldBlock:
                pass  # already rung


async def run(
    config: EmitterConfig,
    inbox: trio.MemoryReceiveChannel[EmitRequest],
    outbox: trio.MemorySendChannel[list[Outgoing]],
    doorbell: trio.MemorySendChannel[None],
    budget: BufferBudget,
    stores: list[Store],
    backlog: Backlog,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Commit emits in groups, one writer per store, until the inbox closes.

    Several writers (``persist_writers``) overlap their commits, which pays
    when the database is far away and each round trip is long. On a local
    Postgres one writer measured fastest (groups stay larger, fewer wake-ups),
    hence the default.
    """
    handoff = _Handoff(outbox, budget)
    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(_write, config, inbox, handoff, doorbell, store, backlog, metrics)
        task_status.started()
