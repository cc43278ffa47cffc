"""Trace context rides along: with OpenTelemetry and a current span, events carry traceparent (and
tracestate) as CloudEvent extension attributes, through emit and emit_many; off with one setting."""

from __future__ import annotations

import pytest

from actors import open_emitter
from chippb import cloudevent_pb2 as ce

trace = pytest.importorskip("opentelemetry.trace", reason="the otel extra (opentelemetry-sdk in dev) is not installed")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402  (after the skip above)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator  # noqa: E402

TRACER = TracerProvider().get_tracer("durable-emitter tests")  # a provider of our own: nothing global is set


def _attributes(chip, event_id: str) -> dict[str, str]:
    event = ce.CloudEvent.FromString(chip.counters.payloads[event_id])
    return {name: value.ce_string for name, value in event.attributes.items()}


async def test_events_emitted_in_a_span_carry_its_traceparent(chip, make_config) -> None:
    async with open_emitter(make_config(chip)) as emitter:
        with TRACER.start_as_current_span("workflow step") as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier)
            one = await emitter.emit(b"x", source="wf", type="t")
            many = await emitter.emit_many([b"a", b"b"], source="wf", type="t")
            own = await emitter.emit(b"y", source="wf", type="t", attributes={"traceparent": "00-mine-01"})
        outside = await emitter.emit(b"z", source="wf", type="t")
        await emitter.flush(timeout=30)
    trace_id = format(span.get_span_context().trace_id, "032x")
    for event_id in [one, *many]:
        attributes = _attributes(chip, event_id)
        assert attributes["traceparent"] == carrier["traceparent"] and trace_id in attributes["traceparent"]
    assert _attributes(chip, own)["traceparent"] == "00-mine-01"  # the caller's own value wins
    assert "traceparent" not in _attributes(chip, outside)  # no span, no trace context


async def test_trace_context_is_off_with_one_setting(chip, make_config) -> None:
    async with open_emitter(make_config(chip, trace_context=False)) as emitter:
        with TRACER.start_as_current_span("workflow step"):
            event_id = await emitter.emit(b"x", source="wf", type="t")
        await emitter.flush(timeout=30)
    assert "traceparent" not in _attributes(chip, event_id)
