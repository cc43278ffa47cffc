"""A real gRPC server implementing ``chipingress.pb.ChipIngress`` for tests and local runs.

Start one in-process with :func:`start` (tests do, on a free port) or from the
command line (``python -m chipmock``). What it does with each call is decided
by :mod:`chipmock.model`; what it received is in ``server.counters``.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar, cast
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from chippb import chipingress_pb2 as pb
from chippb import chipingress_pb2_grpc as pb_grpc
from chippb import cloudevent_pb2 as ce

from .auth import TOKEN_HEADER, AuthCounts, AuthPolicy, refusal
from .ids_log import IdsLog
from .model import AGE_BUCKETS, ChipModel, ChipState, Counters, EventView, code_number, decide_ping

_STATUS: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}
# Trailing metadata of a rate-limited call: milliseconds until the same call would pass.
RETRY_AFTER_KEY = "retry-after-ms"
_SCHEMA_ATTRIBUTE_KINDS = ("ce_uri", "ce_uri_ref", "ce_string")

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _view(event: ce.CloudEvent, *, full: bool) -> EventView:
    """What the model reads of ``event``; its data and dataschema only when a rule of the model looks at them."""
    missing = tuple(name for name in ("id", "source", "spec_version", "type") if not getattr(event, name))
    if not full:
        return EventView(event.id, missing=missing)
    kind = event.WhichOneof("data")
    data = (event.binary_data if kind == "binary_data" else event.text_data.encode() if kind == "text_data"
            else event.proto_data.value if kind == "proto_data" else b"")
    dataschema = None
    if "dataschema" in event.attributes:  # membership first: reading a missing key of a proto map inserts it
        value = event.attributes["dataschema"]
        if value.WhichOneof("attr") in _SCHEMA_ATTRIBUTE_KINDS:
            dataschema = str(getattr(value, value.WhichOneof("attr")))
    return EventView(event.id, data, dataschema, missing)


def _options_kind(batch: pb.CloudEventBatch) -> str:
    if not batch.HasField("options"):
        return "absent"
    if not batch.options.HasField("transaction_enabled"):
        return "unset"
    return "true" if batch.options.transaction_enabled else "false"


class ChipIngressMock(pb_grpc.ChipIngressServicer):
    def __init__(self, model: ChipModel, counters: Counters, ids_log: IdsLog | None = None) -> None:
        self.model = model
        self.counters = counters
        self.ids_log = ids_log
        self.state = ChipState(model.seed)
        self._lock = threading.Lock()  # every decision, one at a time: the state is not thread-safe
        self._started = time.monotonic()
        self.stopped = threading.Event()  # wakes handlers still sleeping out their latency after stop

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    def _enter_call(self, context: grpc.ServicerContext, batch_size: int, request_bytes: int = 0) -> float:
        """Apply latency and whole-call failures; aborts the RPC if it fails. Returns the arrival (wall clock)."""
        arrived = time.time()
        with self._lock:
            decision = self.state.call(self.model, elapsed=self._elapsed(), batch_size=batch_size,
                                       request_bytes=request_bytes)
        if decision.delay and self.stopped.wait(decision.delay):
            context.abort(grpc.StatusCode.UNAVAILABLE, "chipmock: stopped")
        self.counters.record_call(failed=decision.status is not None, rate_limited=decision.retry_after is not None)
        if decision.retry_after is not None:
            context.set_trailing_metadata(((RETRY_AFTER_KEY, str(math.ceil(decision.retry_after * 1000))),))
        if decision.status is not None:
            context.abort(_STATUS[decision.status], decision.detail)
        return arrived

    def _produce(self, events: list[ce.CloudEvent], arrived: float, context: grpc.ServicerContext, *,
                 transactional: bool = False) -> pb.PublishResponse:
        model = self.model
        full = model.reads_contents
        views = [_view(event, full=full) for event in events]
        with self._lock:
            answers = self.state.events(model, views, elapsed=self._elapsed(), transactional=transactional)
        response = pb.PublishResponse()
        produced: list[tuple[str, bytes | int]] = []
        ages: list[float] = []
        keep = self.counters.keep_payloads
        for event, answer in zip(events, answers, strict=True):
            result = response.results.add(event_id=event.id)
            if answer is not None:
                # An open enum: numbers this proto does not name go on the wire too.
                result.error.error_code = cast(pb.PublishErrorCode, code_number(answer.code))
                result.error.reason = answer.reason
            else:
                produced.append((event.id, event.SerializeToString() if keep else event.ByteSize()))
                if "recordedtime" in event.attributes:
                    recorded = event.attributes["recordedtime"].ce_timestamp
                    ages.append(arrived - recorded.seconds - recorded.nanos / 1e9)
        self.counters.record_events(produced, rejected=len(events) - len(produced), ages=ages)
        if self.ids_log is not None:
            self.ids_log.record([event_id for event_id, _ in produced], arrived, context.peer())
        if self.model.short_response is not None:
            del response.results[self.model.short_response:]
        return response

    def Publish(self, request: ce.CloudEvent, context: grpc.ServicerContext) -> pb.PublishResponse:
        return self._produce([request], self._enter_call(context, 1), context)

    def PublishBatch(self, request: pb.CloudEventBatch, context: grpc.ServicerContext) -> pb.PublishResponse:
        self.counters.record_batch_options(_options_kind(request))
        arrived = self._enter_call(context, len(request.events), request.ByteSize())
        return self._produce(list(request.events), arrived, context, transactional=request.options.transaction_enabled)

    def _check_windows(self, context: grpc.ServicerContext) -> None:
        """Outage and UNAUTHENTICATED windows, as for Ping: the calls that carry no events."""
        decision = decide_ping(self.model, elapsed=self._elapsed())
        if decision.status is not None:
            context.abort(_STATUS[decision.status], decision.detail)

    def Ping(self, request: pb.EmptyRequest, context: grpc.ServicerContext) -> pb.PingResponse:
        self.counters.record_ping()
        self._check_windows(context)
        return pb.PingResponse(message="pong")

    def StreamEvents(
        self, request_iterator: Iterator[pb.StreamEventsRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.StreamEventsResponse]:
        for request in request_iterator:
            response = self._produce([request.event], self._enter_call(context, 1), context)
            ok = not response.results or not response.results[0].HasField("error")
            yield pb.StreamEventsResponse(eventId=request.event.id, status="success" if ok else "error")

    def RegisterSchema(self, request: pb.RegisterSchemaRequest, context: grpc.ServicerContext
                       ) -> pb.RegisterSchemaResponse:
        """Store the schemas (all or none): an event's dataschema then matches a subject or a path."""
        self._check_windows(context)
        entries = [(schema.subject, schema.path.path, schema.schema) for schema in request.schemas]
        try:
            with self._lock:
                versions = self.state.registry.register(entries)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"chipmock: {exc}")
        return pb.RegisterSchemaResponse(registered=[
            pb.RegisteredSchema(subject=subject, version=version)
            for (subject, _, _), version in zip(entries, versions, strict=True)])


