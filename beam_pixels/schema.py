"""The source schema: parse ``source.schema`` and map it to Arrow, Iceberg and Beam.

``source.schema`` lists the table's columns in the order a Pixels server sends
their values, as ``name:TYPE`` pairs separated by commas, e.g.
``id:BIGINT, price:DECIMAL(10,2), name:VARCHAR(32)``. One :class:`SourceSchema`
is parsed once and every later stage (codec, sinks) derives its types from it.
"""

from __future__ import annotations

import enum
import re
import typing
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal

import pyarrow as pa


class SchemaError(ValueError):
    """``source.schema`` (or a primary key naming its columns) is not valid."""


class TypeKind(enum.Enum):
    """The Pixels column types the codec understands."""

    BOOLEAN = "BOOLEAN"
    TINYINT = "TINYINT"
    SMALLINT = "SMALLINT"
    INT = "INT"
    BIGINT = "BIGINT"
    FLOAT = "FLOAT"
    DOUBLE = "DOUBLE"
    DECIMAL = "DECIMAL"
    DATE = "DATE"
    TIME = "TIME"
    TIMESTAMP = "TIMESTAMP"
    TIMESTAMPTZ = "TIMESTAMPTZ"
    STRING = "STRING"
    VARCHAR = "VARCHAR"
    CHAR = "CHAR"
    BINARY = "BINARY"
    VARBINARY = "VARBINARY"
    FIXED = "FIXED"


# Width in bytes of each fixed-width type on the wire (DECIMAL depends on precision).
_FIXED_WIDTHS = {
    TypeKind.BOOLEAN: 1,
    TypeKind.TINYINT: 1,
    TypeKind.SMALLINT: 2,
    TypeKind.INT: 4,
    TypeKind.BIGINT: 8,
    TypeKind.FLOAT: 4,
    TypeKind.DOUBLE: 8,
    TypeKind.DATE: 4,
    TypeKind.TIME: 4,
    TypeKind.TIMESTAMP: 8,
    TypeKind.TIMESTAMPTZ: 8,
}

_ALIASES = {
    "INTEGER": "INT",
    "LONG": "BIGINT",
    "BOOL": "BOOLEAN",
    "TIMESTAMP_LTZ": "TIMESTAMPTZ",
    "TEXT": "STRING",
    "BYTES": "VARBINARY",
    "REAL": "FLOAT",
}

ACCEPTED_TYPES = (
    "BOOLEAN (BOOL), TINYINT, SMALLINT, INT (INTEGER), BIGINT (LONG), FLOAT, DOUBLE, "
    "DECIMAL(P,S) (bare DECIMAL = DECIMAL(10,0), 1 <= P <= 38, 0 <= S <= P), "
    "STRING, VARCHAR(N), CHAR(N) (bare CHAR = CHAR(1)), BINARY, VARBINARY, FIXED(L), "
    "DATE, TIME, TIMESTAMP, TIMESTAMPTZ (TIMESTAMP_LTZ)"
)

