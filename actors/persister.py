"""Persister: group commit. Every emit waiting now goes into one INSERT and one commit.

While one commit runs, new emits queue in the inbox; the next batch takes all
of them (up to ``persist_batch_size``), so batches grow exactly as fast as
Postgres is slow. Each caller is resolved after its commit; a failed commit
fails exactly the emits in it. Committed events go on to the dispatcher in
memory when its buffer has room, else they are written "spilled" (claimable
at once) and the dispatcher reads them back from the table.
"""

from __future__ import annotations

from functools import partial

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


def _has_room(outbox: trio.MemorySendChannel[Outgoing], budget: BufferBudget, batch: list[EmitRequest]) -> bool:
    stats = outbox.statistics()
    if stats.current_buffer_used + len(batch) > stats.max_buffer_size:
        return False
    return budget.has_room(sum(len(r.payload) for r in batch))


async def run(
    config: EmitterConfig,
    inbox: trio.MemoryReceiveChannel[EmitRequest],
    outbox: trio.MemorySendChannel[Outgoing],
    doorbell: trio.MemorySendChannel[None],
    budget: BufferBudget,
    store: Store,
    backlog: Backlog,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Commit emits in groups until the inbox closes."""
    limiter = trio.CapacityLimiter(1)
    task_status.started()
    async for first in inbox:
        batch = _take_batch(first, inbox, config.persist_batch_size)
        # Only this actor sends to the outbox, so room seen now is still there after the commit.
        in_memory = _has_room(outbox, budget, batch)
        try:
            insert = partial(store.insert_events, [r.event_id for r in batch], [r.payload for r in batch],
                             owner=config.instance_id, lease=config.lease_duration, spilled=not in_memory)
            await trio.to_thread.run_sync(insert, limiter=limiter)
        except StoreUnavailable as exc:
            log.warning("commit failed", events=len(batch), error=str(exc))
            metrics.emit_failure.labels("store").inc(len(batch))
            for request in batch:
                request.resolve(exc)
            continue
        except BaseException as exc:
            # Crashing (or cancelled): nobody in this batch may hang. Their rows
            # may or may not be committed; the error says so.
            error = EmitterError(f"persister stopped before confirming the commit: {exc!r}")
            for request in batch:
                request.resolve(error)
            raise
        committed_at = trio.current_time()
        publish_by = committed_at + config.lease_duration - 2 * config.publish_timeout
        for request in batch:
            request.resolve()
        backlog.add(len(batch))
        metrics.emit_success.inc(len(batch))
        metrics.commit_batch_size.observe(len(batch))
        if in_memory:
            for request in batch:
                budget.take(len(request.payload))
                outbox.send_nowait(Outgoing(request.event_id, request.payload, publish_by))
        else:
            metrics.buffer_full.inc(len(batch))
            try:
                doorbell.send_nowait(None)
            except trio.WouldBlock:
                pass  # already rung
