"""``open_emitter``: the whole actor tree, wired in one place.

    supervisor (one_for_one; restart delay with backoff; gives up past the intensity)
    ├── sampler     counts the table, serves /metrics            (permanent; cancelled at stop)
    ├── acker       outcomes -> DELETE / dead-letter moves         (transient)
    ├── dispatcher  committed groups + claimed rows -> Chip       (transient)
    └── persister   emit requests -> group commit                 (transient)

    Emitter.emit ─intake─▶ persister ─groups─▶ dispatcher ─outcomes─▶ acker
    outbox.emit, in a host's transaction ─NOTIFY at its commit─▶ the dispatcher's listener rings the doorbell

Children start downstream first, so each has a reader before it is fed, and
stop upstream first: closing the intake lets the persister commit what it was
handed; its end closes the dispatcher's inbox, and so on down. Each gets
``shutdown_timeout`` to finish once asked; whatever is still pending stays in
the table for the next start. This is the only file that makes channels.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import trio
from prometheus_client import CollectorRegistry, ProcessCollector

from . import acker, dispatcher, persister, sampler
from .adapters import schema
from .adapters.chip import ChipClient
from .adapters.listener import Listener
from .adapters.outbox_queries import outbox_channel
from .adapters.postgres import describe, start_embedded
from .adapters.prometheus import EmitterCollector
from .adapters.store import Session, Store
from .config import EmitterConfig
from .core.admission import Admission
from .core.backoff import Backoff
from .core.failures import StoreFailure, refused_for_good
from .emitter import Emitter
from .errors import ConfigError, StoreUnavailable, closed_error
from .handoff import open_hand_off
from .logs import get_logger
from .messages import EmitRequest, Outcome
from .statistics import (
    AckerState,
    DispatcherState,
    EmitState,
    PersisterState,
    SamplerState,
    Sources,
)
from .supervisor import ChildSpec, Restart, RestartIntensity, open_supervisor

log = get_logger("durable_emitter")


async def _refuse_a_transaction_pooler(probe: Store, pin: Store) -> None:
    """Refuse a pooler in transaction mode (session liveness needs sessions of its own), asking in a
    way that leaves nothing on any server session: ``probe`` and ``pin`` make their settings per
    transaction, and nothing else is set, locked or prepared.

    ``pin`` holds a transaction open while ``probe`` asks which server process serves it, before and
    during. A direct connection or a session pooler serves each client from one process of its own.
    A transaction pooler hands ``pin`` the server connection released last (PgBouncer's default), the
    one that served ``probe``; or, handing out another, serves ``probe``'s next statement elsewhere.
    """
    before = await probe.backend_pid()
    async with pin.pinned():
        pinned = await pin.backend_pid()
        during = await probe.backend_pid()
    if pinned == before or during != before:
        raise ConfigError(
            "the database connection does not keep a session of its own (a pooler in transaction mode: "
            + ("another connection's transaction ran on the session this one had" if pinned == before else
               "the next statement ran on another session")
            + "), so session liveness cannot work: set DURABLE_EMITTER_SESSION_LIVENESS=false on every instance "
            "(each transaction then carries its own settings; rows of a crashed instance wait for their lease), "
            "or use session pooling"
        )


async def _take_liveness(store: Store, instance_id: str) -> None:
    """Hold this instance id's liveness lock on ``store``'s session, or refuse: one live process per id."""
    if not await store.hold_liveness(instance_id):
        raise ConfigError(
            f"instance id {instance_id!r} is held by a live process (it holds the id's session lock in "
            "Postgres); give each process its own DURABLE_EMITTER_INSTANCE_ID, or stop the other one"
        )


async def _waiting_for_postgres(config: EmitterConfig, url: str, start: Callable[[], Awaitable[None]]) -> None:
    """Run ``start`` (its Postgres steps), again while Postgres cannot be reached, up to ``start_timeout``.

    A failover or a restart makes Postgres unreachable for seconds; a host opening its
    emitter meanwhile waits, as a Kafka producer or a connection pool opened then does,
    instead of needing a retry loop of its own. A server that refuses us for good, and
    anything that is not a connection failure, is raised at once.
    """
    began = trio.current_time()
    deadline = began + config.start_timeout
    attempt, waited = 0, False
    rng = random.Random()
    while True:
        try:
            with trio.move_on_at(deadline) as scope:
                await start()
                if waited:
                    log.info("Postgres answers; starting", waited_s=round(trio.current_time() - began, 2))
                return
            raise StoreUnavailable(f"Postgres at {describe(url)} did not answer within start_timeout "
                                   f"({config.start_timeout:g}s)")
        except StoreUnavailable as exc:
            if (exc.kind is not StoreFailure.TRANSIENT or refused_for_good(str(exc)) or scope.cancelled_caught
                    or trio.current_time() >= deadline):
                raise
            if not waited:
                waited = True
                log.warning("Postgres cannot be reached yet; waiting for it before starting",
                            start_timeout_s=config.start_timeout, error=str(exc))
        await trio.sleep(min(_START_RETRY.delay(attempt, rng), max(0.0, deadline - trio.current_time())))
        attempt += 1


_START_RETRY = Backoff(0.1, 2.0, 1.0)


@asynccontextmanager
async def open_emitter(config: EmitterConfig | None = None, *,
                       registry: CollectorRegistry | None = None) -> AsyncIterator[Emitter]:
    """Start the actor tree; yield an :class:`Emitter`; on exit shut down in order.

    ``registry``: the Prometheus registry to add the emitter's metrics to
    (``prometheus_client.REGISTRY`` for the host's default one); they are
    removed from it on exit. Default: a registry of the emitter's own, with
    process metrics, served on ``metrics_port`` when that is set.

    ``config`` defaults to :meth:`EmitterConfig.from_env`. Refuses to start
    (:class:`ConfigError`) with no Chip endpoint, with no ``DATABASE_URL``
    unless the embedded PostgreSQL was asked for, or behind a pooler in
    transaction mode with ``session_liveness`` on; raises :class:`SchemaError`
    if the schema is not current (and may not be migrated) or the role lacks
    rights on it, and :class:`StoreUnavailable` if Postgres cannot be reached.
    """
    config = config or EmitterConfig.from_env()
    config.check_startable()
    assert config.chip_endpoint is not None  # check_startable refused otherwise
    async with AsyncExitStack() as stack:
        url = config.database_url
        if not url:
            url = await trio.to_thread.run_sync(start_embedded, config.data_dir)
            log.info("using embedded PostgreSQL", data_dir=str(config.data_dir))

        def store() -> Store:
            made = Store(url, _session(config))
            stack.callback(made.close)
            return made

        def listener() -> Listener | None:
            """Outbox notifications, heard on a session of its own: none behind a pooler in transaction mode.

            Named like the instance's every other connection (liveness counts them by that name).
            """
            if not config.session_liveness or config.writer_only:  # writer-only: it never claims what they ring for
                return None
            made = Listener(url, outbox_channel(config.schema), Session(
                tcp_user_timeout=config.tcp_user_timeout, keepalive_idle=config.tcp_keepalive_idle,
                schema=config.schema, application_name=f"durable-emitter {config.instance_id}"))
            stack.callback(made.close)
            return made

        setup = store()
        liveness = store()  # the sampler's too: it keeps the lock, re-taking it after a reconnect

        async def start() -> None:
            # Catalog reads only, unless the schema is older and migrating at start is allowed. Not
            # abandoned at start_timeout: a migration runs to its end (its own lock_timeout bounds
            # its waits), and connecting there is bounded by connect_timeout.
            await trio.to_thread.run_sync(partial(schema.check, url, config.schema,
                                                  auto_migrate=config.migrates_at_start, writer=True))
            if config.session_liveness:
                probe, pin = (Store(url, _session(config, pooled=True)) for _ in range(2))
                try:
                    await _refuse_a_transaction_pooler(probe, pin)
                finally:
                    probe.close()
                    pin.close()
                await _take_liveness(liveness, config.instance_id)
            # How the others judge whether this instance runs: by its lock, or (without one) by leases.
            await liveness.record_instance(config.instance_id, session_liveness=config.session_liveness,
                                           grace=config.liveness_grace, lease=config.lease_duration)

        await _waiting_for_postgres(config, url, start)
        log.info("emitter starting", database=describe(url), chip=config.chip_endpoint, instance=config.instance_id)
        chip = ChipClient(config, config.chip_endpoint)
        stack.callback(chip.close)
        # Bad credentials fail the start; an unreachable Chip does not: emits
        # are durable without it, and delivery starts when it answers.
        problem = await chip.ping(timeout=min(2.0, config.publish_timeout))
        if problem:
            log.warning(problem.message, chip=chip.endpoint, error=problem.error)

        intake_send, intake = trio.open_memory_channel[EmitRequest](config.persist_batch_size)
        groups_send, groups = open_hand_off(config.dispatch_buffer, config.dispatch_buffer_bytes)
        doorbell_send, doorbell = trio.open_memory_channel[None](1)
        outcomes_send, outcomes = trio.open_memory_channel[Outcome](config.publishes_in_flight * 4)

        emits, persisted, dispatched = EmitState(), PersisterState(), DispatcherState()
        acked, sampled = AckerState(), SamplerState()
        admission = Admission(config.max_pending, sampled.statistics, persisted.committed, acked.settled,
                              config.sample_interval)
        intensity = RestartIntensity(config.max_restarts, config.restart_period,
                                     initial_delay=config.restart_delay, max_delay=config.restart_delay_max)
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)

        async with open_supervisor(intensity) as tree:
            sources = Sources(emits.statistics, persisted.statistics, dispatched.statistics, acked.statistics,
                              sampled.statistics, tree.restarts.snapshot)
            collector = EmitterCollector(sources, version=_version(), instance_id=config.instance_id)
            registry.register(collector)
            stack.callback(registry.unregister, collector)
            grace = config.shutdown_timeout
            await tree.start(ChildSpec("sampler", partial(sampler.run, sampler.Wiring(
                config, liveness, sampled, persisted.committed, acked.settled, registry, dispatched.statistics)),
                restart=Restart.PERMANENT, shutdown=0))
            await tree.start(ChildSpec("acker", partial(acker.run, acker.Wiring(
                config, outcomes, store(), acked)),
                shutdown=grace))
            await tree.start(ChildSpec("dispatcher", partial(dispatcher.run, dispatcher.Wiring(
                config, groups, doorbell, outcomes_send, chip, store(), dispatched, doorbell_send, listener(),
                lambda: sampled.liveness_held)),
                shutdown=grace, on_exit=outcomes_send.close))
            await tree.start(ChildSpec("persister", partial(persister.run, persister.Wiring(
                config, intake, groups_send, [store() for _ in range(config.persist_writers)], persisted)),
                shutdown=grace, stop=intake_send.close, on_exit=groups_send.close))

            emitter = Emitter(config, intake=intake_send, admission=admission, buffer=groups.statistics, emits=emits,
                              sources=sources, store=setup, registry=registry, metrics_port=sampled.metrics_port,
                              database_url=url, chip_endpoint=chip.endpoint, tree_failure=lambda: tree.failure,
                              chip_credentials=chip.credentials)
            try:
                yield emitter
            finally:
                emitter.stop_accepting()
                with trio.CancelScope(shield=True):
                    await tree.stop()
                    await _leave(liveness, config)
                _answer_what_was_never_taken(intake, tree.failure)
                log.info("emitter stopped")


async def _leave(store: Store, config: EmitterConfig) -> None:
    """What this instance still holds is the others' at once: it left, it did not die (no grace to wait)."""
    with trio.move_on_after(config.shutdown_timeout):
        try:
            await store.leave(config.instance_id, lease=config.lease_duration)
        except StoreUnavailable as exc:  # the leases lapse on their own, and its grace passes
            log.warning("could not leave the rows to the others; their leases lapse on their own", error=str(exc))


def _session(config: EmitterConfig, *, pooled: bool | None = None) -> Session:
    """How each of the instance's connections talks to Postgres (named alike: liveness counts them by name)."""
    return Session(config.statement_timeout, config.lock_timeout, config.tcp_user_timeout, config.tcp_keepalive_idle,
                   True, config.schema, f"durable-emitter {config.instance_id}",
                   pooled=not config.session_liveness if pooled is None else pooled)


def _answer_what_was_never_taken(intake: trio.MemoryReceiveChannel[EmitRequest],
                                 failure: BaseException | None) -> None:
    """Emits still queued when the persister stopped for good (its grace passed, or the tree gave up)
    were never written: each waiting caller hears so now, instead of waiting forever."""
    while True:
        try:
            request = intake.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        request.resolve(closed_error(failure, consequence="; the event was not written"))


def _version() -> str:
    from . import __version__  # the package's face imports this module: read it when running

    return __version__
