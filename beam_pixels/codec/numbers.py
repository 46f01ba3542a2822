"""Canonical numbers: what each numeric-like column kind travels as, and its valid range.

Integers, DECIMAL, DATE, TIME and TIMESTAMP(TZ) travel as one integer each (the
unscaled value, days, milliseconds, microseconds); both encodings, the per-value
and the vectorised decoders share these conversions and range checks.
"""

from __future__ import annotations

import functools
import operator
import struct
import typing
from datetime import date, datetime, time, timedelta, timezone
from decimal import Context, Decimal, Inexact, InvalidOperation

import numpy as np

from beam_pixels.schema import ColumnType, TypeKind


def per_kind(groups: dict[tuple[TypeKind, ...], typing.Callable]) -> dict[TypeKind, typing.Callable]:
    """A table by kind from a table by groups of kinds."""
    return {kind: fn for kinds, fn in groups.items() for kind in kinds}


_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_ONE_US = timedelta(microseconds=1)
# Exact decimal arithmetic: 38 digits plus headroom for text such as "1.50000".
_DECIMAL_CTX = Context(prec=80, traps=[Inexact, InvalidOperation])

INT_KINDS = (TypeKind.TINYINT, TypeKind.SMALLINT, TypeKind.INT, TypeKind.BIGINT)
TIMESTAMP_KINDS = (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ)
NUMBER_KINDS = (*INT_KINDS, TypeKind.DECIMAL, TypeKind.DATE, TypeKind.TIME, *TIMESTAMP_KINDS)
FLOAT_KINDS = (TypeKind.FLOAT, TypeKind.DOUBLE)
STRING_KINDS = (TypeKind.STRING, TypeKind.VARCHAR, TypeKind.CHAR)
BYTES_KINDS = (TypeKind.BINARY, TypeKind.VARBINARY, TypeKind.FIXED)

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
def bounds_of(col_type: ColumnType) -> tuple[int, int]:
    """Inclusive bounds of the canonical number of a kind in ``NUMBER_KINDS``."""
    kind = col_type.kind
    if kind is TypeKind.DECIMAL:
        return -(10**col_type.precision - 1), 10**col_type.precision - 1
    if kind in INT_KINDS:
        info = np.iinfo(physical_dtype(col_type))
        return int(info.min), int(info.max)
    return _RANGES[kind]


def check_bounds(col_type: ColumnType, number: int) -> int:
    low, high = bounds_of(col_type)
    if not low <= number <= high:
        unit = _UNITS.get(col_type.kind, "value")
        raise ValueError(f"{unit} {number} is outside [{low}, {high}] for {col_type}")
    return number


def physical_dtype(col_type: ColumnType) -> np.dtype:
    """The little-endian numpy integer dtype of the column's Arrow values."""
    return np.dtype(f"<i{col_type.to_arrow().bit_width // 8}")


def unscaled_of(col_type: ColumnType, value: Decimal) -> int:
    """The unscaled integer of ``value`` at the column's scale; no rounding allowed."""
    try:
        quantized = Decimal(value).quantize(Decimal(1).scaleb(-col_type.scale), context=_DECIMAL_CTX)
    except (Inexact, InvalidOperation):
        raise ValueError(f"{value} is not representable as {col_type} without rounding") from None
    return int(quantized.scaleb(col_type.scale, context=_DECIMAL_CTX))


def millis(value: time) -> int:
    if value.tzinfo is not None:
        raise ValueError(f"TIME values carry no time zone, got {value}")
    if value.microsecond % 1000:
        raise ValueError(f"TIME has millisecond precision, got {value}")
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + value.microsecond // 1000


def micros(col_type: ColumnType, value: datetime) -> int:
    """Microseconds since the epoch: TIMESTAMP takes naive values, TIMESTAMPTZ aware or naive UTC."""
    if value.tzinfo is not None:
        if col_type.kind is TypeKind.TIMESTAMP:
            raise ValueError(f"TIMESTAMP values carry no time zone, got {value}")
        return (value - _EPOCH.replace(tzinfo=timezone.utc)) // _ONE_US
    return (value - _EPOCH) // _ONE_US


TO_NUMBER: dict[TypeKind, typing.Callable[[ColumnType, typing.Any], int]] = {
    **{k: lambda t, v: operator.index(v) for k in INT_KINDS},
    TypeKind.DECIMAL: unscaled_of,
    TypeKind.DATE: lambda t, v: (v - _EPOCH_DATE).days,
    TypeKind.TIME: lambda t, v: millis(v),
    TypeKind.TIMESTAMP: micros,
    TypeKind.TIMESTAMPTZ: micros,
}

FROM_NUMBER: dict[TypeKind, typing.Callable[[ColumnType, int], typing.Any]] = {
    **{k: lambda t, n: n for k in INT_KINDS},
    TypeKind.DECIMAL: lambda t, n: Decimal(n).scaleb(-t.scale, context=_DECIMAL_CTX),
    TypeKind.DATE: lambda t, n: _EPOCH_DATE + timedelta(days=n),
    TypeKind.TIME: lambda t, n: (_EPOCH + timedelta(milliseconds=n)).time(),
    TypeKind.TIMESTAMP: lambda t, n: _EPOCH + timedelta(microseconds=n),
    TypeKind.TIMESTAMPTZ: lambda t, n: (_EPOCH + timedelta(microseconds=n)).replace(tzinfo=timezone.utc),
}


def number_of(col_type: ColumnType, value) -> int:
    return check_bounds(col_type, TO_NUMBER[col_type.kind](col_type, value))


def checked_bytes(col_type: ColumnType, value: bytes) -> bytes:
    value = bytes(value)
    if col_type.kind is TypeKind.FIXED and len(value) != col_type.length:
        raise ValueError(f"{col_type} takes exactly {col_type.length} bytes, got {len(value)}")
    return value


def to_float32(value: float) -> float:
    """``value`` rounded to float32 (ValueError when it is finite but too large)."""
    try:
        return struct.unpack(">f", struct.pack(">f", value))[0]
    except OverflowError:
        raise ValueError(f"{value!r} is out of range for FLOAT") from None
