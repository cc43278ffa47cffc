"""Dispatcher: committed events -> PublishBatch calls, several in flight -> outcomes to the acker.

Two sources feed it: committed events from the persister (in memory), and
rows claimed back from the table (startup recovery, spilled events, expired
leases, released retries). Each batch holds one of ``publishes_in_flight``
slots from the moment it starts gathering until Chip's answer is handled, so
a slow Chip fills the slots, the memory buffer fills, and new events stay in
the table: memory is bounded whatever the backlog.

Per batch: delivered ids go to the acker for deletion, permanently rejected
ones to the dead-letter table, the rest are retried with backoff and full
jitter (same bytes, same id). After ``publish_attempts`` tries they go back
to the table with the error recorded, to be claimed again later.
"""

from __future__ import annotations

from collections import deque

import structlog
import trio

from .backlog import BufferBudget
from .backoff import Backoff
from .chip import CallFailed, ChipClient
from .config import EmitterConfig
from .events import encode_batch, framed_size, interpret_response
from .messages import Delivered, Outcome, Outgoing, Rejected
from .metrics import Metrics
from .store import Store

log = structlog.get_logger("durable_emitter.dispatcher")


def claim_limit(config: EmitterConfig, mean_payload: float) -> int:
    """How many rows to claim at once so one batch stays under the request size cap."""
    by_bytes = int(config.max_request_bytes // max(mean_payload + 8, 1))
    return max(1, min(config.publish_batch_size, by_bytes))


def split_by_bytes(items: list[Outgoing], max_bytes: int) -> list[list[Outgoing]]:
    """Consecutive chunks whose encoded size stays within ``max_bytes`` (one item at least)."""
    chunks: list[list[Outgoing]] = [[]]
    size = 0
    for item in items:
        item_size = framed_size(item.payload)
        if chunks[-1] and size + item_size > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += item_size
    return chunks if chunks[0] else []


async def _receive_until(inbox: trio.MemoryReceiveChannel[list[Outgoing]],
                         deadline: float | None) -> list[Outgoing] | None:
    """The next committed group; None if the inbox ended or ``deadline`` (None: no deadline) passed."""
    try:
        return inbox.receive_nowait()
    except trio.WouldBlock:
        pass
    except trio.EndOfChannel:
        return None
    with trio.move_on_at(float("inf") if deadline is None else deadline):
        try:
            return await inbox.receive()
        except trio.EndOfChannel:
            return None
    return None


class _Dispatcher:
    def __init__(self, config: EmitterConfig, outbox: trio.MemorySendChannel[Outcome], chip: ChipClient,
                 store: Store, budget: BufferBudget, metrics: Metrics, reclaim_before: object) -> None:
        self.config = config
        self.outbox = outbox
        self.chip = chip
        self.store = store
        self.budget = budget
        self.metrics = metrics
        self.reclaim_before = reclaim_before
        self.slots = trio.Semaphore(config.publishes_in_flight)
        self.queued: deque[Outgoing] = deque()  # received from the persister, not yet in a batch
        self.mean_payload = float(config.max_event_bytes)

    # -- fresh events from the persister --------------------------------------------------

    def _take_queued(self) -> Outgoing | None:
        """The next queued event still within its lease (older ones are left to the table)."""
        now = trio.current_time()
        while self.queued:
            item = self.queued.popleft()
            self.budget.give_back(1, len(item.payload))
            if now <= item.publish_by:
                return item
        return None

    async def next_fresh(self, inbox: trio.MemoryReceiveChannel[list[Outgoing]]) -> Outgoing | None:
        """The next event to publish; None when the inbox has ended."""
        while (item := self._take_queued()) is None:
            group = await _receive_until(inbox, None)
            if group is None:
                return None
            self.queued.extend(group)
        return item

    async def gather(self, first: Outgoing, inbox: trio.MemoryReceiveChannel[list[Outgoing]]) -> list[Outgoing]:
        """``first`` plus whatever arrives within ``publish_linger``, up to the batch limits."""
        config = self.config
        batch = [first]
        size = framed_size(first.payload)
        deadline = trio.current_time() + config.publish_linger
        while len(batch) < config.publish_batch_size:
            if not self.queued:
                group = await _receive_until(inbox, deadline)
                if group is None:
                    break
                self.queued.extend(group)
                continue
            item_size = framed_size(self.queued[0].payload)
            if size + item_size > config.max_request_bytes:
                break  # it starts the next batch
            item = self._take_queued()
            if item is not None:
                batch.append(item)
                size += item_size
        return batch

    async def dispatch_fresh(self, nursery: trio.Nursery, inbox: trio.MemoryReceiveChannel[list[Outgoing]]) -> None:
        # Wait for work before taking a slot, so an idle inbox never starves recovery.
        while (first := await self.next_fresh(inbox)) is not None:
            await self.slots.acquire()
            try:
                batch = await self.gather(first, inbox)
            except BaseException:
                self.slots.release()
                raise
            nursery.start_soon(self.publish_holding_slot, batch, "batch")

    # -- rows claimed back from the table ------------------------------------------------

    async def recover_forever(self, nursery: trio.Nursery, doorbell: trio.MemoryReceiveChannel[None]) -> None:
        config = self.config
        while True:
            try:
                await self.expire()
                await self.claim_all(nursery)
            except Exception as exc:  # StoreUnavailable and friends: try again next scan
                log.warning("recovery scan failed", error=str(exc))
            with trio.move_on_after(config.scan_interval):
                await doorbell.receive()

    async def expire(self) -> None:
        expired = await self.store.expire(ttl=self.config.event_ttl)
        if expired:
            log.warning("events expired to the dead-letter table", count=expired)
            self.metrics.expired.inc(expired)
            self.metrics.dead_lettered.labels("EXPIRED").inc(expired)

    async def claim_all(self, nursery: trio.Nursery) -> None:
        config = self.config
        while True:
            await self.slots.acquire()
            try:
                limit = claim_limit(config, self.mean_payload)
                rows = await self.store.claim(owner=config.instance_id, lease=config.lease_duration, limit=limit,
                                              reclaim_before=self.reclaim_before, writer_only=config.writer_only)
            except BaseException:
                self.slots.release()
                raise
            if not rows:
                self.slots.release()
                return
            self.mean_payload = sum(len(r.payload) for r in rows) / len(rows)
            self.metrics.claimed.inc(len(rows))
            publish_by = trio.current_time() + config.lease_duration - 2 * config.publish_timeout
            batch = [Outgoing(r.id, r.payload, publish_by) for r in rows]
            nursery.start_soon(self.publish_holding_slot, batch, "retransmit")
            if len(rows) < limit:
                return

    # -- publishing ----------------------------------------------------------------------

    async def publish_holding_slot(self, batch: list[Outgoing], phase: str) -> None:
        self.metrics.in_flight.inc()
        try:
            for chunk in split_by_bytes(batch, self.config.max_request_bytes):
                await self.publish(chunk, phase)
        finally:
            self.metrics.in_flight.dec()
            self.slots.release()

    async def publish(self, pending: list[Outgoing], phase: str) -> None:
        config, metrics = self.config, self.metrics
        backoff = Backoff(config.retry_initial, config.retry_multiplier, config.retry_max)
        while pending:
            if trio.current_time() > min(item.publish_by for item in pending):
                await self.release(pending, "lease lapsing before delivery", backoff.attempts, 0.0)
                return
            metrics.publish_batch_size.observe(len(pending))
            started = trio.current_time()
            try:
                response = await self.chip.publish_batch(encode_batch([item.payload for item in pending]))
            except CallFailed as exc:
                metrics.publish_duration.labels(phase).observe(trio.current_time() - started)
                metrics.publish_events_failure.labels(phase).inc(len(pending))
                if not exc.transient:
                    await self.refuse(pending, exc, phase)
                    return
                reason, retry = exc.code, pending
            else:
                metrics.publish_duration.labels(phase).observe(trio.current_time() - started)
                outcome = interpret_response([item.event_id for item in pending], response)
                if outcome.delivered:
                    metrics.publish_events_success.labels(phase).inc(len(outcome.delivered))
                    await self.outbox.send(Delivered(tuple(outcome.delivered)))
                if outcome.rejected:
                    ids, codes, reasons = zip(*outcome.rejected, strict=True)
                    await self.outbox.send(Rejected(ids, codes, reasons))
                if not outcome.retry:
                    return
                retry = [pending[i] for i in outcome.retry]
                metrics.publish_events_failure.labels(phase).inc(len(retry))
                reason = "NOT_ACKNOWLEDGED"
            metrics.publish_retries.labels(reason).inc()
            if backoff.attempts + 1 >= config.publish_attempts:
                await self.release(retry, reason, backoff.attempts + 1, backoff.ceiling())
                return
            await trio.sleep(backoff.next_delay())
            pending = retry

    async def refuse(self, pending: list[Outgoing], exc: CallFailed, phase: str) -> None:
        """A permanent whole-call error: bisect to find the events at fault; dead-letter only those."""
        if len(pending) > 1:
            middle = len(pending) // 2
            await self.publish(pending[:middle], phase)
            await self.publish(pending[middle:], phase)
            return
        item = pending[0]
        await self.outbox.send(Rejected((item.event_id,), (exc.code,), (exc.detail or exc.code,)))

    async def release(self, items: list[Outgoing], error: str, attempts: int, retry_after: float) -> None:
        """Give rows back to the table (lease ends after ``retry_after``) and free memory."""
        self.metrics.released.inc(len(items))
        log.info("publish attempts exhausted; left in the table for a later claim",
                 events=len(items), error=error, retry_after_s=round(retry_after, 3))
        try:
            await self.store.release([i.event_id for i in items], owner=self.config.instance_id,
                          error=error, attempts=attempts, retry_after=retry_after)
        except Exception as exc:  # the lease lapses on its own; the rows are claimed again then
            log.warning("could not release rows; they return when their lease lapses", error=str(exc))


async def run(
    config: EmitterConfig,
    inbox: trio.MemoryReceiveChannel[list[Outgoing]],
    outbox: trio.MemorySendChannel[Outcome],
    doorbell: trio.MemoryReceiveChannel[None],
    budget: BufferBudget,
    chip: ChipClient,
    store: Store,
    metrics: Metrics,
    reclaim_before: object = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Publish until the inbox closes, then give in-flight calls ``shutdown_timeout`` to finish.

    ``reclaim_before`` (a database timestamp): rows this instance id owned
    before then are ours to claim at once, whatever their lease says (a
    restart of the same instance).
    """
    dispatcher = _Dispatcher(config, outbox, chip, store, budget, metrics, reclaim_before)
    async with trio.open_nursery() as nursery:
        recovery = trio.CancelScope()

        async def recover() -> None:
            with recovery:
                await dispatcher.recover_forever(nursery, doorbell)

        nursery.start_soon(recover)
        task_status.started()
        await dispatcher.dispatch_fresh(nursery, inbox)
        recovery.cancel()
        nursery.cancel_scope.deadline = trio.current_time() + config.shutdown_timeout
