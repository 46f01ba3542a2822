"""Rows of one source schema: :class:`RowCodec` decodes row images value by value or, in
batches, column by column with numpy (:meth:`RowCodec.decode_images`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pyarrow as pa

from beam_pixels.codec.columns import COLUMN_DECODERS, validity_bitmap, columns_of_protobuf, columns_of_scan, RawColumn
from beam_pixels.codec.values import DECODERS, BINARY, DecodeError, check_encoding
from beam_pixels.schema import SourceSchema
from beam_pixels.wire import SerializedImages


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


class RowCodec:
    """Decodes the column values of rows of one source schema.

    ``empty_as_null`` makes empty STRING/BINARY values NULL (servers from before
    ``is_null`` existed); empty values of other types are always NULL. A NULL in a
    primary-key column is a DecodeError.
    """

    def __init__(self, schema: SourceSchema, encoding: str = BINARY, empty_as_null: bool = False):
        check_encoding(encoding)
        self.schema = schema
        self.encoding = encoding
        self.empty_as_null = empty_as_null
        self._types = [c.type for c in schema.columns]
        self._decoders = [DECODERS[encoding][t.kind] for t in self._types]
        self._empty_is_null = [empty_as_null or t.wire_width is not None for t in self._types]
        self._is_key = [c.name in schema.primary_key for c in schema.columns]
        self._struct_type = pa.struct(list(schema.to_arrow()))

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
        columns = columns_of_protobuf(images, present, self._empty_is_null)
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
        scanned = columns_of_scan(images, self._empty_is_null)
        if scanned is None:
            return None
        columns, starts, lengths = scanned
        struct, errors = self._decode_columns(columns, images.present.copy(), {})
        return DecodedImages(struct, errors, images.data, starts, lengths)

    def _decode_columns(
        self, columns: list[RawColumn], present: np.ndarray, errors: dict[int, DecodeError]
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
        columns = [RawColumn.of_values(values[j::width], nulls[:, j], self._empty_is_null[j]) for j in range(width)]
        return columns, errors

    def _decode_binary_columns(
        self, columns: list[RawColumn], present: np.ndarray
    ) -> tuple[list[pa.Array], list[np.ndarray]]:
        """Children arrays (NULL in rows with an error) and per column the rows in error."""
        bad = []
        buffers = []
        for j, (col_type, column) in enumerate(zip(self._types, columns)):
            column_buffers, errors = COLUMN_DECODERS[col_type.kind](col_type, column)
            if self._is_key[j]:
                errors |= present & ~column.valid
            buffers.append(column_buffers)
            bad.append(errors)
        row_ok = ~np.logical_or.reduce(bad)
        children = [
            pa.Array.from_buffers(t.to_arrow(), len(present), [validity_bitmap(column.valid & row_ok), *column_buffers])
            for t, column, column_buffers in zip(self._types, columns, buffers)
        ]
        return children, bad

    def _decode_text_columns(
        self, columns: list[RawColumn], present: np.ndarray
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
