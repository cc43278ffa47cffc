"""``open_emitter``: build the actor tree, hand out an :class:`Emitter`, shut down in order.

The supervisor tree (acker, dispatcher, persister, started downstream first)
runs inside the ``async with``. Leaving it stops intake, lets the persister
commit what was already handed to it, gives in-flight publishes
``shutdown_timeout`` seconds, and leaves whatever is still pending in the
table for the next start.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

import structlog
import trio

from . import acker, dispatcher, persister
from . import metrics as metrics_actor
from .backlog import Backlog, BufferBudget
from .chip import ChipClient
from .config import EmitterConfig
from .errors import (
    ConfigError,
    EmitterClosed,
    EmitterError,
    EventTooLarge,
    FlushTimeout,
    StoreUnavailable,
)
from .events import AttributeValue, Body, build_event
from .messages import EmitRequest, Outcome, Outgoing
from .metrics import Metrics, value
from .postgres import describe, start_embedded
from .store import Store
from .supervisor import ChildSpec, RestartIntensity, supervise

log = structlog.get_logger("durable_emitter")


@dataclass(frozen=True)
class EmitterStatistics:
    """A snapshot of what the emitter holds in memory; everything else is in the table."""

    pending_rows: int  # approximate: last sample of the table, plus commits, minus deletes since
    queued_emits: int  # emit() calls waiting for the persister
    buffered_events: int  # committed events waiting in memory for a publish slot
    buffered_bytes: int
    publishes_in_flight: int


class Emitter:
    """Handle to a running emitter. Get one from :func:`open_emitter`."""

    def __init__(self, config: EmitterConfig, inbox: trio.MemorySendChannel[EmitRequest], backlog: Backlog,
                 budget: BufferBudget,
                 store: Store, metrics: Metrics, database_url: str, chip_endpoint: str) -> None:
        self.config = config
        self.metrics = metrics
        self.database_url = database_url
        self.chip_endpoint = chip_endpoint
        self._inbox = inbox
        self._backlog = backlog
        self._budget = budget
        self._store = store
        self._closing = False
        self.metrics_port: int | None = None  # where /metrics is served, if it is

    def statistics(self) -> EmitterStatistics:
        return EmitterStatistics(
            pending_rows=self._backlog.pending,
            queued_emits=self._inbox.statistics().current_buffer_used,
            buffered_events=self._budget.events,
            buffered_bytes=self._budget.bytes,
            publishes_in_flight=int(value(self.metrics.in_flight)),
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
        :class:`StoreUnavailable` when the commit failed, and
        :class:`EmitterClosed` after shutdown began.
        """
        if self._closing:
            raise EmitterClosed("the emitter is shutting down; the event was not written")
        started = trio.current_time()
        event_id, payload = build_event(body, source=source, type=type, attributes=attributes,
                                        data_schema=data_schema)
        if len(payload) > self.config.max_event_bytes:
            self.metrics.emit_failure.labels("too_large").inc()
            raise EventTooLarge(f"the serialized event is {len(payload)} bytes; max_event_bytes is "
                                f"{self.config.max_event_bytes}; nothing was written")
        try:
            await self._backlog.wait_for_room(self.config.backlog_timeout)
        except EmitterError:
            self.metrics.emit_failure.labels("backlog_full").inc()
            raise
        request = EmitRequest(event_id, payload)
        try:
            try:
                self._inbox.send_nowait(request)  # no extra trip through the scheduler
            except trio.WouldBlock:
                await self._inbox.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise EmitterClosed("the emitter is shutting down; the event was not written") from None
        await request.done.wait()
        if request.error is not None:
            # One error object is shared by the whole failed batch: raise a copy of it.
            raise request.error.__class__(*request.error.args) from request.error
        self.metrics.emit_duration.observe(trio.current_time() - started)
        return event_id

    async def flush(self, timeout: float) -> None:
        """Wait until every event emitted so far, and every row this instance holds, is settled.

        Settled means acknowledged by Chip and deleted, or dead-lettered.
        Raises :class:`FlushTimeout` after ``timeout`` seconds; the events
        stay in the table and keep being delivered. Postgres being briefly
        unreachable only delays the answer.
        """
        last_error = ""
        with trio.move_on_after(timeout):
            before = None
            delay = 0.005
            while True:
                try:
                    before = before or await self._store.now()
                    if not await self._store.has_pending_before(before, owner=self.config.instance_id):
                        return
                except StoreUnavailable as exc:
                    last_error = f" (last error: {exc})"
                await trio.sleep(delay)
                delay = min(delay * 2, 0.1)
        raise FlushTimeout(f"events emitted before flush() were still pending after {timeout:g}s{last_error}; "
                           "they remain in the table and will still be delivered")


