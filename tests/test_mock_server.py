"""The mock data generator and the mock Pixels server behave as PROTOCOL.md describes a real server."""

import math
import os
import signal
import threading
import time as time_module
from datetime import date, time

import grpc
import pytest

from beam_pixels.buckets import bucket_of, key_bytes
from beam_pixels.changes import Op
from beam_pixels.codec import RowCodec
from beam_pixels.testing.mock_data import (
    EDGE_ROWS,
    comparable,
    expected_changelog,
    final_state,
    generate_cdc,
    generate_rows,
    key_of,
)
from beam_pixels.protocol import sink_pb2, sink_pb2_grpc
from beam_pixels.schema import SourceSchema
from beam_pixels.testing.encoding import encode_row, encode_value
from beam_pixels.testing.mock_server import HandedOut, MockPixelsServer, serve

ALL_TYPES = SourceSchema.parse(
    "id:BIGINT, flag:BOOLEAN, tiny:TINYINT, small:SMALLINT, num:INT, big:BIGINT, f:FLOAT, d:DOUBLE, "
    "price:DECIMAL(10,2), wide:DECIMAL(38,10), day:DATE, tod:TIME, ts:TIMESTAMP, tstz:TIMESTAMPTZ, "
    "s:STRING, v:VARCHAR(5), c:CHAR(3), bin:BINARY, vb:VARBINARY, fx:FIXED(4)",
    ["id"],
)
ORDERS = SourceSchema.parse("id:INT, data:STRING, price:DOUBLE", ["id"])


def _values(rows, column):
    i = ALL_TYPES.names.index(column)
    return [r[i] for r in rows]


# --- mock data ------------------------------------------------------------------------


def test_rows_are_deterministic_per_seed():
    def rows(seed):
        return [comparable(r) for r in generate_rows(ALL_TYPES, 50, seed=seed)]

    assert rows(7) == rows(7)
    assert rows(7) != rows(8)


def test_rows_have_python_types_and_unique_non_null_keys():
    rows = generate_rows(ALL_TYPES, 300, seed=1)
    assert len({r[0] for r in rows}) == 300
    for row in rows:
        assert row[0] is not None
        for column, value in zip(ALL_TYPES.columns, row):
            assert value is None or isinstance(value, column.type.to_python()), (column, value)


def test_first_edge_rows_cover_every_edge_case():
    rows = generate_rows(ALL_TYPES, EDGE_ROWS, seed=3)
    for column in ALL_TYPES.columns[1:]:
        assert None in _values(rows, column.name), f"{column.name} has no NULL"
    assert {-(2**7), 2**7 - 1} <= set(_values(rows, "tiny"))
    assert {-(2**15), 2**15 - 1} <= set(_values(rows, "small"))
    assert {-(2**31), 2**31 - 1} <= set(_values(rows, "num"))
    assert {-(2**63), 2**63 - 1} <= set(_values(rows, "big"))
    for column in ("f", "d"):
        floats = [v for v in _values(rows, column) if v is not None]
        assert any(math.isnan(v) for v in floats) and math.inf in floats and -math.inf in floats
    assert {str(v) for v in _values(rows, "price") if v is not None} >= {"99999999.99", "-99999999.99"}
    assert "9" * 28 + "." + "9" * 10 in {str(v) for v in _values(rows, "wide") if v is not None}
    assert any(v < date(1970, 1, 1) for v in _values(rows, "day") if v is not None)
    assert time(23, 59, 59, 999000) in _values(rows, "tod")
    assert any(v.year < 1970 for v in _values(rows, "ts") if v is not None)
    assert all(v.tzinfo is not None for v in _values(rows, "tstz") if v is not None)
    for column in ("s", "v", "c"):
        assert "" in _values(rows, column)
        assert any(v and not v.isascii() for v in _values(rows, column))
    assert all(len(v) <= 5 for v in _values(rows, "v") if v is not None)
    assert b"" in _values(rows, "bin") and b"" in _values(rows, "vb")
    assert all(len(v) == 4 for v in _values(rows, "fx") if v is not None)


@pytest.mark.parametrize("encoding", ["binary", "text"])
def test_values_round_trip_through_the_codec(encoding):
    codec = RowCodec(ALL_TYPES, encoding)
    events = generate_cdc(ALL_TYPES, 50, 300, seed=5)
    cdc_images = [image for _, before, after in events for image in (before, after) if image]
    for row in generate_rows(ALL_TYPES, 300, seed=9) + cdc_images:
        wire = [sink_pb2.ColumnValue(value=v, is_null=n) for v, n in encode_row(codec, row)]
        assert comparable(tuple(codec.decode_row(wire))) == comparable(row)


