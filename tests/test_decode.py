"""The fast decode path (numpy over the serialized response) equals the safe path
(protobuf messages) exactly: batches, buckets, dead letters and their bytes."""

import math
import random
import struct

import mmh3
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.transforms.window import GlobalWindow, IntervalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from beam_pixels.buckets import bucket_of, key_bytes, murmur3_32_of_ranges
from beam_pixels.changes import ChangeBatch, ChangeBatchCoder, concat_records
from beam_pixels.codec import RowCodec
from beam_pixels.decode import DEAD_LETTERS, DecodePollsFn, TableDecoder
from beam_pixels.protocol import sink_lazy_pb2, sink_pb2
from beam_pixels.schema import SourceSchema
from beam_pixels.testing.encoding import encode_row
from beam_pixels.testing.mock_data import generate_cdc, generate_rows
from beam_pixels.wire import RawPoll, count_records, scan_response

EVERY_TYPE = SourceSchema.parse(
    "id:BIGINT, b:BOOLEAN, t:TINYINT, s:SMALLINT, i:INT, f:FLOAT, d:DOUBLE, m:DECIMAL(10,2), "
    "w:DECIMAL(38,6), dt:DATE, tm:TIME, ts:TIMESTAMP, tz:TIMESTAMPTZ, st:STRING, vc:VARCHAR(20), "
    "ch:CHAR(4), bi:BINARY, fx:FIXED(4)",
    ["id"],
)
TWO_KEYS = SourceSchema.parse("region:STRING, id:INT, name:STRING, qty:BIGINT", ["region", "id"])
NO_KEY = SourceSchema.parse("a:INT, b:STRING", [])


def _image(codec, row):
    return sink_pb2.RowValue(values=[sink_pb2.ColumnValue(value=v, is_null=n) for v, n in encode_row(codec, row)])


def _record(codec, op, before, after, **extra):
    record = sink_pb2.RowRecord(op=int(op), **extra)
    if before is not None:
        record.before.CopyFrom(_image(codec, before))
    if after is not None:
        record.after.CopyFrom(_image(codec, after))
    return record


def _payload(records) -> bytes:
    return sink_pb2.PollResponse(records=records).SerializeToString()