class _Auth(grpc.ServerInterceptor):
    """Refuses, UNAUTHENTICATED with the reason, calls whose metadata the policy does not admit."""

    def __init__(self, policy: AuthPolicy) -> None:
        self.policy = policy
        self.counts = AuthCounts()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[_Request, _Response] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Request, _Response] | None:
        policy = self.policy
        if policy == AuthPolicy():
            return continuation(handler_call_details)
        metadata = {key: value for key, value in handler_call_details.invocation_metadata or ()
                    if isinstance(value, str)}
        reason = refusal(metadata, policy, time.time_ns())
        self.counts.record(metadata.get(TOKEN_HEADER) if policy.token_keys else None, reason)
        if reason is None:
            return continuation(handler_call_details)

        def deny(request: object, context: grpc.ServicerContext) -> NoReturn:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"chipmock: {reason}")

        # Any, Any: it stands in for whichever method was called, whatever its messages.
        handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(deny)
        return handler


class _CountersCollector:
    def __init__(self, counters: Counters) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        snap = self._counters.snapshot()
        for name, value, doc in [
            ("chipmock_calls", snap.calls, "RPCs received"),
            ("chipmock_failed_calls", snap.failed_calls, "RPCs failed on purpose"),
            ("chipmock_events_received", snap.received, "events produced, duplicates included"),
            ("chipmock_events_duplicate", snap.duplicates, "events whose id was already produced"),
            ("chipmock_events_rejected", snap.rejected, "events answered with a permanent error"),
            ("chipmock_received_bytes", snap.bytes, "bytes of produced events"),
            ("chipmock_rate_limited_calls", snap.rate_limited, "RPCs refused by --rate-limit (also failed_calls)"),
        ]:
            yield CounterMetricFamily(name, doc, value=value)
        options = CounterMetricFamily("chipmock_publish_batch_options",
                                      "PublishBatch calls by how they carried options.transaction_enabled",
                                      labels=["transaction_enabled"])
        for kind, count in snap.batch_options.items():
            options.add_metric([kind], count)
        yield options
        yield GaugeMetricFamily("chipmock_events_unique", "distinct event ids produced", value=snap.unique)
        running, buckets = 0, []
        for bound, count in zip((*AGE_BUCKETS, float("inf")), snap.ages, strict=True):
            running += count
            buckets.append((repr(bound) if bound != float("inf") else "+Inf", running))
        yield HistogramMetricFamily("chipmock_event_age_seconds",
                                    "age of produced events on arrival: now - recordedtime (ms precision)",
                                    buckets=buckets, sum_value=None)


