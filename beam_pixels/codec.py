"""Column values on the wire: encode Python values to bytes and decode bytes back.

Two encodings exist (``source.value.encoding``): :data:`BINARY`, the canonical
big-endian encoding of a real pixels-sink server, and :data:`TEXT`, the UTF-8
text the seed's mock server sent. See ``PROTOCOL.md``, "Value encoding".
"""

from __future__ import annotations

import base64
import math
import struct
import typing
from datetime import date, datetime, time, timedelta, timezone
from decimal import Context, Decimal, Inexact, InvalidOperation

from beam_pixels.schema import ColumnType, SourceSchema, TypeKind

BINARY = "binary"
TEXT = "text"
ENCODINGS = (BINARY, TEXT)

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_MS_PER_DAY = 86_400_000
# Exact decimal arithmetic for up to 38 digits plus headroom for the text forms.
_DECIMAL_CTX = Context(prec=80, traps=[Inexact, InvalidOperation])


class DecodeError(ValueError):
    """A value could not be decoded: which column, its type, how many bytes, and why."""

    def __init__(self, column: str, type: ColumnType | None, length: int, reason: str):
        super().__init__(column, type, length, reason)
        self.column = column
        self.type = type
        self.length = length
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode column {self.column!r} ({self.type}, {self.length} bytes): {self.reason}"


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown value encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


# ---------------------------------------------------------------------------
# Encoding: Python value -> canonical number -> bytes or text.


def _unscaled(col_type: ColumnType, value: Decimal) -> int:
    """The unscaled integer of ``value`` at the column's scale; it must fit exactly."""
    try:
        quantized = Decimal(value).quantize(Decimal(1).scaleb(-col_type.scale), context=_DECIMAL_CTX)
    except (Inexact, InvalidOperation):
        raise ValueError(f"{value!r} is not representable as {col_type} without rounding") from None
    unscaled = int(quantized.scaleb(col_type.scale, context=_DECIMAL_CTX))
    if abs(unscaled) >= 10**col_type.precision:
        raise ValueError(f"{value!r} does not fit {col_type}")
    return unscaled


def _days(value: date) -> int:
    return (value - _EPOCH_DATE).days


def _millis(value: time) -> int:
    if value.tzinfo is not None:
        raise ValueError(f"TIME values carry no time zone: {value!r}")
    if value.microsecond % 1000:
        raise ValueError(f"TIME has millisecond precision: {value!r}")
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + value.microsecond // 1000


def _naive_utc(col_type: ColumnType, value: datetime) -> datetime:
    """``value`` as a naive datetime: unchanged for TIMESTAMP, converted to UTC for TIMESTAMPTZ."""
    if col_type.kind is TypeKind.TIMESTAMP:
        if value.tzinfo is not None:
            raise ValueError(f"TIMESTAMP values are naive, got {value!r}")
        return value
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _micros(col_type: ColumnType, value: datetime) -> int:
    return (_naive_utc(col_type, value) - _EPOCH) // timedelta(microseconds=1)


def _checked_bytes(col_type: ColumnType, value: bytes) -> bytes:
    value = bytes(value)
    if col_type.kind is TypeKind.FIXED and len(value) != col_type.length:
        raise ValueError(f"{col_type} needs exactly {col_type.length} bytes, got {len(value)}")
    return value


