"""The wire protocol as PROTOCOL.md states it: names, method path, field numbers, bucket routing."""

import subprocess
import sys
from pathlib import Path

import mmh3
import pytest
from google.protobuf import descriptor_pb2

from beam_pixels.buckets import bucket_of, key_bytes, partition_buckets
from beam_pixels.protocol import POLL_EVENTS_METHOD, sink_pb2, sink_pb2_grpc

REPO = Path(__file__).resolve().parents[1]

# message -> {field name: (number, type or message/enum name, repeated)}, from PROTOCOL.md.
EXPECTED_MESSAGES = {
    "PollRequest": {
        "schema_name": (1, "string", False),
        "table_name": (2, "string", False),
        "buckets": (3, "int32", True),
    },
    "PollResponse": {"records": (1, "RowRecord", True)},
    "RowRecord": {
        "before": (1, "RowValue", False),
        "after": (2, "RowValue", False),
        "source": (3, "SourceInfo", False),
        "transaction": (4, "TransactionInfo", False),
        "op": (5, "OperationType", False),
    },
    "RowValue": {"values": (1, "ColumnValue", True)},
    "ColumnValue": {"value": (1, "bytes", False), "is_null": (2, "bool", False)},
    "SourceInfo": {"db": (1, "string", False), "schema": (2, "string", False), "table": (3, "string", False)},
    "TransactionInfo": {
        "id": (1, "string", False),
        "total_order": (2, "int64", False),
        "data_collection_order": (3, "int64", False),
    },
    "TransactionMetadata": {
        "status": (1, "TransactionStatus", False),
        "id": (2, "string", False),
        "event_count": (3, "int64", False),
        "data_collections": (4, "DataCollection", True),
        "timestamp": (5, "int64", False),
    },
    "DataCollection": {"data_collection": (1, "string", False), "event_count": (2, "int64", False)},
}
EXPECTED_ENUMS = {
    "OperationType": {"INSERT": 0, "UPDATE": 1, "DELETE": 2, "SNAPSHOT": 3},
    "TransactionStatus": {"BEGIN": 0, "END": 1},
}


def _field_shape(field) -> tuple[int, str, bool]:
    if field.message_type is not None:
        type_name = field.message_type.name
    elif field.enum_type is not None:
        type_name = field.enum_type.name
    else:
        type_name = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type).removeprefix("TYPE_").lower()
    return field.number, type_name, field.is_repeated


def test_package_service_and_method_path():
    file = sink_pb2.DESCRIPTOR
    file_proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(file_proto)
    assert file.package == "sink.proto"
    assert file_proto.syntax == "proto3"
    service = file.services_by_name["PixelsPollingService"]
    assert service.full_name == "sink.proto.PixelsPollingService"
    method = service.methods_by_name["PollEvents"]
    assert [m.name for m in service.methods] == ["PollEvents"]
    assert method.input_type.full_name == "sink.proto.PollRequest"
    assert method.output_type.full_name == "sink.proto.PollResponse"
    assert not method.client_streaming and not method.server_streaming
    assert f"/{service.full_name}/{method.name}" == POLL_EVENTS_METHOD == "/sink.proto.PixelsPollingService/PollEvents"


def test_java_options_match_upstream():
    options = sink_pb2.DESCRIPTOR.GetOptions()
    assert options.java_package == "io.pixelsdb.pixels.sink"
    assert options.java_outer_classname == "SinkProto"


@pytest.mark.parametrize("message", sorted(EXPECTED_MESSAGES))
def test_message_fields_match_protocol(message):
    descriptor = sink_pb2.DESCRIPTOR.message_types_by_name[message]
    actual = {f.name: _field_shape(f) for f in descriptor.fields}
    assert actual == EXPECTED_MESSAGES[message]


def test_no_messages_beyond_protocol():
    assert set(sink_pb2.DESCRIPTOR.message_types_by_name) == set(EXPECTED_MESSAGES)
    assert set(sink_pb2.DESCRIPTOR.enum_types_by_name) == set(EXPECTED_ENUMS)


@pytest.mark.parametrize("enum", sorted(EXPECTED_ENUMS))
def test_enum_values_match_protocol(enum):
    descriptor = sink_pb2.DESCRIPTOR.enum_types_by_name[enum]
    assert {v.name: v.number for v in descriptor.values} == EXPECTED_ENUMS[enum]


def test_wire_bytes_of_a_request_are_what_a_real_server_parses():
    """Field tags on the wire: 0x0a schema_name, 0x12 table_name, 0x1a packed buckets."""
    request = sink_pb2.PollRequest(schema_name="public", table_name="orders", buckets=[0, 5, 127])
    assert request.SerializeToString() == b"\x0a\x06public" + b"\x12\x06orders" + b"\x1a\x03\x00\x05\x7f"


