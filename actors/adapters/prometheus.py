"""The emitter's statistics as Prometheus metrics, read from the actors' records at scrape time.

Names follow upstream's dashboards where the meaning matches
(``durable_emitter_emit_success_total``, ``durable_emitter_queue_depth``, ...).
Nothing is updated on the hot path: a scrape reads each actor's
``statistics()`` and builds the families then. Every known label value is
exported from the start (at 0), so dashboards and alerts see a series before
the first failure rather than no data.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..core.instruments import HistogramSnapshot
from ..statistics import DELIVERY_STATES, Sources

P = "durable_emitter_"


def _counter(name: str, doc: str, value: float | dict[str, int], label: str = "") -> CounterMetricFamily:
    if not isinstance(value, dict):
        return CounterMetricFamily(P + name, doc, value=value)
    family = CounterMetricFamily(P + name, doc, labels=[label])
    for key, count in sorted(value.items()):
        family.add_metric([key], count)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(P + name, doc, value=value)


def _histogram(name: str, doc: str, snapshots: dict[str, HistogramSnapshot], label: str = "") -> HistogramMetricFamily:
    family = HistogramMetricFamily(P + name, doc, labels=[label] if label else None)
    for key, snapshot in snapshots.items():
        bounds = [*(f"{b:g}" for b in snapshot.bounds), "+Inf"]
        family.add_metric([key] if label else [], list(zip(bounds, snapshot.cumulative(), strict=True)),
                          snapshot.total)
    return family


class EmitterCollector(Collector):
    def __init__(self, sources: Sources, *, version: str, instance_id: str) -> None:
        self.sources = sources
        self.info = {"version": version, "instance_id": instance_id}

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        yield InfoMetricFamily("durable_emitter", "the running emitter: its version and instance id", value=self.info)
        emit, persister, dispatcher, acker, table = s.emit(), s.persister(), s.dispatcher(), s.acker(), s.table()
        yield _counter("emit_success", "emits committed", emit.succeeded)
        yield _counter("emit_failure", "emits that raised", emit.failed, "reason")
        yield _histogram("emit_duration_seconds", "emit() call to commit", {"": emit.seconds})
        yield _histogram("commit_batch_events", "events per group commit", {"": persister.group_sizes})
        yield _counter("batch_enqueue_buffer_full", "events committed while the in-memory dispatch buffer was "
                       "full (read back from the table instead)", persister.spilled)
        yield _histogram("publish_duration_seconds", "PublishBatch call latency", dispatcher.publish_seconds, "phase")
        yield _histogram("publish_batch_events", "events per PublishBatch", {"": dispatcher.batch_sizes})
        yield _counter("publish_batch_events_success", "events Chip acknowledged", dispatcher.published, "phase")
        yield _counter("publish_batch_events_failure", "events not acknowledged by a publish attempt",
                       dispatcher.not_published, "phase")
        yield _counter("publish_retries", "publish attempts that will be retried", dispatcher.retries, "reason")
        yield _counter("publish_released", "events handed back to the table after exhausting in-memory retries",
                       dispatcher.released)
        yield _counter("delivery_completed", "rows deleted after ack", acker.deleted)
        dead = dict(acker.dead_lettered)
        dead["EXPIRED"] = dead.get("EXPIRED", 0) + dispatcher.expired
        yield _counter("dead_lettered", "events moved to the dead-letter table", dead, "reason")
        yield _counter("expired_purged", "events past the TTL, moved to the dead-letter table", dispatcher.expired)
        yield _counter("recovered", "rows claimed back from the table", dispatcher.claimed)
        yield _counter("actor_restarts", "actor restarts by the supervisor", s.restarts(), "actor")
        # Table-wide: every instance reports the whole table, so dashboards take max(), not sum().
        yield _gauge("queue_depth", "pending rows in chip_durable_events (whole table)", table.rows)
        yield _gauge("queue_payload_bytes", "payload bytes pending (whole table)", table.payload_bytes)
        yield _gauge("queue_oldest_pending_age_seconds", "age of the oldest pending row (whole table)",
                     table.oldest_age_seconds)
        yield _gauge("publish_in_flight", "PublishBatch calls in flight", dispatcher.in_flight)
        delivery = GaugeMetricFamily(P + "delivery_state", "1 for the dispatcher's current state: up; limited "
                                     "(Chip rate-limits us: delivery at its pace); down (Chip does not answer); "
                                     "refused (Chip refuses us, or no node token can be signed: alert)", labels=["state"])
        for state in DELIVERY_STATES:
            delivery.add_metric([state], 1.0 if dispatcher.delivery == state else 0.0)
        yield delivery
        paused_by = GaugeMetricFamily(P + "delivery_paused_by", "1 while delivery is paused, labelled with the "
                                      "code that paused it (UNAVAILABLE, UNAUTHENTICATED, SCHEMA_MISSING, ...); "
                                      "0 with an empty code while delivery is up", labels=["code"])
        paused_by.add_metric([dispatcher.paused_by], 1.0 if dispatcher.paused_by else 0.0)
        yield paused_by
        yield _gauge("delivery_held_events", "events held in memory while delivery is paused", dispatcher.held)
