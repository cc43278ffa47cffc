"""Acker: outcomes from the dispatcher -> one DELETE (and one dead-letter move) per batch.

Deletes run with ``synchronous_commit = off`` (the acker's own connection): a
delete lost in a crash only means the event is sent again, which at-least-once
allows, and it saves a WAL flush per batch. If Postgres is unreachable the
acker waits and retries; its inbox fills, which stalls publishing upstream.
"""

from __future__ import annotations

import structlog
import trio

from .backlog import Backlog
from .backoff import Backoff
from .config import EmitterConfig
from .errors import StoreUnavailable
from .messages import Delivered, Outcome, Rejected
from .metrics import Metrics
from .store import Store

log = structlog.get_logger("durable_emitter.acker")


def _collect(first: Outcome, inbox: trio.MemoryReceiveChannel[Outcome], limit: int) -> tuple[list[str], list[Rejected]]:
    delivered: list[str] = []
    rejected: list[Rejected] = []
    item: Outcome | None = first
    while item is not None:
        if isinstance(item, Delivered):
            delivered.extend(item.event_ids)
        else:
            rejected.append(item)
        if len(delivered) >= limit:
            break
        try:
            item = inbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            item = None
    return delivered, rejected


async def run(
    config: EmitterConfig,
    inbox: trio.MemoryReceiveChannel[Outcome],
    store: Store,
    backlog: Backlog,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Apply outcomes until the inbox closes."""
    async def persist(fn, *args) -> int:
        backoff = Backoff(config.retry_initial, config.retry_multiplier, config.retry_max)
        while True:
            try:
                return await fn(*args, owner=config.instance_id)
            except StoreUnavailable as exc:
                delay = backoff.next_delay()
                log.warning("acker cannot reach Postgres; retrying", error=str(exc), retry_in_s=round(delay, 3))
                await trio.sleep(delay)

    task_status.started()
    async for first in inbox:
        delivered, rejected = _collect(first, inbox, config.delete_batch_size)
        if delivered:
            deleted = await persist(store.delete, delivered)
            metrics.delivery_completed.inc(deleted)
            backlog.remove(deleted)
        if rejected:
            ids = [i for r in rejected for i in r.event_ids]
            codes = [c for r in rejected for c in r.codes]
            reasons = [t for r in rejected for t in r.reasons]
            moved = await persist(store.dead_letter, ids, codes, reasons)
            for code in codes:
                metrics.dead_lettered.labels(code).inc()
            backlog.remove(moved)
            log.warning("events dead-lettered", count=moved, codes=sorted(set(codes)))
