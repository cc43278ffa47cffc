"""``open_emitter``: the whole actor tree, wired in one place.

    supervisor (one_for_one; restart delay with backoff; gives up past the intensity)
    ├── sampler     counts the table, serves /metrics            (permanent; cancelled at stop)
    ├── acker       outcomes -> DELETE / dead-letter moves         (transient)
    ├── dispatcher  committed groups + claimed rows -> Chip       (transient)
    └── persister   emit requests -> group commit                 (transient)

    Emitter.emit ─intake─▶ persister ─groups─▶ dispatcher ─outcomes─▶ acker
                                      └─doorbell (spilled rows wait in the table)─┘

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

import structlog
import trio
from prometheus_client import CollectorRegistry

from . import acker, dispatcher, persister, sampler
from .adapters.chip import ChipClient
from .adapters.postgres import describe, start_embedded
from .adapters.prometheus import EmitterCollector
from .adapters.store import Session, Store
from .config import EmitterConfig
from .core.admission import Admission, MemoryBudget
from .emitter import Emitter
from .errors import ConfigError
from .messages import CommittedGroup, EmitRequest, Outcome
from .statistics import (
    AckerState,
    DispatcherState,
    EmitState,
    PersisterState,
    SamplerState,
    Sources,
)
from .supervisor import ChildSpec, Restart, RestartIntensity, open_supervisor

log = structlog.get_logger("durable_emitter")


@asynccontextmanager
async def open_emitter(config: EmitterConfig | None = None) -> AsyncIterator[Emitter]:
    """Start the actor tree; yield an :class:`Emitter`; on exit shut down in order.

    ``config`` defaults to :meth:`EmitterConfig.from_env`. Refuses to start
    (:class:`ConfigError`) with no Chip endpoint, and raises
    :class:`StoreUnavailable` if Postgres cannot be reached.
    """
    config = config or EmitterConfig.from_env()
    if not config.chip_endpoint:
        raise ConfigError("no Chip endpoint: set CHIP_INGRESS_ENDPOINT (host:port)")
    async with AsyncExitStack() as stack:
        url = config.database_url
        if url is None:
            url = await trio.to_thread.run_sync(start_embedded, config.data_dir)
            log.info("using embedded PostgreSQL", data_dir=str(config.data_dir))

        def store(*, synchronous_commit: bool = True) -> Store:
            made = Store(url, Session(config.statement_timeout, config.lock_timeout, config.tcp_user_timeout,
                                      config.tcp_keepalive_idle, synchronous_commit))
            stack.callback(made.close)
            return made

        setup = store()
        await setup.apply_schema()
        started_at = await setup.now()
        log.info("emitter starting", database=describe(url), chip=config.chip_endpoint, instance=config.instance_id)
        chip = ChipClient(config, config.chip_endpoint)
        stack.callback(chip.close)
        # Bad credentials fail the start; an unreachable Chip does not: emits
        # are durable without it, and delivery starts when it answers.
        problem = await chip.ping(timeout=min(2.0, config.publish_timeout))
        if problem:
            log.warning("Chip does not answer yet; events will wait in the table", chip=chip.endpoint, error=problem)

        intake_send, intake = trio.open_memory_channel[EmitRequest](config.persist_batch_size)
        groups_send, groups = trio.open_memory_channel[CommittedGroup](config.dispatch_buffer)
        doorbell_send, doorbell = trio.open_memory_channel[None](1)
        outcomes_send, outcomes = trio.open_memory_channel[Outcome](config.publishes_in_flight * 4)

        emits, persisted, dispatched = EmitState(), PersisterState(), DispatcherState()
        acked, sampled = AckerState(), SamplerState()
        budget = MemoryBudget(config.dispatch_buffer, config.dispatch_buffer_bytes)
        admission = Admission(config.max_pending, sampled.statistics, persisted.committed, acked.settled,
                              config.sample_interval)
        intensity = RestartIntensity(config.max_restarts, config.restart_period,
                                     initial_delay=config.restart_delay, max_delay=config.restart_delay_max)
        registry = CollectorRegistry()

        async with open_supervisor(intensity) as tree:
            sources = Sources(emits.statistics, persisted.statistics, dispatched.statistics, acked.statistics,
                              sampled.statistics, tree.restarts.snapshot)
            registry.register(EmitterCollector(sources))
            grace = config.shutdown_timeout
            await tree.start(ChildSpec("sampler", partial(sampler.run, sampler.Wiring(
                config, store(), sampled, persisted.committed, acked.settled, registry, dispatched.statistics)),
                restart=Restart.PERMANENT, shutdown=0))
            await tree.start(ChildSpec("acker", partial(acker.run, acker.Wiring(
                config, outcomes, store(synchronous_commit=False), acked)),
                shutdown=grace))
            await tree.start(ChildSpec("dispatcher", partial(dispatcher.run, dispatcher.Wiring(
                config, groups, doorbell, outcomes_send, budget, chip, store(), dispatched, started_at)),
                shutdown=grace, on_exit=outcomes_send.close))
            await tree.start(ChildSpec("persister", partial(persister.run, persister.Wiring(
                config, intake, groups_send, doorbell_send, budget,
                [store() for _ in range(config.persist_writers)], persisted)),
                shutdown=grace, stop=intake_send.close, on_exit=groups_send.close))

            emitter = Emitter(config, intake=intake_send, admission=admission, budget=budget, emits=emits,
                              sources=sources, store=setup, registry=registry, metrics_port=sampled.metrics_port,
                              database_url=url, chip_endpoint=chip.endpoint)
            try:
                yield emitter
            finally:
                emitter.closing = True
                with trio.CancelScope(shield=True):
                    await tree.stop()
                log.info("emitter stopped")
