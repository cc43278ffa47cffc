"""CloudEvent building, batch framing and result interpretation: pure functions."""

import time
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.core.answers import Rejection, interpret_response
from actors.core.events import build_event, encode_batch, framed_size, idempotency_key, new_event_id
from actors.errors import InvalidEvent
from chippb import chipingress_pb2 as pb
from chippb import cloudevent_pb2 as ce


def _parse(payload: bytes) -> ce.CloudEvent:
    return ce.CloudEvent.FromString(payload)


def test_builds_a_complete_cloud_event() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    event_id, payload = build_event(b"\x00body", source="wf", type="tick", attributes={"n": 3}, now=now)
    event = _parse(payload)
    assert event.id == event_id and event.spec_version == "1.0"
    assert (event.source, event.type, event.binary_data) == ("wf", "tick", b"\x00body")
    assert event.attributes["n"].ce_integer == 3
    assert event.attributes["emitter"].ce_string == "durable-emitter"
    assert event.attributes["recordedtime"].ce_timestamp.ToDatetime(UTC) == now.replace(microsecond=678000)
    assert event.attributes["idempotencykey"].ce_string == idempotency_key("wf", "tick", b"\x00body")


def test_each_event_gets_a_fresh_id_but_the_same_key_for_the_same_content() -> None:
    first_id, first = build_event(b"same", source="wf", type="tick")
    second_id, second = build_event(b"same", source="wf", type="tick")
    assert first_id != second_id
    key = lambda p: _parse(p).attributes["idempotencykey"].ce_string  # noqa: E731
    assert key(first) == key(second)


def test_idempotency_key_is_length_prefixed() -> None:
    # Without prefixes, ("ab", "c") and ("a", "bc") would collide.
    assert idempotency_key("ab", "c", b"") != idempotency_key("a", "bc", b"")


def test_text_body_and_attribute_kinds() -> None:
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    _, payload = build_event("héllo", source="wf", type="t",
                             attributes={"flag": True, "raw": b"\x01", "at": stamp, "name": "x"})
    event = _parse(payload)
    assert event.text_data == "héllo"
    assert event.attributes["flag"].ce_boolean is True
    assert event.attributes["raw"].ce_bytes == b"\x01"
    assert event.attributes["at"].ce_timestamp.ToDatetime(UTC) == stamp


@pytest.mark.parametrize("kwargs,message", [
    ({"source": None, "type": "t"}, "source is required"),
    ({"source": "wf", "type": ""}, "type is required"),
    ({"source": "a/b", "type": "t"}, "must match"),
    ({"source": "wf", "type": "t", "attributes": {"Bad_Name": "x"}}, "lower-case"),
    ({"source": "wf", "type": "t", "attributes": {"id": "x"}}, "set by the emitter"),
    ({"source": "wf", "type": "t", "attributes": {"big": 2**40}}, "32 bits"),
    ({"source": "wf", "type": "t", "attributes": {"f": 1.5}}, "not supported"),
])
def test_invalid_input_is_refused_with_the_reason(kwargs, message) -> None:
    with pytest.raises(InvalidEvent, match=message):
        build_event(b"x", **kwargs)


def test_protobuf_body_needs_a_data_schema() -> None:
    with pytest.raises(InvalidEvent, match="data_schema"):
        build_event(ce.CloudEvent(id="x"), source="wf", type="t")
    with pytest.raises(InvalidEvent, match="body must be"):
        build_event(12, source="wf", type="t")  # type: ignore[arg-type]  # testing bad input


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_encode_batch_is_a_cloud_event_batch_of_those_events(bodies: list[bytes]) -> None:
    payloads = [build_event(body, source="wf", type="t")[1] for body in bodies]
    encoded = encode_batch(payloads)
    expected = pb.CloudEventBatch(events=[_parse(p) for p in payloads],
                                  options=pb.PublishOptions(transaction_enabled=False))
    decoded = pb.CloudEventBatch.FromString(encoded)
    assert decoded == expected and decoded.options.HasField("transaction_enabled")  # said, not left unset
    assert sum(framed_size(p) for p in payloads) + 4 == len(encoded)  # the events, then the options


def _result(event_id: str, code: int | None = None) -> pb.PublishResult:
    if code is None:
        return pb.PublishResult(event_id=event_id)
    return pb.PublishResult(event_id=event_id, error=pb.PublishError(error_code=code, reason="why"))


def test_interpret_response_is_positional_and_sorts_codes_by_who_is_at_fault() -> None:
    response = pb.PublishResponse(results=[
        _result("a"), _result("b", pb.VALIDATION_FAILED), _result("c", pb.SCHEMA_MISSING),
        _result("d", pb.ENCODE_ERROR), _result("e", pb.DOMAIN_MISCONFIGURATION), _result("f", 99),
        _result("zzz"),  # names another id: not trusted
    ])
    outcome = interpret_response(["a", "b", "c", "d", "e", "f", "g", "h"], response)
    assert outcome.delivered == ["a"]
    # The event's own bytes are at fault: dead-letter.
    assert outcome.rejected == [Rejection("b", "VALIDATION_FAILED", "why"), Rejection("d", "ENCODE_ERROR", "why")]
    # Chip's registry or configuration is at fault (and codes we do not know): wait in the table.
    assert outcome.deferred == [(2, Rejection("c", "SCHEMA_MISSING", "why")),
                                (4, Rejection("e", "DOMAIN_MISCONFIGURATION", "why")), (5, Rejection("f", "CODE_99", "why"))]
    assert outcome.retry == [6, 7]  # wrong id, and no result at all