def _cdc_records(schema, n=300, seed=0):
    codec = RowCodec(schema)
    return [_record(codec, op, b, a) for op, b, a in generate_cdc(schema, n // 3, n, seed)]


def _decode(schema, payload, *, safe: bool, **kwargs):
    """Every output of ``DecodePollsFn.process``: (batches, dead letters)."""
    table = TableDecoder(schema, "public.orders", kwargs.get("encoding", "binary"), kwargs.get("empty_as_null", False), 128)
    fn = DecodePollsFn({"": table})
    fn.setup()
    fast_taken = []
    if safe:
        table._decode_fast = lambda raw: None
    else:
        original = table._decode_fast
        table._decode_fast = lambda raw: fast_taken.append(original(raw)) or fast_taken[-1]
    fn.start_bundle()
    outputs = [*fn.process(RawPoll(3, 1000, 12.5, payload), Timestamp(12.5), GlobalWindow()), *fn.finish_bundle()]
    fn.teardown()
    batches = [o.value for o in outputs if isinstance(o, WindowedValue)]
    letters = [o.value.value for o in outputs if getattr(o, "tag", None) == DEAD_LETTERS]
    assert len(batches) + len(letters) == len(outputs)
    return batches, letters, (fast_taken[-1] is not None if fast_taken else None)


def _comparable(value):
    """Python values comparable with ==, NaN equal to NaN and -0.0 told from 0.0."""
    if isinstance(value, float):
        return ("float", struct.pack(">d", value)) if not math.isnan(value) else "NaN"
    if isinstance(value, dict):
        return tuple((k, _comparable(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def same_records(a: pa.RecordBatch, b: pa.RecordBatch) -> bool:
    return a.schema == b.schema and _comparable(a.to_pylist()) == _comparable(b.to_pylist())


def assert_same_decoding(schema, payload, *, expect_fast=None, **kwargs):
    fast_batches, fast_letters, took_fast = _decode(schema, payload, safe=False, **kwargs)
    safe_batches, safe_letters, _ = _decode(schema, payload, safe=True, **kwargs)
    assert len(fast_batches) == len(safe_batches) == 1
    fast, safe = fast_batches[0], safe_batches[0]
    assert (fast.source_table, fast.poll_group, fast.poll_time) == (safe.source_table, safe.poll_group, safe.poll_time)
    assert fast.records.schema == safe.records.schema
    assert same_records(fast.records, safe.records)
    assert fast_letters == safe_letters
    if expect_fast is not None:
        assert took_fast == expect_fast
    return fast, fast_letters


@pytest.mark.parametrize("schema", [EVERY_TYPE, TWO_KEYS], ids=["every-type", "two-keys"])
@pytest.mark.parametrize("seed", range(3))
def test_fast_path_equals_safe_path_on_cdc(schema, seed):
    batch, letters = assert_same_decoding(schema, _payload(_cdc_records(schema, seed=seed)), expect_fast=True)
    assert not letters and len(batch) == 300
    assert batch.records.column("bucket").null_count == 0


def test_fast_path_without_key_and_with_empty_as_null():
    codec = RowCodec(NO_KEY)
    records = [_record(codec, 0, None, (i, "" if i % 3 else f"s{i}")) for i in range(50)]
    batch, _ = assert_same_decoding(NO_KEY, _payload(records), expect_fast=True, empty_as_null=True)
    assert batch.records.column("bucket").null_count == 50


def test_bad_values_and_contradictory_records_go_to_the_same_dead_letters():
    codec = RowCodec(EVERY_TYPE)
    good = [_record(codec, op, b, a) for op, b, a in generate_cdc(EVERY_TYPE, 10, 30, 1)]
    row = next(list(r) for r in generate_rows(EVERY_TYPE, 100, 5) if None not in r)
    bad_utf8 = _record(codec, 0, None, row)
    bad_utf8.after.values[13].value = b"\xff\xfe"
    null_key = _record(codec, 0, None, row)
    null_key.after.values[0].is_null = True
    null_key.after.values[0].value = b""
    out_of_range = _record(codec, 2, row, None)
    out_of_range.before.values[2].value = b"\x00\x00"  # TINYINT takes 1 byte
    delete_without_before = _record(codec, 2, None, row)
    insert_without_after = _record(codec, 0, row, None)
    update_bad_before = _record(codec, 1, row, row)
    update_bad_before.before.values[1].value = b"\x07"  # BOOLEAN is 0 or 1
    records = good[:10] + [bad_utf8, null_key] + good[10:20] + [out_of_range, delete_without_before]
    records += [insert_without_after, update_bad_before] + good[20:]
    batch, letters = assert_same_decoding(EVERY_TYPE, _payload(records), expect_fast=True)
    assert len(letters) == 6 and len(batch) == 30
    assert [letter.position for letter in letters] == [1010, 1011, 1022, 1023, 1024, 1025]
    assert letters[0].record == bad_utf8.SerializeToString()


@pytest.mark.parametrize(
    "change",
    [
        "unknown_op",
        "wrong_width",
        "empty_image",
        "explicit_is_null_false",
        "source_and_transaction",
        "unknown_record_field",
        "unknown_value_field",
        "fields_out_of_order",
    ],
)
def test_unusual_encodings_take_the_safe_path_with_the_same_result(change):
    codec = RowCodec(SMALL)
    records = [_record(codec, 0, None, (i, f"n{i}", i)) for i in range(20)]
    payload = _payload(records)
    expect_fast = False
    if change == "unknown_op":
        records[3].op = 7
    elif change == "wrong_width":
        del records[4].after.values[2]
    elif change == "empty_image":
        records[5].before.SetInParent()
    elif change == "source_and_transaction":
        for r in records:
            r.source.table = "orders"
            r.transaction.total_order = 9
        expect_fast = True
    if change in ("unknown_op", "wrong_width", "empty_image", "source_and_transaction"):
        payload = _payload(records)
    elif change == "explicit_is_null_false":
        # ColumnValue(value=b"x", is_null=False) written out in full: 0a 01 78 10 00
        value = b"\x0a\x01x\x10\x00"
        row = b"".join(b"\x0a" + bytes([len(v)]) + v for v in (b"\x0a\x08" + bytes(8), value, b"\x0a\x04" + bytes(4)))
        payload = _payload(records[:2]) + b"\x0a" + bytes([len(row) + 2]) + b"\x12" + bytes([len(row)]) + row
    elif change == "unknown_record_field":
        record = records[0].SerializeToString() + b"\x30\x01"  # field 6, varint
        payload = b"\x0a" + bytes([len(record)]) + record + _payload(records[1:])
    elif change == "unknown_value_field":
        after = records[0].after.SerializeToString() + b"\x10\x01"  # RowValue field 2
        record = b"\x12" + bytes([len(after)]) + after
        payload = b"\x0a" + bytes([len(record)]) + record + _payload(records[1:])
    elif change == "fields_out_of_order":
        record = b"\x28\x01" + records[0].after.SerializeToString()  # op before after
        after = records[0].after.SerializeToString()
        record = b"\x28\x01\x12" + bytes([len(after)]) + after
        payload = b"\x0a" + bytes([len(record)]) + record + _payload(records[1:])
    assert_same_decoding(SMALL, payload, expect_fast=expect_fast)


SMALL = SourceSchema.parse("id:BIGINT, name:STRING, qty:INT", ["id"])


def test_random_corruptions_never_crash_and_every_position_is_accounted_for():
    """Flipped bytes: both paths give the same outputs, never raise, and every position the
    poller claimed (``count_records``) is either a change or a dead letter."""
    rng = random.Random(7)
    base = bytearray(_payload(_cdc_records(TWO_KEYS, n=40)))
    for _ in range(300):
        payload = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        payload = bytes(payload)
        safe = _decode(TWO_KEYS, payload, safe=True)[:2]
        fast = _decode(TWO_KEYS, payload, safe=False)[:2]
        assert same_records(fast[0][0].records, safe[0][0].records)
        assert fast[1] == safe[1]
        (batch,), letters = safe
        positions = sorted(batch.records.column("position").to_pylist() + [d.position for d in letters])
        assert positions == list(range(1000, 1000 + count_records(payload)))


def test_a_corrupt_record_is_a_dead_letter_with_its_raw_bytes_and_the_rest_decode():
    records = _cdc_records(SMALL, n=6)
    garbage = b"\x0a\xff\xff"  # a length that runs past the end of the record
    payload = b"".join(
        b"\x0a" + bytes([len(r)]) + r for r in [records[0].SerializeToString(), garbage, records[2].SerializeToString()]
    )
    (batch,), letters, _ = _decode(SMALL, payload, safe=False)
    assert batch.records.column("position").to_pylist() == [1000, 1002]
    assert [(d.position, d.record) for d in letters] == [(1001, garbage)]
    assert "not valid protobuf" in letters[0].reason


def test_a_payload_that_is_not_protobuf_is_one_dead_letter_not_a_crash():
    payload = b"\xff\xff\xff not protobuf"
    assert count_records(payload) == 1
    (batch,), letters, _ = _decode(SMALL, payload, safe=False)
    assert len(batch) == 0
    assert [(d.position, d.record) for d in letters] == [(1000, payload)]


def testcount_records_reads_only_the_top_level():
    payload = _payload(_cdc_records(SMALL, n=77))
    assert count_records(payload) == 77 == len(sink_pb2.PollResponse.FromString(payload).records)
    assert count_records(b"") == 0


def test_lazy_message_is_wire_compatible():
    records = _cdc_records(SMALL, n=3)
    records[0].source.table = "orders"
    lazy = sink_lazy_pb2.PollResponseRecords.FromString(_payload(records))
    assert list(lazy.records) == [r.SerializeToString() for r in records]
    assert lazy.SerializeToString() == _payload(records)


def test_scan_locates_records_and_images():
    records = _cdc_records(SMALL, n=30)
    payload = _payload(records)
    scanned = scan_response(payload)
    assert scanned is not None
    for i, record in enumerate(records):
        assert payload[scanned.record_starts[i] : scanned.record_ends[i]] == record.SerializeToString()
        assert scanned.ops[i] == record.op
        assert scanned.after.present[i] == record.HasField("after")
        if record.HasField("after"):
            start, length = scanned.after.starts[i], scanned.after.lengths[i]
            assert payload[start : start + length] == record.after.SerializeToString()


def _random_keys(rng, n, kind):
    if kind == "bigint":
        return [[rng.getrandbits(64).to_bytes(8, "big")] for _ in range(n)]
    if kind == "int+string":
        return [[rng.getrandbits(32).to_bytes(4, "big"), rng.randbytes(rng.randrange(0, 40))] for _ in range(n)]
    if kind == "strings":
        return [[rng.randbytes(rng.randrange(0, 9)), rng.randbytes(rng.randrange(0, 70))] for _ in range(n)]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bigint", "int+string", "strings"])
@pytest.mark.parametrize("bucket_count", [128, 7, 1000])
def test_vectorised_bucket_hash_equals_bucket_of(kind, bucket_count):
    rng = random.Random(hash((kind, bucket_count)) & 0xFFFF)
    keys = _random_keys(rng, 2000, kind)
    # Lay the key values out in one buffer, shuffled, with gaps.
    pieces, starts, lengths, at = [], [], [], 0
    for key in keys:
        row_starts = []
        for value in key:
            pieces.append(rng.randbytes(rng.randrange(3)))
            at += len(pieces[-1])
            row_starts.append(at)
            pieces.append(value)
            at += len(value)
        starts.append(row_starts)
        lengths.append([len(v) for v in key])
    data = np.frombuffer(b"".join(pieces) + b"\0", dtype=np.uint8)
    hashes = murmur3_32_of_ranges(data, np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64))
    expected = [mmh3.hash(key_bytes(k), 0, signed=True) for k in keys]
    assert hashes.tolist() == expected
    assert min(expected) < 0  # negative hashes covered
    buckets = np.abs(hashes.astype(np.int64)) % bucket_count
    assert buckets.tolist() == [bucket_of(key_bytes(k), bucket_count) for k in keys]


def test_long_keys_fall_back_to_hashing_one_by_one():
    data = np.frombuffer(bytes(range(256)) * 4, dtype=np.uint8)
    assert murmur3_32_of_ranges(data, np.array([[0]]), np.array([[300]])) is None
    schema = SourceSchema.parse("k:STRING, v:INT", ["k"])
    codec = RowCodec(schema)
    records = [_record(codec, 0, None, ("x" * (250 + i), i)) for i in range(10)]
    batch, _ = assert_same_decoding(schema, _payload(records), expect_fast=True)
    buckets = batch.records.column("bucket").to_pylist()
    assert buckets == [bucket_of(("x" * (250 + i)).encode(), 128) for i in range(10)]


def test_text_encoding_keeps_the_safe_path():
    schema = SourceSchema.parse("id:BIGINT, name:STRING", ["id"])
    codec = RowCodec(schema, "text")
    records = [_record(codec, 0, None, (i, f"n{i}")) for i in range(10)]
    batch, _ = assert_same_decoding(schema, _payload(records), encoding="text")
    assert batch.records.column("after").to_pylist()[3] == {"id": 3, "name": "n3"}


def test_decode_serialized_images_equals_decode_images():
    codec = RowCodec(EVERY_TYPE)
    records = _cdc_records(EVERY_TYPE, n=90, seed=4)
    scanned = scan_response(_payload(records))
    for side in ("before", "after"):
        decoded = codec.decode_serialized_images(getattr(scanned, side))
        struct, errors = codec.decode_images([getattr(r, side) if r.HasField(side) else None for r in records])
        assert _comparable(decoded.images.to_pylist()) == _comparable(struct.to_pylist())
        assert decoded.errors.keys() == errors.keys()
        assert [str(e) for e in decoded.errors.values()] == [str(e) for e in errors.values()]
        assert isinstance(decoded.images, pa.StructArray)


@pytest.mark.parametrize("valid", [True, False])
def test_source_and_transaction_are_checked_as_the_safe_path_checks_them(valid):
    codec = RowCodec(SMALL)
    records = [_record(codec, 0, None, (i, f"n{i}", i)) for i in range(5)]
    for r in records:
        r.source.table = "orders"
        r.transaction.id = "tx"
    payload = _payload(records)
    if not valid:  # the transaction id "tx" becomes invalid UTF-8
        payload = payload.replace(b"\x0a\x02tx", b"\x0a\x02\xff\xfe", 1)
    assert (scan_response(payload) is not None) == valid
    batch, letters = assert_same_decoding(SMALL, payload, expect_fast=valid)
    if not valid:  # the record with the invalid id is a dead letter; the others decode
        assert [d.position for d in letters] == [1000]
        assert batch.records.column("position").to_pylist() == [1001, 1002, 1003, 1004]


def _batches(schema, layout):
    """ChangeBatches of one INSERT per (poll group, position) in ``layout``'s order."""
    return [
        ChangeBatch.from_changes(
            schema, [(0, None, {"id": p, "name": f"n{p}", "qty": g}) for p in range(start, start + n)],
            poll_group=g, start_position=start,
        )
        for g, start, n in layout
    ]


@pytest.mark.parametrize(
    "layout",
    [
        [(0, 0, 5), (0, 5, 5), (1, 0, 3)],  # in order: no sort
        [(0, 5, 5), (0, 0, 5)],  # positions out of order
        [(1, 0, 3), (0, 0, 5)],  # groups out of order
        [(0, 0, 5), (0, 3, 5)],  # overlapping positions (replays): stable sort keeps both
        [(0, 0, 1)],
    ],
)
def test_concat_records_orders_by_group_and_position_exactly_like_a_sort(layout):
    batches = _batches(SMALL, layout)
    table = pa.Table.from_batches([b.records for b in batches])
    expected = table.sort_by([("poll_group", "ascending"), ("position", "ascending")])
    assert concat_records(batches, SMALL).equals(expected)


def test_change_batch_coder_round_trips_and_is_what_the_sinks_group_with():
    import pickle

    import apache_beam as beam


    fast_batches, _, _ = _decode(EVERY_TYPE, _payload(_cdc_records(EVERY_TYPE, seed=2)), safe=False)
    coder = ChangeBatchCoder()
    for batch in fast_batches + _batches(SMALL, [(2, 7, 4)]):
        encoded = coder.encode(batch)
        decoded = coder.decode(encoded)
        assert (decoded.source_table, decoded.poll_group, decoded.poll_time) == (
            batch.source_table, batch.poll_group, batch.poll_time)
        assert same_records(decoded.records, batch.records)
    assert len(coder.encode(fast_batches[0])) < len(pickle.dumps(fast_batches[0]))
    key_value = beam.coders.registry.get_coder(beam.typehints.Tuple[str, ChangeBatch])
    assert [type(c) for c in key_value.coders()] == [beam.coders.StrUtf8Coder, ChangeBatchCoder]


def test_read_from_pixels_types_its_changes_as_change_batches():
    import apache_beam as beam

    from beam_pixels.source import ReadFromPixels

    result = beam.Pipeline() | ReadFromPixels(SMALL, buckets=[0])
    assert result.changes.element_type is ChangeBatch


def test_change_batch_coder_estimates_size_without_encoding(monkeypatch):

    batch = _batches(SMALL, [(0, 0, 100)])[0]
    coder = ChangeBatchCoder()
    monkeypatch.setattr(ChangeBatchCoder, "encode", lambda self, value: pytest.fail("encoded to estimate"))
    assert coder.estimate_size(batch) == batch.records.nbytes


def test_responses_decoded_in_parallel_leave_in_order_with_their_timestamps_and_windows():
    schema = SourceSchema.parse("id:BIGINT, name:STRING", ["id"])
    codec = RowCodec(schema)
    fn = DecodePollsFn({"": TableDecoder(schema, "public.orders", "binary", False, 128)})
    fn.setup()
    fn.start_bundle()
    outputs, position = [], 0
    for i in range(12):
        rows = [(position + j, f"n{position + j}") for j in range(50 + 10 * i)]
        payload = _payload([_record(codec, 0, None, row) for row in rows])
        window = IntervalWindow(i, i + 1)
        outputs += fn.process(RawPoll(0, position, 100.0 + i, payload), Timestamp(100 + i), window)
        position += len(rows)
    outputs += fn.finish_bundle()
    fn.teardown()
    assert [(o.timestamp, o.windows) for o in outputs] == [(Timestamp(100 + i), (IntervalWindow(i, i + 1),)) for i in range(12)]
    assert [o.value.poll_time for o in outputs] == [100.0 + i for i in range(12)]
    ids = [row["id"] for o in outputs for row in o.value.records.column("after").to_pylist()]
    assert ids == list(range(position))


def test_raw_polls_move_with_their_own_coder():
    import apache_beam as beam

    poll = RawPoll(2, 10_000_000_000, 1795489135.25, _payload([]) + b"\x0a\x00")
    coder = beam.coders.registry.get_coder(RawPoll)
    assert coder.decode(coder.encode(poll)) == poll
    assert coder.estimate_size(poll) == len(coder.encode(poll))


def test_change_batch_coder_compresses_large_batches_only_and_decodes_either():
    coder = ChangeBatchCoder()
    small = _batches(SMALL, [(0, 0, 30)])[0]
    large = _batches(SMALL, [(0, 0, 20_000)])[0]
    assert small.records.nbytes < ChangeBatchCoder.COMPRESS_FROM_BYTES <= large.records.nbytes
    # A small batch goes uncompressed (LZ4's fixed cost a batch outweighed what it saved), a large
    # one compressed; the stream says which, so either decodes.
    assert coder.encode(small).endswith(_ipc_stream(small.records, compression=None))
    assert len(coder.encode(large)) < large.records.nbytes / 2
    for batch in (small, large):
        assert same_records(coder.decode(coder.encode(batch)).records, batch.records)


def _ipc_stream(records, compression):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, records.schema, options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_batch(records)
    return sink.getvalue().to_pybytes()
