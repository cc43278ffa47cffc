"""``open_emitter``: the whole actor tree, wired in one place.

    supervisor (one_for_one; restart delay with backoff; gives up past the intensity)
    ├── sampler     counts the table, serves /metrics            (permanent; cancelled at stop)
    ├── acker       outcomes -> DELETE / dead-letter moves         (transient)
    ├── dispatcher  committed groups + claimed rows -> Chip       (transient)
    └── persister   emit requests -> group commit                 (transient)

    Emitter.emit ─intake─▶ persister ─groups─▶ dispatcher ─outcomes─▶ acker
                                      └─doorbell (spilled rows wait in the table)─┘
    outbox.emit, in a host's transaction ─NOTIFY at its commit─▶ the dispatcher's listener rings the doorbell

Children start downstream first, so each has a reader before it is fed, and
stop upstream first: closing the intake lets the persister commit what it was
handed; its end closes the dispatcher's inbox, and so on down. Each gets
``shutdown_timeout`` to finish once asked; whatever is still pending stays in
the table for the next start. This is the only file that makes channels.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
from .emitter import Emitter
from .errors import ConfigError, closed_error
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


async def _take_liveness(store: Store, other: Store, instance_id: str) -> None:
    """Hold this instance id's liveness lock on ``store``'s session, or refuse: one live process per
    instance id, and a session that is ours (no transaction pooler between us and Postgres).

    Behind a pooler in transaction mode the lock stays on a server connection
    that goes back to the pool after each statement. Asking the lock's own
    connection whether its next statement runs there again proves nothing: a
    lone client usually gets the same server connection back. So ``other``
    (another client connection) holds a transaction open meanwhile, which pins
    the server connection it got. A pooler hands out the one released last
    (PgBouncer's default), the lock's: ``other`` then finds the lock on its own
    backend, which no direct connection or session pooler can show. Should it
    get another one, the lock's connection must still find its lock where its
    next statement runs, while ``other`` holds its own.
    """
    if not await store.hold_liveness(instance_id):
        raise ConfigError(
            f"instance id {instance_id!r} is held by a live process (it holds the id's session lock in "
            "Postgres); give each process its own DURABLE_EMITTER_INSTANCE_ID, or stop the other one"
        )
    async with other.pinned():
        shared = await other.session_is_ours(instance_id)
        kept = await store.session_is_ours(instance_id)
    if shared or not kept:
        raise ConfigError(
            "the database connection does not keep a session of its own (a pooler in transaction mode: "
            + ("another connection's transaction ran on the session holding this instance's lock" if shared else
               "the next statement ran on another session")
            + "), so session liveness cannot work: set DURABLE_EMITTER_SESSION_LIVENESS=false on every instance "
            "(each transaction then carries its own settings; rows of a crashed instance wait for their lease), "
            "or use session pooling"
        )


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

        def store(*, synchronous_commit: bool = True) -> Store:
            made = Store(url, Session(config.statement_timeout, config.lock_timeout, config.tcp_user_timeout,
                                      config.tcp_keepalive_idle, synchronous_commit, config.schema,
                                      f"durable-emitter {config.instance_id}", pooled=not config.session_liveness))
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

        # Catalog reads only, unless the schema is older and migrating at start is allowed.
        await trio.to_thread.run_sync(partial(schema.check, url, config.schema,
                                              auto_migrate=config.migrates_at_start, writer=True))
        setup = store()
        liveness = store()  # the sampler's too: it keeps the lock, re-taking it after a reconnect
        if config.session_liveness:
            await _take_liveness(liveness, setup, config.instance_id)
        # How the others judge whether this instance runs: by its lock, or (without one) by leases.
        await liveness.record_instance(config.instance_id, session_liveness=config.session_liveness,
                                       grace=config.liveness_grace)
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
                config, outcomes, store(synchronous_commit=False), acked)),
                shutdown=grace))
            await tree.start(ChildSpec("dispatcher", partial(dispatcher.run, dispatcher.Wiring(
                config, groups, doorbell, outcomes_send, chip, store(), dispatched, doorbell_send, listener())),
                shutdown=grace, on_exit=outcomes_send.close))
            await tree.start(ChildSpec("persister", partial(persister.run, persister.Wiring(
                config, intake, groups_send, doorbell_send,
                [store() for _ in range(config.persist_writers)], persisted)),
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
                _answer_what_was_never_taken(intake, tree.failure)
                log.info("emitter stopped")


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