def test_results_that_do_not_line_up_settle_only_events_they_name() -> None:
    unnamed = pb.PublishResult()
    # One result too many, or too few, without ids: nothing can be matched, nothing is settled.
    assert interpret_response(["a", "b"], pb.PublishResponse(results=[unnamed] * 3)).retry == [0, 1]
    assert interpret_response(["a", "b"], pb.PublishResponse(results=[unnamed])).retry == [0, 1]
    failed = pb.PublishResult(error=pb.PublishError(error_code=pb.VALIDATION_FAILED, reason="bad"))
    assert not interpret_response(["a", "b"], pb.PublishResponse(results=[failed])).rejected  # no dead letter on a guess
    # Results that name their ids are believed, however many there are.
    named = pb.PublishResponse(results=[_result("a"), _result("b", pb.VALIDATION_FAILED), _result("x")])
    outcome = interpret_response(["a", "b"], named)
    assert outcome.delivered == ["a"] and outcome.rejected == [Rejection("b", "VALIDATION_FAILED", "why")]


def test_interpret_response_accepts_results_without_ids() -> None:
    response = pb.PublishResponse(results=[pb.PublishResult(), pb.PublishResult()])
    assert interpret_response(["a", "b"], response).delivered == ["a", "b"]


def test_event_ids_are_uuid7_in_time_order_and_distinct() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(20_000)]
    after_ms = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids, strict=True))
    assert len(set(ids)) == len(ids)
    assert before_ms <= parsed[0].int >> 80 <= parsed[-1].int >> 80 <= after_ms  # 48-bit Unix milliseconds
    # Sub-millisecond time in the next 12 bits: in order except within one ~244 ns step.
    stamps = [(u.int >> 80, (u.int >> 64) & 0xFFF) for u in parsed]
    assert stamps == sorted(stamps)


_NAMES = st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True).filter(
    lambda n: n not in {"id", "source", "specversion", "type", "data", "idempotencykey", "recordedtime", "emitter"})
_VALUES = st.one_of(st.text(max_size=30), st.booleans(), st.integers(-(2**31), 2**31 - 1), st.binary(max_size=30),
                    st.datetimes(timezones=st.just(UTC)))


@given(body=st.one_of(st.binary(max_size=400), st.text(max_size=200), st.just(ce.CloudEvent(id="inner"))),
       attributes=st.dictionaries(_NAMES, _VALUES, max_size=4),
       data_schema=st.one_of(st.none(), st.just("https://schemas.example/v1")),
       millis=st.integers(0, 2**42))
def test_framed_bytes_parse_as_the_message_the_protobuf_api_builds(body, attributes, data_schema, millis) -> None:
    """build_event frames bytes itself; they must mean exactly what the message API would have built."""
    if not isinstance(body, (bytes, str)) and not data_schema:
        data_schema = "https://schemas.example/inner"
    now = datetime.fromtimestamp(millis // 1000, UTC).replace(microsecond=millis % 1000 * 1000)
    event_id, payload = build_event(body, source="wf", type="tick", attributes=attributes, data_schema=data_schema,
                                    now=now)
    expected = ce.CloudEvent(id=event_id, source="wf", spec_version="1.0", type="tick")
    if isinstance(body, bytes):
        expected.binary_data, raw = body, body
    elif isinstance(body, str):
        expected.text_data, raw = body, body.encode()
    else:
        raw = body.SerializeToString(deterministic=True)
        expected.proto_data.type_url, expected.proto_data.value = data_schema, raw
    for name, value in attributes.items():
        attribute = expected.attributes[name]
        if isinstance(value, bool):
            attribute.ce_boolean = value
        elif isinstance(value, int):
            attribute.ce_integer = value
        elif isinstance(value, str):
            attribute.ce_string = value
        elif isinstance(value, bytes):
            attribute.ce_bytes = value
        else:
            attribute.ce_timestamp.FromDatetime(value)
    if data_schema:
        expected.attributes["dataschema"].ce_uri = data_schema
    stamp = expected.attributes["recordedtime"].ce_timestamp
    stamp.seconds, stamp.nanos = millis // 1000, millis % 1000 * 1_000_000
    expected.attributes["idempotencykey"].ce_string = idempotency_key("wf", "tick", raw)
    expected.attributes["emitter"].ce_string = "durable-emitter"
    assert ce.CloudEvent.FromString(payload) == expected


def test_equal_attribute_values_of_other_types_are_not_mixed_up() -> None:
    """The shared part is cached by value *and* type: True == 1 == 1.0 in Python, not on the wire."""
    kinds = []
    for value in (1, True):
        _, payload = build_event(b"x", source="wf", type="tick", attributes={"n": value})
        kinds.append(_parse(payload).attributes["n"].WhichOneof("attr"))
    assert kinds == ["ce_integer", "ce_boolean"]
    with pytest.raises(InvalidEvent, match="float values are not supported"):
        build_event(b"x", source="wf", type="tick", attributes={"n": 1.0})
