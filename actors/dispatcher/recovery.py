"""Rows claimed back from the table: startup recovery, spilled events, lapsed leases, dead instances' rows.

Every ``scan_interval`` (or when an outbox notification rings the doorbell)
one scan runs the TTL sweep, claims the rows of instances that died,
then rows whose lease lapsed, oldest first, and publishes them through the
same slots as fresh events. A failing step is logged when it starts and stops
failing. The TTL sweep failing (e.g. no rights on the dead-letter table) never
stops delivery; claims failing transiently wait for the next scan, failing for
good (rights, schema) is beyond the dispatcher and crashes it.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import trio

from ..adapters.processes import gone
from ..adapters.store import Store, StoredEvent
from ..config import EmitterConfig
from ..core.backoff import Backoff
from ..core.failures import StoreFailure
from ..core.publishing import publish_deadline, split_by_bytes
from ..errors import StoreUnavailable
from ..logs import FailureLog, get_logger
from ..messages import Barrier, Outcome, Outgoing
from ..statistics import DispatcherState
from .gate import DeliveryGate
from .publisher import Publisher

log = get_logger("durable_emitter.dispatcher")


@contextmanager
def _watched(step: FailureLog, *, crash_unless_transient: bool) -> Iterator[None]:
    """Run one recurring step: log when it starts and stops failing; crash on what a retry cannot mend."""
    try:
        yield
    except StoreUnavailable as exc:
        transient = exc.kind is StoreFailure.TRANSIENT
        if crash_unless_transient and not transient:
            raise
        step.failed(exc, transient=transient)
    else:
        step.worked()


@dataclass(frozen=True, slots=True)
class RunStart:
    """What a dispatcher run's start left to the table, and what that tells the run."""

    stale_before: float  # committed groups sent before this (Trio time) are left to the table too
    run_floor: int  # claims older than this (their token) are an earlier run's: the run takes them again


async def leave_to_the_table(store: Store, config: EmitterConfig,
                             acker: trio.MemorySendChannel[Outcome]) -> RunStart:
    """Leave what an earlier run held to the table.

    An earlier run of this dispatcher (or of this instance id) held rows in
    memory or in flight, leased to this id; they went with it, so the leases of
    rows it wrote end now, and rows it claimed are this run's to claim again at
    once. First the acker writes what that run told it: a row delivered but not
    yet deleted would be claimed and published again. Groups the persister
    committed before the leases ended (handed over now, or later) may be
    claimable already: published from memory as well, they would go twice, so
    the gatherer leaves them to the table. When Postgres cannot be asked, the
    leases lapse on their own, and groups committed before now wait for theirs.
    """
    barrier = Barrier(trio.Event())
    with trio.move_on_after(config.commit_timeout):  # the acker may be waiting for Postgres itself
        await acker.send(barrier)
        await barrier.passed.wait()
    answer: tuple[int, int] | None = None
    attempt, rng = 0, random.Random()
    with trio.move_on_after(config.commit_timeout):
        while answer is None:
            try:
                answer = await store.lapse_leases(config.instance_id, lease=config.lease_duration)
            except StoreUnavailable as exc:
                if exc.kind is not StoreFailure.TRANSIENT:
                    raise
                await trio.sleep(_LAPSE_AGAIN.delay(attempt, rng))
                attempt += 1
    stale_before = publish_deadline(trio.current_time(), config.lease_duration, config.publish_timeout)
    if answer is None:
        # Postgres is away (a failover, a restart): the leases lapse on their own and the rows are
        # claimed then. Crashing here would spend the restart budget on every restart.
        log.warning("could not end the leases an earlier run held; they lapse on their own")
        return RunStart(stale_before, 0)
    lapsed, run_floor = answer
    if lapsed:
        log.info("rows an earlier run held are claimable again", count=lapsed)
    return RunStart(stale_before, run_floor)


_LAPSE_AGAIN = Backoff(0.05, 2.0, 1.0)


async def leave_rows(store: Store, ids: list[str], owner: str) -> None:
    """Make rows committed before this run's start claimable at once (they were never in flight)."""
    try:
        await store.lapse_rows(ids, owner=owner)
    except StoreUnavailable as exc:
        if exc.kind is not StoreFailure.TRANSIENT:
            raise
        log.warning("could not hand rows to the table; their leases lapse on their own", error=str(exc))


