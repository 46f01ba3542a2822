"""Deterministic test data for any source schema: rows, CDC histories and what they mean.

Values are of each column's ``ColumnType.to_python()`` type and encodable by the
codec. Non-key columns cycle through the type's edge values first (NULL, empty
strings and binary, integer limits, DECIMAL at +-(10**p - 1) / 10**s, dates
before 1970, TIME 23:59:59.999, NaN and +-inf, non-ASCII text, FIXED of exact
length), so any :data:`EDGE_ROWS` consecutive rows from the start contain every
edge value of every column; later rows are random with edge values mixed in.
Key columns are never NULL and unique per row: row (or key) ``i`` gets the
``i``-th key value, spread over the key columns like digits of a number.
"""

from __future__ import annotations

import math
import random
import struct
from datetime import date, datetime, time, timedelta, timezone
from decimal import Context, Decimal
from typing import Callable, Iterable, Sequence

from beam_pixels.changes import Op
from beam_pixels.schema import Column, ColumnType, SourceSchema, TypeKind

Row = tuple
Event = tuple[Op, Row | None, Row | None]

_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1)
_NON_ASCII = "日本語, ключ, Grüße 🎉"
_EXACT = Context(prec=100)
_INT_BITS = {TypeKind.TINYINT: 8, TypeKind.SMALLINT: 16, TypeKind.INT: 32, TypeKind.BIGINT: 64}
_FLOAT_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]
_FLOAT_MIN_SUBNORMAL = struct.unpack(">f", b"\x00\x00\x00\x01")[0]


def _float32(x: float) -> float:
    """``x`` rounded to the nearest float32, so it survives a FLOAT round trip."""
    return struct.unpack(">f", struct.pack(">f", x))[0]


def _decimal(unscaled: int, scale: int) -> Decimal:
    """``unscaled / 10**scale`` exactly (the default context would round beyond 28 digits)."""
    return Decimal(unscaled).scaleb(-scale, context=_EXACT)


def _edges(t: ColumnType) -> list:
    """Edge values of a type, NULL first; every one must be encodable."""
    k = t.kind
    if k is TypeKind.BOOLEAN:
        return [None, True, False]
    if k in _INT_BITS:
        bits = _INT_BITS[k]
        return [None, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, 0, -1]
    if k is TypeKind.FLOAT:
        return [None, math.nan, math.inf, -math.inf, -0.0, _FLOAT_MAX, -_FLOAT_MIN_SUBNORMAL, -1.5]
    if k is TypeKind.DOUBLE:
        return [None, math.nan, math.inf, -math.inf, -0.0, 1.7976931348623157e308, -5e-324, -1.5]
    if k is TypeKind.DECIMAL:
        biggest = 10**t.precision - 1
        return [None] + [_decimal(unscaled, t.scale) for unscaled in (biggest, -biggest, 0, -1)]
    if k is TypeKind.DATE:
        return [None, date(1969, 12, 31), date(1900, 1, 1), _EPOCH_DATE, date(9999, 12, 31)]
    if k is TypeKind.TIME:
        return [None, time(23, 59, 59, 999000), time(0, 0), time(12, 0, 0, 1000)]
    if k in (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ):
        tz = timezone.utc if k is TypeKind.TIMESTAMPTZ else None
        moments = [datetime(1969, 12, 31, 23, 59, 59, 999999), _EPOCH, datetime(1900, 1, 1, 0, 0, 0, 1),
                   datetime(2999, 12, 31, 23, 59, 59, 999999)]
        return [None] + [m.replace(tzinfo=tz) for m in moments]
    if t.is_text:
        texts = ["", _NON_ASCII, "quote ' double \" backslash \\ newline \n tab \t", " padded "]
        return [None] + [s[: t.length] if t.length else s for s in texts]
    if k is TypeKind.FIXED:
        return [None, b"\x00" * t.length, b"\xff" * t.length, bytes(i % 256 for i in range(t.length))]
    return [None, b"", b"\x00\xff", bytes(range(256))]  # BINARY, VARBINARY


EDGE_ROWS = max(
    len(_edges(ColumnType(kind, precision=1, scale=0, length=1)))
    for kind in TypeKind
)
"""Rows from the start of :func:`generate_rows` that contain every column's edge values."""


