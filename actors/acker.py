"""Acker: outcomes from the dispatcher -> one DELETE (and one dead-letter move) per batch.

Deletes run with ``synchronous_commit = off`` (the acker's own connection): a
delete lost in a crash only means the event is sent again, which at-least-once
allows, and it saves a WAL flush per batch. If Postgres is unreachable the
acker waits and retries; its inbox fills, which stalls publishing upstream.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from .adapters.store import Store
from .config import EmitterConfig
from .core.backoff import Backoff
from .errors import StoreUnavailable
from .logs import get_logger
from .messages import Delivered, Outcome
from .statistics import AckerState

log = get_logger("durable_emitter.acker")


@dataclass(frozen=True)
class Wiring:
    config: EmitterConfig
    inbox: trio.MemoryReceiveChannel[Outcome]  # from the dispatcher
    store: Store  # its connection commits with synchronous_commit = off
    state: AckerState


def _collect(first: Outcome, inbox: trio.MemoryReceiveChannel[Outcome],
             limit: int) -> tuple[list[str], list[tuple[str, str, str]]]:
    delivered: list[str] = []
    rejected: list[tuple[str, str, str]] = []
    item: Outcome | None = first
    while item is not None:
        if isinstance(item, Delivered):
            delivered.extend(item.event_ids)
        else:
            rejected.extend(item.entries)
        if len(delivered) >= limit:
            break
        try:
            item = inbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            item = None
    return delivered, rejected


async def run(wiring: Wiring, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Apply outcomes until the inbox closes."""
    config, state, store = wiring.config, wiring.state, wiring.store
    backoff = Backoff(config.retry_initial, config.retry_multiplier, config.retry_max)
    rng = random.Random()

    async def persist(write: Callable[[], Awaitable[int]]) -> int:
        attempt = 0
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                delay = backoff.delay(attempt, rng)
                attempt += 1
                log.warning("acker cannot reach Postgres; retrying", error=str(exc), retry_in_s=round(delay, 3))
                await trio.sleep(delay)

    task_status.started()
    async for first in wiring.inbox:
        delivered, rejected = _collect(first, wiring.inbox, config.delete_batch_size)
        if delivered:
            deleted = await persist(partial(store.delete, delivered, owner=config.instance_id))
            state.deleted += deleted
            state.settled.add(deleted)
        if rejected:
            moved = await persist(partial(store.dead_letter, rejected, owner=config.instance_id))
            for _, code, _ in rejected:
                state.dead_lettered.add(code)
            state.settled.add(moved)
            log.warning("events dead-lettered", count=moved, codes=sorted({code for _, code, _ in rejected}))