def _resolve_chip(config: EmitterConfig, stack: ExitStack) -> str:
    if config.chip_endpoint:
        return config.chip_endpoint
    if not config.use_chipmock:
        raise ConfigError(
            "no Chip endpoint: set CHIP_INGRESS_ENDPOINT (host:port), or pass use_chipmock=True to "
            "publish to the bundled chipmock (it acknowledges, so the events are deleted)"
        )
    import chipmock

    mock = chipmock.start()
    stack.callback(mock.stop, 0)
    log.warning("publishing to an in-process chipmock; acknowledged events are deleted", endpoint=mock.endpoint)
    return mock.endpoint


@asynccontextmanager
async def open_emitter(config: EmitterConfig | None = None) -> AsyncIterator[Emitter]:
    """Start the actor tree; yield an :class:`Emitter`; on exit shut down in order.

    ``config`` defaults to :meth:`EmitterConfig.from_env`. Refuses to start
    (:class:`ConfigError`) with no Chip endpoint unless ``use_chipmock`` is
    set, and raises :class:`StoreUnavailable` if Postgres cannot be reached.
    """
    config = config or EmitterConfig.from_env()
    with ExitStack() as stack:
        chip_endpoint = _resolve_chip(config, stack)
        url = config.database_url
        if url is None:
            url = await trio.to_thread.run_sync(start_embedded, config.data_dir)
            log.info("using embedded PostgreSQL", data_dir=str(config.data_dir))
        stores = {name: Store(url, synchronous_commit=name != "acker")
                  for name in ("dispatcher", "acker", "metrics", "emitter")}
        writers = [Store(url) for _ in range(config.persist_writers)]
        for store in [*stores.values(), *writers]:
            stack.callback(store.close)
        setup = stores["emitter"]
        await setup.apply_schema()
        started_at = await setup.now()
        log.info("emitter starting", database=describe(url), chip=chip_endpoint, instance=config.instance_id)

        chip = ChipClient(config, chip_endpoint)
        stack.callback(chip.close)
        # Bad credentials fail the start; an unreachable Chip does not: emits
        # are durable without it, and delivery starts when it answers.
        problem = await chip.ping(timeout=min(2.0, config.publish_timeout))
        if problem:
            log.warning("Chip does not answer yet; events will wait in the table", chip=chip_endpoint, error=problem)
        metrics = Metrics()
        backlog = Backlog(config.max_pending)
        budget = BufferBudget(config.dispatch_buffer, config.dispatch_buffer_bytes)
        emit_send, emit_recv = trio.open_memory_channel[EmitRequest](config.persist_batch_size)
        out_send, out_recv = trio.open_memory_channel[list[Outgoing]](config.dispatch_buffer)
        bell_send, bell_recv = trio.open_memory_channel[None](1)
        ack_send, ack_recv = trio.open_memory_channel[Outcome](config.publishes_in_flight * 4)
        children = [
            ChildSpec("acker", partial(acker.run, config, ack_recv, stores["acker"], backlog, metrics)),
            ChildSpec("dispatcher", partial(dispatcher.run, config, out_recv, ack_send, bell_recv, budget, chip,
                                            stores["dispatcher"], metrics, started_at),
                      on_exit=ack_send.close),
            ChildSpec("persister", partial(persister.run, config, emit_recv, out_send, bell_send, budget,
                                           writers, backlog, metrics),
                      on_exit=out_send.close),
        ]
        intensity = RestartIntensity(config.max_restarts, config.restart_period)
        emitter = Emitter(config, emit_send, backlog, budget, setup, metrics, url, chip_endpoint)

        async with trio.open_nursery() as nursery:
            sampling = trio.CancelScope()
            tree_done = trio.Event()

            async def sample(task_status: trio.TaskStatus[int | None] = trio.TASK_STATUS_IGNORED) -> None:
                with sampling:
                    await metrics_actor.run(config, metrics, stores["metrics"], backlog, task_status=task_status)

            async def tree(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await supervise(children, intensity, lambda name: metrics.restarts.labels(name).inc(),
                                    task_status=task_status)
                finally:
                    tree_done.set()

            emitter.metrics_port = await nursery.start(sample)
            await nursery.start(tree)
            try:
                yield emitter
            finally:
                emitter._closing = True
                emit_send.close()
                with trio.CancelScope(shield=True) as shielded:
                    shielded.deadline = trio.current_time() + config.shutdown_timeout + 5
                    await tree_done.wait()
                if not tree_done.is_set():
                    log.error("actors did not stop in time; cancelling them")
                    nursery.cancel_scope.cancel()
                sampling.cancel()
                log.info("emitter stopped")
