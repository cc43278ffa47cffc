"""The committed stubs in chippb/ are exactly what `just proto` generates."""

import importlib.util
from pathlib import Path

import pytest

import chippb

ROOT = Path(__file__).resolve().parents[2]
INSTALLED = Path(chippb.__file__).resolve().parents[1]  # the source tree, or site-packages in CI's wheel run


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    written = _load_generator().generate(tmp_path)
    assert written, "protoc wrote nothing"
    for fresh in written:
        committed = INSTALLED / fresh.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `just proto` and commit"
        assert committed.read_text() == fresh.read_text(), f"{committed} is stale: run `just proto`"


def _numbers(message) -> dict[str, int]:
    return {field.name: field.number for field in message.DESCRIPTOR.fields}


def test_schema_registry_messages_have_upstreams_field_numbers() -> None:
    """../shared/chip-ingress-api.md: the schema registry's messages, as upstream's chip_common numbers them."""
    from chippb import chipingress_pb2 as pb

    assert _numbers(pb.RegisterSchemaRequest) == {"schemas": 1}
    assert _numbers(pb.RegisterSchemaResponse) == {"registered": 1}
    assert _numbers(pb.Schema) == {"subject": 1, "path": 2, "format": 4, "schema": 5, "references": 6,
                                   "metadata": 7}
    assert _numbers(pb.RegisteredSchema) == {"subject": 1, "version": 2}
    assert _numbers(pb.SchemaReference) == {"name": 1, "subject": 2, "version": 3}
    assert _numbers(pb.Path) == {"path": 1, "type": 2}
    assert _numbers(pb.MetaData) == {"stores": 1}
    assert _numbers(pb.Store) == {"index": 1, "partition": 2}
    assert dict(pb.SchemaType.items()) == {"PROTOBUF": 0, "AVRO": 1, "JSON": 2}


def test_a_registration_encodes_to_the_bytes_upstream_sends() -> None:
    from chippb import chipingress_pb2 as pb

    request = pb.RegisterSchemaRequest(schemas=[pb.Schema(subject="s", path=pb.Path(path="/p", type=pb.LOCAL),
                                                          format=pb.JSON, schema="{}")])
    schema = b"\x0a\x01s" + b"\x12\x06\x0a\x02/p\x10\x01" + b"\x20\x02" + b"\x2a\x02{}"
    assert request.SerializeToString() == b"\x0a" + bytes([len(schema)]) + schema
    assert pb.RegisterSchemaResponse.FromString(b"\x0a\x05\x0a\x01s\x10\x03").registered[0].version == 3


def test_publish_options_keep_an_explicit_false() -> None:
    """transaction_enabled is `optional`: a client that says false is told apart from one that says nothing."""
    from chippb import chipingress_pb2 as pb

    assert _numbers(pb.CloudEventBatch)["options"] == 2 and _numbers(pb.PublishOptions) == {"transaction_enabled": 1}
    said_false = pb.CloudEventBatch(options=pb.PublishOptions(transaction_enabled=False)).SerializeToString()
    assert said_false == b"\x12\x02\x08\x00"
    assert pb.CloudEventBatch.FromString(said_false).options.HasField("transaction_enabled")
    assert not pb.CloudEventBatch.FromString(b"\x12\x00").options.HasField("transaction_enabled")


def test_chipmocks_per_event_codes_are_the_protos() -> None:
    from chipmock.model import ERROR_CODES
    from chippb import chipingress_pb2 as pb

    assert dict(ERROR_CODES) == dict(pb.PublishErrorCode.items())
