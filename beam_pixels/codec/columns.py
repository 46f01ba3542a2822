"""Decoding a batch column by column: raw columns, and numpy decoders of binary ones.

A column decoder turns every value of one column into Arrow buffers at once, with
no Python work per value, and returns the mask of the rows whose value is not
valid (the per-value decoder of :mod:`.values` then says why).
"""

from __future__ import annotations

import typing

import numpy as np
import pyarrow as pa
from google.protobuf import message

from beam_pixels.codec.numbers import FLOAT_KINDS, INT_KINDS, STRING_KINDS, TIMESTAMP_KINDS, bounds_of
from beam_pixels.codec.numbers import per_kind, physical_dtype
from beam_pixels.codec.values import wire_widths
from beam_pixels.schema import ColumnType, TypeKind
from beam_pixels.wire import SerializedImages, scan_row_values


class RawColumn:
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
    def of_values(cls, values: list[bytes], is_null: np.ndarray, empty_is_null: bool) -> "RawColumn":
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
_ColumnDecoder = typing.Callable[[ColumnType, RawColumn], tuple[list[pa.Buffer], np.ndarray]]


def _width_errors(col_type: ColumnType, column: RawColumn) -> np.ndarray:
    """The valid values whose width the column does not accept (one or two widths:
    comparisons beat ``np.isin``, which sorts)."""
    accepted = np.logical_or.reduce([column.lengths == width for width in wire_widths(col_type)])
    return column.valid & ~accepted


def _column_of_booleans(col_type: ColumnType, column: RawColumn):
    rows, _ = column.matrix(1)
    byte = rows[:, 0]
    return [pa.py_buffer(np.packbits(byte == 1, bitorder="little"))], _width_errors(col_type, column) | (byte > 1)


def _column_of_floats(col_type: ColumnType, column: RawColumn):
    width = col_type.wire_width
    rows, _ = column.matrix(width)
    values = rows.view(f">f{width}")[:, 0].astype(f"<f{width}")
    return [pa.py_buffer(values)], _width_errors(col_type, column)


def _numbers(col_type: ColumnType, column: RawColumn) -> tuple[np.ndarray, np.ndarray]:
    """The canonical numbers (int64) of a column whose wire width is at most 8, and the errors."""
    numbers = np.zeros(len(column), dtype=np.int64)
    for width in wire_widths(col_type):
        rows, selected = column.matrix(width)
        numbers[selected] = rows.view(f">i{width}")[selected, 0]
    low, high = bounds_of(col_type)
    errors = _width_errors(col_type, column) | (column.valid & ((numbers < low) | (numbers > high)))
    return numbers, errors


def _column_of_numbers(col_type: ColumnType, column: RawColumn):
    numbers, errors = _numbers(col_type, column)
    return [pa.py_buffer(numbers.astype(physical_dtype(col_type)))], errors


_DECIMAL128 = np.dtype([("low", "<u8"), ("high", "<i8")])


def _column_of_decimals(col_type: ColumnType, column: RawColumn):
    if col_type.wire_width == 8:
        numbers, errors = _numbers(col_type, column)
        low, high = numbers.view(np.uint64), numbers >> 63
    else:
        rows, _ = column.matrix(16)
        wire = rows.view(np.dtype([("high", ">i8"), ("low", ">u8")]))[:, 0]
        low, high = wire["low"], wire["high"]
        errors = _width_errors(col_type, column) | (column.valid & ~_within_128(low, high, *bounds_of(col_type)))
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


def _column_of_fixed(col_type: ColumnType, column: RawColumn):
    rows, _ = column.matrix(col_type.length)
    return [pa.py_buffer(np.ascontiguousarray(rows))], _width_errors(col_type, column)


def _column_of_strings(col_type: ColumnType, column: RawColumn):
    buffers = list(column.packed_buffers())
    errors = np.zeros(len(column), dtype=bool)
    try:
        pa.StringArray.from_buffers(len(column), *buffers, validity_bitmap(column.valid)).validate(full=True)
    except pa.ArrowInvalid:
        errors = column.valid & ~np.fromiter(map(_is_utf8, column.values()), dtype=bool, count=len(column))
    return buffers, errors


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _column_of_bytes(col_type: ColumnType, column: RawColumn):
    return list(column.packed_buffers()), np.zeros(len(column), dtype=bool)


COLUMN_DECODERS: dict[TypeKind, _ColumnDecoder] = per_kind(
    {
        (TypeKind.BOOLEAN,): _column_of_booleans,
        FLOAT_KINDS: _column_of_floats,
        (*INT_KINDS, TypeKind.DATE, TypeKind.TIME, *TIMESTAMP_KINDS): _column_of_numbers,
        (TypeKind.DECIMAL,): _column_of_decimals,
        (TypeKind.FIXED,): _column_of_fixed,
        STRING_KINDS: _column_of_strings,
        (TypeKind.BINARY, TypeKind.VARBINARY): _column_of_bytes,
    }
)


def validity_bitmap(valid: np.ndarray) -> pa.Buffer | None:
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def columns_of_scan(images: SerializedImages, empty_is_null: list[bool]):
    """``(raw columns, value starts, value lengths)`` of serialized ``RowValue`` images
    (see :func:`~beam_pixels.wire.scan_row_values`), or None."""
    scanned = scan_row_values(images, len(empty_is_null))
    if scanned is None:
        return None
    data, starts, sizes, nulls = scanned
    width = len(empty_is_null)
    return [
        RawColumn(data, starts[:, j], sizes[:, j], nulls[:, j], empty_is_null[j], packed=False) for j in range(width)
    ], starts, sizes


def columns_of_protobuf(images: typing.Sequence, present: np.ndarray, empty_is_null: list[bool]):
    """The raw columns of protobuf ``RowValue`` images, read from their serialized
    bytes (see :func:`columns_of_scan`). None unless every image is a message
    holding exactly one value per column and nothing else."""
    messages = [image for image in images if image is not None]
    if not all(issubclass(t, message.Message) for t in set(map(type, messages))):
        return None
    scanned = columns_of_scan(SerializedImages.of_messages(images), empty_is_null)
    return None if scanned is None else scanned[0]
