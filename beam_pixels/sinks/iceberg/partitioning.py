"""Partitioned Iceberg tables: the ``iceberg.partition.spec`` setting, and rows split by partition.

A spec is a comma-separated list of terms, each a transform of one source column:
``col`` (identity), ``year(col)``, ``month(col)``, ``day(col)``, ``hour(col)``,
``bucket(N,col)`` and ``truncate(W,col)``, e.g. ``day(ts),bucket(16,id)``. It applies
to tables the sink creates; an existing table keeps the spec it has (also one another
engine evolved), and the sink writes each row into the partition of that table's
current spec.

:func:`partition_rows` computes the partition of every row with vectorised Arrow /
numpy code (the bucket hash is Iceberg's MurmurHash3 of the value's bytes), falling
back to pyiceberg's own per-value transform for types without a vectorised path;
``tests/test_iceberg_partitioned.py`` checks both against pyiceberg for every transform.
"""

from __future__ import annotations

import re
import typing
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg import transforms as t
from pyiceberg.partitioning import PARTITION_FIELD_ID_START, PartitionField, PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.typedef import Record
from pyiceberg.types import IcebergType, UUIDType

from beam_pixels.buckets import murmur3_32_of_ranges

SPEC_KEY = "iceberg.partition.spec"
TRANSFORMS = ("identity", "year", "month", "day", "hour", "bucket", "truncate")
SPEC_SYNTAX = "comma-separated terms: col, year(col), month(col), day(col), hour(col), bucket(N,col), truncate(W,col)"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TERM = re.compile(rf"(?:(?P<plain>{_NAME})|(?P<fn>{_NAME})\s*\(\s*(?:(?P<arg>[0-9]+)\s*,\s*)?(?P<col>{_NAME})\s*\))")


class PartitionSpecError(ValueError):
    """A partition spec term that cannot be parsed or applied; the message names the term."""


@dataclass(frozen=True)
class Term:
    """One partition field: ``transform`` of ``column`` (``arg``: bucket count or truncate width)."""

    transform: str
    column: str
    arg: int | None = None

    def __str__(self) -> str:
        if self.transform == "identity":
            return self.column
        return f"{self.transform}({self.arg},{self.column})" if self.arg is not None else f"{self.transform}({self.column})"

    def pyiceberg_transform(self) -> t.Transform:
        if self.transform in ("bucket", "truncate"):
            return (t.BucketTransform if self.transform == "bucket" else t.TruncateTransform)(self.arg)
        return {"identity": t.IdentityTransform, "year": t.YearTransform, "month": t.MonthTransform,
                "day": t.DayTransform, "hour": t.HourTransform}[self.transform]()

    @property
    def field_name(self) -> str:
        """The partition field's name, as Iceberg's Java library and pyiceberg name it."""
        if self.transform == "identity":
            return self.column
        if self.transform in ("bucket", "truncate"):
            return f"{self.column}_{'bucket' if self.transform == 'bucket' else 'trunc'}"
        return f"{self.column}_{self.transform}"


def parse_spec(text: str) -> tuple[Term, ...]:
    """The terms of a spec (empty text: unpartitioned). Raises :class:`PartitionSpecError`
    naming the bad term."""
    terms: list[Term] = []
    for raw in _split_terms(text):
        m = _TERM.fullmatch(raw)
        if not m:
            raise PartitionSpecError(f"term {raw!r} is not a column or transform(column)")
        if m.group("plain"):
            terms.append(Term("identity", m.group("plain")))
            continue
        fn, arg, column = m.group("fn").lower(), m.group("arg"), m.group("col")
        if fn not in TRANSFORMS:
            raise PartitionSpecError(f"term {raw!r}: unknown transform {fn!r}")
        if fn in ("bucket", "truncate"):
            if arg is None or int(arg) < 1:
                raise PartitionSpecError(f"term {raw!r}: {fn} needs a positive number first, e.g. {fn}(16,{column})")
            terms.append(Term(fn, column, int(arg)))
        elif arg is not None:
            raise PartitionSpecError(f"term {raw!r}: {fn} takes only a column")
        else:
            terms.append(Term(fn, column))
    seen: dict[str, Term] = {}
    for term in terms:
        if term.column in seen:
            raise PartitionSpecError(
                f"terms {str(seen[term.column])!r} and {str(term)!r} both partition column {term.column!r}; "
                f"use one term per column"
            )
        seen[term.column] = term
    return tuple(terms)


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    out, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip() or out:
        out.append(current.strip())
    if any(not part for part in out):
        raise PartitionSpecError(f"empty term in {text!r}")
    return out


