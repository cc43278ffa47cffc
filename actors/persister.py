"""Persister: group commit. Every emit waiting now goes into one INSERT and one commit.

While one commit runs, new emits queue in the inbox; the next batch takes all
of them (up to about ``persist_batch_size`` events; with several writers free,
each takes its share), so batches grow exactly as fast as Postgres is slow. Each caller is resolved after its commit; a failed commit
fails exactly the emits in it. Committed events go on to the dispatcher in
memory when its buffer has room, else they are written "spilled" (claimable
after :data:`SPILL_HOLD`) and the dispatcher reads them back from the table.

Every answer is definite while Postgres can be asked. An error Postgres
answered rolled the group back, and a connection that could not be opened
sent nothing: StoreUnavailable, not written. When the answer is lost after
the insert was sent, the writer asks again on a fresh connection for up to
``commit_timeout`` by writing the same rows again, keeping those that exist:
then the group is committed like any other. It writes again only while the
rows the lost commit may have written are still held by this instance (half
their lease, or of SPILL_HOLD): past that another instance may have delivered
and deleted them, and writing them again would publish them twice, so it
only looks, and finds them (committed) or not (CommitOutcomeUnknown). The
callers get CommitOutcomeUnknown too if Postgres does not answer. The asking
is inline: this writer takes no new group meanwhile (others do), for at most
that bound.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import trio

from .adapters.store import Store, rolled_back
from .config import EmitterConfig
from .core.backoff import Backoff
from .core.failures import StoreFailure
from .core.publishing import publish_deadline
from .errors import CommitOutcomeUnknown, EmitterError, StoreUnavailable
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


class _Lost(Exception):
    """The group's commit was sent, its answer lost, and Postgres could not be asked in time (the message says why)."""


# Seconds a spilled group stays with its writer before anyone may claim it: a lost
# commit's rows can be written again (safely) within half of it. It delays only
# spilled rows, which wait for room or for delivery anyway.
SPILL_HOLD = 2.0


class _Writer:
    """One writer's commits on its own connection, each answered for certain when Postgres can be asked.

    ``answered``: the connection's last exchange was answered. If not, the
    connection is opened (one round trip) before the next insert, so not
    reaching Postgres (nothing sent: not written) is told apart from a lost
    answer (sent: maybe committed). ``sent``: the current group's insert may
    have reached Postgres.
    """

    def __init__(self, config: EmitterConfig, store: Store) -> None:
        self.config, self.store = config, store
        self.answered = self.sent = False
        self.rng = random.Random()

    async def commit(self, ids: list[str], payloads: list[bytes], *, spilled: bool) -> None:
        """Commit the group; return once it is committed.

        Raises :class:`StoreUnavailable` when the rows certainly were not
        written: Postgres answered with an error (see :func:`rolled_back`), or
        nothing was sent. After a lost answer (a broken connection, no answer
        within ``commit_timeout``, a FATAL error) it asks, see :meth:`confirm`.
        """
        config, store = self.config, self.store
        owner, hold = config.instance_id, SPILL_HOLD if spilled else config.lease_duration  # this writer's that long
        answered, self.answered, self.sent = self.answered, False, False
        held_until = trio.current_time() + hold / 2
        try:
            with trio.move_on_after(config.commit_timeout):
                if not answered:
                    await store.now()
                self.sent = True
                await store.insert_events(ids, payloads, owner=owner, hold=hold)
                self.answered = True
                return
            if not self.sent:
                raise StoreUnavailable(f"Postgres could not be reached within commit_timeout "
                                       f"({config.commit_timeout:g}s); nothing was sent")
            lost = StoreUnavailable(f"no answer within commit_timeout ({config.commit_timeout:g}s)")
        except StoreUnavailable as exc:
            if not self.sent or rolled_back(exc):
                raise
            lost = exc
        await self.confirm(partial(store.confirm_events, ids, payloads, owner=owner, hold=hold),
                           partial(store.count_events, ids, owner=owner), held_until, len(ids), lost)

    async def confirm(self, write_again: Callable[[], Awaitable[int]], count: Callable[[], Awaitable[int]],
                      held_until: float, events: int, lost: StoreUnavailable) -> None:
        """Ask whether the lost commit happened, until ``commit_timeout`` passes; return once the group is committed.

        Until ``held_until``, ``write_again`` keeps the rows the lost commit
        wrote and writes the others, under the same ids: once it answers, the
        group is committed, whatever happened in which order
        (``queries.CONFIRM_EVENTS`` says why a lookup could not tell). Later,
        rows missing may have been delivered and deleted already: ``count``
        only looks, and none found raises :class:`_Lost`. Each try opens a fresh
        connection (the store dropped the one whose answer was lost). A
        connection attempt under way when the time is up ends by its own
        connect_timeout (5 s).
        """
        attempt, last = 0, lost
        with trio.move_on_after(self.config.commit_timeout):
            while True:
                try:
                    written = 0
                    with trio.move_on_at(held_until) as writing:
                        written = await write_again()
                    if writing.cancelled_caught and not await count():
                        raise _Lost(f"the commit was sent and its answer lost ({lost}); its rows are not in the "
                                    f"table: never written, or delivered and deleted by another instance since. "
                                    f"Not written again, which could publish them twice")
                except StoreUnavailable as exc:
                    last = exc
                    if exc.kind is not StoreFailure.TRANSIENT:
                        break
                else:
                    self.answered = True
                    log.warning("a commit's answer was lost; asked again, Postgres has the events committed",
                                events=events, written_again=written, lost=str(lost))
                    return
                await trio.sleep(_ASK_AGAIN.delay(attempt, self.rng))
                attempt += 1
        raise _Lost(f"the commit was sent and its answer lost ({lost}); Postgres, asked again for commit_timeout "
                    f"({self.config.commit_timeout:g}s), did not answer (last: {last})") from last


# Asking again is one cheap statement, and callers wait on it: soon, then about twice a second.
_ASK_AGAIN = Backoff(0.01, 2.0, 0.5)


def _unknown(request: EmitRequest, why: str, cause: BaseException | None) -> CommitOutcomeUnknown:
    error = CommitOutcomeUnknown.of(request.event_ids, why)
    error.__cause__ = cause
    return error


async def _write(wiring: Wiring, store: Store, idle: _Idle) -> None:
    """One writer: its own connection, one commit at a time."""
    config, state = wiring.config, wiring.state
    writer = _Writer(config, store)
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
                await writer.commit(ids, payloads, spilled=room is None)
            except StoreUnavailable as exc:
                trouble.failed(exc, events=len(ids))
                for request in batch:
                    request.resolve(exc)
                continue
            except _Lost as exc:
                trouble.failed(exc, events=len(ids))
                for request in batch:
                    request.resolve(_unknown(request, str(exc), exc.__cause__))
                continue
            except BaseException as exc:
                # Crashing (or cancelled): nobody in this batch may hang.
                if writer.sent:
                    why = f"the persister stopped before Postgres confirmed the commit ({exc!r})"
                    for request in batch:
                        request.resolve(_unknown(request, why, exc))
                else:
                    error = EmitterError(f"persister stopped before sending the commit: {exc!r}; nothing was written")
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
                state.spilled += len(ids)  # the dispatcher's scans find them once SPILL_HOLD passed


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
