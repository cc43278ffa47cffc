"""Prometheus metrics, and the metrics actor that samples the table and serves /metrics.

Names follow upstream's dashboards where the meaning matches
(``durable_emitter_emit_success_total``, ``durable_emitter_queue_depth``, ...).
Each emitter has its own registry, so several can live in one process.
"""

from __future__ import annotations

import time

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .backlog import Backlog
from .config import EmitterConfig
from .errors import StoreUnavailable
from .store import Store

log = structlog.get_logger("durable_emitter.metrics")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.06, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10)
_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)


class Metrics:
    """The emitter's instruments. Actors update them directly; they are thread-safe."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        p = "durable_emitter_"
        self.emit_success = Counter(p + "emit_success", "emits committed", registry=r)
        self.emit_failure = Counter(p + "emit_failure", "emits that raised", ["reason"], registry=r)
        self.emit_duration = Histogram(p + "emit_duration_seconds", "emit() call to commit",
                                       buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_batch_size = Histogram(p + "commit_batch_events", "events per group commit",
                                           buckets=_SIZE_BUCKETS, registry=r)
        self.buffer_full = Counter(p + "batch_enqueue_buffer_full",
                                   "events committed while the in-memory dispatch buffer was full "
                                   "(read back from the table instead)", registry=r)
        self.publish_duration = Histogram(p + "publish_duration_seconds", "PublishBatch call latency",
                                          ["phase"], buckets=_LATENCY_BUCKETS, registry=r)
        self.publish_batch_size = Histogram(p + "publish_batch_events", "events per PublishBatch",
                                            buckets=_SIZE_BUCKETS, registry=r)
        self.publish_events_success = Counter(p + "publish_batch_events_success",
                                              "events Chip acknowledged", ["phase"], registry=r)
        self.publish_events_failure = Counter(p + "publish_batch_events_failure",
                                              "events not acknowledged by a publish attempt", ["phase"], registry=r)
        self.publish_retries = Counter(p + "publish_retries", "publish attempts that will be retried",
                                       ["reason"], registry=r)
        self.released = Counter(p + "publish_released", "events handed back to the table after "
                                "exhausting in-memory retries", registry=r)
        self.delivery_completed = Counter(p + "delivery_completed", "rows deleted after ack", registry=r)
        self.dead_lettered = Counter(p + "dead_lettered", "events moved to the dead-letter table",
                                     ["reason"], registry=r)
        self.expired = Counter(p + "expired_purged", "events past the TTL, moved to the dead-letter table",
                               registry=r)
        self.claimed = Counter(p + "recovered", "rows claimed back from the table", registry=r)
        self.restarts = Counter(p + "actor_restarts", "actor restarts by the supervisor", ["actor"], registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "pending rows in chip_durable_events", registry=r)
        self.queue_bytes = Gauge(p + "queue_payload_bytes", "payload bytes pending", registry=r)
        self.oldest_age = Gauge(p + "queue_oldest_pending_age_seconds", "age of the oldest pending row",
                                registry=r)
        self.in_flight = Gauge(p + "publish_in_flight", "PublishBatch calls in flight", registry=r)
        # Export every known label set from the start (at 0), so dashboards and
        # alerts see a series before the first failure rather than no data.
        for reason in ("store", "too_large", "backlog_full"):
            self.emit_failure.labels(reason)
        for phase in ("batch", "retransmit"):
            for metric in (self.publish_duration, self.publish_events_success, self.publish_events_failure):
                metric.labels(phase)
        for reason in ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "NOT_ACKNOWLEDGED"):
            self.publish_retries.labels(reason)
        for reason in ("VALIDATION_FAILED", "SCHEMA_MISSING", "ENCODE_ERROR", "DOMAIN_MISCONFIGURATION", "EXPIRED"):
            self.dead_lettered.labels(reason)
        for actor in ("persister", "dispatcher", "acker"):
            self.restarts.labels(actor)


def histogram_quantile(histogram, q: float) -> float:
    """Estimate a quantile from a (label-less or ``.labels()``) Histogram's buckets.

    Linear within the bucket it falls in, as Prometheus' histogram_quantile does.
    """
    samples = [s for metric in histogram.collect() for s in metric.samples if s.name.endswith("_bucket")]
    total = samples[-1].value if samples else 0
    if not total:
        return 0.0
    rank, previous_bound, previous_count = q * total, 0.0, 0.0
    for sample in samples:
        bound = float(sample.labels["le"])
        if sample.value >= rank:
            if bound == float("inf"):
                return previous_bound
            share = (rank - previous_count) / max(sample.value - previous_count, 1e-9)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, sample.value
    return previous_bound


def histogram_mean(histogram) -> float:
    values = {s.name.rsplit("_", 1)[-1]: s.value for m in histogram.collect() for s in m.samples
              if s.name.endswith(("_sum", "_count"))}
    return values.get("sum", 0.0) / values["count"] if values.get("count") else 0.0


def value(metric) -> float:
    """Current value of a Counter or Gauge (summed over its label sets)."""
    return sum(s.value for m in metric.collect() for s in m.samples
               if not s.name.endswith(("_created", "_bucket", "_sum", "_count")))


async def run(
    config: EmitterConfig,
    metrics: Metrics,
    store: Store,
    backlog: Backlog,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics (if a port is set), sample the table, log one line per interval."""
    server = None
    if config.metrics_port is not None:
        server, _thread = start_http_server(config.metrics_port, addr=config.metrics_host,
                                            registry=metrics.registry)
        log.info("metrics serving", url=f"http://{config.metrics_host}:{server.server_port}/metrics")
    task_status.started(server.server_port if server else None)
    next_log = time.monotonic() + config.log_interval
    try:
        while True:
            try:
                changes_at_start = backlog.changes
                stats = await store.pending_stats()
            except StoreUnavailable as exc:  # the gauges keep their last value until Postgres is back
                log.warning("cannot sample the table", error=str(exc))
                await trio.sleep(config.sample_interval)
                continue
            metrics.queue_depth.set(stats.rows)
            metrics.queue_bytes.set(stats.payload_bytes)
            metrics.oldest_age.set(stats.oldest_age_seconds)
            backlog.resync(stats.rows, changes_at_start)
            if time.monotonic() >= next_log:
                next_log += config.log_interval
                log.info("emitter status", pending=stats.rows, oldest_pending_s=round(stats.oldest_age_seconds, 3),
                         emitted=int(value(metrics.emit_success)),
                         delivered=int(value(metrics.delivery_completed)))
            await trio.sleep(config.sample_interval)
    finally:
        if server is not None:
            server.shutdown()
