"""The :class:`Emitter` handle a host holds: ``emit``, ``flush`` and ``statistics``.

It owns the emit counters (every emit returns through it) and the admission
decision; the work is done by the actors behind the intake channel.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime

import trio
from prometheus_client import CollectorRegistry

from .adapters.chip_auth import ChipCredentials, Signer
from .adapters.store import Store
from .config import EmitterConfig
from .core.admission import Admission
from .core.events import AttributeValue, Body, build_event, build_events, too_large
from .errors import (
    CommitOutcomeUnknown,
    EmitterClosed,
    EmitterError,
    EventTooLarge,
    FlushTimeout,
    StoreUnavailable,
    closed_error,
    current_pid,
    refuse_after_fork,
)
from .handoff import BudgetStatistics
from .messages import EmitRequest
from .statistics import EmitState, EmitterStatistics, Sources
from .tracing import with_trace_context


async def poll_until(done: Callable[[], Awaitable[bool]], timeout: float, *, first_delay: float = 0.005,
                     max_delay: float = 0.1) -> str | None:
    """Check ``done`` until it is true (return None) or ``timeout`` passes (return the last error, or "").

    The delay between checks doubles from ``first_delay`` to ``max_delay``: quick
    answers stay quick, long waits cost at most ten checks a second. A
    :class:`StoreUnavailable` from a check only delays the answer.
    """
    last_error = ""
    delay = first_delay
    with trio.move_on_after(timeout):
        while True:
            try:
                if await done():
                    return None
            except StoreUnavailable as exc:
                last_error = str(exc)
            await trio.sleep(delay)
            delay = min(delay * 2, max_delay)
    return last_error


class Emitter:
    """Handle to a running emitter. Get one from :func:`open_emitter`."""

    def __init__(self, config: EmitterConfig, *, intake: trio.MemorySendChannel[EmitRequest], admission: Admission,
                 buffer: Callable[[], BudgetStatistics], emits: EmitState, sources: Sources, store: Store,
                 registry: CollectorRegistry, metrics_port: int | None, database_url: str,
                 chip_endpoint: str, tree_failure: Callable[[], BaseException | None],
                 chip_credentials: ChipCredentials | None = None) -> None:
        self.config = config
        self.registry = registry  # the Prometheus registry this emitter's metrics are in
        self.metrics_port = metrics_port  # where /metrics is served, if it is
        self.database_url = database_url
        self.chip_endpoint = chip_endpoint
        self._intake = intake
        self._admission = admission
        self._buffer = buffer  # the hand-off's room, as the dispatcher last took from it
        self._emits = emits
        self._sources = sources
        self._store = store
        self._tree_failure = tree_failure
        self._chip_credentials = chip_credentials
        self._closing = False
        self._opened_in = current_pid()  # the one process that may use it

    @property
    def failure(self) -> BaseException | None:
        """Why the actor tree gave up, once it has (None while it runs or after a normal stop)."""
        return self._tree_failure()

    def set_chip_signer(self, sign: Signer, public_key: bytes | None = None) -> None:
        """Sign Chip's node token with ``sign`` from now on: ``sign(message) -> signature`` (ed25519,
        64 bytes), a plain function (run on a worker thread) or a coroutine function; it gets 5 s.

        For a signer that becomes available after start (a keystore a plugin receives later):
        configure ``chip_auth_public_key`` (or pass ``public_key``, the 32 raw bytes), and set the
        signer when it is there. Until then emits commit and delivery waits (``refused``,
        ``paused_by`` ``SIGNER_UNAVAILABLE``); it resumes by itself at the next probe. Raises
        :class:`ConfigError` where the token would go in plaintext beyond loopback (as the
        configuration would have: set ``chip_tls``, or ``chip_auth_plaintext``).
        """
        if self._chip_credentials is None:
            raise EmitterClosed("the emitter is not running")
        self._chip_credentials.set_signer(sign, public_key)

    def stop_accepting(self) -> None:
        """From now on every emit raises :class:`EmitterClosed` (the tree calls this as shutdown begins)."""
        self._closing = True

    def _closed(self) -> EmitterClosed:
        """Shutting down; or, once the tree gave up, that failure (as the cause)."""
        return closed_error(self._tree_failure(), consequence="; the event was not written")

    def statistics(self) -> EmitterStatistics:
        """A snapshot of what this emitter holds and has done since it opened (the metrics read the same records)."""
        budget, dispatcher, acker = self._buffer(), self._sources.dispatcher(), self._sources.acker()
        emits = self._emits.statistics()
        return EmitterStatistics(
            pending_rows=self._admission.pending,
            queued_emits=self._intake.statistics().current_buffer_used,
            buffered_events=budget.events,
            buffered_bytes=budget.bytes,
            publishes_in_flight=dispatcher.in_flight,
            emitted=emits.succeeded,
            spilled=self._sources.persister().spilled,
            delivered=acker.deleted,
            dead_lettered=sum(acker.dead_lettered.values()) + dispatcher.expired,
            publish_retries=sum(dispatcher.retries.values()),
            restarts=self._sources.restarts(),
            delivery=dispatcher.delivery,
            emit_seconds=emits.seconds,
            publish_seconds=dispatcher.publish_seconds["batch"],
            paused_by=dispatcher.paused_by,
        )

    async def emit(
        self,
        body: Body,
        *,
        source: str | None = None,
        type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
        attributes: Mapping[str, AttributeValue] | None = None,
        data_schema: str | None = None,
    ) -> str:
        """Commit one event to Postgres and return its CloudEvent id.

        When this returns, the event is durable: it will reach Chip at least
        once (or land in the dead-letter table with a reason), across crashes
        and restarts. ``body`` is bytes (binary data), str (text data) or a
        protobuf message (needs ``data_schema``). ``source``/``type`` default
        to the ``beholder_domain``/``beholder_entity`` attributes.

        Raises (nothing written in each case): :class:`InvalidEvent` /
        :class:`EventTooLarge` for bad input, :class:`BacklogFull` when
        ``max_pending`` rows stayed pending for ``backlog_timeout``,
        :class:`StoreUnavailable` when Postgres answered the commit with an
        error or could not be reached (a locked table fails within
        ``lock_timeout``), and :class:`EmitterClosed` after shutdown began.

        The answer is definite whenever Postgres can be asked. If the commit
        was sent and its answer lost (the connection broke, or no answer
        within ``commit_timeout``), the emitter asks again on a fresh
        connection for up to ``commit_timeout`` more, writing the row again
        under the same id unless the lost commit wrote it: then this returns
        the id, and the event is delivered like any other (at least once,
        always under that id). Only if
        Postgres stays unreachable that long does it raise
        :class:`CommitOutcomeUnknown` (a :class:`StoreUnavailable`): the event
        may or may not be committed; its ``event_ids`` and message say what to
        do. So an emit waits at most about twice ``commit_timeout``.
        """
        refuse_after_fork(self._opened_in)
        if self._closing:
            raise self._closed()
        started = trio.current_time()
        if self.config.trace_context:
            attributes = with_trace_context(attributes)
        event_id, payload = build_event(body, source=source, type=type, attributes=attributes,
                                        data_schema=data_schema)
        self._check_size(payload)
        await self._commit(EmitRequest([event_id], [payload]), started)
        return event_id

    async def emit_many(
        self,
        bodies: Iterable[Body],
        *,
        source: str | None = None,
        type: str | None = None,  # noqa: A002  (the CloudEvent attribute's own name)
        attributes: Mapping[str, AttributeValue] | None = None,
        data_schema: str | None = None,
    ) -> list[str]:
        """Commit several events, with the same attributes, in one transaction; return their ids in order.

        All or nothing: when this returns, every one is durable, as for
        :meth:`emit`; when it raises, none was written, except
        :class:`CommitOutcomeUnknown`: all or none may be (its ``event_ids``
        are this call's). Each body is checked
        before anything is sent, and an error names the first bad one by its
        index. At most ``persist_batch_size`` bodies per call (split larger
        groups); an empty one returns ``[]``. Raises as :meth:`emit`. A call is
        admitted as one emit: ``max_pending`` may be passed by up to one call's
        events per caller.
        """
        refuse_after_fork(self._opened_in)
        if self._closing:
            raise self._closed()
        started = trio.current_time()
        if self.config.trace_context:
            attributes = with_trace_context(attributes)
        try:
            ids, payloads = build_events(bodies, source=source, type=type, attributes=attributes,
                                         data_schema=data_schema, max_event_bytes=self.config.max_event_bytes,
                                         most=(self.config.persist_batch_size, "persist_batch_size"))
        except EventTooLarge:
            self._emits.failed.add("too_large")
            raise
        if ids:
            await self._commit(EmitRequest(ids, payloads), started)
        return list(ids)  # the caller's own copy: the request's list travels on to the dispatcher

    def _check_size(self, payload: bytes) -> None:
        if len(payload) > self.config.max_event_bytes:
            self._emits.failed.add("too_large")
            raise too_large(len(payload), self.config.max_event_bytes)

    async def _commit(self, request: EmitRequest, started: float) -> None:
        """Hand the events to the persister, once the backlog has room, and wait for their commit."""
        emits = self._emits
        try:
            await self._admission.wait_for_room(self.config.backlog_timeout)
        except EmitterError:
            emits.failed.add("backlog_full")
            raise
        try:
            try:
                self._intake.send_nowait(request)  # no extra trip through the scheduler
            except trio.WouldBlock:
                await self._intake.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise self._closed() from self._tree_failure()
        await request.done.wait()
        if request.error is not None:
            emits.failed.add("outcome_unknown" if isinstance(request.error, CommitOutcomeUnknown) else "store")
            # One error object may be shared by the whole failed batch: raise a copy of it,
            # with its attributes (a StoreUnavailable's sqlstate and kind: whether to retry;
            # a CommitOutcomeUnknown's event_ids).
            raise copy.copy(request.error) from request.error
        emits.succeeded += len(request.event_ids)
        emits.seconds.observe(trio.current_time() - started)

    async def flush(self, timeout: float) -> None:
        """Wait until every event emitted so far through this instance is settled, whoever delivers it.

        Covered: every row this instance emitted before the call, including
        those another instance claimed since (spilled, released or lapsed rows
        go to whoever claims them first). Settled means acknowledged by Chip and
        deleted, or dead-lettered. Rows this instance claimed from others (the
        outbox's, a dead instance's) were emitted through no emitter of this
        process: no flush waits for them; ``durable-emitter drain`` waits until
        the table is empty.
        Raises :class:`FlushTimeout` after ``timeout`` seconds; the events
        stay in the table and keep being delivered. Postgres being briefly
        unreachable only delays the answer.
        """
        refuse_after_fork(self._opened_in)
        before: list[datetime] = []

        async def settled() -> bool:
            if not before:
                before.append(await self._store.now())
            return not await self._store.has_pending_before(before[0], owner=self.config.instance_id)

        last_error = await poll_until(settled, timeout)
        if last_error is None:
            return
        last_error = f" (last error: {last_error})" if last_error else ""
        raise FlushTimeout(f"events emitted before flush() were still pending after {timeout:g}s{last_error}; "
                           "they remain in the table and will still be delivered")
