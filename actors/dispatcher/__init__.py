"""Dispatcher: committed events -> PublishBatch calls, several in flight -> outcomes to the acker.

Two sources feed it: committed events from the persister (in memory, cut into
batches by :mod:`.gathering`), and rows claimed back from the table
(:mod:`.recovery`: startup recovery, spilled events, lapsed leases, released
retries, dead instances' rows). Each batch holds one of ``publishes_in_flight``
slots, one semaphore for both sources, from the moment it starts gathering
until Chip's answer is handled (:mod:`.publisher`), so a slow Chip fills the
slots, the hand-off fills, and new events stay in the table: memory is bounded
whatever the backlog. While Chip does not answer or refuses us, the delivery
gate (:mod:`.gate`) holds batches in memory and stops claims. Rows the outbox
wrote are claimed at once when their notification rings the doorbell
(:mod:`.listening`), else at the next scan.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio

from ..adapters.chip import ChipClient
from ..adapters.listener import Listener
from ..adapters.store import Store
from ..config import EmitterConfig
from ..core.backoff import Backoff
from ..handoff import HandOffReceiver
from ..messages import Outcome
from ..statistics import DispatcherState
from .gate import DeliveryGate
from .gathering import Gatherer
from .listening import ring_on_notifications
from .publisher import Publisher
from .recovery import Recovery, leave_rows, leave_to_the_table


@dataclass(frozen=True)
class Wiring:
    config: EmitterConfig
    inbox: HandOffReceiver  # committed groups from the persister
    doorbell: trio.MemoryReceiveChannel[None]  # rung when outbox rows were committed
    outbox: trio.MemorySendChannel[Outcome]  # to the acker
    chip: ChipClient
    store: Store
    state: DispatcherState
    bell: trio.MemorySendChannel[None]  # the doorbell's other end: rung when outbox rows were committed
    listener: Listener | None  # None: no LISTEN (a pooler in transaction mode); the scan finds outbox rows
    liveness_held: Callable[[], bool]  # the sampler's word: False while another session holds the instance's lock


async def _dispatch_fresh(wiring: Wiring, slots: trio.Semaphore, publisher: Publisher, nursery: trio.Nursery,
                          stale_before: float) -> None:
    """Committed groups -> batches, each published in its own task while it holds a slot."""
    config = wiring.config
    gatherer = Gatherer(wiring.inbox, config.publish_batch_size, config.max_request_bytes, config.publish_linger,
                        stale_before=stale_before, leave=partial(leave_rows, wiring.store, owner=config.instance_id))
    # Wait for work before taking a slot, so an idle inbox never starves recovery.
    while await gatherer.wait_for_work():
        await slots.acquire()
        try:
            batch = await gatherer.gather()
        except BaseException:
            slots.release()
            raise
        if not batch:  # every queued event lapsed meanwhile
            slots.release()
            continue
        nursery.start_soon(publisher.publish_holding_slot, [batch], "batch")  # gathered within the size cap


async def run(wiring: Wiring, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Publish until the inbox closes; in-flight calls then finish within the supervisor's shutdown deadline."""
    config, state = wiring.config, wiring.state
    slots = trio.Semaphore(config.publishes_in_flight)
    backoff = Backoff(config.retry_initial, config.retry_multiplier, config.retry_max)
    rng = random.Random()
    wiring.inbox.give_no_room(False)  # an earlier run may have paused
    start = await leave_to_the_table(wiring.store, config, wiring.outbox)
    async with trio.open_nursery() as nursery:
        gate = DeliveryGate(wiring.chip, state, failures_to_pause=config.failures_to_pause, probe_backoff=backoff,
                            probe_timeout=config.publish_timeout, rng=rng, nursery=nursery,
                            paused=wiring.inbox.give_no_room)
        publisher = Publisher(config, chip=wiring.chip, store=wiring.store, outbox=wiring.outbox, gate=gate,
                              slots=slots, state=state, backoff=backoff, rng=rng)
        recovery = Recovery(config, store=wiring.store, doorbell=wiring.doorbell, gate=gate, publisher=publisher,
                            slots=slots, state=state, run_floor=start.run_floor, liveness_held=wiring.liveness_held)
        recovery_scope = trio.CancelScope()

        async def recover() -> None:
            with recovery_scope:
                async with trio.open_nursery() as scanning:
                    if wiring.listener is not None:
                        scanning.start_soon(ring_on_notifications, wiring.listener, wiring.bell, backoff, rng)
                    await recovery.recover_forever(nursery)

        nursery.start_soon(recover)
        task_status.started()
        await _dispatch_fresh(wiring, slots, publisher, nursery, start.stale_before)
        recovery_scope.cancel()
        gate.stop(config.shutdown_timeout)  # calls in flight finish; what Chip does not take stays in the table
