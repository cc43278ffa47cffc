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
to the table with the error recorded, to be claimed again later, each row
later the more attempts it has had.

Outage mode (:mod:`core.outage`): after ``failures_to_pause`` failed calls in a
row, or one call Chip refused us, delivery pauses: batches wait in memory,
no row is claimed or released, and one task probes Chip with Ping on backoff
up to ``retry_max``. The first answer resumes delivery at full speed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import trio

from .adapters.chip import ChipClient
from .adapters.store import Store, StoredEvent
from .config import EmitterConfig
from .core.admission import MemoryBudget
from .core.backoff import Backoff
from .core.events import PublishOutcome, encode_batch, framed_size, interpret_response
from .core.failures import StoreFailure, classify_sqlstate
from .core.outage import Change, ChipHealth, Delivery
from .core.publishing import (
    CallFailed,
    claim_limit,
    decide,
    fitting,
    publish_deadline,
    split_by_bytes,
)
from .errors import StoreUnavailable
from .logs import get_logger
from .messages import CommittedGroup, Delivered, Outcome, Outgoing, Rejected
from .statistics import DispatcherState

log = get_logger("durable_emitter.dispatcher")


@dataclass(frozen=True)
class Wiring:
    config: EmitterConfig
    inbox: trio.MemoryReceiveChannel[CommittedGroup]  # from the persister
    doorbell: trio.MemoryReceiveChannel[None]  # rung when spilled rows wait in the table
    outbox: trio.MemorySendChannel[Outcome]  # to the acker
    budget: MemoryBudget  # given back as groups come off the inbox
    chip: ChipClient
    store: Store
    state: DispatcherState


async def _receive_until(inbox: trio.MemoryReceiveChannel[CommittedGroup],
                         deadline: float) -> CommittedGroup | None:
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
    is checked per group, and a run of events is taken with one slice.
    """

    def __init__(self, inbox: trio.MemoryReceiveChannel[CommittedGroup], budget: MemoryBudget,
                 batch_size: int, max_bytes: int, linger: float) -> None:
        self.inbox, self.budget = inbox, budget
        self.batch_size, self.max_bytes, self.linger = batch_size, max_bytes, linger
        self.group: Outgoing | None = None  # taken off the inbox, partly gathered
        self.taken = 0  # how many of self.group went into batches

    async def _refill(self, deadline: float) -> bool:
        """Queue the next group still within its lease (older ones are left to the table); False at the deadline."""
        while True:
            group = await _receive_until(self.inbox, deadline)
            if group is None:
                return False
            self.budget.give_back(len(group.events), group.size)  # it left the channel the budget bounds
            if trio.current_time() <= group.events.publish_by:
                self.group, self.taken = group.events, 0
                return True

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
                self.group = None  # lapsed while queued: left to the table
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


class _Trouble:
    """Remembers whether a recurring step is failing, so its log says when that starts and ends."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.failing = False

    @contextmanager
    def watch(self, *, crash_unless_transient: bool) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable as exc:
            transient = classify_sqlstate(exc.sqlstate) is StoreFailure.TRANSIENT
            if crash_unless_transient and not transient:
                raise
            if not self.failing:
                log.warning(f"{self.step}: failing; retrying each scan", error=str(exc), transient=transient)
            self.failing = True
        else:
            if self.failing:
                log.warning(f"{self.step}: working again")
            self.failing = False