def _float_text(col_type: ColumnType, value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    _pack_float(col_type, value)  # range check
    return repr(float(value))


def _pack_float(col_type: ColumnType, value: float) -> bytes:
    try:
        return struct.pack(">f" if col_type.kind is TypeKind.FLOAT else ">d", value)
    except OverflowError:
        raise ValueError(f"{value!r} is out of range for {col_type}") from None


def _pack_int(col_type: ColumnType, number: int) -> bytes:
    width = col_type.wire_width
    try:
        return number.to_bytes(width, "big", signed=True)
    except OverflowError:
        raise ValueError(f"{number} does not fit the {width} bytes of {col_type}") from None


def _int_text(col_type: ColumnType, value: int) -> str:
    _pack_int(col_type, int(value))  # range check
    return str(int(value))


def _decimal_text(col_type: ColumnType, value: Decimal) -> str:
    return format(Decimal(_unscaled(col_type, value)).scaleb(-col_type.scale, context=_DECIMAL_CTX), "f")


def _time_text(col_type: ColumnType, value: time) -> str:
    _millis(value)  # precision check
    return value.isoformat(timespec="milliseconds")


def _timestamp_text(col_type: ColumnType, value: datetime) -> str:
    naive = _naive_utc(col_type, value).isoformat()
    return naive + "Z" if col_type.kind is TypeKind.TIMESTAMPTZ else naive


_Encoder = typing.Callable[[ColumnType, typing.Any], bytes]
_INT_KINDS = (TypeKind.TINYINT, TypeKind.SMALLINT, TypeKind.INT, TypeKind.BIGINT)
_TEXT_KINDS = (TypeKind.STRING, TypeKind.VARCHAR, TypeKind.CHAR)
_BYTES_KINDS = (TypeKind.BINARY, TypeKind.VARBINARY, TypeKind.FIXED)


def _per_kind(groups: dict[tuple[TypeKind, ...], _Encoder]) -> dict[TypeKind, _Encoder]:
    return {kind: fn for kinds, fn in groups.items() for kind in kinds}


_BINARY_ENCODERS = _per_kind(
    {
        (TypeKind.BOOLEAN,): lambda t, v: b"\x01" if v else b"\x00",
        _INT_KINDS: lambda t, v: _pack_int(t, int(v)),
        (TypeKind.FLOAT, TypeKind.DOUBLE): _pack_float,
        (TypeKind.DECIMAL,): lambda t, v: _pack_int(t, _unscaled(t, v)),
        (TypeKind.DATE,): lambda t, v: _pack_int(t, _days(v)),
        (TypeKind.TIME,): lambda t, v: _pack_int(t, _millis(v)),
        (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ): lambda t, v: _pack_int(t, _micros(t, v)),
        _TEXT_KINDS: lambda t, v: v.encode("utf-8"),
        _BYTES_KINDS: _checked_bytes,
    }
)

_TEXT_ENCODERS = _per_kind(
    {
        (TypeKind.BOOLEAN,): lambda t, v: b"true" if v else b"false",
        _INT_KINDS: lambda t, v: _int_text(t, v).encode(),
        (TypeKind.FLOAT, TypeKind.DOUBLE): lambda t, v: _float_text(t, v).encode(),
        (TypeKind.DECIMAL,): lambda t, v: _decimal_text(t, v).encode(),
        (TypeKind.DATE,): lambda t, v: v.isoformat().encode(),
        (TypeKind.TIME,): lambda t, v: _time_text(t, v).encode(),
        (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ): lambda t, v: _timestamp_text(t, v).encode(),
        _TEXT_KINDS: lambda t, v: v.encode("utf-8"),
        _BYTES_KINDS: lambda t, v: base64.b64encode(_checked_bytes(t, v)),
    }
)

_ENCODERS = {BINARY: _BINARY_ENCODERS, TEXT: _TEXT_ENCODERS}


def encode_value(col_type: ColumnType, value, encoding: str = BINARY) -> bytes:
    """The wire bytes of a non-None ``value`` of ``col_type.to_python()`` type.

    Raises ValueError when the value cannot be represented (out of range, too many
    fractional digits, a FIXED value of the wrong length, sub-millisecond TIME).
    TIMESTAMPTZ takes aware datetimes or naive ones meaning UTC.
    """
    _check_encoding(encoding)
    return _ENCODERS[encoding][col_type.kind](col_type, value)


class RowCodec:
    """Encodes and decodes the column values of rows of one source schema."""

    def __init__(self, schema: SourceSchema, encoding: str = BINARY, empty_as_null: bool = False):
        _check_encoding(encoding)
        self.schema = schema
        self.encoding = encoding
        self.empty_as_null = empty_as_null

    def encode_row(self, values: typing.Sequence) -> list[tuple[bytes, bool]]:
        """``(value bytes, is_null)`` per column; None encodes as ``(b"", True)``."""
        columns = self.schema.columns
        if len(values) != len(columns):
            raise ValueError(f"row has {len(values)} values but the schema has {len(columns)} columns")
        return [
            (b"", True) if v is None else (encode_value(c.type, v, self.encoding), False)
            for c, v in zip(columns, values)
        ]