class Recovery:
    def __init__(self, config: EmitterConfig, *, store: Store, doorbell: trio.MemoryReceiveChannel[None],
                 gate: DeliveryGate, publisher: Publisher, slots: trio.Semaphore, state: DispatcherState,
                 run_floor: int, liveness_held: Callable[[], bool]) -> None:
        self.config, self.store, self.doorbell = config, store, doorbell
        self.gate, self.publisher, self.slots, self.state = gate, publisher, slots, state
        self.run_floor, self.liveness_held = run_floor, liveness_held
        self.orphans_seen: set[str] = set()  # dead owners already logged

    async def recover_forever(self, nursery: trio.Nursery) -> None:
        """Scan: expire, claim the dead's rows, claim lapsed leases; sleep until the next interval or the doorbell.

        A scan claims for at most one interval, so under continuous load the TTL
        sweep still runs on schedule; when it stopped with rows left, the next
        starts at once.
        """
        config, store = self.config, self.store
        expiry = FailureLog(log, "TTL sweep: failing; retrying each scan", "TTL sweep: working again")
        claims = FailureLog(log, "claims: failing; retrying each scan", "claims: working again")
        while True:
            rows_left = False
            with _watched(expiry, crash_unless_transient=False):
                await self.expire()
            # No claims while Chip is away (they would only churn the table); the TTL
            # sweep above still runs every scan.
            # No claims while Chip is away (they would only churn the table), nor while another
            # session holds this instance's liveness lock (the others may judge it gone and take
            # what it claims); the TTL sweep above still runs every scan.
            if self.gate.open and self.liveness_held():
                with _watched(claims, crash_unless_transient=True):
                    deadline = trio.current_time() + config.scan_interval
                    gone = await self.gone_owners() if not config.writer_only else []
                    if gone:
                        rows_left = await self.claim_all(nursery, partial(self.claim_orphans, gone=gone), deadline)
                    rows_left |= await self.claim_all(nursery, partial(
                        store.claim, owner=config.instance_id, lease=config.lease_duration,
                        writer_only=config.writer_only, run_floor=self.run_floor, gone=gone), deadline)
            if rows_left:
                continue
            with trio.move_on_after(config.scan_interval):
                if self.gate.open:
                    await self.doorbell.receive()
                else:  # rings cannot be answered with claims now: scan again the moment Chip is back
                    await self.gate.wait_open()

    async def expire(self) -> None:
        expired = await self.store.expire(ttl=self.config.event_ttl)
        if expired:
            log.warning("events expired to the dead-letter table", count=expired)
            self.state.expired += expired

    async def gone_owners(self) -> list[str]:
        """The owners whose rows are claimable whatever their lease says: their lock has been free for
        their grace, or their process ran on this host and is gone."""
        free = await self.store.free_owners(owner=self.config.instance_id)
        return [instance_id for instance_id, process, grace_passed in free if grace_passed or gone(process)]

    async def claim_orphans(self, *, limit: int, max_bytes: int, gone: list[str]) -> list[StoredEvent]:
        """Claim rows the ``gone`` owners wrote and held, whatever their lease says; log each owner once."""
        rows, owners = await self.store.claim_orphans(owner=self.config.instance_id, lease=self.config.lease_duration,
                                                      limit=limit, max_bytes=max_bytes, gone=gone)
        if newly := sorted(owners - self.orphans_seen):
            log.warning("claiming the rows of instances that are not running", owners=newly)
            self.orphans_seen.update(newly)
        return rows

    async def claim_all(self, nursery: trio.Nursery, claim: Callable[..., Awaitable[list[StoredEvent]]],
                        deadline: float) -> bool:
        """Claim with ``claim(limit=..., max_bytes=...)`` and publish, while full batches come back and
        until ``deadline``. Each claim is one request's worth, by count and by bytes (Postgres sums the
        payloads), so the first claim is as large as any.

        True if it stopped at the deadline with rows still to claim.
        """
        config = self.config
        while True:
            await self.slots.acquire()
            sent_at = trio.current_time()
            try:
                rows = await claim(limit=config.publish_batch_size, max_bytes=config.max_request_bytes)
            except BaseException:
                self.slots.release()
                raise
            if not rows:
                self.slots.release()
                return False
            self.state.claimed += len(rows)
            publish_by = publish_deadline(sent_at, config.lease_duration, config.publish_timeout)
            batch = Outgoing([r.id for r in rows], [r.payload for r in rows], publish_by, rows[0].lease_token)
            nursery.start_soon(self.publish_claimed, batch)
            room_left = config.max_request_bytes - sum(map(len, batch.payloads)) - 8 * len(batch)
            if len(rows) < config.publish_batch_size and room_left > config.max_event_bytes:
                return False  # it had room for more: nothing more is claimable now
            if trio.current_time() >= deadline:
                return True

    async def publish_claimed(self, batch: Outgoing) -> None:
        """Publish a claimed batch while it holds its slot, cut to the request cap if framing asks for it."""
        await self.publisher.publish_holding_slot(
            [batch.slice(start, stop) for start, stop in split_by_bytes(batch.payloads, self.config.max_request_bytes)],
            "retransmit")