_TYPE_RE = re.compile(r"^([A-Z_]+)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ColumnType:
    """A column's Pixels type, with its parameters where it has any."""

    kind: TypeKind
    precision: int | None = None  # DECIMAL
    scale: int | None = None  # DECIMAL
    length: int | None = None  # VARCHAR, CHAR, FIXED

    @property
    def wire_width(self) -> int | None:
        """Bytes of a non-NULL value on the wire, or None for variable-width types."""
        if self.kind is TypeKind.DECIMAL:
            return 8 if self.precision <= 18 else 16
        if self.kind is TypeKind.FIXED:
            return self.length
        return _FIXED_WIDTHS.get(self.kind)

    @property
    def is_text(self) -> bool:
        return self.kind in (TypeKind.STRING, TypeKind.VARCHAR, TypeKind.CHAR)

    @property
    def is_binary(self) -> bool:
        return self.kind in (TypeKind.BINARY, TypeKind.VARBINARY, TypeKind.FIXED)

    def to_arrow(self) -> pa.DataType:
        """The Arrow type the codec decodes this column to."""
        k = self.kind
        if k is TypeKind.DECIMAL:
            return pa.decimal128(self.precision, self.scale)
        if k is TypeKind.FIXED:
            return pa.binary(self.length)
        return _ARROW_TYPES[k]

    def to_iceberg(self):
        """The Iceberg type of this column (TINYINT and SMALLINT widen to int)."""
        from pyiceberg import types as it

        k = self.kind
        if k is TypeKind.DECIMAL:
            return it.DecimalType(self.precision, self.scale)
        if k is TypeKind.FIXED:
            return it.FixedType(self.length)
        return {
            TypeKind.BOOLEAN: it.BooleanType,
            TypeKind.TINYINT: it.IntegerType,
            TypeKind.SMALLINT: it.IntegerType,
            TypeKind.INT: it.IntegerType,
            TypeKind.BIGINT: it.LongType,
            TypeKind.FLOAT: it.FloatType,
            TypeKind.DOUBLE: it.DoubleType,
            TypeKind.DATE: it.DateType,
            TypeKind.TIME: it.TimeType,
            TypeKind.TIMESTAMP: it.TimestampType,
            TypeKind.TIMESTAMPTZ: it.TimestamptzType,
            TypeKind.STRING: it.StringType,
            TypeKind.VARCHAR: it.StringType,
            TypeKind.CHAR: it.StringType,
            TypeKind.BINARY: it.BinaryType,
            TypeKind.VARBINARY: it.BinaryType,
        }[k]()

    def to_paimon(self) -> str:
        """The Paimon SQL type name of this column."""
        k = self.kind
        if k is TypeKind.DECIMAL:
            return f"DECIMAL({self.precision}, {self.scale})"
        if k in (TypeKind.VARCHAR, TypeKind.CHAR) and self.length is not None:
            return f"{k.value}({self.length})"
        if k is TypeKind.FIXED:
            return f"BINARY({self.length})"
        return {
            TypeKind.STRING: "STRING",
            TypeKind.VARCHAR: "STRING",
            TypeKind.BINARY: "BYTES",
            TypeKind.VARBINARY: "BYTES",
            TypeKind.TIME: "TIME(3)",
            TypeKind.TIMESTAMP: "TIMESTAMP(6)",
            TypeKind.TIMESTAMPTZ: "TIMESTAMP_LTZ(6)",
        }.get(k, k.value)

    def to_python(self) -> type:
        """The Python type of a decoded value (for Beam row schemas)."""
        return _PYTHON_TYPES[self.kind]

    def __str__(self) -> str:
        k = self.kind
        if k is TypeKind.DECIMAL:
            return f"DECIMAL({self.precision},{self.scale})"
        if self.length is not None:
            return f"{k.value}({self.length})"
        return k.value


_ARROW_TYPES = {
    TypeKind.BOOLEAN: pa.bool_(),
    TypeKind.TINYINT: pa.int8(),
    TypeKind.SMALLINT: pa.int16(),
    TypeKind.INT: pa.int32(),
    TypeKind.BIGINT: pa.int64(),
    TypeKind.FLOAT: pa.float32(),
    TypeKind.DOUBLE: pa.float64(),
    TypeKind.DATE: pa.date32(),
    TypeKind.TIME: pa.time32("ms"),
    TypeKind.TIMESTAMP: pa.timestamp("us"),
    TypeKind.TIMESTAMPTZ: pa.timestamp("us", tz="UTC"),
    TypeKind.STRING: pa.string(),
    TypeKind.VARCHAR: pa.string(),
    TypeKind.CHAR: pa.string(),
    TypeKind.BINARY: pa.binary(),
    TypeKind.VARBINARY: pa.binary(),
}

_PYTHON_TYPES = {
    TypeKind.BOOLEAN: bool,
    TypeKind.TINYINT: int,
    TypeKind.SMALLINT: int,
    TypeKind.INT: int,
    TypeKind.BIGINT: int,
    TypeKind.FLOAT: float,
    TypeKind.DOUBLE: float,
    TypeKind.DECIMAL: Decimal,
    TypeKind.DATE: date,
    TypeKind.TIME: time,
    TypeKind.TIMESTAMP: datetime,
    TypeKind.TIMESTAMPTZ: datetime,
    TypeKind.STRING: str,
    TypeKind.VARCHAR: str,
    TypeKind.CHAR: str,
    TypeKind.BINARY: bytes,
    TypeKind.VARBINARY: bytes,
    TypeKind.FIXED: bytes,
}


@dataclass(frozen=True)
class Column:
    """One column of the source table."""

    name: str
    type: ColumnType


# How a table follows a changed source schema (``sink.schema.evolution``, see beam_pixels.sinks.evolution).
SCHEMA_EVOLUTION_MODES = ("add-and-widen", "none")


@dataclass(frozen=True)
class SourceSchema:
    """The ordered columns of the source table and its primary key (may be empty)."""

    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str, primary_key: typing.Iterable[str] = ()) -> "SourceSchema":
        """Parse a ``source.schema`` string such as ``id:INT,data:STRING``."""
        columns = tuple(_parse_column(part, i) for i, part in enumerate(_split_top_level(spec)))
        if not columns:
            raise SchemaError(f"source.schema is empty: {spec!r}; expected 'col:TYPE,...' with types {ACCEPTED_TYPES}")
        seen: set[str] = set()
        for c in columns:
            if c.name.lower() in seen:
                raise SchemaError(f"source.schema names column {c.name!r} twice")
            seen.add(c.name.lower())
        schema = cls(columns)
        return schema.with_primary_key(primary_key)

    def with_primary_key(self, primary_key: typing.Iterable[str]) -> "SourceSchema":
        """This schema with ``primary_key`` (names matched case-insensitively)."""
        by_lower = {c.name.lower(): c.name for c in self.columns}
        key = []
        for name in primary_key:
            name = name.strip()
            if name.lower() not in by_lower:
                raise SchemaError(
                    f"primary key column {name!r} is not in source.schema; columns are: {', '.join(self.names)}"
                )
            key.append(by_lower[name.lower()])
        if len(set(key)) != len(key):
            raise SchemaError(f"primary key names a column twice: {', '.join(key)}")
        return SourceSchema(self.columns, tuple(key))

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_arrow(self) -> pa.Schema:
        """Arrow schema of decoded rows; key columns are not nullable."""
        key = set(self.primary_key)
        return pa.schema([pa.field(c.name, c.type.to_arrow(), nullable=c.name not in key) for c in self.columns])

    def to_iceberg(self):
        """Iceberg schema with field ids 1..n and the primary key as identifier fields."""
        from pyiceberg.schema import Schema
        from pyiceberg.types import NestedField

        key = set(self.primary_key)
        fields = [
            NestedField(i + 1, c.name, c.type.to_iceberg(), required=c.name in key)
            for i, c in enumerate(self.columns)
        ]
        ids = [i + 1 for i, c in enumerate(self.columns) if c.name in key]
        return Schema(*fields, identifier_field_ids=ids)

    def beam_row_type(self) -> type:
        """A NamedTuple type usable as a Beam row schema, one Optional field per column."""
        return typing.NamedTuple(  # type: ignore[misc]
            "PixelsRow", [(c.name, typing.Optional[c.type.to_python()]) for c in self.columns]
        )

    def __str__(self) -> str:
        return ",".join(f"{c.name}:{c.type}" for c in self.columns)