def _random_value(t: ColumnType, rng: random.Random):
    """A non-NULL random value of type ``t``."""
    k = t.kind
    if k is TypeKind.BOOLEAN:
        return rng.random() < 0.5
    if k in _INT_BITS:
        bits = _INT_BITS[k]
        return rng.randint(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if k is TypeKind.FLOAT:
        return _float32(rng.uniform(-1e6, 1e6))
    if k is TypeKind.DOUBLE:
        return rng.uniform(-1e12, 1e12)
    if k is TypeKind.DECIMAL:
        return _decimal(rng.randint(-(10**t.precision - 1), 10**t.precision - 1), t.scale)
    if k is TypeKind.DATE:
        return _EPOCH_DATE + timedelta(days=rng.randint(-40_000, 40_000))
    if k is TypeKind.TIME:
        return (datetime.min + timedelta(milliseconds=rng.randrange(86_400_000))).time()
    if k in (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ):
        moment = _EPOCH + timedelta(microseconds=rng.randint(-(2**51), 2**51))
        return moment.replace(tzinfo=timezone.utc) if k is TypeKind.TIMESTAMPTZ else moment
    if t.is_text:
        alphabet = "abcXYZ 019_-éß日🎉"
        length = rng.randint(0, min(t.length or 24, 24))
        return "".join(rng.choice(alphabet) for _ in range(length))
    if k is TypeKind.FIXED:
        return rng.randbytes(t.length)
    return rng.randbytes(rng.randint(0, 24))


def _zigzag(n: int) -> int:
    """0, -1, 1, -2, 2, ... : a natural number mapped onto the integers."""
    return -(n + 1) // 2 if n % 2 else n // 2


# Per key type: (how many distinct key values it has, the n-th of them).
def _key_space(t: ColumnType) -> tuple[int, Callable[[int], object]]:
    k = t.kind
    if k is TypeKind.BOOLEAN:
        return 2, bool
    if k in _INT_BITS:
        return 2 ** _INT_BITS[k], _zigzag
    if k in (TypeKind.FLOAT, TypeKind.DOUBLE):
        return 2 ** (24 if k is TypeKind.FLOAT else 53), lambda n: float(_zigzag(n))
    if k is TypeKind.DECIMAL:
        return 2 * 10**t.precision - 1, lambda n: _decimal(_zigzag(n), t.scale)
    if k is TypeKind.DATE:
        return 2 * 700_000, lambda n: _EPOCH_DATE + timedelta(days=_zigzag(n))
    if k is TypeKind.TIME:
        return 86_400_000, lambda n: (datetime.min + timedelta(milliseconds=n)).time()
    if k in (TypeKind.TIMESTAMP, TypeKind.TIMESTAMPTZ):
        tz = timezone.utc if k is TypeKind.TIMESTAMPTZ else None
        return 2 * 10**10, lambda n: (_EPOCH + timedelta(seconds=_zigzag(n))).replace(tzinfo=tz)
    if t.is_text:
        if t.length:
            return 10 ** min(t.length, 18), str
        return 2**63, lambda n: f"ключ-{n}"
    if k is TypeKind.FIXED:
        return 256 ** t.length, lambda n: n.to_bytes(t.length, "big")
    return 2**64, lambda n: n.to_bytes(8, "big")  # BINARY, VARBINARY


def _key_values(key_columns: Sequence[Column], index: int) -> list:
    """The ``index``-th distinct combination of key values (mixed-radix digits over the columns)."""
    values, rest = [], index
    for c in key_columns:
        space, nth = _key_space(c.type)
        values.append(nth(rest % space))
        rest //= space
    if rest:
        names = ", ".join(f"{c.name}:{c.type}" for c in key_columns)
        raise ValueError(f"the primary key ({names}) has fewer than {index + 1} distinct values; use fewer keys")
    return values


class _RowMaker:
    """Builds rows of one schema: key values from an index, other columns from a seeded RNG."""

    def __init__(self, schema: SourceSchema, seed: int):
        self.schema = schema
        self.rng = random.Random(seed)
        key = set(schema.primary_key)
        self.key_columns = [schema.column(name) for name in schema.primary_key]
        self.key_positions = [i for i, c in enumerate(schema.columns) if c.name in key]
        self.value_positions = [i for i, c in enumerate(schema.columns) if c.name not in key]
        self.edges = {i: _edges(schema.columns[i].type) for i in self.value_positions}
        self.made = 0

    def row(self, key_index: int) -> Row:
        values: list = [None] * len(self.schema.columns)
        for pos, value in zip(self.key_positions, _key_values(self.key_columns, key_index)):
            values[pos] = value
        for pos in self.value_positions:
            values[pos] = self._value(pos)
        self.made += 1
        return tuple(values)

    def _value(self, pos: int):
        edges = self.edges[pos]
        if self.made < EDGE_ROWS:
            return edges[self.made % len(edges)]
        if self.rng.random() < 0.25:
            return self.rng.choice(edges)
        return _random_value(self.schema.columns[pos].type, self.rng)


def generate_rows(schema: SourceSchema, n: int, seed: int = 0) -> list[Row]:
    """``n`` rows in column order; the same ``(schema, n, seed)`` always gives the same rows."""
    maker = _RowMaker(schema, seed)
    return [maker.row(i) for i in range(n)]


def generate_cdc(schema: SourceSchema, n_keys: int, n_events: int, seed: int = 0) -> list[Event]:
    """A consistent change history of ``n_events`` events over up to ``n_keys`` keys.

    Each key starts with INSERT (about one in five with SNAPSHOT), then gets
    UPDATEs (``before`` is the previous ``after``, the key unchanged) and DELETEs
    (``before`` only); a deleted key may come back with an INSERT. Events of
    different keys interleave. When ``n_events >= n_keys`` every key appears.
    """
    if not schema.primary_key:
        raise ValueError(
            "generate_cdc needs a primary key to build per-key histories; give the schema one "
            "with SourceSchema.with_primary_key([...]), or use generate_rows for an append-only table"
        )
    if n_keys < 1 and n_events > 0:
        raise ValueError(f"generate_cdc needs n_keys >= 1 to make {n_events} events, got n_keys={n_keys}")
    maker = _RowMaker(schema, seed)
    rng = random.Random(seed + 1)
    current: dict[int, Row | None] = {}  # key index -> live row, or None once deleted
    events: list[Event] = []
    for e in range(n_events):
        new_keys_left = n_keys - len(current)
        if new_keys_left and (not current or rng.random() * (n_events - e) < new_keys_left):
            k = len(current)
            after = maker.row(k)
            events.append((Op.SNAPSHOT if rng.random() < 0.2 else Op.INSERT, None, after))
            current[k] = after
            continue
        k = rng.randrange(len(current))
        before = current[k]
        if before is None:
            current[k] = maker.row(k)
            events.append((Op.INSERT, None, current[k]))
        elif rng.random() < 0.25:
            current[k] = None
            events.append((Op.DELETE, before, None))
        else:
            current[k] = maker.row(k)
            events.append((Op.UPDATE, before, current[k]))
    return events


def key_of(schema: SourceSchema, row: Row) -> tuple:
    """The primary-key values of ``row``, in key order."""
    positions = {c.name: i for i, c in enumerate(schema.columns)}
    return tuple(row[positions[name]] for name in schema.primary_key)


def final_state(schema: SourceSchema, events: Iterable[Event]) -> dict[tuple, Row]:
    """The table after applying ``events`` in order: live rows by primary key.

    Every ``before`` retracts its key and every ``after`` asserts its key, so the
    result depends only on the order of events per key, which a server keeps.
    """
    state: dict[tuple, Row] = {}
    for _op, before, after in events:
        if before is not None:
            state.pop(key_of(schema, before), None)
        if after is not None:
            state[key_of(schema, after)] = after
    return state


def expected_changelog(events: Iterable[Event]) -> list[tuple[Op, Row]]:
    """One ``(op, image)`` per event, the image being ``after`` (``before`` for DELETE),
    as an append-only changelog table records them."""
    return [(op, after if after is not None else before) for op, before, after in events]


class _NaN:
    """Stands for a float NaN in :func:`comparable` rows; equal only to itself."""

    def __repr__(self) -> str:
        return "NaN"


NAN = _NaN()


def comparable(row: Row) -> Row:
    """``row`` with every float NaN replaced by :data:`NAN`, so rows compare with ``==``."""
    return tuple(NAN if isinstance(v, float) and math.isnan(v) else v for v in row)
