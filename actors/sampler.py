"""Sampler: counts the table every ``sample_interval``, serves /metrics, logs one status line per interval.

A small table is counted; a large one is read from the planner's estimate (a
catalog read), so a million-row backlog costs no scan per second per instance.
The count is what admission and the pending gauges read between samples;
each sample records the local tallies as they stood when it began, so a
commit made while the table was being counted is not lost from the estimate.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from prometheus_client import CollectorRegistry, start_http_server

from .adapters.store import Store
from .config import EmitterConfig
from .core.admission import TableSample
from .core.backoff import Backoff
from .core.instruments import Tally
from .errors import StoreUnavailable
from .logs import FailureLog, get_logger
from .statistics import DispatcherStatistics, SamplerState

log = get_logger("durable_emitter.sampler")
_AGAIN = Backoff(0.1, 2.0, 1.0)


@dataclass(frozen=True)
class Wiring:
    config: EmitterConfig
    store: Store
    state: SamplerState
    committed: Tally  # the persister's, read only
    settled: Tally  # the acker's, read only
    registry: CollectorRegistry
    dispatcher: Callable[[], DispatcherStatistics]  # for the delivery state in the status line


async def keep_record(store: Store, config: EmitterConfig, state: SamplerState) -> None:
    """Refresh this instance's record; with session liveness, keep its lock (take it again after a
    reconnect) and say so. Logs changes only."""
    instance_id = config.instance_id
    held = await store.keep_instance(instance_id, session_liveness=config.session_liveness,
                                     grace=config.liveness_grace, lease=config.lease_duration)
    if held is not None and held != state.liveness_held:
        state.liveness_held = held
        if held:
            log.info("liveness lock held again", instance=instance_id)
        else:
            log.error("another live session holds this instance id's liveness lock: two processes run "
                      "with one id, and each may publish the other's rows; or a pooler in transaction mode "
                      "moved this connection to another server session (set DURABLE_EMITTER_SESSION_LIVENESS"
                      "=false on every instance)", instance=instance_id)


async def run(wiring: Wiring, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    config, state = wiring.config, wiring.state
    server = None
    if config.metrics_port is not None:
        server, _thread = start_http_server(config.metrics_port, addr=config.metrics_host,
                                            registry=wiring.registry)
        state.metrics_port = server.server_port
        log.info("metrics serving", url=f"http://{config.metrics_host}:{server.server_port}/metrics")
    task_status.started()
    next_log = time.monotonic() + config.log_interval
    trouble = FailureLog(log, "cannot sample the table; the last sample stands", "sampling the table again")
    failures, rng = 0, random.Random()
    try:
        while True:
            committed, settled = wiring.committed.value, wiring.settled.value
            try:
                await keep_record(wiring.store, config, state)
                stats = await wiring.store.pending_stats()
            except StoreUnavailable as exc:  # the last sample stands until Postgres is back
                trouble.failed(exc)
                # Soon again, not a whole interval later: the liveness lock is taken back within
                # the others' grace, the sooner the better once Postgres answers.
                await trio.sleep(min(config.sample_interval, _AGAIN.delay(failures, rng)))
                failures += 1
                continue
            else:
                failures = 0
                trouble.worked()
                state.sample = TableSample(stats.rows, stats.payload_bytes, stats.oldest_age_seconds,
                                           committed, settled)
                if time.monotonic() >= next_log:
                    next_log += config.log_interval
                    log.info("emitter status", pending=stats.rows,
                             oldest_pending_s=round(stats.oldest_age_seconds, 3),
                             committed=wiring.committed.value, removed=wiring.settled.value,
                             delivery=wiring.dispatcher().delivery)
            await trio.sleep(config.sample_interval)
    finally:
        if server is not None:
            server.shutdown()