def test_composite_keys_spread_over_small_key_types():
    schema = SourceSchema.parse("a:BOOLEAN, b:TINYINT, c:CHAR(1), x:INT", ["a", "b", "c"])
    rows = generate_rows(schema, 2 * 256 * 10, seed=0)
    assert len({key_of(schema, r) for r in rows}) == len(rows)
    with pytest.raises(ValueError, match="fewer than 5121 distinct values"):
        generate_rows(schema, 5121)


def test_cdc_histories_are_consistent_per_key():
    events = generate_cdc(ALL_TYPES, n_keys=40, n_events=400, seed=11)
    assert len(events) == 400
    live: dict = {}
    seen: set = set()
    for op, before, after in events:
        if op in (Op.INSERT, Op.SNAPSHOT):
            key = key_of(ALL_TYPES, after)
            assert before is None and key not in live
            assert op is Op.INSERT or key not in seen, "SNAPSHOT only as a key's first event"
            live[key] = after
            seen.add(key)
        elif op is Op.UPDATE:
            key = key_of(ALL_TYPES, before)
            assert key_of(ALL_TYPES, after) == key
            assert comparable(live[key]) == comparable(before)
            live[key] = after
        else:
            assert op is Op.DELETE and after is None
            key = key_of(ALL_TYPES, before)
            assert comparable(live.pop(key)) == comparable(before)
    assert len(seen) == 40
    ops = {op for op, _, _ in events}
    assert ops == set(Op)
    assert any(op is Op.INSERT and key_of(ALL_TYPES, a) in seen for op, _, a in events[200:]), "no re-insert"
    assert {k: comparable(v) for k, v in final_state(ALL_TYPES, events).items()} == {
        k: comparable(v) for k, v in live.items()
    }


def test_expected_changelog_uses_before_only_for_deletes():
    events = generate_cdc(ORDERS, 5, 30, seed=2)
    changelog = expected_changelog(events)
    assert [op for op, _ in changelog] == [op for op, _, _ in events]
    for (op, image), (_, before, after) in zip(changelog, events):
        assert image is (before if op is Op.DELETE else after)


def test_cdc_needs_a_primary_key():
    with pytest.raises(ValueError, match="primary key"):
        generate_cdc(SourceSchema.parse("a:INT"), 3, 10)


# --- mock server ----------------------------------------------------------------------


@pytest.fixture
def server():
    with MockPixelsServer(ORDERS, batch_size=3) as s:
        yield s


@pytest.fixture
def stub(server):
    with grpc.insecure_channel(server.address) as channel:
        yield sink_pb2_grpc.PixelsPollingServiceStub(channel)


def _poll(stub, buckets, schema="public", table="orders"):
    return stub.PollEvents(sink_pb2.PollRequest(schema_name=schema, table_name=table, buckets=buckets), timeout=5)


def _bucket_of_id(i: int, bucket_count: int = 128) -> int:
    return bucket_of(key_bytes([i.to_bytes(4, "big", signed=True)]), bucket_count)


def _ids(response) -> list[int]:
    return [int.from_bytes(r.after.values[0].value, "big", signed=True) for r in response.records]


def test_start_binds_a_real_port_and_stop_releases_it():
    server = MockPixelsServer(ORDERS).start()
    try:
        assert server.port > 0
        assert server.address == f"127.0.0.1:{server.port}"
    finally:
        server.stop()
    with pytest.raises(grpc.RpcError) as e, grpc.insecure_channel(server.address) as channel:
        sink_pb2_grpc.PixelsPollingServiceStub(channel).PollEvents(sink_pb2.PollRequest(buckets=[0]), timeout=1)
    assert e.value.code() is grpc.StatusCode.UNAVAILABLE


def test_context_manager_accepts_a_started_server():
    with MockPixelsServer(ORDERS).start() as server:
        assert server.port > 0
    with pytest.raises(RuntimeError, match="already running"), MockPixelsServer(ORDERS) as again:
        again.start()


def test_records_go_to_the_bucket_of_their_primary_key(server, stub):
    assert server.enqueue(Op.INSERT, None, (7, "seven", 7.5)) == _bucket_of_id(7)
    response = _poll(stub, [_bucket_of_id(7)])
    assert len(response.records) == 1
    record = response.records[0]
    assert record.op == sink_pb2.INSERT
    assert not record.HasField("before")
    assert [(v.value, v.is_null) for v in record.after.values] == [
        (b"\x00\x00\x00\x07", False), (b"seven", False), (encode_value(ORDERS.columns[2].type, 7.5), False)
    ]
    assert (record.source.db, record.source.schema, record.source.table) == ("public", "public", "orders")
    assert record.transaction.id and record.transaction.total_order == 1