def check_terms(terms: typing.Sequence[Term], schema: Schema) -> None:
    """Raise :class:`PartitionSpecError` naming the first term whose column is not in
    ``schema`` (an Iceberg schema) or whose transform does not apply to its type."""
    for term in terms:
        try:
            field = schema.find_field(term.column)
        except ValueError:
            names = ", ".join(f.name for f in schema.fields)
            raise PartitionSpecError(f"term {str(term)!r}: no column {term.column!r} (columns: {names})") from None
        if not term.pyiceberg_transform().can_transform(field.field_type):
            raise PartitionSpecError(
                f"term {str(term)!r}: {term.transform} does not apply to column {term.column!r} of type {field.field_type}"
            )


def build_spec(terms: typing.Sequence[Term], schema: Schema) -> PartitionSpec:
    """The pyiceberg partition spec of ``terms`` on ``schema`` (checked by :func:`check_terms`)."""
    check_terms(terms, schema)
    fields = [
        PartitionField(source_id=schema.find_field(t.column).field_id, field_id=PARTITION_FIELD_ID_START + i,
                       transform=t.pyiceberg_transform(), name=t.field_name)
        for i, t in enumerate(terms)
    ]
    return PartitionSpec(*fields)


def describe(spec: PartitionSpec, schema: Schema) -> str:
    """A spec in the syntax of ``iceberg.partition.spec`` (``unpartitioned`` if it has no field)."""
    terms = [str(term) for term in terms_of(spec, schema)]
    return ",".join(terms) if terms else "unpartitioned"


def terms_of(spec: PartitionSpec, schema: Schema) -> list[Term]:
    """The terms of a table's spec (void fields, left by dropping a field, are skipped)."""
    return [term for term in (term_of(field, schema) for field in spec.fields) if term is not None]


def term_of(field: PartitionField, schema: Schema) -> Term | None:
    """The term of one partition field (None for a void field)."""
    transform = field.transform
    if isinstance(transform, t.VoidTransform):
        return None
    column = schema.find_column_name(field.source_id)
    if isinstance(transform, t.BucketTransform):
        return Term("bucket", column, transform.num_buckets)
    if isinstance(transform, t.TruncateTransform):
        return Term("truncate", column, transform.width)
    if isinstance(transform, t.IdentityTransform):
        return Term("identity", column)
    return Term(str(transform), column)


# --- rows to partitions ------------------------------------------------------------

_US_PER_HOUR = 3_600_000_000
_US_PER_DAY = 24 * _US_PER_HOUR


def _epoch_ints(column: pa.Array) -> np.ndarray:
    """Dates as days, timestamps as microseconds (int64; NULLs as 0, masked by the caller)."""
    if pa.types.is_date(column.type):
        return column.cast(pa.date32()).view(pa.int32()).fill_null(0).to_numpy().astype(np.int64)
    return column.cast(pa.timestamp("us", tz=column.type.tz)).view(pa.int64()).fill_null(0).to_numpy()


def _time_transform(name: str, column: pa.Array) -> pa.Array:
    values = _epoch_ints(column)
    if name in ("year", "month"):
        days = values if pa.types.is_date(column.type) else np.floor_divide(values, _US_PER_DAY)
        dates = pa.array(days.astype(np.int32)).view(pa.date32())
        years = pc.year(dates).to_numpy().astype(np.int64) - 1970
        out = years if name == "year" else years * 12 + pc.month(dates).to_numpy().astype(np.int64) - 1
    elif name == "day":
        out = values if pa.types.is_date(column.type) else np.floor_divide(values, _US_PER_DAY)
    else:  # hour
        out = np.floor_divide(values, _US_PER_HOUR)
    return pa.array(out.astype(np.int32), mask=column.is_null().to_numpy(zero_copy_only=False))


def _bucket_transform(n: int, column: pa.Array) -> pa.Array | None:
    """Iceberg's bucket of integer, date and timestamp values (MurmurHash3 of the value as
    8 little-endian bytes); None for other types."""
    kind = column.type
    if pa.types.is_integer(kind):
        values = column.cast(pa.int64()).fill_null(0).to_numpy()
    elif pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        values = _epoch_ints(column)
    else:
        return None
    count = len(values)
    data = values.astype("<i8").view(np.uint8)
    hashes = murmur3_32_of_ranges(data, (np.arange(count, dtype=np.int64) * 8)[:, None], np.full((count, 1), 8, np.int64))
    buckets = (hashes.astype(np.int64) & 0x7FFFFFFF) % n
    return pa.array(buckets.astype(np.int32), mask=column.is_null().to_numpy(zero_copy_only=False))