@dataclass
class ChipMockServer:
    """A running chipmock: its address, counters, and ``stop``."""

    server: grpc.Server
    port: int
    counters: Counters
    servicer: ChipIngressMock
    auth: _Auth
    host: str = "127.0.0.1"
    metrics_port: int | None = None
    _metrics_server: WSGIServer | None = None

    @property
    def model(self) -> ChipModel:
        return self.servicer.model

    def require_credentials(self, username: str | None, password: str | None = None) -> None:
        """From the next call on, refuse calls without these basic-auth credentials (None: accept any call)."""
        self.auth.policy = dataclasses.replace(self.auth.policy, basic=_basic(username, password))

    def require_auth(self, policy: AuthPolicy) -> None:
        """From the next call on, admit only what ``policy`` admits (node tokens, headers; its basic auth too)."""
        self.auth.policy = policy

    @property
    def auth_counts(self) -> tuple[int, frozenset[tuple[bytes, int]], dict[str, int]]:
        """Calls admitted with a node token, the distinct tokens (public key, signing time), refusals by reason."""
        return self.auth.counts.snapshot()

    def set_model(self, model: ChipModel) -> None:
        """Change behaviour from the next call on (end an outage, add latency...)."""
        self.servicer.model = model

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace).wait()
        self.servicer.stopped.set()  # calls still sleeping out their latency end now, not after it
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server = None
        if self.servicer.ids_log is not None:
            self.servicer.ids_log.close()

    def __enter__(self) -> ChipMockServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=0)


def _basic(username: str | None, password: str | None) -> str | None:
    """The ``authorization`` value basic auth sends (None: no basic auth)."""
    return None if username is None else "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def _refuse_port_in_use(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen for gRPC on {host}:{port}: {exc.strerror or exc}") from None


def start(
    model: ChipModel | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics_port: int | None = None,
    keep_payloads: bool = False,
    credentials: tuple[str, str] | None = None,
    tls: tuple[bytes, bytes] | None = None,
    max_workers: int = 64,
    auth: AuthPolicy | None = None,
    ids_file: str | None = None,
) -> ChipMockServer:
    """Start a chipmock; ``port=0`` picks a free one (read it from ``.port``).

    ``credentials`` (user, password) makes it require basic auth; ``auth`` node
    tokens and headers; ``tls`` (certificate chain PEM, private key PEM) makes it serve TLS;
    ``ids_file`` gets a line per produced event (see :class:`chipmock.ids_log.IdsLog`).
    """
    model = model or ChipModel()
    counters = Counters(keep_payloads=keep_payloads)
    policy = auth or AuthPolicy()
    if credentials:
        policy = dataclasses.replace(policy, basic=_basic(*credentials))
    interceptor = _Auth(policy)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="chipmock"),
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # No SO_REUSEPORT: with it, a second chipmock "listens" on a port another
            # one holds and silently shares its traffic.
            ("grpc.so_reuseport", 0),
            # Keepalive pings every 5 s allowed, calls or none (as upstream's mock Chip): grpc's
            # default policy answers a client pinging every 10 s with GOAWAY "too_many_pings".
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    servicer = ChipIngressMock(model, counters)
    pb_grpc.add_ChipIngressServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    if port:
        _refuse_port_in_use(host, port)  # before gRPC, whose own refusal is a multi-line C log
    try:
        if tls:
            bound = server.add_secure_port(address, grpc.ssl_server_credentials([(tls[1], tls[0])]))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        bound = 0
    if not bound:
        raise OSError(f"cannot listen for gRPC on {address}: the port is in use or not available")
    running = ChipMockServer(server, bound, counters, servicer, interceptor, host)
    if metrics_port is not None:
        registry = CollectorRegistry()
        registry.register(_CountersCollector(counters))
        try:
            metrics_server, _thread = start_http_server(metrics_port, addr=host, registry=registry)
        except OSError as exc:
            server.stop(0)  # give the gRPC port back: nothing half-started
            raise OSError(f"cannot serve metrics on {host}:{metrics_port}: {exc.strerror or exc}") from None
        running._metrics_server = metrics_server
        running.metrics_port = metrics_server.server_port
    if ids_file:
        servicer.ids_log = IdsLog(ids_file)
    server.start()
    return running