def test_nulls_travel_as_is_null(server, stub):
    server.enqueue(Op.INSERT, None, (1, None, None))
    (record,) = _poll(stub, [_bucket_of_id(1)]).records
    assert [(v.value, v.is_null) for v in record.after.values][1:] == [(b"", True), (b"", True)]


def test_polls_drain_destructively_up_to_batch_size_per_bucket(server, stub):
    same_bucket = [i for i in range(2000) if _bucket_of_id(i) == _bucket_of_id(0)][:5]
    server.load_rows((i, f"r{i}", 1.0) for i in same_bucket)
    bucket = _bucket_of_id(0)
    first = _poll(stub, [bucket])
    second = _poll(stub, [bucket])
    third = _poll(stub, [bucket])
    assert _ids(first) == same_bucket[:3]  # batch_size=3, FIFO order
    assert _ids(second) == same_bucket[3:]
    assert _ids(third) == []
    assert server.pending() == 0
    assert [h.after[0] for h in server.handed_out()] == same_bucket


def test_buckets_are_walked_in_request_order(server, stub):
    a, b = 1, next(i for i in range(2, 1000) if _bucket_of_id(i) != _bucket_of_id(1))
    server.load_rows([(a, "a", 0.0), (b, "b", 0.0)])
    response = _poll(stub, [_bucket_of_id(b), _bucket_of_id(a)])
    assert _ids(response) == [b, a]
    assert [h.bucket for h in server.handed_out()] == [_bucket_of_id(b), _bucket_of_id(a)]


def test_only_requested_buckets_are_drained(server, stub):
    server.load_rows((i, "x", 0.0) for i in range(50))
    wanted = _bucket_of_id(10)
    response = _poll(stub, [wanted])
    assert {h.bucket for h in server.handed_out()} == {wanted}
    assert server.pending() == 50 - len(response.records)
    assert wanted not in server.pending_buckets()


def test_empty_bucket_list_and_other_tables_get_nothing(server, stub):
    server.load_rows((i, "x", 0.0) for i in range(20))
    all_buckets = list(range(128))
    assert len(_poll(stub, []).records) == 0
    assert len(_poll(stub, all_buckets, table="customers").records) == 0
    assert len(_poll(stub, all_buckets, schema="other").records) == 0
    assert server.pending() == 20 and server.handed_out() == []


def test_cdc_events_of_a_key_stay_in_order_in_one_bucket(server, stub):
    events = generate_cdc(ORDERS, n_keys=10, n_events=100, seed=4)
    server.load_cdc(events)
    delivered: list = []
    while server.pending():
        delivered.extend(_poll(stub, list(range(128))).records)
    assert len(delivered) == 100
    handed = server.handed_out()
    assert [h.op for h in handed] == [Op(r.op) for r in delivered]
    for key in {key_of(ORDERS, a or b) for _, b, a in events}:
        history = [(op, b, a) for op, b, a in events if key_of(ORDERS, a or b) == key]
        assert [(h.op, h.before, h.after) for h in handed if key_of(ORDERS, h.after or h.before) == key] == history
        assert len({h.bucket for h in handed if key_of(ORDERS, h.after or h.before) == key}) == 1
    assert final_state(ORDERS, [(h.op, h.before, h.after) for h in handed]) == final_state(ORDERS, events)


def test_update_and_delete_carry_the_right_images(server, stub):
    server.load_cdc(
        [
            (Op.INSERT, None, (1, "a", 1.0)),
            (Op.UPDATE, (1, "a", 1.0), (1, "b", 2.0)),
            (Op.DELETE, (1, "b", 2.0), None),
        ]
    )
    insert, update, delete = _poll(stub, [_bucket_of_id(1)]).records
    assert (insert.HasField("before"), insert.HasField("after")) == (False, True)
    assert (update.HasField("before"), update.HasField("after")) == (True, True)
    assert (delete.HasField("before"), delete.HasField("after")) == (True, False)
    assert update.before.values[1].value == b"a" and update.after.values[1].value == b"b"
    assert [r.transaction.total_order for r in (insert, update, delete)] == [1, 2, 3]


@pytest.mark.parametrize(
    "op, before, after, message",
    [
        (Op.INSERT, (1, "a", 1.0), (1, "a", 1.0), "INSERT carries after, got before and after"),
        (Op.DELETE, None, (1, "a", 1.0), "DELETE carries before, got after"),
        (Op.UPDATE, None, (1, "a", 1.0), "UPDATE carries before and after"),
        (Op.UPDATE, (1, "a", 1.0), (2, "a", 1.0), "DELETE then INSERT"),
        (Op.INSERT, None, (1, "a"), "2 values but the schema has 3"),
    ],
)
def test_enqueue_rejects_malformed_changes(server, op, before, after, message):
    with pytest.raises(ValueError, match=message):
        server.enqueue(op, before, after)
    assert server.pending() == 0


