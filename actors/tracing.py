"""Trace context for events: the CloudEvents distributed-tracing extension from OpenTelemetry's current span.

OpenTelemetry is optional (``pip install durable-emitter[otel]``): without its
API, or without a current span, events carry no trace attributes and this costs
one check. With them, ``traceparent`` (and ``tracestate`` when set) ride along
as CloudEvent extension attributes, as the CloudEvents distributed-tracing
extension names them, through whatever propagator the host configured.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

propagate: ModuleType | None
trace: ModuleType | None
try:
    from opentelemetry import propagate, trace
except ImportError:  # the extra is not installed: no trace context
    propagate = trace = None

_EXTENSION = ("traceparent", "tracestate")


def with_trace_context(attributes: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``attributes`` plus the current span's ``traceparent``/``tracestate``; the caller's own values win."""
    if propagate is None or trace is None:
        return attributes
    if not trace.get_current_span().get_span_context().is_valid:
        return attributes  # no span: the common case on emit's hot path, one context lookup
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    found = {key: carrier[key] for key in _EXTENSION if key in carrier}
    if not found:
        return attributes
    return {**found, **attributes} if attributes else found
