"""Our .proto files put every field at the number a real Chip server expects.

The expected bytes are written by hand from the protobuf wire format
(tag = field_number << 3 | wire_type), so a renumbered field fails here.
"""

from chippb import chipingress_pb2 as pb
from chippb import cloudevent_pb2 as ce


def _len_field(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128  # single-byte varint lengths keep the test readable
    return bytes([number << 3 | 2, len(payload)]) + payload


def _varint_field(number: int, value: int) -> bytes:
    assert value < 128
    return bytes([number << 3 | 0, value])


def test_cloud_event_fields_have_the_standard_numbers() -> None:
    attr_value = _len_field(3, b"v")  # CloudEventAttributeValue.ce_string = 3
    map_entry = _len_field(1, b"k") + _len_field(2, attr_value)
    expected = (
        _len_field(1, b"id-1")
        + _len_field(2, b"src")
        + _len_field(3, b"1.0")
        + _len_field(4, b"t")
        + _len_field(5, map_entry)
        + _len_field(6, b"\x00\x01")
    )
    event = ce.CloudEvent.FromString(expected)
    assert (event.id, event.source, event.spec_version, event.type) == ("id-1", "src", "1.0", "t")
    assert event.attributes["k"].ce_string == "v"
    assert event.binary_data == b"\x00\x01"
    assert event.SerializeToString() == expected


def test_attribute_value_oneof_numbers() -> None:
    for number, name, value, raw in [
        (1, "ce_boolean", True, _varint_field(1, 1)),
        (2, "ce_integer", 7, _varint_field(2, 7)),
        (4, "ce_bytes", b"b", _len_field(4, b"b")),
        (5, "ce_uri", "u:x", _len_field(5, b"u:x")),
        (6, "ce_uri_ref", "/x", _len_field(6, b"/x")),
    ]:
        parsed = ce.CloudEvent.CloudEventAttributeValue.FromString(raw)
        assert parsed.WhichOneof("attr") == name, number
        assert getattr(parsed, name) == value


def test_text_and_proto_data_numbers() -> None:
    assert ce.CloudEvent.FromString(_len_field(7, b"hi")).text_data == "hi"
    any_body = _len_field(1, b"type.googleapis.com/x") + _len_field(2, b"\x08\x01")
    parsed = ce.CloudEvent.FromString(_len_field(8, any_body))
    assert parsed.proto_data.type_url == "type.googleapis.com/x"
    assert parsed.proto_data.value == b"\x08\x01"


def test_batch_and_results_numbers() -> None:
    event = _len_field(1, b"a")
    options = _varint_field(1, 1)  # transaction_enabled = 1
    batch = pb.CloudEventBatch.FromString(_len_field(1, event) + _len_field(1, event) + _len_field(2, options))
    assert [e.id for e in batch.events] == ["a", "a"]
    assert batch.options.HasField("transaction_enabled") and batch.options.transaction_enabled

    error = _varint_field(1, 2) + _len_field(2, b"no schema")  # error_code, reason
    result = _len_field(1, b"a") + _len_field(2, error)
    response = pb.PublishResponse.FromString(_len_field(1, result))
    assert response.results[0].event_id == "a"
    assert response.results[0].error.error_code == pb.SCHEMA_MISSING
    assert response.results[0].error.reason == "no schema"


def test_enum_values_and_stream_messages() -> None:
    assert [pb.PUBLISH_ERROR_CODE_UNKNOWN, pb.VALIDATION_FAILED, pb.SCHEMA_MISSING,
            pb.ENCODE_ERROR, pb.DOMAIN_MISCONFIGURATION] == [0, 1, 2, 3, 4]
    reply = pb.StreamEventsResponse.FromString(_len_field(1, b"a") + _len_field(2, b"success"))
    assert (reply.eventId, reply.status) == ("a", "success")
    assert pb.PingResponse.FromString(_len_field(1, b"pong")).message == "pong"


def test_service_method_paths() -> None:
    service = pb.DESCRIPTOR.services_by_name["ChipIngress"]
    assert service.full_name == "chipingress.pb.ChipIngress"
    methods = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in service.methods}
    assert methods["PublishBatch"] == ("chipingress.pb.CloudEventBatch", "chipingress.pb.PublishResponse")
    assert methods["Publish"] == ("io.cloudevents.v1.CloudEvent", "chipingress.pb.PublishResponse")
    assert methods["Ping"] == ("chipingress.pb.EmptyRequest", "chipingress.pb.PingResponse")
    assert "StreamEvents" in methods and "RegisterSchema" in methods
