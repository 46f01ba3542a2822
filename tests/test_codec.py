"""Value codec: wire forms, round trips of every type, NULL rules and decode errors."""

from __future__ import annotations

import base64
import math
import pickle
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from beam_pixels.changes import records_schema
from beam_pixels.codec import BINARY, TEXT, DecodeError, RowCodec
from beam_pixels.codec.columns import columns_of_protobuf
from beam_pixels.protocol import sink_pb2
from beam_pixels.schema import SourceSchema, parse_type
from beam_pixels.testing.encoding import encode_row, encode_value

ENCODINGS = (BINARY, TEXT)
UTC = timezone.utc


def dec(unscaled: int, scale: int) -> Decimal:
    """An exact Decimal (Decimal arithmetic would round 38 digits to 28)."""
    return Decimal(f"{unscaled}E-{scale}")


def same(a, b) -> bool:
    """Equality that holds for NaN and tells -0.0 from 0.0."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return type(a) is type(b) and a == b


def image(pairs):
    """A protobuf-like RowValue from ``(value bytes, is_null)`` pairs."""
    return SimpleNamespace(values=[SimpleNamespace(value=v, is_null=n) for v, n in pairs])


F32_MAX = 3.4028234663852886e38
F32_TINY = 1.401298464324817e-45

EDGE_VALUES = {
    "BOOLEAN": [True, False],
    "TINYINT": [-128, -1, 0, 127],
    "SMALLINT": [-(2**15), -1, 0, 2**15 - 1],
    "INT": [-(2**31), -1, 0, 2**31 - 1],
    "BIGINT": [-(2**63), -1, 0, 2**63 - 1],
    "FLOAT": [0.0, -0.0, 1.5, -F32_MAX, F32_MAX, F32_TINY, math.inf, -math.inf, math.nan],
    "DOUBLE": [0.0, -0.0, 0.1, -1.7976931348623157e308, 5e-324, math.inf, -math.inf, math.nan],
    "DECIMAL(1,0)": [dec(-9, 0), dec(0, 0), dec(9, 0)],
    "DECIMAL(10,2)": [dec(1999, 2), dec(-1, 2), dec(0, 2), dec(10**10 - 1, 2)],
    "DECIMAL(18,4)": [dec(-(10**18 - 1), 4), dec(10**18 - 1, 4), dec(-1, 4)],
    "DECIMAL(19,0)": [dec(-(10**19 - 1), 0), dec(10**19 - 1, 0), dec(2**63, 0), dec(-(2**63) - 1, 0)],
    "DECIMAL(20,0)": [dec(2**64, 0), dec(-(2**64), 0)],
    "DECIMAL(38,10)": [dec(-(10**38 - 1), 10), dec(10**38 - 1, 10), dec(-1, 10), dec(0, 10)],
    "DECIMAL(38,38)": [dec(-(10**38 - 1), 38), dec(1, 38)],
    "DATE": [date(1, 1, 1), date(1900, 3, 1), date(1969, 12, 31), date(1970, 1, 1), date(9999, 12, 31)],
    "TIME": [time(0), time(12, 30, 1, 5000), time(23, 59, 59, 999000)],
    "TIMESTAMP": [
        datetime(1, 1, 1),
        datetime(1969, 12, 31, 23, 59, 59, 999999),
        datetime(1970, 1, 1),
        datetime(2024, 1, 31, 10, 0, 0, 123456),
        datetime(2500, 6, 1, 0, 0, 0, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
    ],
    "TIMESTAMPTZ": [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2024, 1, 31, 10, 0, 0, 123456, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
    "STRING": ["", "plain", "héllo wörld", "日本語", "emoji 🎉", "nul\x00inside"],
    "VARCHAR(3)": ["longer than three is not enforced"],
    "CHAR": ["x"],
    "BINARY": [b"", b"\x00", b"\xff\x00\xfe"],
    "VARBINARY": [b"", bytes(range(256))],
    "FIXED(4)": [b"\x00\x01\x02\x03", b"\xff\xff\xff\xff"],
}
CASES = [(t, v) for t, values in EDGE_VALUES.items() for v in values]


def case_id(case) -> str:
    return f"{case[0]}={case[1]!r}"[:60]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_value_round_trip(case, encoding):
    type_name, value = case
    codec = RowCodec(SourceSchema.parse(f"c:{type_name}"), encoding)
    raw = encode_value(codec.schema.columns[0].type, value, encoding)
    decoded = codec.decode_value(0, raw)
    assert same(decoded, value), (raw, decoded)
    if isinstance(value, Decimal):
        assert decoded.as_tuple().exponent == -codec.schema.columns[0].type.scale


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("type_name", EDGE_VALUES)
def test_batch_round_trip(type_name, encoding):
    """All edge values of a type, a NULL and a missing image in one batch."""
    values = EDGE_VALUES[type_name]
    codec = RowCodec(SourceSchema.parse(f"k:INT, c:{type_name}", ["k"]), encoding)
    images = [image(encode_row(codec, [i, v])) for i, v in enumerate(values)]
    images += [image(encode_row(codec, [-1, None])), None]
    struct, errors = codec.decode_images(images)
    assert errors == {}
    assert struct.type == records_schema(codec.schema).field("after").type
    struct.validate(full=True)
    rows = struct.to_pylist()
    assert rows[-2:] == [{"k": -1, "c": None}, None]
    assert [r["k"] for r in rows[:-2]] == list(range(len(values)))
    for got, want in zip(rows, values):
        assert same(got["c"], want), (got, want)


@pytest.mark.parametrize(
    "type_name, value, wire",
    [
        ("BOOLEAN", True, b"\x01"),
        ("TINYINT", -2, b"\xfe"),
        ("SMALLINT", 258, b"\x01\x02"),
        ("INT", 42, b"\x00\x00\x00\x2a"),
        ("BIGINT", -2, b"\xff" * 7 + b"\xfe"),
        ("FLOAT", 1.0, b"\x3f\x80\x00\x00"),
        ("DOUBLE", -2.0, b"\xc0" + b"\x00" * 7),
        ("DECIMAL(10,2)", Decimal("-1.00"), b"\xff" * 7 + b"\x9c"),
        ("DECIMAL(18,0)", Decimal(1), b"\x00" * 7 + b"\x01"),
        ("DECIMAL(19,0)", Decimal(1), b"\x00" * 15 + b"\x01"),
        ("DECIMAL(38,0)", Decimal(2**64 + 5), b"\x00" * 7 + b"\x01" + b"\x00" * 7 + b"\x05"),
        ("DECIMAL(38,0)", Decimal(-1), b"\xff" * 16),
        ("DATE", date(1969, 12, 31), b"\xff\xff\xff\xff"),
        ("TIME", time(0, 0, 1, 500000), (1500).to_bytes(4, "big")),
        ("TIMESTAMP", datetime(1970, 1, 1, 0, 0, 1), (10**6).to_bytes(8, "big")),
        ("TIMESTAMPTZ", datetime(1970, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), b"\x00" * 8),
        ("TIMESTAMPTZ", datetime(1970, 1, 1, 0, 0, 0, 1), b"\x00" * 7 + b"\x01"),
        ("STRING", "é", b"\xc3\xa9"),
        ("FIXED(2)", b"ab", b"ab"),
    ],
)
def test_binary_wire_form(type_name, value, wire):
    assert encode_value(parse_type(type_name), value) == wire


@pytest.mark.parametrize(
    "type_name, value, text",
    [
        ("BOOLEAN", False, "false"),
        ("INT", -42, "-42"),
        ("DOUBLE", 19.99, "19.99"),
        ("DOUBLE", math.nan, "NaN"),
        ("FLOAT", math.inf, "Infinity"),
        ("DOUBLE", -math.inf, "-Infinity"),
        ("DECIMAL(10,2)", Decimal("19.9"), "19.90"),
        ("DATE", date(2024, 1, 31), "2024-01-31"),
        ("TIME", time(23, 59, 59, 999000), "23:59:59.999"),
        ("TIMESTAMP", datetime(2024, 1, 31, 10, 0, 0, 123456), "2024-01-31T10:00:00.123456"),
        ("TIMESTAMPTZ", datetime(2024, 1, 31, 12, tzinfo=timezone(timedelta(hours=2))), "2024-01-31T10:00:00Z"),
        ("STRING", "mock_data_7", "mock_data_7"),
        ("BINARY", b"\x00\xff", "AP8="),
    ],
)
def test_text_wire_form(type_name, value, text):
    assert encode_value(parse_type(type_name), value, TEXT) == text.encode()


@pytest.mark.parametrize(
    "type_name, text, value",
    [
        ("BOOLEAN", "1", True),
        ("BOOLEAN", "0", False),
        ("BOOLEAN", "true", True),
        ("INT", "+7", 7),
        ("FLOAT", "0.1", 0.10000000149011612),
        ("DOUBLE", "1.0E10", 1e10),
        ("DOUBLE", "-Infinity", -math.inf),
        ("DECIMAL(10,2)", "19.99", Decimal("19.99")),
        ("DECIMAL(10,2)", "-5", Decimal("-5.00")),
        ("DECIMAL(10,2)", "19.990", Decimal("19.99")),
        ("DECIMAL(10,7)", "1E-7", Decimal("0.0000001")),
        ("TIME", "10:00", time(10)),
        ("TIMESTAMP", "2024-01-31 10:00:00", datetime(2024, 1, 31, 10)),
        ("TIMESTAMPTZ", "2024-01-31T10:00:00+02:00", datetime(2024, 1, 31, 8, tzinfo=UTC)),
        ("TIMESTAMPTZ", "2024-01-31T10:00:00Z", datetime(2024, 1, 31, 10, tzinfo=UTC)),
        ("TIMESTAMPTZ", "2024-01-31T10:00:00", datetime(2024, 1, 31, 10, tzinfo=UTC)),
        ("FIXED(2)", "YWI=", b"ab"),
    ],
)
def test_text_decoding_accepts(type_name, text, value):
    decoded = RowCodec(SourceSchema.parse(f"c:{type_name}"), TEXT).decode_value(0, text.encode())
    assert same(decoded, value)
    if isinstance(value, datetime):
        assert decoded.utcoffset() == value.utcoffset()


def test_smallint_accepts_four_bytes_from_older_servers():
    codec = RowCodec(SourceSchema.parse("k:INT, s:SMALLINT"))
    assert codec.decode_value(1, (-1234).to_bytes(4, "big", signed=True)) == -1234
    struct, errors = codec.decode_images(
        [
            image([(b"\0\0\0\1", False), (b"\xff\xff\xfb\x2e", False)]),
            image([(b"\0\0\0\2", False), (b"\x00\x07", False)]),
        ]
    )
    assert errors == {}
    assert struct.field("s").to_pylist() == [-1234, 7]


# ---------------------------------------------------------------------------
# NULL and empty values.


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("type_name", EDGE_VALUES)
def test_is_null_wins_over_bytes(type_name, encoding):
    codec = RowCodec(SourceSchema.parse(f"c:{type_name}"), encoding)
    raw = encode_value(codec.schema.columns[0].type, EDGE_VALUES[type_name][-1], encoding)
    assert codec.decode_value(0, raw, is_null=True) is None
    struct, errors = codec.decode_images([image([(raw, True)]), image([(b"\xff\xfe\xfd", True)])])
    assert errors == {}
    assert struct.to_pylist() == [{"c": None}, {"c": None}]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("empty_as_null", [False, True])
def test_empty_bytes(encoding, empty_as_null):
    """Empty fixed-width values are NULL; empty STRING/BINARY only with empty_as_null."""
    spec = "i:INT, d:DECIMAL(30,2), t:TIME, f:FIXED(2), s:STRING, b:BINARY, v:VARCHAR(4)"
    codec = RowCodec(SourceSchema.parse(spec), encoding, empty_as_null)
    empty_string, empty_bytes = (None, None) if empty_as_null else ("", b"")
    expected = [None, None, None, None, empty_string, empty_bytes, empty_string]
    assert [codec.decode_value(i, b"") for i in range(7)] == expected
    struct, errors = codec.decode_images([image([(b"", False)] * 7)])
    assert errors == {}
    assert list(struct.to_pylist()[0].values()) == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_null_in_primary_key_is_an_error(encoding):
    codec = RowCodec(SourceSchema.parse("id:BIGINT, s:STRING", ["id"]), encoding)
    with pytest.raises(DecodeError, match="primary-key"):
        codec.decode_value(0, b"", is_null=True)
    good = image(encode_row(codec, [1, "a"]))
    null_key, empty_key = image([(b"", True), (b"x", False)]), image([(b"", False), (b"", True)])
    struct, errors = codec.decode_images([null_key, good, empty_key])
    assert sorted(errors) == [0, 2]
    assert all(e.column == "id" and "primary-key" in e.reason for e in errors.values())
    assert struct.to_pylist() == [None, {"id": 1, "s": "a"}, None]


# ---------------------------------------------------------------------------
# Decode errors.

BAD_BINARY = [
    ("INT", b"\x00\x00\x01", "expected 4 bytes, got 3"),
    ("BIGINT", b"\x00" * 9, "expected 8 bytes, got 9"),
    ("TINYINT", b"\x00\x00", "expected 1 bytes, got 2"),
    ("SMALLINT", b"\x00\x00\x00", "expected 2 or 4 bytes, got 3"),
    ("SMALLINT", (40000).to_bytes(4, "big"), "outside [-32768, 32767]"),
    ("DOUBLE", b"\x00" * 4, "expected 8 bytes"),
    ("FLOAT", b"\x00" * 8, "expected 4 bytes"),
    ("STRING", b"\xff", "invalid UTF-8"),
    ("VARCHAR(9)", b"ok \xc3", "invalid UTF-8"),
    ("CHAR", b"\xed\xa0\x80", "invalid UTF-8"),
    ("STRING", b"\xc0\x80", "invalid UTF-8"),
    ("DECIMAL(4,2)", (10**4).to_bytes(8, "big"), "outside"),
    ("DECIMAL(4,2)", (-(10**4)).to_bytes(8, "big", signed=True), "outside"),
    ("DECIMAL(18,0)", (-(2**63)).to_bytes(8, "big", signed=True), "outside"),
    ("DECIMAL(10,2)", b"\x00" * 7, "expected 8 bytes, got 7"),
    ("DECIMAL(19,0)", b"\x00" * 8, "expected 16 bytes, got 8"),
    ("DECIMAL(19,0)", (10**19).to_bytes(16, "big"), "outside"),
    ("DECIMAL(38,0)", (10**38).to_bytes(16, "big"), "outside"),
    ("DECIMAL(38,0)", (-(10**38)).to_bytes(16, "big", signed=True), "outside"),
    ("DECIMAL(38,0)", (-(2**127)).to_bytes(16, "big", signed=True), "outside"),
    ("FIXED(4)", b"abc", "expected 4 bytes, got 3"),
    ("FIXED(4)", b"abcde", "expected 4 bytes, got 5"),
    ("BOOLEAN", b"\x02", "0 or 1, got 0x02"),
    ("BOOLEAN", b"\xff", "0 or 1, got 0xff"),
    ("BOOLEAN", b"\x00\x01", "expected 1 bytes"),
    ("TIME", (-1).to_bytes(4, "big", signed=True), "milliseconds of the day -1"),
    ("TIME", (86_400_000).to_bytes(4, "big"), "milliseconds of the day 86400000"),
    ("DATE", (2**31 - 1).to_bytes(4, "big"), "days since 1970-01-01"),
    ("TIMESTAMP", (2**63 - 1).to_bytes(8, "big"), "microseconds"),
    ("TIMESTAMPTZ", (-(2**63)).to_bytes(8, "big", signed=True), "microseconds"),
]

BAD_TEXT = [
    ("INT", b"abc", "not an integer"),
    ("INT", b"1.5", "not an integer"),
    ("INT", b"2147483648", "outside"),
    ("TINYINT", b"-129", "outside"),
    ("BIGINT", "١٢".encode(), "not an integer"),
    ("DOUBLE", b"1e400", "out of range"),
    ("FLOAT", b"1e39", "out of range"),
    ("DOUBLE", b"nan", "not a number"),
    ("DECIMAL(10,2)", b"19.999", "without rounding"),
    ("DECIMAL(10,2)", b"123456789.00", "outside"),
    ("DECIMAL(10,2)", b"NaN", "not a decimal number"),
    ("BOOLEAN", b"yes", "not one of"),
    ("DATE", b"2024-02-30", "day is out of range"),
    ("TIME", b"23:59:59.999500", "millisecond precision"),
    ("TIME", b"10:00:00+01:00", "no time zone"),
    ("TIMESTAMP", b"2024-01-31T10:00:00Z", "no time zone"),
    ("TIMESTAMPTZ", b"0001-01-01T00:00:00+01:00", "outside"),
    ("BINARY", b"not base64!", "base64"),
    ("FIXED(2)", b"YWJj", "exactly 2 bytes"),
    ("STRING", b"\xff", "invalid UTF-8"),
    ("INT", b"\xff", "invalid UTF-8"),
]


def assert_names_value(error: DecodeError, column: str, type_name: str, length: int) -> None:
    assert (error.column, str(error.type), error.length) == (column, type_name, length)
    assert f"'{column}'" in str(error) and type_name in str(error) and f"{length} bytes" in str(error)
    assert error.reason in str(error)


def check_bad_value(encoding: str, type_name: str, raw: bytes, reason: str) -> None:
    """The value fails alone, and in a batch fails only its own row."""
    codec = RowCodec(SourceSchema.parse(f"k:INT, bad:{type_name}"), encoding)
    canonical = str(codec.schema.columns[1].type)
    with pytest.raises(DecodeError) as caught:
        codec.decode_value(1, raw)
    assert reason in caught.value.reason
    assert_names_value(caught.value, "bad", canonical, len(raw))

    key = encode_value(codec.schema.columns[0].type, 5, encoding)
    struct, errors = codec.decode_images([image([(key, False), (b"", True)]), image([(key, False), (raw, False)])])
    assert list(errors) == [1]
    assert str(errors[1]) == str(caught.value)
    assert struct.to_pylist() == [{"k": 5, "bad": None}, None]
    struct.validate(full=True)


@pytest.mark.parametrize("type_name, raw, reason", BAD_BINARY, ids=[f"{t}-{r}" for t, _, r in BAD_BINARY])
def test_binary_decode_errors(type_name, raw, reason):
    check_bad_value(BINARY, type_name, raw, reason)


@pytest.mark.parametrize("type_name, raw, reason", BAD_TEXT, ids=[f"{t}-{r}" for t, _, r in BAD_TEXT])
def test_text_decode_errors(type_name, raw, reason):
    check_bad_value(TEXT, type_name, raw, reason)


def test_decode_error_survives_pickling():
    """Beam moves exceptions between processes."""
    error = DecodeError("price", parse_type("DECIMAL(10,2)"), 7, "expected 8 bytes, got 7")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.column, copy.type, copy.length, copy.reason, str(copy)) == (
        "price", error.type, 7, "expected 8 bytes, got 7", str(error)
    )
    assert str(error) == "cannot decode column 'price' (DECIMAL(10,2), 7 bytes): expected 8 bytes, got 7"


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_wrong_value_count(encoding):
    codec = RowCodec(SourceSchema.parse("a:INT, b:STRING, c:DATE"), encoding)
    good = encode_row(codec, [1, "x", date(2024, 1, 1)])
    with pytest.raises(DecodeError) as too_few:
        codec.decode_row(image(good[:1]).values)
    assert_names_value(too_few.value, "b", "STRING", 0)
    assert "1 values but the schema has 3 columns" in too_few.value.reason
    with pytest.raises(DecodeError) as too_many:
        codec.decode_row(image(good + [(b"xyz", False)]).values)
    assert (too_many.value.type, too_many.value.length) == (None, 3)
    assert "4 values but the schema has 3 columns" in str(too_many.value)

    struct, errors = codec.decode_images([image(good[:1]), image(good), image(good + [(b"xyz", False)]), image([])])
    assert sorted(errors) == [0, 2, 3]
    assert str(errors[0]) == str(too_few.value) and str(errors[2]) == str(too_many.value)
    assert errors[3].column == "a"
    assert struct.to_pylist() == [None, {"a": 1, "b": "x", "c": date(2024, 1, 1)}, None, None]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_batch_reports_first_bad_column_of_each_row(encoding):
    codec = RowCodec(SourceSchema.parse("i:INT, s:STRING, b:BOOLEAN"), encoding)
    good = encode_row(codec, [1, "a", True])
    bad_s = b"\xff"
    bad_b = b"\x07" if encoding == BINARY else b"maybe"
    images = [
        image(good),
        image([good[0], (bad_s, False), (bad_b, False)]),
        None,
        image([good[0], good[1], (bad_b, False)]),
        image(good),
    ]
    struct, errors = codec.decode_images(images)
    assert {i: e.column for i, e in errors.items()} == {1: "s", 3: "b"}
    assert struct.to_pylist() == [{"i": 1, "s": "a", "b": True}, None, None, None, {"i": 1, "s": "a", "b": True}]
    struct.validate(full=True)


def test_decode_images_of_nothing():
    codec = RowCodec(SourceSchema.parse("id:BIGINT", ["id"]))
    struct, errors = codec.decode_images([])
    assert (len(struct), errors) == (0, {})
    assert struct.type == pa.struct([pa.field("id", pa.int64(), nullable=False)])
    struct, errors = codec.decode_images([None, None])
    assert (struct.to_pylist(), errors) == ([None, None], {})


def pb_image(pairs, extra: bytes = b""):
    """A generated RowValue from ``(value bytes, is_null)`` pairs, plus raw extra fields."""
    row = sink_pb2.RowValue(values=[sink_pb2.ColumnValue(value=v, is_null=n) for v, n in pairs])
    return sink_pb2.RowValue.FromString(row.SerializeToString() + extra)


def test_decode_images_reads_generated_protobuf_messages():
    schema = SourceSchema.parse("id:BIGINT, name:STRING, price:DECIMAL(10,2), big:DECIMAL(38,0), raw:BINARY", ["id"])
    codec = RowCodec(schema)
    rows = [
        [1, "a", Decimal("1.50"), Decimal(-(10**37)), b""],
        [2, None, None, Decimal(0), b"x" * 200],
        [3, "é" * 10_000, Decimal("-0.01"), None, None],
    ]
    records = [sink_pb2.RowRecord(op=sink_pb2.INSERT, after=pb_image(encode_row(codec, r))) for r in rows]
    records = sink_pb2.PollResponse.FromString(sink_pb2.PollResponse(records=records).SerializeToString()).records
    after, errors = codec.decode_images([r.after if r.HasField("after") else None for r in records])
    before, _ = codec.decode_images([r.before if r.HasField("before") else None for r in records])
    assert errors == {}
    assert after.to_pylist() == [dict(zip(schema.names, r)) for r in rows]
    assert before.to_pylist() == [None, None, None]


def test_protobuf_images_are_read_from_their_serialized_bytes():
    """Multi-byte lengths, NULLs and empty values parse; anything unexpected falls back."""
    empty_as_null = [False, False, True]
    pairs = [(b"", False), (b"v" * 300, False), (b"", True)]
    images = [pb_image(pairs), None, pb_image([(b"\x01", True), (b"", False), (b"abc", False)])]
    columns = columns_of_protobuf(images, np.array([True, False, True]), empty_as_null)
    assert [[c.raw(i) for i in range(3)] for c in columns] == [
        [b"", b"", b"\x01"],
        [b"v" * 300, b"", b""],
        [b"", b"", b"abc"],
    ]
    assert [c.is_null.tolist() for c in columns] == [[False, True, True], [False, True, False], [True, True, False]]
    assert [c.valid.tolist() for c in columns] == [[True, False, False], [True, False, True], [False, False, True]]

    def parsed(image):
        return columns_of_protobuf([image], np.array([True]), empty_as_null)

    assert parsed(pb_image(pairs)) is not None
    assert parsed(pb_image(pairs, extra=b"\x7a\x00")) is None  # unknown field of RowValue
    assert parsed(pb_image(pairs[:2])) is None  # too few values
    assert parsed(pb_image(pairs + pairs[:1])) is None  # too many
    assert parsed(image(pairs)) is None  # not a protobuf message
    value_with_unknown_field = b"\x0a\x05\x0a\x01a\x7a\x00"
    assert parsed(sink_pb2.RowValue.FromString(value_with_unknown_field * 3)) is None
    assert parsed(sink_pb2.RowValue.FromString(b"\x0a\x03\x0a\x01a" * 3)) is not None


# ---------------------------------------------------------------------------
# Encoding errors.


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "type_name, value",
    [
        ("TINYINT", 128),
        ("SMALLINT", -(2**15) - 1),
        ("INT", 2**31),
        ("BIGINT", 2**63),
        ("FLOAT", 1e39),
        ("DECIMAL(10,2)", Decimal("1.001")),
        ("DECIMAL(3,0)", Decimal(1000)),
        ("DECIMAL(38,0)", Decimal(10**38)),
        ("DECIMAL(10,2)", Decimal("NaN")),
        ("TIME", time(1, 2, 3, 4)),
        ("TIMESTAMP", datetime(2024, 1, 1, tzinfo=UTC)),
        ("FIXED(3)", b"ab"),
    ],
)
def test_encode_rejects_unrepresentable_values(type_name, value, encoding):
    with pytest.raises(ValueError):
        encode_value(parse_type(type_name), value, encoding)


def test_unknown_encoding_and_row_width_are_rejected():
    with pytest.raises(ValueError, match="unknown value encoding"):
        RowCodec(SourceSchema.parse("a:INT"), "json")
    with pytest.raises(ValueError, match="unknown value encoding"):
        encode_value(parse_type("INT"), 1, "json")
    with pytest.raises(ValueError, match="2 values but the schema has 1"):
        encode_row(RowCodec(SourceSchema.parse("a:INT")), [1, 2])


def test_encode_row_marks_nulls():
    codec = RowCodec(SourceSchema.parse("a:INT, b:STRING"))
    assert encode_row(codec, [None, ""]) == [(b"", True), (b"", False)]
    assert encode_row(RowCodec(SourceSchema.parse("b:BINARY"), TEXT), [b"\x01"]) == [(base64.b64encode(b"\x01"), False)]


def test_encode_rejects_non_integers_for_integer_columns():
    with pytest.raises(TypeError):
        encode_value(parse_type("INT"), 1.5)
    with pytest.raises(TypeError):
        encode_value(parse_type("BIGINT"), "7", TEXT)