class _Dispatcher:
    def __init__(self, wiring: Wiring) -> None:
        config = wiring.config
        self.wiring = wiring
        self.config = config
        self.state = wiring.state
        self.slots = trio.Semaphore(config.publishes_in_flight)
        self.mean_payload = float(config.max_event_bytes)
        self.backoff = Backoff(config.retry_initial, config.retry_multiplier, config.retry_max)
        self.rng = random.Random()
        self.health = ChipHealth(failures_to_pause=config.failures_to_pause, probe_backoff=self.backoff)
        self.resumed = trio.Event()  # set while delivery is up; a fresh one while paused
        self.resumed.set()
        self.nursery: trio.Nursery | None = None  # where the prober runs; set by run()
        self.probing = False
        self.orphans_seen: set[str] = set()  # dead owners already logged

    # -- outage mode -------------------------------------------------------------------

    def _changed(self, change: Change | None) -> None:
        """Apply a change of delivery state: open or close the gate, start the prober, log what a human needs."""
        if change is None:
            return
        self.state.delivery = self.health.state.value  # "up" only once a publish worked again
        self.state.paused_calls = change.failed_calls
        if change.state is Delivery.UP:
            if change.line:
                log.warning("Chip answers again; delivery resumed", down_for_s=round(change.down_for, 1),
                            failed_calls=change.failed_calls)
            self.resumed.set()
            return
        if self.resumed.is_set():
            self.resumed = trio.Event()
        if not self.probing:
            self.probing = True
            assert self.nursery is not None  # run() sets it before any publish
            self.nursery.start_soon(self.probe_until_answered)
        if change.line:
            what = ("Chip refuses our calls; delivery {} (check credentials and Chip's configuration)"
                    if change.state is Delivery.REFUSED else "Chip does not answer; delivery {}")
            log.warning(what.format(change.line), reason=change.reason, down_for_s=round(change.down_for, 1),
                        failed_calls=change.failed_calls, held_events=self.state.held)

    async def probe_until_answered(self) -> None:
        """Ping Chip on backoff (up to retry_max) until it answers; then delivery resumes on trial."""
        try:
            while self.health.paused:
                await trio.sleep(self.health.next_probe_delay(self.rng))
                failed = await self.wiring.chip.probe(self.config.publish_timeout)
                now = trio.current_time()
                if failed is None:
                    self._changed(self.health.probe_answered(now))
                else:
                    self._changed(self.health.probe_failed(failed.kind, str(failed), now))
        finally:
            self.probing = False

    async def until_resumed(self) -> None:
        while not self.resumed.is_set():
            await self.resumed.wait()

    # -- fresh events from the persister --------------------------------------------------

    async def dispatch_fresh(self, nursery: trio.Nursery) -> None:
        config = self.config
        gatherer = Gatherer(self.wiring.inbox, self.wiring.budget, config.publish_batch_size,
                            config.max_request_bytes, config.publish_linger)
        # Wait for work before taking a slot, so an idle inbox never starves recovery.
        while await gatherer.wait_for_work():
            await self.slots.acquire()
            try:
                batch = await gatherer.gather()
            except BaseException:
                self.slots.release()
                raise
            if not batch:  # every queued event lapsed meanwhile
                self.slots.release()
                continue
            nursery.start_soon(self.publish_holding_slot, [batch], "batch")  # gathered within the size cap

    # -- rows claimed back from the table ------------------------------------------------

    async def start(self) -> None:
        """Leave what an earlier run held to the table, claimable at once.

        An earlier run of this dispatcher (or of this instance id) held rows in
        memory or in flight, leased to this id; they went with it. Groups still
        in the inbox were committed before their leases are ended here, so the
        table covers them too: publishing them from memory as well would only
        send them twice.
        """
        while True:
            try:
                group = self.wiring.inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            self.wiring.budget.give_back(len(group.events), group.size)
        lapsed = await self.wiring.store.lapse_leases(self.config.instance_id)
        if lapsed:
            log.info("rows an earlier run held are claimable again", count=lapsed)

    async def recover_forever(self, nursery: trio.Nursery) -> None:
        """Scan every ``scan_interval`` (or when rung): expire, claim the dead's rows, claim lapsed leases.

        A failing step is logged when it starts and stops failing. The TTL sweep
        failing (e.g. no rights on the dead-letter table) never stops delivery.
        Claims failing transiently wait for the next scan; failing for good
        (rights, schema) is beyond the dispatcher and crashes it. A scan claims
        for at most one interval, so under continuous load the TTL sweep still
        runs on schedule; when it stopped with rows left, the next starts at once.
        """
        config, store = self.config, self.wiring.store
        expiry, claims = _Trouble("TTL sweep"), _Trouble("claims")
        while True:
            rows_left = False
            with expiry.watch(crash_unless_transient=False):
                await self.expire()
            # No claims while Chip is away (they would only churn the table); the TTL
            # sweep above still runs every scan.
            if self.resumed.is_set():
                with claims.watch(crash_unless_transient=True):
                    deadline = trio.current_time() + config.scan_interval
                    if config.session_liveness and not config.writer_only:
                        rows_left = await self.claim_orphans(nursery, deadline)
                    rows_left |= await self.claim_all(nursery, partial(
                        store.claim, owner=config.instance_id, lease=config.lease_duration,
                        writer_only=config.writer_only), deadline)
            if rows_left:
                continue
            with trio.move_on_after(self.config.scan_interval):
                await self.wiring.doorbell.receive()

    async def expire(self) -> None:
        expired = await self.wiring.store.expire(ttl=self.config.event_ttl)
        if expired:
            log.warning("events expired to the dead-letter table", count=expired)
            self.state.expired += expired

    async def claim_orphans(self, nursery: trio.Nursery, deadline: float) -> bool:
        """Claim at once the rows of owners with no live session: instances that died."""
        config, store = self.config, self.wiring.store
        orphans = await store.orphaned_owners(me=config.instance_id)
        if not orphans:
            return False
        if newly := sorted(set(orphans) - self.orphans_seen):
            log.warning("claiming the rows of instances that are not running", owners=newly)
            self.orphans_seen.update(newly)
        return await self.claim_all(nursery, partial(store.claim_orphans, orphans, owner=config.instance_id,
                                                     lease=config.lease_duration), deadline)

    async def claim_all(self, nursery: trio.Nursery, claim: Callable[..., Awaitable[list[StoredEvent]]],
                        deadline: float) -> bool:
        """Claim with ``claim(limit=...)`` and publish, while full batches come back and until ``deadline``.

        True if it stopped at the deadline with rows still to claim.
        """
        config = self.config
        while True:
            await self.slots.acquire()
            sent_at = trio.current_time()
            try:
                limit = claim_limit(config.publish_batch_size, config.max_request_bytes, self.mean_payload)
                rows = await claim(limit=limit)
            except BaseException:
                self.slots.release()
                raise
            if not rows:
                self.slots.release()
                return False
            self.state.claimed += len(rows)
            publish_by = publish_deadline(sent_at, config.lease_duration, config.publish_timeout)
            batch = Outgoing([r.id for r in rows], [r.payload for r in rows], publish_by)
            self.mean_payload = sum(map(len, batch.payloads)) / len(rows)
            # Sized by the mean payload: a few large rows may still need cutting to the cap.
            nursery.start_soon(self.publish_holding_slot, [batch.slice(start, stop) for start, stop
                                                           in split_by_bytes(batch.payloads, config.max_request_bytes)],
                               "retransmit")
            if len(rows) < limit:
                return False
            if trio.current_time() >= deadline:
                return True

    # -- publishing ----------------------------------------------------------------------

    async def publish_holding_slot(self, batches: list[Outgoing], phase: str) -> None:
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
        try:
            response = await self.wiring.chip.publish_batch(encode_batch(pending.payloads))
        except CallFailed as failed:
            return failed
        finally:
            state.publish_seconds[phase].observe(trio.current_time() - started)
        return interpret_response(pending.event_ids, response)

    async def publish(self, pending: Outgoing, phase: str) -> None:
        """Publish until every event is settled, split, or released to the table."""
        config, state = self.config, self.state
        attempt = 0
        publish_by = pending.publish_by
        while pending:
            if trio.current_time() > publish_by:
                await self.release(pending, "lease lapsing before delivery", attempt, 0.0)
                return
            if not self.resumed.is_set():
                state.held += len(pending)
                try:
                    await self.until_resumed()
                finally:
                    state.held -= len(pending)
                continue  # the lease may have lapsed meanwhile
            answer = await self.call(pending, phase)
            now = trio.current_time()
            if isinstance(answer, CallFailed):
                self._changed(self.health.call_failed(answer.kind, str(answer), now))
            else:
                self._changed(self.health.call_succeeded(now))
            decision = decide(answer, pending.event_ids, attempt=attempt,
                              attempts=config.publish_attempts, now=now, publish_by=publish_by,
                              backoff=self.backoff, rng=self.rng, paused=self.health.paused)
            state.published.add(phase, len(decision.delivered))
            state.not_published.add(phase, len(pending) - len(decision.delivered))
            if decision.delivered:
                await self.wiring.outbox.send(Delivered(decision.delivered))
            if decision.rejected:
                await self.wiring.outbox.send(Rejected(decision.rejected))
            if decision.split:
                middle = len(pending) // 2
                await self.publish(pending.slice(0, middle), phase)
                await self.publish(pending.slice(middle, len(pending)), phase)
                return
            if decision.hold:
                continue  # waits for the gate above; the attempt does not count against the rows
            if decision.release:
                state.retries.add(decision.reason)
                await self.release(pending.pick(decision.release), decision.reason, attempt + 1,
                                   decision.retry_after)
                return
            if not decision.retry:
                return
            state.retries.add(decision.reason)
            await trio.sleep(decision.delay)
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
            await self.wiring.store.release(items.event_ids, owner=config.instance_id,
                                            error=error, attempts=attempts, retry_after=retry_after,
                                            multiplier=config.retry_multiplier, retry_max=config.row_retry_max)
        except StoreUnavailable as exc:  # the lease lapses on its own; the rows are claimed again then
            if classify_sqlstate(exc.sqlstate) is not StoreFailure.TRANSIENT:
                raise
            log.warning("could not release rows; they return when their lease lapses", error=str(exc))


async def run(wiring: Wiring, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Publish until the inbox closes; in-flight calls then finish within the supervisor's shutdown deadline."""
    dispatcher = _Dispatcher(wiring)
    await dispatcher.start()
    async with trio.open_nursery() as nursery:
        dispatcher.nursery = nursery
        recovery = trio.CancelScope()

        async def recover() -> None:
            with recovery:
                await dispatcher.recover_forever(nursery)

        nursery.start_soon(recover)
        task_status.started()
        await dispatcher.dispatch_fresh(nursery)
        recovery.cancel()
        if dispatcher.health.paused:  # held batches cannot finish: their rows stay in the table
            nursery.cancel_scope.cancel()