def test_table_without_primary_key_routes_by_all_columns():
    schema = SourceSchema.parse("a:INT, b:STRING")
    with MockPixelsServer(schema, bucket_count=16) as server:
        bucket = server.enqueue(Op.INSERT, None, (3, None))
        assert bucket == bucket_of(b"\x00\x00\x00\x03", 16)
        assert server.enqueue(Op.INSERT, None, (3, "x")) == bucket_of(b"\x00\x00\x00\x03x", 16)


def test_text_encoding_sends_utf8_text():
    with MockPixelsServer(ORDERS, encoding="text") as server, grpc.insecure_channel(server.address) as channel:
        server.enqueue(Op.INSERT, None, (42, "mock_data_7", 19.99))
        (record,) = _poll(sink_pb2_grpc.PixelsPollingServiceStub(channel), [_bucket_of_id(42)]).records
    assert [v.value for v in record.after.values] == [b"42", b"mock_data_7", b"19.99"]


def test_fail_next_injects_status_without_draining(server, stub):
    server.load_rows([(1, "a", 0.0)])
    server.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, message="slow down")
    with pytest.raises(grpc.RpcError) as e:
        _poll(stub, [_bucket_of_id(1)])
    assert (e.value.code(), e.value.details()) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")
    assert len(_poll(stub, [_bucket_of_id(1)]).records) == 1


def test_restart_on_the_same_port_keeps_queued_records(server):
    server.load_rows([(1, "a", 0.0)])
    port = server.port
    server.stop()
    server.start()
    assert server.port == port
    with grpc.insecure_channel(server.address) as channel:
        assert len(_poll(sink_pb2_grpc.PixelsPollingServiceStub(channel), [_bucket_of_id(1)]).records) == 1


def test_handed_out_records_python_images(server, stub):
    server.load_rows([(5, "five", 5.0)])
    _poll(stub, [_bucket_of_id(5)])
    assert server.handed_out() == [HandedOut(_bucket_of_id(5), Op.INSERT, None, (5, "five", 5.0))]


def test_serve_runs_until_sigterm_then_restores_signal_handlers(caplog):
    caplog.set_level("INFO", logger="beam_pixels.testing.mock_server")
    previous = signal.getsignal(signal.SIGTERM)
    stop = threading.Event()
    kill = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    safety = threading.Timer(10, stop.set)
    kill.start(), safety.start()
    started = time_module.monotonic()
    try:
        server = serve(ORDERS, port=0, rows=20, cdc=True, seed=1, stop=stop, report_every_s=0.05)
    finally:
        kill.cancel(), safety.cancel()
    assert time_module.monotonic() - started < 5, "SIGTERM did not stop serve()"
    assert signal.getsignal(signal.SIGTERM) is previous
    assert "public.orders: 60 change events over 20 keys" in caplog.text
    assert "0 records, 60 left undelivered" in caplog.text
    assert server.pending() == 60 and server.handed_out() == []
    expected = generate_cdc(ORDERS, 20, 60, seed=1)
    assert final_state(ORDERS, _drain_queues(server)) == final_state(ORDERS, expected)


def _drain_queues(server):
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = sink_pb2_grpc.PixelsPollingServiceStub(channel)
            while server.pending():
                _poll(stub, list(range(128)))
    finally:
        server.stop()
    return [(h.op, h.before, h.after) for h in server.handed_out()]


def test_a_response_is_confirmed_only_by_the_next_poll_of_the_same_client():
    from beam_pixels.client import PixelsClient
    from beam_pixels.protocol import sink_pb2, sink_pb2_grpc

    schema = SourceSchema.parse("id:BIGINT,name:STRING", ["id"])
    request = sink_pb2.PollRequest(schema_name="public", table_name="orders", buckets=list(range(128)))
    with MockPixelsServer(schema).start() as server:
        server.load_rows([(i, f"n{i}") for i in range(3)])
        first = PixelsClient("127.0.0.1", server.port)
        # A separate connection, as another process would have (in-process channels share one).
        other = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        try:
            got = first.poll("public", "orders", list(range(128)))
            assert len(got.records) == 3
            assert sorted(h.after for h in server.unconfirmed()) == [(i, f"n{i}") for i in range(3)]
            server.load_rows([(3, "n3")])
            sink_pb2_grpc.PixelsPollingServiceStub(other).PollEvents(request)  # does not confirm first's
            assert sorted(h.after for h in server.unconfirmed()) == [(i, f"n{i}") for i in range(4)]
            first.poll("public", "orders", list(range(128)))  # the same client comes back
            assert [h.after for h in server.unconfirmed()] == [(3, "n3")]
        finally:
            first.close()
            other.close()
