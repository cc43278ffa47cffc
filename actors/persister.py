"""Persister: group commit. Every emit waiting now goes into one INSERT and one commit.

While one commit runs, new emits queue in the inbox; the next batch takes all
of them (up to about ``persist_batch_size`` events; with several writers free,
each takes its share), so batches grow exactly as fast as Postgres is slow. Each caller is resolved after its commit; a failed commit
fails exactly the emits in it. Committed events go on to the dispatcher in
memory when its buffer has room, else they are written "spilled" (claimable
at once) and the dispatcher reads them back from the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from .adapters.store import Store
from .config import EmitterConfig
from .core.publishing import publish_deadline
from .errors import EmitterError, StoreUnavailable
from .handoff import HandOffSender
from .logs import FailureLog, get_logger
from .messages import EmitRequest, Outgoing
from .statistics import PersisterState

log = get_logger("durable_emitter.persister")


@dataclass(frozen=True)
class Wiring:
    config: EmitterConfig
    inbox: trio.MemoryReceiveChannel[EmitRequest]
    outbox: HandOffSender  # to the dispatcher, within the memory budget
    doorbell: trio.MemorySendChannel[None]  # tells the dispatcher spilled rows wait in the table
    writers: list[Store]  # one connection each, committing in parallel
    state: PersisterState


def _take_batch(first: EmitRequest, inbox: trio.MemoryReceiveChannel[EmitRequest], limit: int,
                share: int) -> list[EmitRequest]:
    """``first`` and the requests queued behind it: a ``share``-th of them, up to about ``limit`` events.

    With ``share`` writers free, each takes its part of the queue, so their
    commits run at once and the callers come back in cohorts: one cohort
    builds its next events while another's commit is in flight (one writer
    taking everything made callers and Postgres take turns). An emit_many call
    is never cut.
    """
    batch = [first]
    count = len(first.event_ids)
    requests = -(-(inbox.statistics().current_buffer_used + 1) // share)  # this writer's part, rounded up
    while count < limit and len(batch) < requests:
        try:
            request = inbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            break
        batch.append(request)
        count += len(request.event_ids)
    return batch


class _Idle:
    """How many writers wait for work: each splits the queue with the others that do."""

    def __init__(self) -> None:
        self.writers = 0


def _columns(batch: list[EmitRequest]) -> tuple[list[str], list[bytes], int]:
    """The batch's ids, payloads and payload bytes, in order."""
    if len(batch) == 1:
        ids, payloads = batch[0].event_ids, batch[0].payloads
    else:
        ids, payloads = [], []
        for request in batch:
            ids += request.event_ids
            payloads += request.payloads
    return ids, payloads, sum(map(len, payloads))


async def _write(wiring: Wiring, store: Store, idle: _Idle) -> None:
    """One writer: its own connection, one commit at a time."""
    config, state = wiring.config, wiring.state
    # Logged when commits start and stop failing; the callers get each error.
    trouble = FailureLog(log, "commits failing; each emit raises StoreUnavailable", "commits work again")
    while True:
        idle.writers += 1
        try:
            first = await wiring.inbox.receive()
        except trio.EndOfChannel:
            return
        finally:
            idle.writers -= 1
        batch = _take_batch(first, wiring.inbox, config.persist_batch_size, 1 + idle.writers)
        ids, payloads, size = _columns(batch)
        # Room in memory is taken before the commit, so the committed group can
        # be handed over without waiting after it; without room it is spilled.
        with wiring.outbox.reserve(len(ids), size) as room:
            sent_at = trio.current_time()
            try:
                with trio.move_on_after(config.commit_timeout) as deadline:
                    await store.insert_events(ids, payloads, owner=config.instance_id,
                                              lease=config.lease_duration, spilled=room is None)
                if deadline.cancelled_caught:  # the store closed the connection mid-statement
                    raise StoreUnavailable(f"Postgres did not confirm the commit within commit_timeout "
                                           f"({config.commit_timeout:g}s); the connection was dropped, which rolls "
                                           "the insert back unless Postgres had committed it just before (then "
                                           "the event is still delivered; a retried emit may deliver it twice)")
            except StoreUnavailable as exc:
                trouble.failed(exc, events=len(ids))
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
            for request in batch:
                request.resolve()
            trouble.worked()
            state.committed.add(len(ids))
            state.group_sizes.observe(len(ids))
            if room is not None:
                room.send(Outgoing(ids, payloads, publish_deadline(sent_at, config.lease_duration,
                                                                   config.publish_timeout)))
            else:
                state.spilled += len(ids)
                try:
                    wiring.doorbell.send_nowait(None)
                except trio.WouldBlock:
                    pass  # already rung


async def run(wiring: Wiring, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Commit emits in groups, one writer per store, until the inbox closes.

    Several writers (``persist_writers``) overlap their commits, which pays
    when the database is far away and each round trip is long. On a local
    Postgres one writer measured fastest (groups stay larger, fewer wake-ups),
    hence the default.
    """
    idle = _Idle()
    async with trio.open_nursery() as nursery:
        for store in wiring.writers:
            nursery.start_soon(_write, wiring, store, idle)
        task_status.started()
