"""Property tests of the codec: batches decode exactly like single values, and
arbitrary input never raises anything but DecodeError."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from beam_pixels.codec import BINARY, TEXT, DecodeError, RowCodec
from beam_pixels.protocol import sink_pb2
from beam_pixels.schema import Column, ColumnType, SourceSchema, TypeKind, parse_type
from beam_pixels.testing.encoding import encode_row, encode_value

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIMPLE_TYPES = [
    "BOOLEAN", "TINYINT", "SMALLINT", "INT", "BIGINT", "FLOAT", "DOUBLE", "DATE", "TIME",
    "TIMESTAMP", "TIMESTAMPTZ", "STRING", "VARCHAR(5)", "CHAR", "BINARY", "VARBINARY",
]  # fmt: skip


@st.composite
def column_types(draw) -> ColumnType:
    kind = draw(st.sampled_from(["simple", "DECIMAL", "FIXED"]))
    if kind == "DECIMAL":
        precision = draw(st.sampled_from([1, 9, 18, 19, 38]) | st.integers(1, 38))
        return parse_type(f"DECIMAL({precision},{draw(st.integers(0, precision))})")
    if kind == "FIXED":
        return parse_type(f"FIXED({draw(st.integers(1, 17))})")
    return parse_type(draw(st.sampled_from(SIMPLE_TYPES)))


@st.composite
def schemas(draw) -> SourceSchema:
    types = draw(st.lists(column_types(), min_size=1, max_size=5))
    schema = SourceSchema(tuple(Column(f"c{i}", t) for i, t in enumerate(types)))
    return schema.with_primary_key(["c0"] if draw(st.booleans()) else [])


_OFFSETS = st.builds(timezone, st.timedeltas(timedelta(hours=-23, minutes=-59), timedelta(hours=23, minutes=59)))
_INT_BITS = {TypeKind.TINYINT: 8, TypeKind.SMALLINT: 16, TypeKind.INT: 32, TypeKind.BIGINT: 64}
_BY_KIND = {
    TypeKind.BOOLEAN: st.booleans(),
    TypeKind.FLOAT: st.floats(width=32),
    TypeKind.DOUBLE: st.floats(),
    TypeKind.DATE: st.dates(),
    TypeKind.TIME: st.times().map(lambda v: v.replace(microsecond=v.microsecond // 1000 * 1000)),
    TypeKind.TIMESTAMP: st.datetimes(),
    # Aware values away from the ends of time, where the shift to UTC would leave datetime's range.
    TypeKind.TIMESTAMPTZ: st.datetimes(timezones=st.just(timezone.utc))
    | st.datetimes(datetime(2, 1, 1), datetime(9998, 12, 31), timezones=_OFFSETS),
}


def python_values(t: ColumnType) -> st.SearchStrategy:
    """Valid non-NULL Python values of a column type."""
    k = t.kind
    if k in _INT_BITS:
        bits = _INT_BITS[k]
        return st.integers(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if k is TypeKind.DECIMAL:
        bound = 10**t.precision - 1
        return st.integers(-bound, bound).map(lambda u: Decimal(f"{u}E-{t.scale}"))
    if k is TypeKind.FIXED:
        return st.binary(min_size=t.length, max_size=t.length)
    if t.is_text:
        return st.text()
    if t.is_binary:
        return st.binary()
    return _BY_KIND[k]


def raw_values(t: ColumnType, encoding: str) -> st.SearchStrategy:
    """Arbitrary ``(bytes, is_null)`` for a column, biased towards almost-valid bytes."""
    near = [st.binary(max_size=20), st.sampled_from([b"", b"\xff", b"\x00", b"\x02", b"\xc3", b"\xed\xa0\x80"])]
    if encoding == BINARY:
        width = t.wire_width or 4
        near += [st.binary(min_size=width, max_size=width), st.binary(min_size=width, max_size=width)]
    else:
        texts = st.text(alphabet="0123456789+-.:eE TZ", max_size=30) | st.sampled_from(
            ["NaN", "Infinity", "true", "2024-02-29", "23:59:59.999", "2024-01-31T10:00:00+02:00", "AP8="]
        )
        near.append(texts.map(str.encode))
    valid = python_values(t).map(lambda v: encode_value(t, v, encoding))
    return st.tuples(st.one_of(valid, *near), st.booleans() | st.just(False))


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


def same_row(got: dict | None, want: dict | None) -> bool:
    if got is None or want is None:
        return got is want
    return got.keys() == want.keys() and all(same(got[k], want[k]) for k in got)


def image(pairs):
    return SimpleNamespace(values=[SimpleNamespace(value=v, is_null=n) for v, n in pairs])


# Field 15 is in no message of the protocol: a server newer than this client might send it.
UNKNOWN_FIELD = b"\x7a\x02hi"


def as_protobuf(img, unknown_field: bool):
    """The same image as a generated ``RowValue``, optionally carrying an unknown field."""
    if img is None:
        return None
    row = sink_pb2.RowValue(values=[sink_pb2.ColumnValue(value=v.value, is_null=v.is_null) for v in img.values])
    return sink_pb2.RowValue.FromString(row.SerializeToString() + (UNKNOWN_FIELD if unknown_field else b""))


def decode_one_by_one(codec: RowCodec, images) -> tuple[list, dict[int, str]]:
    """What decode_images must produce, from decode_row alone."""
    rows, errors = [], {}
    for i, img in enumerate(images):
        if img is None:
            rows.append(None)
            continue
        try:
            rows.append(dict(zip(codec.schema.names, codec.decode_row(img.values))))
        except DecodeError as e:
            rows.append(None)
            errors[i] = str(e)
    return rows, errors


def check_batch_equals_values(codec: RowCodec, images) -> None:
    want_rows, want_errors = decode_one_by_one(codec, images)
    struct, errors = codec.decode_images(images)
    struct.validate(full=True)
    assert {i: str(e) for i, e in errors.items()} == want_errors
    got_rows = struct.to_pylist()
    assert len(got_rows) == len(want_rows)
    for i, (got, want) in enumerate(zip(got_rows, want_rows)):
        assert same_row(got, want), (i, got, want)


@st.composite
def valid_batches(draw, encoding: str):
    """A schema, and rows of valid Python values (NULL where the column allows)."""
    schema = draw(schemas())
    key = set(schema.primary_key)

    def cell(c: Column):
        values = python_values(c.type)
        return values if c.name in key else st.none() | values

    rows = draw(st.lists(st.tuples(*[cell(c) for c in schema.columns]), max_size=12))
    return schema, [list(r) for r in rows]


@FAST
@given(st.sampled_from([BINARY, TEXT]).flatmap(lambda e: st.tuples(st.just(e), valid_batches(e))))
def test_valid_rows_round_trip_through_batches(case):
    encoding, (schema, rows) = case
    codec = RowCodec(schema, encoding)
    images = [image(encode_row(codec, r)) for r in rows]
    struct, errors = codec.decode_images(images)
    assert errors == {}
    for got, want in zip(struct.to_pylist(), rows):
        assert same_row(got, dict(zip(schema.names, want)))
    check_batch_equals_values(codec, images)


@st.composite
def raw_batches(draw, encoding: str):
    """A schema and images of arbitrary bytes: absent, short, long or full rows."""
    schema = draw(schemas())
    cells = st.tuples(*[raw_values(c.type, encoding) for c in schema.columns]).map(list)
    row = cells | st.lists(st.tuples(st.binary(max_size=9), st.booleans()), max_size=len(schema.columns) + 2)
    images = draw(st.lists(st.none() | row.map(image), max_size=10))
    return schema, images


@FAST
@given(
    st.sampled_from([BINARY, TEXT]).flatmap(lambda e: st.tuples(st.just(e), raw_batches(e))),
    st.booleans(),
)
def test_arbitrary_bytes_decode_in_batches_exactly_as_one_by_one(case, empty_as_null):
    """decode_value / decode_row raise only DecodeError on any input (anything else
    escapes and fails the test), and decode_images agrees with them row by row."""
    encoding, (schema, images) = case
    check_batch_equals_values(RowCodec(schema, encoding, empty_as_null), images)


@FAST
@given(
    st.sampled_from([BINARY, TEXT]).flatmap(lambda e: st.tuples(st.just(e), raw_batches(e))),
    st.booleans(),
    st.lists(st.booleans(), max_size=3),
)
def test_protobuf_images_decode_like_plain_objects(case, empty_as_null, unknown_fields):
    """Generated messages take the serialized-bytes path (or, with an unknown field
    or a wrong value count, the object path) and decode exactly as plain objects."""
    encoding, (schema, images) = case
    codec = RowCodec(schema, encoding, empty_as_null)
    messages = [as_protobuf(img, i < len(unknown_fields) and unknown_fields[i]) for i, img in enumerate(images)]
    check_batch_equals_values(codec, messages)
    plain, plain_errors = codec.decode_images(images)
    struct, errors = codec.decode_images(messages)
    assert {i: str(e) for i, e in errors.items()} == {i: str(e) for i, e in plain_errors.items()}
    assert all(same_row(a, b) for a, b in zip(struct.to_pylist(), plain.to_pylist()))


@FAST
@given(column_types(), st.sampled_from([BINARY, TEXT]), st.binary(max_size=40), st.booleans())
def test_any_bytes_for_any_type_decode_or_raise_decode_error(col_type, encoding, raw, is_null):
    codec = RowCodec(SourceSchema((Column("c", col_type),)), encoding)
    try:
        value = codec.decode_value(0, raw, is_null)
    except DecodeError as e:
        assert (e.column, e.type, e.length) == ("c", col_type, len(raw))
        return
    assert value is None or isinstance(value, col_type.to_python())
