"""Column values on the wire: encode Python values to bytes and decode bytes back.

Two encodings exist (``source.value.encoding``): :data:`BINARY`, the canonical
big-endian encoding of a real pixels-sink server, and :data:`TEXT`, the UTF-8
text the seed's mock server sent (see ``PROTOCOL.md``). Integers, DECIMAL, DATE,
TIME and TIMESTAMP(TZ) travel as one integer each (the "canonical number": the
unscaled value, days, milliseconds, microseconds), and both encodings share its
range checks. :meth:`RowCodec.decode_images` decodes whole batches of binary row
images column by column with numpy, without Python work per value.
"""

from __future__ import annotations

import base64
import functools
import math
import operator
import re
import struct
import typing
from datetime import date, datetime, time, timedelta, timezone
from decimal import Context, Decimal, Inexact, InvalidOperation
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
from google.protobuf import message

from beam_pixels.schema import ColumnType, SourceSchema, TypeKind

BINARY = "binary"
TEXT = "text"
ENCODINGS = (BINARY, TEXT)


class DecodeError(ValueError):
    """A value could not be decoded: which column, its type, how many bytes, and why.

    ``type`` is None only when a row carries more values than the schema has columns.
    """

    def __init__(self, column: str, type: ColumnType | None, length: int, reason: str):
        super().__init__(column, type, length, reason)
        self.column = column
        self.type = type
        self.length = length
        self.reason = reason

    def __str__(self) -> str:
        type_name = "no type" if self.type is None else self.type
        return f"cannot decode column {self.column!r} ({type_name}, {self.length} bytes): {self.reason}"


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown value encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


# ---------------------------------------------------------------------------
# Canonical numbers: what each numeric-like kind travels as, and its valid range.

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
# Exact decimal arithmetic: 38 digits plus headroom for text such as "1.50000".
_DECIMAL_CTX = Context(prec=80, traps=[Inexact, InvalidOperation])

_INT_KINDS = (TypeKind.TINYINT, TypeKind.SMALLINT, TypeKind.INT, TypeKind.BIGINT)
_TIMESTAMP_KINDS = (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ)
_NUMBER_KINDS = (*_INT_KINDS, TypeKind.DECIMAL, TypeKind.DATE, TypeKind.TIME, *_TIMESTAMP_KINDS)
_FLOAT_KINDS = (TypeKind.FLOAT, TypeKind.DOUBLE)
_STRING_KINDS = (TypeKind.STRING, TypeKind.VARCHAR, TypeKind.CHAR)
_BYTES_KINDS = (TypeKind.BINARY, TypeKind.VARBINARY, TypeKind.FIXED)

