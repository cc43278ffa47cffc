"""Acker: outcomes from the dispatcher -> one DELETE (and one dead-letter move) per batch.

Deletes commit durably (``synchronous_commit = on``, as every write of ours): a
delete lost in a crash recovery or a failover (an asynchronous commit not yet
flushed, or not yet at the standby) brings the row back, and its lease lapsing
then sends a delivered event again while every process lived. The flush is
shared with the persister's commits running at the same time. If Postgres is unreachable the
acker retries, at least twice a second (every delivered row not yet deleted is
one a host killed now would publish again); its inbox fills, which stalls
publishing upstream.
It never wedges on one bad item: ids are de-duplicated, reasons made storable,
and a batch Postgres refuses for its data is split until the item at fault
is found and recorded in a plain form (see :class:`_Writer`).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import trio

from .adapters.store import Store
from .config import EmitterConfig
from .core.answers import Rejection
from .core.backoff import Backoff
from .core.failures import StoreFailure, storable_text
from .errors import StoreUnavailable
from .logs import FailureLog, get_logger
from .messages import Barrier, Delivered, Outcome
from .statistics import AckerState

log = get_logger("durable_emitter.acker")
_Item = TypeVar("_Item")
_Written = TypeVar("_Written", int, list[str])  # rows deleted; codes of the rows moved
# Deletes wait out a failure briefly: delivery goes on the moment Postgres is back, and
# every delivered row not yet deleted is one a host killed now would publish again.
_RETRY = Backoff(0.05, 2.0, 0.5)


@dataclass(frozen=True)
class Wiring:
    config: EmitterConfig
    inbox: trio.MemoryReceiveChannel[Outcome]  # from the dispatcher
    store: Store
    state: AckerState


def _collect(first: Outcome, inbox: trio.MemoryReceiveChannel[Outcome],
             limit: int) -> tuple[list[str], list[Rejection], Barrier | None]:
    """``first`` and the outcomes queued behind it, up to about ``limit`` deliveries, each id once,
    up to a :class:`Barrier` (returned, to be passed once these are written).

    An event can be in flight twice (a lapsed lease claimed again), and one
    statement may not touch a row twice: the one place ids are de-duplicated
    (a rejection given twice keeps its last reason).
    """
    delivered: dict[str, None] = {}
    rejected: dict[str, Rejection] = {}
    item: Outcome | None = first
    while item is not None:
        if isinstance(item, Barrier):
            return list(delivered), list(rejected.values()), item
        if isinstance(item, Delivered):
            delivered.update(dict.fromkeys(item.event_ids))
        else:
            rejected.update((entry.event_id, entry) for entry in item.entries)
        if len(delivered) >= limit:
            break
        try:
            item = inbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            item = None
    return list(delivered), list(rejected.values()), None


class _Writer:
    """Writes batches so that one bad item never wedges the rest.

    Transient failures (Postgres away, a lock, a timeout) are retried with
    backoff, logging when writes stop and when they work again. A poison
    failure (the data of the write is at fault) splits the batch to find the
    item, which is then recorded with a reason Postgres can store. A permanent
    failure (rights, schema) cannot be isolated: it goes to the supervisor.
    """

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.rng = random.Random()
        self.trouble = FailureLog(log, "acker cannot write to Postgres; retrying with backoff",
                                  "acker writes to Postgres again")

    async def retrying(self, write: Callable[[], Awaitable[_Written]]) -> _Written:
        attempt = 0
        while True:
            try:
                written = await write()
            except StoreUnavailable as exc:
                if exc.kind is not StoreFailure.TRANSIENT:
                    raise
                self.trouble.failed(exc)
                await trio.sleep(self.backoff.delay(attempt, self.rng))
                attempt += 1
                continue
            self.trouble.worked()
            return written

    async def isolating(self, write: Callable[[Sequence[_Item]], Awaitable[_Written]], items: Sequence[_Item],
                        last_resort: Callable[[_Item, StoreUnavailable], _Item] | None) -> _Written:
        """Write ``items``; split on poison until the bad item is alone, then write ``last_resort(item)``."""
        try:
            return await self.retrying(partial(write, items))
        except StoreUnavailable as exc:
            if exc.kind is not StoreFailure.POISON:
                raise
            if len(items) > 1:
                middle = len(items) // 2
                return (await self.isolating(write, items[:middle], last_resort)
                        + await self.isolating(write, items[middle:], last_resort))
            if last_resort is None:
                raise
            log.error("one item could not be written as it was; recorded in a plain form", error=str(exc))
            return await self.retrying(partial(write, [last_resort(items[0], exc)]))


def plain_entry(entry: Rejection, error: StoreUnavailable) -> Rejection:
    """A dead-letter entry whose code and reason Postgres refused, in ASCII Postgres cannot refuse."""

    def escaped(text: str) -> str:  # control characters and non-ASCII as \x.. / \u.. escapes
        return text.encode("unicode_escape").decode("ascii")

    return Rejection(entry.event_id, escaped(entry.code)[:100], storable_text(
        f"Chip's reason, escaped: {escaped(entry.reason)} "
        f"(stored escaped because Postgres refused it as given: SQLSTATE {error.sqlstate})"))


async def run(wiring: Wiring, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Apply outcomes until the inbox closes."""
    config, state, store = wiring.config, wiring.state, wiring.store
    writer = _Writer(_RETRY)
    delete = partial(store.delete, owner=config.instance_id)
    dead_letter = partial(store.dead_letter, owner=config.instance_id)

    task_status.started()
    async for first in wiring.inbox:
        delivered, rejected, barrier = _collect(first, wiring.inbox, config.delete_batch_size)
        if delivered:
            deleted = await writer.isolating(delete, delivered, None)
            state.deleted += deleted
            state.settled.add(deleted)
        if rejected:
            # Only rows it still held are moved (and counted): another instance may have claimed one.
            codes = await writer.isolating(dead_letter, rejected, plain_entry)
            for code in codes:
                state.dead_lettered.add(code)
            state.settled.add(len(codes))
            if codes:
                log.warning("events dead-lettered", count=len(codes), codes=sorted(set(codes)))
        if barrier is not None:
            barrier.passed.set()
