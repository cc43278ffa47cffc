"""Publishing one batch until every event is settled: delivered, dead-lettered, split or released.

Per call: delivered ids go to the acker for deletion, permanently rejected
ones to the dead-letter table, the rest are retried with backoff and full
jitter (same bytes, same id). After ``publish_attempts`` tries, or when a
retry would outlive the lease, they go back to the table with the error
recorded, each row later the more attempts it has had. While the gate is
closed (outage mode) batches wait in memory and spend no attempt.
"""

from __future__ import annotations

import random

import trio

from ..adapters.chip import ChipClient
from ..adapters.store import Store
from ..config import EmitterConfig
from ..core.answers import PublishOutcome, interpret_response
from ..core.backoff import Backoff
from ..core.events import encode_batch
from ..core.failures import CallFailed, StoreFailure
from ..core.publishing import decide, refusal
from ..errors import StoreUnavailable
from ..logs import get_logger
from ..messages import Delivered, Outcome, Outgoing, Rejected
from ..statistics import DispatcherState
from .gate import DeliveryGate

log = get_logger("durable_emitter.dispatcher")


class Publisher:
    def __init__(self, config: EmitterConfig, *, chip: ChipClient, store: Store, outbox: trio.MemorySendChannel[Outcome],
                 gate: DeliveryGate, slots: trio.Semaphore, state: DispatcherState, backoff: Backoff,
                 rng: random.Random) -> None:
        self.config, self.chip, self.store, self.outbox = config, chip, store, outbox
        self.gate, self.slots, self.state, self.backoff, self.rng = gate, slots, state, backoff, rng

    async def publish_holding_slot(self, batches: list[Outgoing], phase: str) -> None:
        """Publish ``batches`` one after another, then free the slot the caller took for them."""
        self.state.in_flight += 1
        try:
            for batch in batches:
                await self.publish(batch, phase)
        finally:
            self.state.in_flight -= 1
            self.slots.release()

    async def call(self, pending: Outgoing, phase: str) -> PublishOutcome | CallFailed:
        state = self.state
        state.batch_sizes.observe(len(pending))
        started = trio.current_time()
        # Closing: a call ends by the dispatcher's deadline, leaving time to hand its rows back.
        timeout = min(self.config.publish_timeout, self.gate.stop_by - started)
        try:
            response = await self.chip.publish_batch(encode_batch(pending.payloads), timeout)
        except CallFailed as failed:
            return failed
        finally:
            state.publish_seconds[phase].observe(trio.current_time() - started)
        outcome = interpret_response(pending.event_ids, response)
        return refusal(outcome, len(pending)) or outcome

    async def publish(self, pending: Outgoing, phase: str) -> None:
        """Publish until every event is settled, split, or released to the table."""
        config, state, gate = self.config, self.state, self.gate
        attempt = 0
        publish_by = pending.publish_by
        while pending:
            now = trio.current_time()
            if now > publish_by or now >= gate.stop_by:
                await self.release(pending, "lease lapsing before delivery" if now > publish_by
                                   else "closing before delivery", attempt, 0.0)
                return
            if gate.holds:
                if gate.closing:  # Chip does not answer, or refuses us: the rows wait in the table, claimable
                    await self.release(pending, f"closing while Chip does not take calls: {gate.health.reason}",
                                       attempt, 0.0)
                    return
                state.held += len(pending)
                try:
                    await gate.wait_open()
                finally:
                    state.held -= len(pending)
                continue  # the lease may have lapsed meanwhile
            answer = await self.call(pending, phase)
            gate.call_answered(answer if isinstance(answer, CallFailed) else None)
            decision = decide(answer, pending.event_ids, attempt=attempt,
                              attempts=config.publish_attempts, now=trio.current_time(), publish_by=publish_by,
                              backoff=self.backoff, rng=self.rng, paused=gate.holds, stop_by=gate.stop_by)
            state.published.add(phase, len(decision.delivered))
            state.not_published.add(phase, len(pending) - len(decision.delivered))
            if decision.delivered:
                await self.outbox.send(Delivered(decision.delivered))
            if decision.rejected:
                await self.outbox.send(Rejected(decision.rejected))
            if decision.split:
                middle = len(pending) // 2
                await self.publish(pending.slice(0, middle), phase)
                await self.publish(pending.slice(middle, len(pending)), phase)
                return
            if decision.hold:
                continue  # waits for the gate above; the attempt does not count against the rows
            if decision.release:
                state.retries.add(decision.release_reason.partition(":")[0])
                await self.release(pending.pick(decision.release), decision.release_reason, attempt + 1,
                                   decision.retry_after)
            if not decision.retry:
                return
            state.retries.add(decision.reason)
            await gate.sleep(decision.delay)  # cut short by a close that leaves no time for the retry
            pending = pending.pick(decision.retry)
            attempt += 1

    async def release(self, items: Outgoing, error: str, attempts: int, retry_after: float) -> None:
        """Give rows back to the table and free memory.

        A row is claimable again after ``retry_after`` seconds, times ``retry_multiplier``
        for each attempt it had before, up to ``row_retry_max``: rows that keep failing
        come back ever more slowly.
        """
        self.state.released += len(items)
        config = self.config
        try:
            await self.store.release(items.event_ids, owner=config.instance_id, token=items.lease_token,
                                     error=error, attempts=attempts, retry_after=retry_after,
                                     multiplier=config.retry_multiplier, retry_max=config.row_retry_max)
        except StoreUnavailable as exc:  # the lease lapses on its own; the rows are claimed again then
            if exc.kind is not StoreFailure.TRANSIENT:
                raise
            log.warning("could not release rows; they return when their lease lapses", error=str(exc))