def test_wire_bytes_of_a_record():
    record = sink_pb2.RowRecord(
        op=sink_pb2.DELETE,
        before=sink_pb2.RowValue(
            values=[sink_pb2.ColumnValue(value=b"\x00\x00\x00\x07"), sink_pb2.ColumnValue(is_null=True)]
        ),
    )
    column_7 = b"\x0a\x04\x00\x00\x00\x07"
    null_column = b"\x10\x01"
    row = b"\x0a" + bytes([len(column_7)]) + column_7 + b"\x0a" + bytes([len(null_column)]) + null_column
    assert record.SerializeToString() == b"\x0a" + bytes([len(row)]) + row + b"\x28\x02"


def test_grpc_module_imports_messages_by_package_path():
    source = Path(sink_pb2_grpc.__file__).read_text()
    assert "from beam_pixels.protocol import sink_pb2" in source
    assert hasattr(sink_pb2_grpc, "PixelsPollingServiceStub")
    assert hasattr(sink_pb2_grpc, "add_PixelsPollingServiceServicer_to_server")


def test_generated_code_is_up_to_date(tmp_path):
    """Regenerating from proto/sink.proto and proto/sink_lazy.proto reproduces the
    committed modules byte for byte."""
    pytest.importorskip("grpc_tools")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-Ibeam_pixels/protocol={REPO / 'proto'}",
         f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", "beam_pixels/protocol/sink.proto"],
        check=True, cwd=REPO,
    )
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-Ibeam_pixels/protocol={REPO / 'proto'}",
         f"--python_out={out}", f"--pyi_out={out}", "beam_pixels/protocol/sink_lazy.proto"],
        check=True, cwd=REPO,
    )
    for name in ("sink_pb2.py", "sink_pb2.pyi", "sink_pb2_grpc.py", "sink_lazy_pb2.py", "sink_lazy_pb2.pyi"):
        generated = (out / "beam_pixels" / "protocol" / name).read_text()
        committed = (REPO / "beam_pixels" / "protocol" / name).read_text()
        assert generated == committed, f"{name} is stale: run scripts/generate_proto.sh"


# --- bucket routing (beam_pixels.buckets) -------------------------------------------

@pytest.mark.parametrize(
    "key, published_hash",
    [(b"", 0), (b"hello", 0x248BFA47), (b"The quick brown fox jumps over the lazy dog", 0x2E4FF723)],
)
def test_bucket_of_uses_murmur3_x86_32_seed_0(key, published_hash):
    """Published MurmurHash3_x86_32 vectors (positive as signed ints): bucket = hash % 128."""
    assert bucket_of(key) == published_hash % 128
    assert bucket_of(key, 1000) == published_hash % 1000


def test_bucket_of_negative_hash_takes_abs_before_modulo():
    key = (2).to_bytes(4, "big")  # an INT key of 2
    signed = mmh3.hash(key, 0, signed=True)
    assert signed == -798752049
    assert bucket_of(key) == 798752049 % 128 == 49
    assert bucket_of(key) != signed % 128  # Python's floor modulo of the negative hash would give 79


def test_bucket_of_min_int_hash_is_bucket_0_for_power_of_two_counts(monkeypatch):
    """abs(-2**31) overflows in Java; for 128 buckets both languages give bucket 0."""
    monkeypatch.setattr(mmh3, "hash", lambda key, seed, signed: -(2**31))
    assert bucket_of(b"any") == 0
    assert 0 <= bucket_of(b"any", 100) < 100


def test_bucket_of_stays_in_range_and_rejects_bad_counts():
    assert {bucket_of(i.to_bytes(8, "big")) for i in range(5000)} == set(range(128))
    with pytest.raises(ValueError, match="bucket_count"):
        bucket_of(b"x", 0)


def test_key_bytes_concatenates_key_columns_in_order():
    assert key_bytes([b"\x00\x00\x00\x07", b"abc"]) == b"\x00\x00\x00\x07abc"
    assert bucket_of(key_bytes([b"\x00\x00", b"\x00\x02"])) == bucket_of((2).to_bytes(4, "big")) == 49


@pytest.mark.parametrize("groups", [1, 2, 3, 7, 64, 128])
def test_partition_buckets_covers_every_bucket_exactly_once(groups):
    parts = partition_buckets(range(128), groups)
    assert len(parts) == groups
    assert all(parts)
    assert sorted(b for part in parts for b in part) == list(range(128))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_partition_buckets_is_round_robin():
    assert partition_buckets([5, 6, 7, 8, 9], 2) == [(5, 7, 9), (6, 8)]


@pytest.mark.parametrize("buckets, groups", [([1, 2], 3), ([1, 2], 0), ([], 1)])
def test_partition_buckets_rejects_impossible_splits(buckets, groups):
    with pytest.raises(ValueError, match="poll group"):
        partition_buckets(buckets, groups)


def test_partition_buckets_rejects_duplicates():
    with pytest.raises(ValueError, match="repeated: \\[3\\]"):
        partition_buckets([1, 3, 3], 1)