def _truncate_transform(width: int, column: pa.Array) -> pa.Array | None:
    kind = column.type
    if pa.types.is_integer(kind):
        values = column.fill_null(0).to_numpy().astype(np.int64)
        out = values - np.mod(values, width)
        return pa.array(out, mask=column.is_null().to_numpy(zero_copy_only=False)).cast(kind)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return pc.utf8_slice_codeunits(column, 0, width)
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return pc.binary_slice(column, 0, width)
    return None


def _identity(column: pa.Array) -> pa.Array:
    """Identity values in partition representation: dates, times and timestamps as integers."""
    if pa.types.is_date(column.type) or pa.types.is_timestamp(column.type):
        return pa.array(_epoch_ints(column), mask=column.is_null().to_numpy(zero_copy_only=False))
    if pa.types.is_time(column.type):
        return column.cast(pa.time64("us")).view(pa.int64())
    return column


def transform_column(term: Term, source_type: IcebergType, column: pa.Array) -> pa.Array:
    """The partition values of ``column`` (of Iceberg type ``source_type``) under ``term``, in
    partition representation (dates and timestamps as integers, as pyiceberg keeps them)."""
    out = None
    if term.transform == "identity":
        out = _identity(column)
    elif term.transform in ("year", "month", "day", "hour"):
        out = _time_transform(term.transform, column)
    elif term.transform == "bucket":
        out = _bucket_transform(term.arg, column)
    elif term.transform == "truncate":
        out = _truncate_transform(term.arg, column)
    if out is None:  # pyiceberg's own transform, one value at a time
        fn = term.pyiceberg_transform().transform(source_type)
        out = pa.array([fn(_source_value(source_type, v)) for v in column.to_pylist()])
    return out


def _source_value(source_type: IcebergType, value: typing.Any) -> typing.Any:
    """A Python value as pyiceberg's per-value transforms take it (UUIDs as ``uuid.UUID``)."""
    if value is not None and isinstance(source_type, UUIDType) and isinstance(value, bytes):
        return uuid.UUID(bytes=value)
    return value


@dataclass(frozen=True)
class Partition:
    """The rows of one partition: their indexes in the input, and its pyiceberg key (None: unpartitioned)."""

    rows: np.ndarray
    key: PartitionKey | None


def partition_rows(spec: PartitionSpec, schema: Schema, rows: pa.Table) -> list[Partition]:
    """The rows of ``rows`` (Arrow columns named as ``schema``'s) grouped by their
    partition under ``spec``, each group in input order."""
    if spec.is_unpartitioned():
        return [Partition(np.arange(rows.num_rows, dtype=np.int64), None)]
    columns = {}
    for i, field in enumerate(spec.fields):
        if isinstance(field.transform, t.VoidTransform):
            continue
        source = schema.find_field(field.source_id)
        columns[i] = transform_column(term_of(field, schema), source.field_type, rows.column(source.name).combine_chunks())
    names = [f"p{i}" for i in columns]
    keyed = pa.table({**dict(zip(names, columns.values())), "__row": pa.array(np.arange(rows.num_rows, dtype=np.int64))})
    groups = keyed.group_by(names, use_threads=False).aggregate([("__row", "list")])
    values = {i: groups.column(name).to_pylist() for i, name in zip(columns, names)}
    row_lists = groups.column("__row_list")
    out = []
    for g in range(groups.num_rows):
        record = [values[i][g] if i in values else None for i in range(len(spec.fields))]
        out.append(Partition(np.sort(row_lists[g].values.to_numpy()), _key(spec, schema, record)))
    return out


@dataclass(frozen=True)
class _RecordKey(PartitionKey):
    """A pyiceberg partition key that holds its record. pyiceberg's own ``PartitionKey.partition``
    looks fields up by source column, which fails for specs with two fields on one column
    (e.g. after an evolution replaced ``day(ts)`` by ``hour(ts)``, leaving a void ``ts_day``)."""

    record: Record | None = None

    @property
    def partition(self) -> Record:  # type: ignore[override]
        return self.record


def _key(spec: PartitionSpec, schema: Schema, values: list) -> PartitionKey:
    """The partition key of ``values`` (one per spec field, in partition representation)."""
    fields = [PartitionFieldValue(f, v) for f, v in zip(spec.fields, values)]
    return _RecordKey(field_values=fields, partition_spec=spec, schema=schema, record=Record(*values))