def _split_top_level(spec: str) -> list[str]:
    """Split on commas that are not inside parentheses; drop empty trailing parts."""
    parts, depth, current = [], 0, []
    for ch in spec:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    stripped = [p.strip() for p in parts]
    while stripped and not stripped[-1]:
        stripped.pop()
    return stripped


def _parse_column(part: str, index: int) -> Column:
    where = f"source.schema column {index + 1} ({part!r})"
    if ":" not in part:
        raise SchemaError(f"{where}: expected 'name:TYPE'; accepted types: {ACCEPTED_TYPES}")
    name, type_token = (s.strip() for s in part.split(":", 1))
    if not _NAME_RE.match(name):
        raise SchemaError(f"{where}: column name {name!r} must be letters, digits and '_', not starting with a digit")
    try:
        return Column(name, parse_type(type_token))
    except SchemaError as e:
        raise SchemaError(f"{where}, column {name!r}: {e}") from None


def parse_type(token: str) -> ColumnType:
    """Parse one type token such as ``DECIMAL(10, 2)`` or ``varchar``."""
    m = _TYPE_RE.match(token.strip().upper())
    if not m:
        raise SchemaError(f"type {token!r} is not understood; accepted types: {ACCEPTED_TYPES}")
    name, a, b = m.group(1), m.group(2), m.group(3)
    name = _ALIASES.get(name, name)
    try:
        kind = TypeKind(name)
    except ValueError:
        raise SchemaError(f"unknown type {token!r}; accepted types: {ACCEPTED_TYPES}") from None
    a = int(a) if a is not None else None
    b = int(b) if b is not None else None

    if kind is TypeKind.DECIMAL:
        precision = 10 if a is None else a
        scale = b or 0
        if not 1 <= precision <= 38 or not 0 <= scale <= precision:
            raise SchemaError(f"type {token!r}: DECIMAL(P,S) needs 1 <= P <= 38 and 0 <= S <= P")
        return ColumnType(kind, precision=precision, scale=scale)
    if b is not None:
        raise SchemaError(f"type {token!r}: {kind.value} takes at most one parameter")
    if kind is TypeKind.CHAR:
        length = 1 if a is None else a
    elif kind in (TypeKind.VARCHAR, TypeKind.FIXED):
        if kind is TypeKind.FIXED and a is None:
            raise SchemaError(f"type {token!r}: FIXED needs a length, e.g. FIXED(16)")
        length = a
    elif a is not None:
        raise SchemaError(f"type {token!r}: {kind.value} takes no parameter")
    else:
        length = None
    if length is not None and length < 1:
        raise SchemaError(f"type {token!r}: length must be at least 1")
    return ColumnType(kind, length=length)
