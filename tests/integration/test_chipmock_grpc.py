"""A grpcio client built from our proto/ against a real chipmock server."""

import math

import grpc
import pytest

from chipmock import ChipModel
from chipmock.model import RejectContaining
from chippb import chipingress_pb2 as pb
from chippb import chipingress_pb2_grpc as pb_grpc
from chippb import cloudevent_pb2 as ce


def _event(i: int | str) -> ce.CloudEvent:
    return ce.CloudEvent(id=f"id-{i}", source="test", spec_version="1.0", type="t", binary_data=b"x")


def _stub(server):
    channel = grpc.insecure_channel(server.endpoint)
    return channel, pb_grpc.ChipIngressStub(channel)


def test_ping_publish_and_batch(start_chipmock) -> None:
    server = start_chipmock()
    channel, stub = _stub(server)
    with channel:
        assert stub.Ping(pb.EmptyRequest()).message == "pong"
        single = stub.Publish(_event("one"))
        assert [r.event_id for r in single.results] == ["id-one"]
        batch = stub.PublishBatch(pb.CloudEventBatch(events=[_event(i) for i in range(5)]))
    assert [r.event_id for r in batch.results] == [f"id-{i}" for i in range(5)]
    assert not any(r.HasField("error") for r in batch.results)
    snap = server.counters.snapshot()
    assert (snap.calls, snap.received, snap.unique) == (2, 6, 6)


def test_batch_results_are_positional_with_per_event_errors(start_chipmock) -> None:
    server = start_chipmock(ChipModel(event_failure_rate=0.5, seed=11))
    channel, stub = _stub(server)
    with channel:
        events = [_event(i) for i in range(400)]
        events[3] = ce.CloudEvent(id="no-source", spec_version="1.0", type="t")
        response = stub.PublishBatch(pb.CloudEventBatch(events=events))
    assert [r.event_id for r in response.results] == [e.id for e in events]
    assert response.results[3].error.error_code == pb.VALIDATION_FAILED
    failed = sum(r.HasField("error") for r in response.results)
    assert 140 <= failed <= 260  # 0.5 of 400, about 5 standard deviations either side
    assert all(r.error.error_code in (pb.SCHEMA_MISSING, pb.VALIDATION_FAILED)
               for r in response.results if r.HasField("error"))
    snap = server.counters.snapshot()
    assert snap.received == 400 - failed and snap.rejected == failed


def test_short_response_answers_only_a_prefix(start_chipmock) -> None:
    server = start_chipmock(ChipModel(short_response=2))
    channel, stub = _stub(server)
    with channel:
        response = stub.PublishBatch(pb.CloudEventBatch(events=[_event(i) for i in range(5)]))
    assert [r.event_id for r in response.results] == ["id-0", "id-1"]


def test_stream_events_answers_each_event(start_chipmock) -> None:
    server = start_chipmock()
    channel, stub = _stub(server)
    with channel:
        replies = list(stub.StreamEvents(pb.StreamEventsRequest(event=_event(i)) for i in range(3)))
    assert [(r.eventId, r.status) for r in replies] == [(f"id-{i}", "success") for i in range(3)]
    assert server.counters.snapshot().unique == 3


