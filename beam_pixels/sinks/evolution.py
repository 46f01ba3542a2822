"""Following ``source.schema`` changes: what an existing table must change to take the source's rows.

The protocol carries no schema: values are read by position, so a user who adds a
column at the source adds it at the end of ``source.schema``, and one whose column
grew says so with a wider type. When a sink opens an existing table it compares the
table's columns with the source's, by name, and gets a :class:`Plan`:

- a source column the table lacks is *added* (nullable: rows written before read NULL);
- a column whose source type is wider than the table's (the sink decides, e.g. INT ->
  BIGINT, FLOAT -> DOUBLE, DECIMAL(p,s) -> DECIMAL(p',s) with p' > p, VARCHAR(n) ->
  VARCHAR(m) or STRING) is *widened*.

Everything else cannot be followed and is refused before anything is written, in one
line naming the table and every column with its old and new type: a narrower type, a
type of another family, a primary-key column whose type changed (it decides buckets
and deletes), and a table column the source no longer sends (dropped or renamed:
position-based values cannot tell which). ``sink.schema.evolution=none`` refuses any
change. The sinks apply a plan through their catalogs' public schema changes, so the
table's own schema history records it (:mod:`.iceberg.writer`, :mod:`.paimon.writer`).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field

from beam_pixels.schema import SCHEMA_EVOLUTION_MODES
from beam_pixels.sinks.committing import SinkConfigurationError

T = typing.TypeVar("T")


class SchemaEvolutionRefused(SinkConfigurationError):
    """An existing table cannot follow ``source.schema`` (or ``sink.schema.evolution=none`` forbids it)."""


@dataclass(frozen=True)
class Wanted(typing.Generic[T]):
    """A column the sink writes, in the sink's type."""

    name: str
    type: T
    key: bool = False  # a primary-key column: its type never changes
    required: bool = False  # a column the table must already have (a changelog column)


@dataclass
class Plan(typing.Generic[T]):
    """The changes that let an existing table take the source's rows (empty: none needed)."""

    added: list[Wanted[T]] = field(default_factory=list)
    widened: list[tuple[str, T, T]] = field(default_factory=list)  # (name, table type, source type)

    def __bool__(self) -> bool:
        return bool(self.added or self.widened)

    def describe(self, show: typing.Callable[[T], str] = str) -> str:
        """The changes as a reader would say them, e.g. ``added note STRING; widened qty INT -> BIGINT``."""
        parts = [f"added {w.name} {show(w.type)}" for w in self.added]
        parts += [f"widened {name} {show(old)} -> {show(new)}" for name, old, new in self.widened]
        return "; ".join(parts)


def plan(
    table_name: str,
    existing: typing.Mapping[str, T],
    wanted: typing.Sequence[Wanted[T]],
    *,
    widens: typing.Callable[[T, T], bool],
    mode: str,
    show: typing.Callable[[T], str] = str,
) -> Plan[T]:
    """What ``table_name`` (e.g. ``Iceberg table db.orders``) with columns ``existing`` (name -> type, meta columns included) needs
    to take ``wanted``; raises :class:`SchemaEvolutionRefused` naming every column it cannot follow.
    """
    if mode not in SCHEMA_EVOLUTION_MODES:
        raise SinkConfigurationError(
            f"sink.schema.evolution={mode!r} is not accepted; accepted: {', '.join(SCHEMA_EVOLUTION_MODES)}"
        )
    result: Plan[T] = Plan()
    problems = []
    for column in wanted:
        old = existing.get(column.name)
        if old is None:
            if column.required or column.key:
                problems.append(f"column {column.name!r} ({show(column.type)}) is missing and cannot be added")
            else:
                result.added.append(column)
        elif old == column.type:
            continue
        elif column.key:
            problems.append(
                f"primary-key column {column.name!r} is {show(old)} in the table and {show(column.type)} in "
                f"source.schema (a key column's type cannot change)"
            )
        elif widens(old, column.type):
            result.widened.append((column.name, old, column.type))
        else:
            problems.append(
                f"column {column.name!r} is {show(old)} in the table and {show(column.type)} in source.schema "
                f"(only widening is followed)"
            )
    names = {w.name for w in wanted}
    for name, old in existing.items():
        if name not in names:
            problems.append(
                f"column {name!r} is {show(old)} in the table and not in source.schema (a dropped or renamed "
                f"column cannot be followed)"
            )
    if problems:
        raise SchemaEvolutionRefused(
            f"{table_name} cannot follow source.schema: {'; '.join(problems)}. Nothing was written; "
            f"restore source.schema, or write to a new table"
        )
    if result and mode == "none":
        raise SchemaEvolutionRefused(
            f"{table_name} does not fit source.schema and sink.schema.evolution=none leaves it alone: "
            f"it would need {result.describe(show)}. Nothing was written; set sink.schema.evolution=add-and-widen "
            f"to evolve the table, or restore source.schema"
        )
    return result