# Bounds of DATE / TIME / TIMESTAMP numbers: what Python's date, time and datetime hold.
_RANGES = {
    TypeKind.DATE: ((date.min - _EPOCH_DATE).days, (date.max - _EPOCH_DATE).days),
    TypeKind.TIME: (0, 86_400_000 - 1),
    TypeKind.TIMESTAMP: ((datetime.min - _EPOCH) // _ONE_US, (datetime.max - _EPOCH) // _ONE_US),
}
_RANGES[TypeKind.TIMESTAMPTZ] = _RANGES[TypeKind.TIMESTAMP]
_UNITS = {
    TypeKind.DECIMAL: "unscaled value",
    TypeKind.DATE: "days since 1970-01-01",
    TypeKind.TIME: "milliseconds of the day",
    TypeKind.TIMESTAMP: "microseconds since 1970-01-01",
    TypeKind.TIMESTAMPTZ: "microseconds since 1970-01-01 UTC",
}


@functools.cache
def _bounds(col_type: ColumnType) -> tuple[int, int]:
    """Inclusive bounds of the canonical number of a kind in ``_NUMBER_KINDS``."""
    kind = col_type.kind
    if kind is TypeKind.DECIMAL:
        return -(10**col_type.precision - 1), 10**col_type.precision - 1
    if kind in _INT_KINDS:
        info = np.iinfo(_physical_dtype(col_type))
        return int(info.min), int(info.max)
    return _RANGES[kind]


def _check_bounds(col_type: ColumnType, number: int) -> int:
    low, high = _bounds(col_type)
    if not low <= number <= high:
        unit = _UNITS.get(col_type.kind, "value")
        raise ValueError(f"{unit} {number} is outside [{low}, {high}] for {col_type}")
    return number


def _physical_dtype(col_type: ColumnType) -> np.dtype:
    """The little-endian numpy integer dtype of the column's Arrow values."""
    return np.dtype(f"<i{col_type.to_arrow().bit_width // 8}")


def _unscaled(col_type: ColumnType, value: Decimal) -> int:
    """The unscaled integer of ``value`` at the column's scale; no rounding allowed."""
    try:
        quantized = Decimal(value).quantize(Decimal(1).scaleb(-col_type.scale), context=_DECIMAL_CTX)
    except (Inexact, InvalidOperation):
        raise ValueError(f"{value} is not representable as {col_type} without rounding") from None
    return int(quantized.scaleb(col_type.scale, context=_DECIMAL_CTX))


def _millis(value: time) -> int:
    if value.tzinfo is not None:
        raise ValueError(f"TIME values carry no time zone, got {value}")
    if value.microsecond % 1000:
        raise ValueError(f"TIME has millisecond precision, got {value}")
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + value.microsecond // 1000


def _micros(col_type: ColumnType, value: datetime) -> int:
    """Microseconds since the epoch: TIMESTAMP takes naive values, TIMESTAMPTZ aware or naive UTC."""
    if value.tzinfo is not None:
        if col_type.kind is TypeKind.TIMESTAMP:
            raise ValueError(f"TIMESTAMP values carry no time zone, got {value}")
        return (value - _EPOCH.replace(tzinfo=timezone.utc)) // _ONE_US
    return (value - _EPOCH) // _ONE_US


_TO_NUMBER: dict[TypeKind, typing.Callable[[ColumnType, typing.Any], int]] = {
    **{k: lambda t, v: operator.index(v) for k in _INT_KINDS},
    TypeKind.DECIMAL: _unscaled,
    TypeKind.DATE: lambda t, v: (v - _EPOCH_DATE).days,
    TypeKind.TIME: lambda t, v: _millis(v),
    TypeKind.TIMESTAMP: _micros,
    TypeKind.TIMESTAMPTZ: _micros,
}

_FROM_NUMBER: dict[TypeKind, typing.Callable[[ColumnType, int], typing.Any]] = {
    **{k: lambda t, n: n for k in _INT_KINDS},
    TypeKind.DECIMAL: lambda t, n: Decimal(n).scaleb(-t.scale, context=_DECIMAL_CTX),
    TypeKind.DATE: lambda t, n: _EPOCH_DATE + timedelta(days=n),
    TypeKind.TIME: lambda t, n: (_EPOCH + timedelta(milliseconds=n)).time(),
    TypeKind.TIMESTAMP: lambda t, n: _EPOCH + timedelta(microseconds=n),
    TypeKind.TIMESTAMPTZ: lambda t, n: (_EPOCH + timedelta(microseconds=n)).replace(tzinfo=timezone.utc),
}


def _number(col_type: ColumnType, value) -> int:
    return _check_bounds(col_type, _TO_NUMBER[col_type.kind](col_type, value))


def _checked_bytes(col_type: ColumnType, value: bytes) -> bytes:
    value = bytes(value)
    if col_type.kind is TypeKind.FIXED and len(value) != col_type.length:
        raise ValueError(f"{col_type} takes exactly {col_type.length} bytes, got {len(value)}")
    return value


def _float32(value: float) -> float:
    """``value`` rounded to float32 (ValueError when it is finite but too large)."""
    try:
        return struct.unpack(">f", struct.pack(">f", value))[0]
    except OverflowError:
        raise ValueError(f"{value!r} is out of range for FLOAT") from None


# ---------------------------------------------------------------------------
# Encoding.

_Encoder = typing.Callable[[ColumnType, typing.Any], bytes]


def _per_kind(groups: dict[tuple[TypeKind, ...], typing.Callable]) -> dict[TypeKind, typing.Callable]:
    return {kind: fn for kinds, fn in groups.items() for kind in kinds}


def _pack_float(col_type: ColumnType, value: float) -> bytes:
    if col_type.kind is TypeKind.FLOAT:
        return struct.pack(">f", _float32(value))
    return struct.pack(">d", value)


def _float_text(col_type: ColumnType, value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(_float32(value) if col_type.kind is TypeKind.FLOAT else float(value))


def _number_text(col_type: ColumnType, value) -> str:
    """The text form of a value of a kind in ``_NUMBER_KINDS`` (range-checked)."""
    number = _number(col_type, value)
    kind = col_type.kind
    if kind is TypeKind.TIMESTAMPTZ:
        return _FROM_NUMBER[TypeKind.TIMESTAMP](col_type, number).isoformat() + "Z"
    if kind is TypeKind.TIME:
        return value.isoformat(timespec="milliseconds")
    if kind is TypeKind.DECIMAL:
        return format(_FROM_NUMBER[kind](col_type, number), "f")
    return str(number) if kind in _INT_KINDS else value.isoformat()


_BINARY_ENCODERS: dict[TypeKind, _Encoder] = _per_kind(
    {
        (TypeKind.BOOLEAN,): lambda t, v: b"\x01" if v else b"\x00",
        _NUMBER_KINDS: lambda t, v: _number(t, v).to_bytes(t.wire_width, "big", signed=True),
        _FLOAT_KINDS: _pack_float,
        _STRING_KINDS: lambda t, v: v.encode("utf-8"),
        _BYTES_KINDS: _checked_bytes,
    }
)

_TEXT_ENCODERS: dict[TypeKind, _Encoder] = _per_kind(
    {
        (TypeKind.BOOLEAN,): lambda t, v: b"true" if v else b"false",
        _NUMBER_KINDS: lambda t, v: _number_text(t, v).encode("ascii"),
        _FLOAT_KINDS: lambda t, v: _float_text(t, v).encode("ascii"),
        _STRING_KINDS: lambda t, v: v.encode("utf-8"),
        _BYTES_KINDS: lambda t, v: base64.b64encode(_checked_bytes(t, v)),
    }
)

_ENCODERS = {BINARY: _BINARY_ENCODERS, TEXT: _TEXT_ENCODERS}


def encode_value(col_type: ColumnType, value, encoding: str = BINARY) -> bytes:
    """The wire bytes of a non-None ``value`` of ``col_type.to_python()`` type.

    Raises ValueError when the value cannot be represented (out of range, more
    fractional digits than the scale, a FIXED value of the wrong length,
    sub-millisecond TIME). TIMESTAMPTZ takes aware datetimes or naive ones in UTC.
    """
    _check_encoding(encoding)
    return _ENCODERS[encoding][col_type.kind](col_type, value)


# ---------------------------------------------------------------------------
# Decoding one value. A decoder takes the raw bytes of a non-NULL value and
# raises ValueError (or OverflowError) with the reason when they are not valid.

_Decoder = typing.Callable[[ColumnType, bytes], typing.Any]


def _wire_widths(col_type: ColumnType) -> tuple[int, ...]:
    """Byte widths accepted for a fixed-width column (SMALLINT: 4 from older servers)."""
    if col_type.kind is TypeKind.SMALLINT:
        return (2, 4)
    return (col_type.wire_width,)


def _fixed_width(decode: _Decoder) -> _Decoder:
    def check_width(col_type: ColumnType, raw: bytes):
        widths = _wire_widths(col_type)
        if len(raw) not in widths:
            raise ValueError(f"expected {' or '.join(map(str, widths))} bytes, got {len(raw)}")
        return decode(col_type, raw)

    return check_width


def _boolean_from_byte(col_type: ColumnType, raw: bytes) -> bool:
    if raw[0] > 1:
        raise ValueError(f"a BOOLEAN byte is 0 or 1, got {raw[0]:#04x}")
    return raw[0] == 1


def _float_from_bytes(col_type: ColumnType, raw: bytes) -> float:
    return struct.unpack(">f" if col_type.kind is TypeKind.FLOAT else ">d", raw)[0]


def _number_from_bytes(col_type: ColumnType, raw: bytes):
    number = _check_bounds(col_type, int.from_bytes(raw, "big", signed=True))
    return _FROM_NUMBER[col_type.kind](col_type, number)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8: {e.reason} at byte {e.start}") from None


_BINARY_DECODERS: dict[TypeKind, _Decoder] = _per_kind(
    {
        (TypeKind.BOOLEAN,): _fixed_width(_boolean_from_byte),
        _NUMBER_KINDS: _fixed_width(_number_from_bytes),
        _FLOAT_KINDS: _fixed_width(_float_from_bytes),
        _STRING_KINDS: lambda t, raw: _utf8(raw),
        (TypeKind.BINARY, TypeKind.VARBINARY): lambda t, raw: raw,
        (TypeKind.FIXED,): _fixed_width(lambda t, raw: raw),
    }
)

_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_FLOAT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_FLOAT_SPECIALS = {"NaN": math.nan, "Infinity": math.inf, "+Infinity": math.inf, "-Infinity": -math.inf}
_BOOLEAN_TEXT = {"true": True, "false": False, "1": True, "0": False}


def _matching(pattern: re.Pattern, text: str, what: str) -> str:
    if not pattern.fullmatch(text):
        raise ValueError(f"{text[:40]!r} is not {what}")
    return text


def _parse_datetime(text: str) -> datetime:
    """ISO-8601 date and time; a trailing "Z" means UTC (Python 3.10 does not read it)."""
    return datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)


_TEXT_TO_NUMBER: dict[TypeKind, typing.Callable[[ColumnType, str], int]] = {
    **{k: lambda t, s: int(_matching(_INT_TEXT, s, "an integer")) for k in _INT_KINDS},
    TypeKind.DECIMAL: lambda t, s: _unscaled(t, Decimal(_matching(_FLOAT_TEXT, s, "a decimal number"))),
    TypeKind.DATE: lambda t, s: _TO_NUMBER[TypeKind.DATE](t, date.fromisoformat(s)),
    TypeKind.TIME: lambda t, s: _millis(time.fromisoformat(s)),
    TypeKind.TIMESTAMP: lambda t, s: _micros(t, _parse_datetime(s)),
    TypeKind.TIMESTAMPTZ: lambda t, s: _micros(t, _parse_datetime(s)),
}


def _number_from_text(col_type: ColumnType, raw: bytes):
    number = _check_bounds(col_type, _TEXT_TO_NUMBER[col_type.kind](col_type, _utf8(raw)))
    return _FROM_NUMBER[col_type.kind](col_type, number)


def _float_from_text(col_type: ColumnType, raw: bytes) -> float:
    text = _utf8(raw)
    if text in _FLOAT_SPECIALS:
        return _FLOAT_SPECIALS[text]
    value = float(_matching(_FLOAT_TEXT, text, "a number"))
    if math.isinf(value):
        raise ValueError(f"{text[:40]!r} is out of range for {col_type}")
    return _float32(value) if col_type.kind is TypeKind.FLOAT else value


def _boolean_from_text(col_type: ColumnType, raw: bytes) -> bool:
    text = _utf8(raw)
    if text not in _BOOLEAN_TEXT:
        raise ValueError(f"{text[:40]!r} is not one of true, false, 1, 0")
    return _BOOLEAN_TEXT[text]


_TEXT_DECODERS: dict[TypeKind, _Decoder] = _per_kind(
    {
        (TypeKind.BOOLEAN,): _boolean_from_text,
        _NUMBER_KINDS: _number_from_text,
        _FLOAT_KINDS: _float_from_text,
        _STRING_KINDS: lambda t, raw: _utf8(raw),
        _BYTES_KINDS: lambda t, raw: _checked_bytes(t, base64.b64decode(raw, validate=True)),
    }
)

_DECODERS = {BINARY: _BINARY_DECODERS, TEXT: _TEXT_DECODERS}


# ---------------------------------------------------------------------------
# Decoding a batch column by column: raw columns, and numpy decoders of binary ones.


class _RawColumn:
    """The raw values of one column of a batch: value ``i`` is
    ``data[starts[i]:starts[i] + lengths[i]]``; ``valid`` marks the non-NULL ones.
    ``packed`` says the values lie back to back from ``data[0]`` in row order."""

    def __init__(
        self,
        data: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        is_null: np.ndarray,
        empty_is_null: bool,
        packed: bool,
    ):
        self.data, self.starts, self.lengths, self.is_null, self.packed = data, starts, lengths, is_null, packed
        self.valid = ~is_null & (lengths > 0) if empty_is_null else ~is_null

    @classmethod
    def of_values(cls, values: list[bytes], is_null: np.ndarray, empty_is_null: bool) -> "_RawColumn":
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        data = np.frombuffer(b"".join(values), dtype=np.uint8)
        return cls(data, np.cumsum(lengths) - lengths, lengths, is_null, empty_is_null, packed=True)

    def __len__(self) -> int:
        return len(self.lengths)

    def raw(self, i: int) -> bytes:
        return self.data[self.starts[i] : self.starts[i] + self.lengths[i]].tobytes()

    def values(self) -> list[bytes]:
        data = self.data.tobytes()
        return [data[s : s + n] for s, n in zip(self.starts.tolist(), self.lengths.tolist())]

    def matrix(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, selected)``: a ``(n, width)`` uint8 matrix of the valid values of
        that width (zeros elsewhere) and the mask of the rows it holds."""
        n = len(self)
        selected = self.valid & (self.lengths == width)
        if selected.all():
            if self.packed:
                return self.data.reshape(n, width), selected
            return self.data[self.starts[:, None] + np.arange(width)], selected
        rows = np.zeros((n, width), dtype=np.uint8)
        rows[selected] = self.data[self.starts[selected, None] + np.arange(width)]
        return rows, selected

    def packed_buffers(self) -> tuple[pa.Buffer, pa.Buffer]:
        """Arrow offsets and data buffers of the values (NULL slots keep their bytes).

        int32 offsets suffice: protobuf caps a whole message below 2 GiB.
        """
        offsets = np.zeros(len(self) + 1, dtype=np.int32)
        np.cumsum(self.lengths, out=offsets[1:])
        data = self.data
        if not self.packed:
            data = data[np.repeat(self.starts - offsets[:-1], self.lengths) + np.arange(offsets[-1])]
        return pa.py_buffer(offsets), pa.py_buffer(data)


# A column decoder returns the Arrow buffers after the validity bitmap, and the
# mask of valid rows whose value is not valid.
_ColumnDecoder = typing.Callable[[ColumnType, _RawColumn], tuple[list[pa.Buffer], np.ndarray]]


def _width_errors(col_type: ColumnType, column: _RawColumn) -> np.ndarray:
    """The valid values whose width the column does not accept (one or two widths:
    comparisons beat ``np.isin``, which sorts)."""
    accepted = np.logical_or.reduce([column.lengths == width for width in _wire_widths(col_type)])
    return column.valid & ~accepted


def _column_of_booleans(col_type: ColumnType, column: _RawColumn):
    rows, _ = column.matrix(1)
    byte = rows[:, 0]
    return [pa.py_buffer(np.packbits(byte == 1, bitorder="little"))], _width_errors(col_type, column) | (byte > 1)


def _column_of_floats(col_type: ColumnType, column: _RawColumn):
    width = col_type.wire_width
    rows, _ = column.matrix(width)
    values = rows.view(f">f{width}")[:, 0].astype(f"<f{width}")
    return [pa.py_buffer(values)], _width_errors(col_type, column)


def _numbers(col_type: ColumnType, column: _RawColumn) -> tuple[np.ndarray, np.ndarray]:
    """The canonical numbers (int64) of a column whose wire width is at most 8, and the errors."""
    numbers = np.zeros(len(column), dtype=np.int64)
    for width in _wire_widths(col_type):
        rows, selected = column.matrix(width)
        numbers[selected] = rows.view(f">i{width}")[selected, 0]
    low, high = _bounds(col_type)
    errors = _width_errors(col_type, column) | (column.valid & ((numbers < low) | (numbers > high)))
    return numbers, errors


def _column_of_numbers(col_type: ColumnType, column: _RawColumn):
    numbers, errors = _numbers(col_type, column)
    return [pa.py_buffer(numbers.astype(_physical_dtype(col_type)))], errors


_DECIMAL128 = np.dtype([("low", "<u8"), ("high", "<i8")])


def _column_of_decimals(col_type: ColumnType, column: _RawColumn):
    if col_type.wire_width == 8:
        numbers, errors = _numbers(col_type, column)
        low, high = numbers.view(np.uint64), numbers >> 63
    else:
        rows, _ = column.matrix(16)
        wire = rows.view(np.dtype([("high", ">i8"), ("low", ">u8")]))[:, 0]
        low, high = wire["low"], wire["high"]
        errors = _width_errors(col_type, column) | (column.valid & ~_within_128(low, high, *_bounds(col_type)))
    out = np.empty(len(column), dtype=_DECIMAL128)
    out["low"], out["high"] = low, high
    return [pa.py_buffer(out)], errors


def _split_128(number: int) -> tuple[np.int64, np.uint64]:
    """The signed high and unsigned low 64 bits of a 128-bit two's complement integer."""
    return np.int64(number >> 64), np.uint64(number & (2**64 - 1))


def _within_128(low: np.ndarray, high: np.ndarray, minimum: int, maximum: int) -> np.ndarray:
    """Whether the 128-bit integers ``high * 2**64 + low`` lie in ``[minimum, maximum]``."""
    max_high, max_low = _split_128(maximum)
    min_high, min_low = _split_128(minimum)
    below_max = (high < max_high) | ((high == max_high) & (low <= max_low))
    above_min = (high > min_high) | ((high == min_high) & (low >= min_low))
    return below_max & above_min


def _column_of_fixed(col_type: ColumnType, column: _RawColumn):
    rows, _ = column.matrix(col_type.length)
    return [pa.py_buffer(np.ascontiguousarray(rows))], _width_errors(col_type, column)


def _column_of_strings(col_type: ColumnType, column: _RawColumn):
    buffers = list(column.packed_buffers())
    errors = np.zeros(len(column), dtype=bool)
    try:
        pa.StringArray.from_buffers(len(column), *buffers, _bitmap(column.valid)).validate(full=True)
    except pa.ArrowInvalid:
        errors = column.valid & ~np.fromiter(map(_is_utf8, column.values()), dtype=bool, count=len(column))
    return buffers, errors


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _column_of_bytes(col_type: ColumnType, column: _RawColumn):
    return list(column.packed_buffers()), np.zeros(len(column), dtype=bool)


_COLUMN_DECODERS: dict[TypeKind, _ColumnDecoder] = _per_kind(
    {
        (TypeKind.BOOLEAN,): _column_of_booleans,
        _FLOAT_KINDS: _column_of_floats,
        (*_INT_KINDS, TypeKind.DATE, TypeKind.TIME, *_TIMESTAMP_KINDS): _column_of_numbers,
        (TypeKind.DECIMAL,): _column_of_decimals,
        (TypeKind.FIXED,): _column_of_fixed,
        _STRING_KINDS: _column_of_strings,
        (TypeKind.BINARY, TypeKind.VARBINARY): _column_of_bytes,
    }
)


def _bitmap(valid: np.ndarray) -> pa.Buffer | None:
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


# Tags of the wire format (PROTOCOL.md): RowValue.values = 1 and ColumnValue.value = 1
# (length-delimited), ColumnValue.is_null = 2 (varint).
_LEN_FIELD_1 = 0x0A
_VARINT_FIELD_2 = 0x10


def varints(data: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, ends, ok)`` of the base-128 varints at ``positions`` of ``data`` (uint8),
    up to 5 bytes: lengths inside a message below 2 GiB. Reads past the end see the last byte."""
    values = np.zeros(len(positions), dtype=np.int64)
    ends = positions.copy()
    more = np.ones(len(positions), dtype=bool)
    for shift in range(0, 35, 7):
        byte = data[np.minimum(ends, len(data) - 1)].astype(np.int64)
        values |= np.where(more, (byte & 0x7F) << shift, 0)
        ends += more
        more &= byte >= 0x80
        if not more.any():
            break
    return values, ends, ~more


@dataclass(frozen=True)
class SerializedImages:
    """Row images lying serialized (as ``RowValue`` messages) in one buffer: image ``i``
    is ``data[starts[i]:starts[i] + lengths[i]]`` where ``present[i]``, else absent."""

    data: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    present: np.ndarray

    @classmethod
    def of_messages(cls, images: typing.Sequence) -> "SerializedImages":
        """Images given as protobuf messages (or None), serialized back to back."""
        present = np.array([image is not None for image in images], dtype=bool)
        blobs = [image.SerializeToString() for image in images if image is not None]
        lengths = np.zeros(len(images), dtype=np.int64)
        lengths[present] = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        starts = np.cumsum(lengths) - lengths
        return cls(np.frombuffer(b"".join(blobs), dtype=np.uint8), starts, lengths, present)


@dataclass(frozen=True)
class DecodedImages:
    """What :meth:`RowCodec.decode_serialized_images` returns: the images as a struct
    array, the errors by row, and where each row's raw column values lie in ``data``
    (``value_starts`` / ``value_lengths``, shape (rows, columns); 0 for absent rows)."""

    images: pa.StructArray
    errors: dict[int, DecodeError]
    data: np.ndarray
    value_starts: np.ndarray
    value_lengths: np.ndarray


def _scan_row_values(images: SerializedImages, empty_is_null: list[bool]):
    """``(raw columns, value starts, value lengths)`` of serialized ``RowValue`` images
    (starts and lengths of shape (rows, columns)), read with numpy instead of through
    a Python object per value. None unless every present image holds exactly
    one value per column, each encoded as protobuf's serializer writes it (value,
    then ``is_null`` only when true), and nothing else."""
    data, present, width = images.data, images.present, len(empty_is_null)
    if not len(data):
        data = np.zeros(1, dtype=np.uint8)  # reads past the end see a 0 byte
    position = images.starts[present]
    row_ends = position + images.lengths[present]

    def at(positions: np.ndarray) -> np.ndarray:
        return data[np.minimum(positions, len(data) - 1)]

    ok = np.ones(len(position), dtype=bool)
    rows = len(present)
    starts, sizes, nulls = (np.zeros((rows, width), dtype=t) for t in (np.int64, np.int64, bool))
    nulls[~present] = True
    for j in range(width):
        ok &= (position < row_ends) & (at(position) == _LEN_FIELD_1)
        size, position, ok_size = varints(data, position + 1)
        end = position + size
        has_value = (position < end) & (at(position) == _LEN_FIELD_1)
        value_size, value_start, ok_value = varints(data, position + 1)
        value_start = np.where(has_value, value_start, position)
        value_size = np.where(has_value, value_size, 0)
        after = value_start + value_size
        # protobuf writes is_null only when it is true: two bytes, the tag and 1.
        is_null = (after < end) & (at(after) == _VARINT_FIELD_2) & (at(after + 1) == 1)
        ok &= ok_size & (ok_value | ~has_value) & (after + 2 * is_null == end)
        starts[present, j], sizes[present, j], nulls[present, j] = value_start, value_size, is_null
        position = end
    if not (ok & (position == row_ends)).all():
        return None
    return [
        _RawColumn(data, starts[:, j], sizes[:, j], nulls[:, j], empty_is_null[j], packed=False) for j in range(width)
    ], starts, sizes


def _columns_of_protobuf(images: typing.Sequence, present: np.ndarray, empty_is_null: list[bool]):
    """The raw columns of protobuf ``RowValue`` images, read from their serialized
    bytes (see :func:`_scan_row_values`). None unless every image is a message
    holding exactly one value per column and nothing else."""
    messages = [image for image in images if image is not None]
    if not all(issubclass(t, message.Message) for t in set(map(type, messages))):
        return None
    scanned = _scan_row_values(SerializedImages.of_messages(images), empty_is_null)
    return None if scanned is None else scanned[0]


# ---------------------------------------------------------------------------
# Rows.


class RowCodec:
    """Encodes and decodes the column values of rows of one source schema.

    ``empty_as_null`` makes empty STRING/BINARY values NULL (servers from before
    ``is_null`` existed); empty values of other types are always NULL. A NULL in a
    primary-key column is a DecodeError.
    """

    def __init__(self, schema: SourceSchema, encoding: str = BINARY, empty_as_null: bool = False):
        _check_encoding(encoding)
        self.schema = schema
        self.encoding = encoding
        self.empty_as_null = empty_as_null
        self._types = [c.type for c in schema.columns]
        self._decoders = [_DECODERS[encoding][t.kind] for t in self._types]
        self._empty_is_null = [empty_as_null or t.wire_width is not None for t in self._types]
        self._is_key = [c.name in schema.primary_key for c in schema.columns]
        self._struct_type = pa.struct(list(schema.to_arrow()))

    def encode_row(self, values: typing.Sequence) -> list[tuple[bytes, bool]]:
        """``(value bytes, is_null)`` per column; None encodes as ``(b"", True)``."""
        if len(values) != len(self._types):
            raise ValueError(f"row has {len(values)} values but the schema has {len(self._types)} columns")
        return [
            (b"", True) if v is None else (encode_value(t, v, self.encoding), False)
            for t, v in zip(self._types, values)
        ]

    def decode_value(self, index: int, raw: bytes, is_null: bool = False):
        """The Python value of column ``index`` (None for NULL); raises DecodeError."""
        column = self.schema.columns[index]
        if is_null or (not raw and self._empty_is_null[index]):
            if self._is_key[index]:
                raise DecodeError(column.name, column.type, len(raw), "NULL in a primary-key column")
            return None
        try:
            return self._decoders[index](column.type, raw)
        except (ValueError, OverflowError) as e:
            raise DecodeError(column.name, column.type, len(raw), str(e)) from None

    def decode_row(self, column_values: typing.Sequence) -> list:
        """The Python values of one row image's ``ColumnValue``s; raises DecodeError."""
        self._check_count(column_values)
        return [self.decode_value(i, v.value, v.is_null) for i, v in enumerate(column_values)]

    def decode_images(self, images: typing.Sequence) -> tuple[pa.StructArray, dict[int, DecodeError]]:
        """Decode row images (None for no image) into a struct array of the schema's
        Arrow types. Absent images and images that fail to decode are null entries;
        the dict maps each failed index to the error of its first bad column."""
        present = np.array([image is not None for image in images], dtype=bool)
        errors: dict[int, DecodeError] = {}
        columns = _columns_of_protobuf(images, present, self._empty_is_null)
        if columns is None:
            columns, errors = self._columns_of_objects(images, present)
        return self._decode_columns(columns, present, errors)

    def decode_serialized_images(self, images: SerializedImages) -> DecodedImages | None:
        """Like :meth:`decode_images`, for images still serialized in one buffer (no
        protobuf objects, no copies). None when an image is not laid out as protobuf's
        serializer writes a ``RowValue`` of the schema's width: then parse the images
        and use :meth:`decode_images`, which gives the exact result and errors."""
        n = len(images.present)
        if not images.present.any():
            children = [pa.nulls(n, f.type) for f in self._struct_type]
            struct = pa.StructArray.from_arrays(children, fields=list(self._struct_type), mask=pa.array(np.ones(n, bool)))
            nothing = np.zeros((n, len(self._types)), dtype=np.int64)
            return DecodedImages(struct, {}, images.data, nothing, nothing)
        scanned = _scan_row_values(images, self._empty_is_null)
        if scanned is None:
            return None
        columns, starts, lengths = scanned
        struct, errors = self._decode_columns(columns, images.present.copy(), {})
        return DecodedImages(struct, errors, images.data, starts, lengths)

    def _decode_columns(
        self, columns: list[_RawColumn], present: np.ndarray, errors: dict[int, DecodeError]
    ) -> tuple[pa.StructArray, dict[int, DecodeError]]:
        decode = self._decode_binary_columns if self.encoding == BINARY else self._decode_text_columns
        children, bad = decode(columns, present)
        for j, column_bad in enumerate(bad):
            for i in np.flatnonzero(column_bad).tolist():
                if i not in errors:
                    errors[i] = self._error_at(j, columns[j].raw(i), bool(columns[j].is_null[i]))
        present[list(errors)] = False
        struct = pa.StructArray.from_arrays(children, fields=list(self._struct_type), mask=pa.array(~present))
        return struct, dict(sorted(errors.items()))

    def _columns_of_objects(self, images: typing.Sequence, present: np.ndarray):
        """The raw columns of images read value by value, and the errors of images
        with a wrong number of values (which become absent)."""
        width = len(self._types)
        missing = [SimpleNamespace(value=b"", is_null=True)] * width
        rows = [missing if image is None else image.values for image in images]
        counts = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        errors = {}
        for i in np.flatnonzero(counts != width).tolist():
            errors[i] = self._count_error(rows[i])
            rows[i], present[i] = missing, False
        values = [v.value for row in rows for v in row]
        nulls = np.array([v.is_null for row in rows for v in row], dtype=bool).reshape(len(rows), width)
        columns = [_RawColumn.of_values(values[j::width], nulls[:, j], self._empty_is_null[j]) for j in range(width)]
        return columns, errors

    def _decode_binary_columns(
        self, columns: list[_RawColumn], present: np.ndarray
    ) -> tuple[list[pa.Array], list[np.ndarray]]:
        """Children arrays (NULL in rows with an error) and per column the rows in error."""
        bad = []
        buffers = []
        for j, (col_type, column) in enumerate(zip(self._types, columns)):
            column_buffers, errors = _COLUMN_DECODERS[col_type.kind](col_type, column)
            if self._is_key[j]:
                errors |= present & ~column.valid
            buffers.append(column_buffers)
            bad.append(errors)
        row_ok = ~np.logical_or.reduce(bad)
        children = [
            pa.Array.from_buffers(t.to_arrow(), len(present), [_bitmap(column.valid & row_ok), *column_buffers])
            for t, column, column_buffers in zip(self._types, columns, buffers)
        ]
        return children, bad

    def _decode_text_columns(
        self, columns: list[_RawColumn], present: np.ndarray
    ) -> tuple[list[pa.Array], list[np.ndarray]]:
        """Like :meth:`_decode_binary_columns`, one value at a time."""
        n = len(present)
        raw = [c.values() for c in columns]
        nulls = [c.is_null.tolist() for c in columns]
        decoded = [[None] * n for _ in self._types]
        bad = [np.zeros(n, dtype=bool) for _ in self._types]
        for i in np.flatnonzero(present).tolist():
            for j in range(len(columns)):
                try:
                    decoded[j][i] = self.decode_value(j, raw[j][i], nulls[j][i])
                except DecodeError:
                    bad[j][i] = True
                    break
        return [pa.array(values, type=t.to_arrow()) for values, t in zip(decoded, self._types)], bad

    def _check_count(self, column_values: typing.Sequence) -> None:
        if len(column_values) != len(self._types):
            raise self._count_error(column_values)

    def _count_error(self, column_values: typing.Sequence) -> DecodeError:
        count, columns = len(column_values), self.schema.columns
        reason = f"the row has {count} values but the schema has {len(columns)} columns"
        if count < len(columns):
            return DecodeError(columns[count].name, columns[count].type, 0, reason)
        extra = len(column_values[len(columns)].value)
        return DecodeError(f"#{len(columns) + 1} (not in the schema)", None, extra, reason)

    def _error_at(self, index: int, raw: bytes, is_null: bool) -> DecodeError:
        """The DecodeError of a value the column decoder rejected."""
        try:
            self.decode_value(index, raw, is_null)
        except DecodeError as e:
            return e
        raise AssertionError(f"column {index}: the batch decoder rejected a value the value decoder accepts")