def test_configured_latency_is_observed(start_chipmock) -> None:
    """A deadline shorter than the latency expires; the call itself still arrives (no timing asserted)."""
    server = start_chipmock(ChipModel(latency=0.5))
    channel, stub = _stub(server)
    with channel:
        stub.Ping(pb.EmptyRequest(), timeout=10)  # connect first; Ping has no latency
        with pytest.raises(grpc.RpcError) as info:
            stub.PublishBatch(pb.CloudEventBatch(events=[_event(1)]), timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert stub.PublishBatch(pb.CloudEventBatch(events=[_event(2)]), timeout=30).results[0].event_id == "id-2"


def test_failure_rate_over_2000_calls_lands_in_band(start_chipmock) -> None:
    server = start_chipmock(ChipModel(failure_rate=0.3, seed=13))  # seeded: the band holds on every run
    channel, stub = _stub(server)
    failures = 0
    with channel:
        for i in range(2000):
            try:
                stub.Publish(_event(i))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                failures += 1
    # Binomial(2000, 0.3): mean 600, sd 20.5; five sd either side.
    assert 497 <= failures <= 703
    assert server.counters.snapshot().failed_calls == failures


def test_outage_and_max_batch_fail_whole_calls(start_chipmock) -> None:
    from chipmock import Outage

    server = start_chipmock(ChipModel(outages=(Outage(0, math.inf),), max_batch=2))  # down however slow the start
    channel, stub = _stub(server)
    with channel, pytest.raises(grpc.RpcError) as info:
        stub.PublishBatch(pb.CloudEventBatch(events=[_event(1)]))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.counters.snapshot().received == 0


def test_duplicates_are_counted(start_chipmock) -> None:
    server = start_chipmock()
    channel, stub = _stub(server)
    with channel:
        for _ in range(3):
            stub.PublishBatch(pb.CloudEventBatch(events=[_event("same"), _event("other")]))
    snap = server.counters.snapshot()
    assert (snap.received, snap.unique, snap.duplicates) == (6, 2, 4)


def test_basic_auth_is_required_when_configured(start_chipmock) -> None:
    import base64

    server = start_chipmock(credentials=("user", "secret"))
    channel, stub = _stub(server)
    good = [("authorization", "Basic " + base64.b64encode(b"user:secret").decode())]
    with channel:
        with pytest.raises(grpc.RpcError) as info:
            stub.Publish(_event(1))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.Publish(_event(1), metadata=good).results[0].event_id == "id-1"


def test_metrics_endpoint_serves_the_counters(start_chipmock) -> None:
    import urllib.request

    server = start_chipmock(metrics_port=0)
    channel, stub = _stub(server)
    with channel:
        stub.PublishBatch(pb.CloudEventBatch(events=[_event(1), _event(1)]))
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert "chipmock_events_received_total 2.0" in body
    assert "chipmock_events_duplicate_total 1.0" in body


def _with_schema(i: int, dataschema: str) -> ce.CloudEvent:
    event = _event(i)
    event.attributes["dataschema"].ce_uri = dataschema
    return event


def test_registered_schemas_let_events_through_when_schemas_are_required(start_chipmock) -> None:
    server = start_chipmock(ChipModel(require_schemas=True))
    channel, stub = _stub(server)
    events = [_with_schema(1, "/workflows/v1"), _with_schema(2, "tick-value"), _event(3)]
    with channel:
        before = stub.PublishBatch(pb.CloudEventBatch(events=events))
        registered = stub.RegisterSchema(pb.RegisterSchemaRequest(schemas=[
            pb.Schema(subject="tick-value", path=pb.Path(path="/workflows/v1", type=pb.GITHUB), format=pb.PROTOBUF,
                      schema="syntax = \"proto3\";"),
        ]))
        again = stub.RegisterSchema(pb.RegisterSchemaRequest(schemas=[pb.Schema(subject="tick-value", schema="v2")]))
        server.set_model(ChipModel(require_schemas=True))  # the registry outlives a model change
        after = stub.PublishBatch(pb.CloudEventBatch(events=events))
        with pytest.raises(grpc.RpcError) as info:
            stub.RegisterSchema(pb.RegisterSchemaRequest(schemas=[pb.Schema(path=pb.Path(path="/x"))]))
    assert [r.error.error_code for r in before.results] == [pb.SCHEMA_MISSING] * 3
    assert [(r.subject, r.version) for r in registered.registered] == [("tick-value", 1)]
    assert [(r.subject, r.version) for r in again.registered] == [("tick-value", 2)]
    assert [r.HasField("error") for r in after.results] == [False, False, True]  # by path, by subject; none named
    assert "names no dataschema" in after.results[2].error.reason
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "has no subject" in info.value.details()


def test_batches_are_counted_by_their_options_and_a_transactional_one_is_all_or_nothing(start_chipmock) -> None:
    server = start_chipmock(ChipModel(reject_containing=(RejectContaining("VALIDATION_FAILED", "poison"),)))
    channel, stub = _stub(server)
    events = [_event(1), _event("poison"), _event(3)]
    with channel:
        partial = stub.PublishBatch(pb.CloudEventBatch(events=events,
                                                       options=pb.PublishOptions(transaction_enabled=False)))
        whole = stub.PublishBatch(pb.CloudEventBatch(events=events, options=pb.PublishOptions(transaction_enabled=True)))
        stub.PublishBatch(pb.CloudEventBatch(events=[_event(4)]))
        stub.PublishBatch(pb.CloudEventBatch(events=[_event(5)], options=pb.PublishOptions()))
    assert [r.error.error_code for r in partial.results] == [0, pb.VALIDATION_FAILED, 0]
    assert [r.HasField("error") for r in partial.results] == [False, True, False]
    assert [r.error.error_code for r in whole.results] == [pb.PUBLISH_ERROR_CODE_UNKNOWN, pb.VALIDATION_FAILED,
                                                           pb.PUBLISH_ERROR_CODE_UNKNOWN]
    assert all(r.HasField("error") for r in whole.results)
    snap = server.counters.snapshot()
    assert dict(snap.batch_options) == {"absent": 1, "unset": 1, "false": 1, "true": 1}
    assert snap.unique == 4  # 1 and 3 once (the transaction produced nothing), 4 and 5


def test_a_rate_limited_call_says_so_and_when_to_come_back(start_chipmock) -> None:
    server = start_chipmock(ChipModel(rate_limit=1))
    channel, stub = _stub(server)
    with channel:
        stub.PublishBatch(pb.CloudEventBatch(events=[_event(i) for i in range(30)]))  # a full bucket: 29 of debt
        with pytest.raises(grpc.RpcError) as info:
            stub.PublishBatch(pb.CloudEventBatch(events=[_event(30)]))
        assert stub.Ping(pb.EmptyRequest()).message == "pong"  # never limited
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.details().startswith("request rate exceeds the maximum allowed")
    assert "larger than max" not in info.value.details()
    retry_after = dict(info.value.trailing_metadata())["retry-after-ms"]
    assert 20_000 < int(retry_after) <= 30_000
    snap = server.counters.snapshot()
    assert (snap.rate_limited, snap.failed_calls, snap.received) == (1, 1, 30)


@pytest.mark.slow
def test_keepalive_pings_every_5s_while_idle_keep_the_connection(start_chipmock) -> None:
    """As upstream's mock Chip: grpc's default server policy (pings no closer than 5 min) answers a
    client pinging while idle with GOAWAY "too_many_pings" after two strikes, and the channel drops."""
    import threading
    import time

    server = start_chipmock()
    options = [("grpc.keepalive_time_ms", 5_000), ("grpc.keepalive_timeout_ms", 1_000),
               ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
    states: list[grpc.ChannelConnectivity] = []
    changed = threading.Condition()

    def seen(state: grpc.ChannelConnectivity) -> None:
        with changed:
            states.append(state)
            changed.notify_all()

    with grpc.insecure_channel(server.endpoint, options=options) as channel:
        channel.subscribe(seen)
        pb_grpc.ChipIngressStub(channel).Ping(pb.EmptyRequest(), timeout=10)
        ready = len(states)
        assert states[-1] == grpc.ChannelConnectivity.READY
        deadline = time.monotonic() + 17  # three pings at 5 s: the third is past two strikes
        with changed:
            while time.monotonic() < deadline and len(states) == ready:
                changed.wait(deadline - time.monotonic())
        channel.unsubscribe(seen)
    assert states[ready:] == [], f"the idle connection was dropped: {states[ready - 1:]}"
    # The emitter's own channel pings every 10 s, calls or none, as upstream's client does.
    from actors import EmitterConfig
    from actors.adapters.chip import _channel_options

    ours = dict(_channel_options(EmitterConfig()))
    assert ours["grpc.keepalive_time_ms"] == 10_000 and ours["grpc.keepalive_permit_without_calls"] == 1
