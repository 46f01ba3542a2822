"""Encoding column values as a Pixels server sends them (the mock server's side of :mod:`beam_pixels.codec`).

:func:`encode_value` gives the wire bytes of one value in either encoding;
:func:`encode_row` a row's ``(value bytes, is_null)`` pairs.
"""

from __future__ import annotations

import base64
import math
import struct
import typing

from beam_pixels.codec import BINARY, TEXT, RowCodec
from beam_pixels.codec.numbers import BYTES_KINDS, FLOAT_KINDS, FROM_NUMBER, INT_KINDS, NUMBER_KINDS
from beam_pixels.codec.numbers import STRING_KINDS, checked_bytes, to_float32, number_of, per_kind
from beam_pixels.codec.values import check_encoding
from beam_pixels.schema import ColumnType, TypeKind

_Encoder = typing.Callable[[ColumnType, typing.Any], bytes]


def _pack_float(col_type: ColumnType, value: float) -> bytes:
    if col_type.kind is TypeKind.FLOAT:
        return struct.pack(">f", to_float32(value))
    return struct.pack(">d", value)


def _float_text(col_type: ColumnType, value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(to_float32(value) if col_type.kind is TypeKind.FLOAT else float(value))


def _number_text(col_type: ColumnType, value) -> str:
    """The text form of a value of a kind in ``NUMBER_KINDS`` (range-checked)."""
    number = number_of(col_type, value)
    kind = col_type.kind
    if kind is TypeKind.TIMESTAMPTZ:
        return FROM_NUMBER[TypeKind.TIMESTAMP](col_type, number).isoformat() + "Z"
    if kind is TypeKind.TIME:
        return value.isoformat(timespec="milliseconds")
    if kind is TypeKind.DECIMAL:
        return format(FROM_NUMBER[kind](col_type, number), "f")
    return str(number) if kind in INT_KINDS else value.isoformat()


_BINARY_ENCODERS: dict[TypeKind, _Encoder] = per_kind(
    {
        (TypeKind.BOOLEAN,): lambda t, v: b"\x01" if v else b"\x00",
        NUMBER_KINDS: lambda t, v: number_of(t, v).to_bytes(t.wire_width, "big", signed=True),
        FLOAT_KINDS: _pack_float,
        STRING_KINDS: lambda t, v: v.encode("utf-8"),
        BYTES_KINDS: checked_bytes,
    }
)

_TEXT_ENCODERS: dict[TypeKind, _Encoder] = per_kind(
    {
        (TypeKind.BOOLEAN,): lambda t, v: b"true" if v else b"false",
        NUMBER_KINDS: lambda t, v: _number_text(t, v).encode("ascii"),
        FLOAT_KINDS: lambda t, v: _float_text(t, v).encode("ascii"),
        STRING_KINDS: lambda t, v: v.encode("utf-8"),
        BYTES_KINDS: lambda t, v: base64.b64encode(checked_bytes(t, v)),
    }
)

_ENCODERS = {BINARY: _BINARY_ENCODERS, TEXT: _TEXT_ENCODERS}


def encode_value(col_type: ColumnType, value, encoding: str = BINARY) -> bytes:
    """The wire bytes of a non-None ``value`` of ``col_type.to_python()`` type.

    Raises ValueError when the value cannot be represented (out of range, more
    fractional digits than the scale, a FIXED value of the wrong length,
    sub-millisecond TIME). TIMESTAMPTZ takes aware datetimes or naive ones in UTC.
    """
    check_encoding(encoding)
    return _ENCODERS[encoding][col_type.kind](col_type, value)


def encode_row(codec: RowCodec, values: typing.Sequence) -> list[tuple[bytes, bool]]:
    """``(value bytes, is_null)`` per column of ``codec``'s schema, in its encoding; None encodes as ``(b"", True)``."""
    types = [c.type for c in codec.schema.columns]
    if len(values) != len(types):
        raise ValueError(f"row has {len(values)} values but the schema has {len(types)} columns")
    return [(b"", True) if v is None else (encode_value(t, v, codec.encoding), False) for t, v in zip(types, values)]
