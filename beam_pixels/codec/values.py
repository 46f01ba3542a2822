"""Column values on the wire, one at a time: the two encodings and the per-value decoders.

Two encodings exist (``source.value.encoding``): :data:`BINARY`, the canonical
big-endian encoding of a real pixels-sink server, and :data:`TEXT`, the UTF-8
text the seed's mock server sent (see ``PROTOCOL.md``). A decoder takes the raw
bytes of a non-NULL value and raises ValueError (or OverflowError) with the
reason when they are not valid; :class:`DecodeError` names the column.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import typing
from datetime import date, datetime, time
from decimal import Decimal

from beam_pixels.codec.numbers import BYTES_KINDS, FLOAT_KINDS, FROM_NUMBER, INT_KINDS, NUMBER_KINDS
from beam_pixels.codec.numbers import STRING_KINDS, TO_NUMBER, check_bounds, checked_bytes, to_float32
from beam_pixels.codec.numbers import micros, millis, per_kind, unscaled_of
from beam_pixels.schema import ColumnType, TypeKind

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


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown value encoding {encoding!r}; expected one of {', '.join(ENCODINGS)}")


_Decoder = typing.Callable[[ColumnType, bytes], typing.Any]


def wire_widths(col_type: ColumnType) -> tuple[int, ...]:
    """Byte widths accepted for a fixed-width column (SMALLINT: 4 from older servers)."""
    if col_type.kind is TypeKind.SMALLINT:
        return (2, 4)
    return (col_type.wire_width,)


def _fixed_width(decode: _Decoder) -> _Decoder:
    def check_width(col_type: ColumnType, raw: bytes):
        widths = wire_widths(col_type)
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
    number = check_bounds(col_type, int.from_bytes(raw, "big", signed=True))
    return FROM_NUMBER[col_type.kind](col_type, number)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"invalid UTF-8: {e.reason} at byte {e.start}") from None


_BINARY_DECODERS: dict[TypeKind, _Decoder] = per_kind(
    {
        (TypeKind.BOOLEAN,): _fixed_width(_boolean_from_byte),
        NUMBER_KINDS: _fixed_width(_number_from_bytes),
        FLOAT_KINDS: _fixed_width(_float_from_bytes),
        STRING_KINDS: lambda t, raw: _utf8(raw),
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
    **{k: lambda t, s: int(_matching(_INT_TEXT, s, "an integer")) for k in INT_KINDS},
    TypeKind.DECIMAL: lambda t, s: unscaled_of(t, Decimal(_matching(_FLOAT_TEXT, s, "a decimal number"))),
    TypeKind.DATE: lambda t, s: TO_NUMBER[TypeKind.DATE](t, date.fromisoformat(s)),
    TypeKind.TIME: lambda t, s: millis(time.fromisoformat(s)),
    TypeKind.TIMESTAMP: lambda t, s: micros(t, _parse_datetime(s)),
    TypeKind.TIMESTAMPTZ: lambda t, s: micros(t, _parse_datetime(s)),
}


def _number_from_text(col_type: ColumnType, raw: bytes):
    number = check_bounds(col_type, _TEXT_TO_NUMBER[col_type.kind](col_type, _utf8(raw)))
    return FROM_NUMBER[col_type.kind](col_type, number)


def _float_from_text(col_type: ColumnType, raw: bytes) -> float:
    text = _utf8(raw)
    if text in _FLOAT_SPECIALS:
        return _FLOAT_SPECIALS[text]
    value = float(_matching(_FLOAT_TEXT, text, "a number"))
    if math.isinf(value):
        raise ValueError(f"{text[:40]!r} is out of range for {col_type}")
    return to_float32(value) if col_type.kind is TypeKind.FLOAT else value


def _boolean_from_text(col_type: ColumnType, raw: bytes) -> bool:
    text = _utf8(raw)
    if text not in _BOOLEAN_TEXT:
        raise ValueError(f"{text[:40]!r} is not one of true, false, 1, 0")
    return _BOOLEAN_TEXT[text]


_TEXT_DECODERS: dict[TypeKind, _Decoder] = per_kind(
    {
        (TypeKind.BOOLEAN,): _boolean_from_text,
        NUMBER_KINDS: _number_from_text,
        FLOAT_KINDS: _float_from_text,
        STRING_KINDS: lambda t, raw: _utf8(raw),
        BYTES_KINDS: lambda t, raw: checked_bytes(t, base64.b64decode(raw, validate=True)),
    }
)

DECODERS = {BINARY: _BINARY_DECODERS, TEXT: _TEXT_DECODERS}
