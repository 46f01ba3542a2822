"""The Apache Iceberg sink: commit the change stream into an Iceberg table through pyiceberg.

A table with a primary key gets each window's final state per key: one snapshot
drops the touched keys copy-on-write (data files that may hold them, pruned by
their column bounds, are read and those holding any are rewritten without
them, matched with Arrow hash lookups) and adds the surviving after-images.
pyiceberg's own ``delete`` with an ``In`` filter of 10^5 keys is ~10x slower.
A table without a key gets an append-only changelog. Every snapshot carries the
:class:`~beam_pixels.checkpoint.Checkpoint` in its summary.

Data files are written with ``pyiceberg.io.pyarrow._dataframe_to_data_files``,
the (private) writer behind pyiceberg's own ``append`` and ``delete``, so that
one snapshot can both replace files and add new ones; pyiceberg is pinned to 0.12.

pyiceberg 0.12 retries a commit that lost a race by itself
(``commit.retry.num-retries``, default 4): it refreshes the table and re-applies
the same data files on top of whatever the other writer committed. That other
writer may have committed these very records (a replay, a second run), so the
retry would apply them twice. This sink commits against the table state it read
its checkpoint from, with pyiceberg's retries off, and lets :class:`WriteChanges`
re-read the checkpoint and retry.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import os
import typing
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog, CatalogType, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, GreaterThanOrEqual, In, LessThanOrEqual
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files, schema_to_pyarrow
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema, promote
from pyiceberg.table import Table, TableProperties
from pyiceberg.types import IntegerType, LongType, NestedField, StringType

from beam_pixels.changes import CHANGELOG_COLUMNS, changelog_rows, collapse_to_final_state
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.config import PixelsConfig, SinkConfigurationError
from beam_pixels.schema import SourceSchema, TypeKind
from beam_pixels.sinks.committing import CommitConflict, TableWriter, WriteChanges, split_table_name

_LOG = logging.getLogger(__name__)

_CATALOG_TYPES = sorted(t.value for t in CatalogType)
# Up to this many touched keys, files are pruned with an IN filter per key column;
# beyond it pyiceberg's metrics evaluator gives up on IN anyway (IN_PREDICATE_LIMIT),
# so a min/max range prunes as well and costs no hashing.
_IN_FILTER_LIMIT = 200
# Rows below which a write is not split across cores (no small files for small commits).
_MIN_ROWS_PER_FILE = 100_000


class IcebergSchemaMismatch(SinkConfigurationError):
    """An existing Iceberg table cannot hold what ``source.schema`` describes."""


class IcebergTableWriter(TableWriter):
    """Commits change records to one Iceberg table (see the module docstring).

    ``table_name`` may be ``database.table``; ``database`` (default: that prefix,
    else ``pixels``) names the catalog namespace. ``catalog_properties`` go to
    pyiceberg's ``load_catalog`` unchanged, except that a ``sql`` catalog without
    ``uri`` gets a SQLite file inside its local ``warehouse`` directory. A sql
    catalog keeps tables per ``catalog_name``: other tools must use the same name.
    """

    def __init__(
        self,
        schema: SourceSchema,
        table_name: str,
        catalog_properties: typing.Mapping[str, str],
        database: str | None = None,
        catalog_name: str = "pixels",
    ):
        floats = [c for c in schema.primary_key if schema.column(c).type.kind in (TypeKind.FLOAT, TypeKind.DOUBLE)]
        if floats:
            raise SinkConfigurationError(
                f"primary key column(s) {', '.join(floats)} are FLOAT/DOUBLE, which Iceberg does not allow as "
                f"identifier fields; choose other columns for source.primary.key"
            )
        self.schema = schema
        namespace, name = split_table_name(table_name, database, "iceberg")
        self.table_name = f"{namespace}.{name}"
        self._namespace = namespace
        self._identifier = (namespace, name)
        self._catalog_name = catalog_name
        self._properties, self._local_warehouse = _resolve_catalog_properties(dict(catalog_properties))
        self._catalog: Catalog | None = None
        self._table: Table | None = None

    def open(self) -> None:
        if self._local_warehouse is not None:
            os.makedirs(self._local_warehouse, exist_ok=True)
        self._catalog = load_catalog(self._catalog_name, **self._properties)
        self._catalog.create_namespace_if_not_exists(self._namespace)
        try:
            table = self._catalog.load_table(self._identifier)
            action = "using existing"
        except NoSuchTableError:
            table = self._catalog.create_table_if_not_exists(self._identifier, schema=self._expected_schema())
            action = "created"
        self._check_fits(table.schema())
        self._table = _without_blind_retries(table)
        _LOG.info(
            "Iceberg catalog %r (type %s): %s table %s at %s",
            self._catalog_name,
            self._properties.get("type", "inferred from uri"),
            action,
            self.table_name,
            table.location(),
        )

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        self._catalog = self._table = None

    def last_checkpoint(self) -> Checkpoint:
        """Reload the table and return the checkpoint of its newest snapshot that has one.

        The next :meth:`commit` builds on exactly this table state: if another
        writer commits in between, that commit fails with :class:`CommitConflict`.
        """
        table = self._table = _without_blind_retries(self._catalog.load_table(self._identifier))
        snapshot = table.current_snapshot()
        while snapshot is not None:
            found = Checkpoint.from_properties(snapshot.summary.additional_properties if snapshot.summary else None)
            if found is not None:
                return found
            parent = snapshot.parent_snapshot_id
            snapshot = table.snapshot_by_id(parent) if parent is not None else None
        return Checkpoint()

    def read_table(self) -> pa.Table:
        return self._catalog.load_table(self._identifier).scan().to_arrow()

    def prepare(self, records: pa.Table) -> _PreparedFiles:
        """With a key: collapse to the final state and write the surviving after-images;
        without: write the changelog. The files are committed by :meth:`commit_prepared`."""
        table = self._table
        target = _arrow_schema(table)
        if self.schema.primary_key:
            state = collapse_to_final_state(records, self.schema)
            rows, keys = _conform(state.upserts, target), state.touched_keys
        else:
            rows, keys = _conform(changelog_rows(records, self.schema), target), None
        return _PreparedFiles(keys, _write_data_files(table, rows, uuid.uuid4()))

    def commit_prepared(self, parts: list[_PreparedFiles], checkpoint: Checkpoint) -> int:
        """One snapshot: rows of every touched key dropped (the files holding them rewritten
        without them), every prepared file added, ``checkpoint`` in its properties."""
        keyed = [part.touched_keys for part in parts if part.touched_keys is not None]
        touched = pa.concat_tables(keyed) if keyed else None
        try:
            survivors, rewritten = self._rows_outside(touched) if touched is not None else ([], [])
            added = [data_file for part in parts for data_file in part.data_files]
            return self._commit_files(survivors, rewritten, added, checkpoint.to_properties())
        except CommitFailedException as e:
            raise CommitConflict(f"{self.table_name}: {e}") from e

    def _rows_outside(self, touched_keys: pa.Table) -> tuple[list[pa.Table], list[DataFile]]:
        """The files holding any of ``touched_keys``, and their rows without those keys.

        A file the key filter cannot rule out by its statistics is first read by its key
        columns alone; only a file that does hold a touched key is read whole.
        """
        table = self._table
        target = _arrow_schema(table)
        keys = pa.table({k: touched_keys.column(k).cast(target.field(k).type) for k in touched_keys.column_names})
        survivors, rewritten = [], []
        if keys.num_rows:
            schema = table.schema()
            key_columns = ArrowScan(table.metadata, table.io, schema.select(*keys.column_names), AlwaysTrue())
            whole_rows = ArrowScan(table.metadata, table.io, schema, AlwaysTrue())
            for task in table.scan(row_filter=_key_filter(keys)).plan_files():
                if not _key_hits(key_columns.to_table([task]), keys).any():
                    continue
                rows = _conform(whole_rows.to_table([task]), target)
                rewritten.append(task.file)
                survivors.append(rows.filter(pa.array(~_key_hits(rows, keys))))
        return survivors, rewritten

    def _commit_files(
        self, survivors: list[pa.Table], rewritten: list[DataFile], added: list[DataFile], properties: dict[str, str]
    ) -> int:
        """Commit one snapshot that replaces ``rewritten`` files by ``survivors`` (rows in the
        table's Arrow schema) and adds ``added``; returns its id. Only additions make an
        append snapshot."""
        table = self._table
        transaction = table.transaction()
        update = transaction.update_snapshot(snapshot_properties=properties)
        producer = update.overwrite() if rewritten else update.fast_append()
        with producer as snapshot:
            if rewritten:
                snapshot.delete_by_predicate(AlwaysTrue())  # look for the rewritten files in every manifest
                for data_file in rewritten:
                    snapshot.delete_data_file(data_file)
            rows = pa.concat_tables(survivors) if survivors else None
            for data_file in [*_write_data_files(table, rows, snapshot.commit_uuid), *added]:
                snapshot.append_data_file(data_file)
        transaction.commit_transaction()
        return snapshot.snapshot_id

    def _expected_schema(self) -> Schema:
        """The Iceberg schema this sink creates: the source columns, or the changelog's."""
        source = self.schema.to_iceberg()
        if self.schema.primary_key:
            return source
        fields = [NestedField(f.field_id, f.name, f.field_type, required=False) for f in source.fields]
        extra = zip(CHANGELOG_COLUMNS, (StringType(), IntegerType(), LongType()))
        fields += [NestedField(len(fields) + i + 1, name, t, required=True) for i, (name, t) in enumerate(extra)]
        return Schema(*fields)

    def _check_fits(self, table_schema: Schema) -> None:
        """Raise :class:`IcebergSchemaMismatch` unless the table can take this source's rows."""
        expected = self._expected_schema()
        problems = []
        for field in expected.fields:
            try:
                actual = table_schema.find_field(field.name)
            except ValueError:
                problems.append(f"column {field.name!r} ({field.field_type}) is missing")
                continue
            if not _promotable(field.field_type, actual.field_type):
                problems.append(f"column {field.name!r} is {actual.field_type}, the source sends {field.field_type}")
            elif actual.required and not field.required:
                problems.append(f"column {field.name!r} is required but the source may send NULL")
        names = set(expected.column_names)
        for actual in table_schema.fields:
            if actual.required and actual.name not in names:
                problems.append(f"required column {actual.name!r} is not in the source")
        key = sorted(self.schema.primary_key)
        identifiers = sorted(table_schema.identifier_field_names())
        if identifiers != key:
            problems.append(f"identifier fields are {identifiers}, the primary key is {key}")
        if problems:
            raise IcebergSchemaMismatch(
                f"Iceberg table {self.table_name} does not fit source.schema ({self.schema}): "
                + "; ".join(problems)
                + ". Alter the table, or write to a new table name and let the sink create it."
            )


class WriteToIceberg(beam.PTransform):
    """Commit a PCollection of ``ChangeBatch`` to an Iceberg table exactly once.

    One commit per window of ``window_ms`` (or one at the end of a bounded input);
    outputs a :class:`~beam_pixels.sinks.committing.CommitResult` per commit.
    """

    def __init__(
        self,
        schema: SourceSchema,
        table_name: str,
        catalog_properties: typing.Mapping[str, str],
        *,
        database: str | None = None,
        window_ms: int | None = None,
        commit_retries: int = 5,
    ):
        super().__init__()
        self._writer = IcebergTableWriter(schema, table_name, catalog_properties, database)
        self._window_ms = window_ms
        self._commit_retries = commit_retries

    @classmethod
    def from_config(cls, config: PixelsConfig, window_ms: int | None = None) -> "WriteToIceberg":
        """The transform a ``pixels-client.properties`` configuration describes."""
        return cls(
            config.source_schema,
            config.iceberg_table,
            config.catalog_properties("iceberg"),
            database=config.iceberg_database,
            window_ms=window_ms,
            commit_retries=config.iceberg_commit_retries,
        )

    @property
    def writer(self) -> TableWriter:
        """The table writer this transform commits with (e.g. to read the last checkpoint)."""
        return self._writer

    def expand(self, batches):
        return batches | WriteChanges(self._writer, self._window_ms, self._commit_retries)


def _resolve_catalog_properties(properties: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """Check the catalog type; default a sql catalog's uri. Returns the properties and the
    local warehouse directory to create, if the uri was defaulted into it."""
    kind = properties.get("type")
    if kind is None:
        return properties, None  # pyiceberg infers the type from the uri
    kind = kind.strip().lower()
    if kind == "hadoop":
        raise SinkConfigurationError(
            "iceberg.catalog.type=hadoop: pyiceberg has no Hadoop catalog. Use type sql (with a SQLite or "
            "PostgreSQL uri, or a local warehouse directory), glue or rest"
        )
    if kind not in _CATALOG_TYPES:
        raise SinkConfigurationError(
            f"iceberg.catalog.type={kind!r} is not a pyiceberg catalog type; accepted: {', '.join(_CATALOG_TYPES)}"
        )
    if kind != CatalogType.SQL.value or properties.get("uri"):
        return properties, None
    warehouse = properties.get("warehouse", "")
    parsed = urlparse(warehouse)
    if not warehouse or parsed.scheme not in ("", "file"):
        raise SinkConfigurationError(
            f"iceberg.catalog.type=sql needs iceberg.catalog.uri (e.g. sqlite:////path/catalog.db) unless "
            f"iceberg.catalog.warehouse is a local directory; warehouse is {warehouse!r}"
        )
    directory = os.path.abspath(parsed.path if parsed.scheme else warehouse)
    return {**properties, "uri": f"sqlite:///{directory}/catalog.db"}, directory


def _without_blind_retries(table: Table) -> Table:
    """``table`` with pyiceberg's automatic commit retry off for commits made through it.

    Only this in-memory copy's metadata changes: the table's stored properties,
    which other engines read, stay as they are.
    """
    metadata = table.metadata.model_copy(
        update={"properties": {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}}
    )
    return Table(table.name(), metadata, table.metadata_location, table.io, table.catalog, table.config)


@dataclass(frozen=True)
class _PreparedFiles:
    """Data files written for one part of a commit, and the keys it touched (None without a key)."""

    touched_keys: pa.Table | None
    data_files: list[DataFile]


def _write_data_files(table: Table, rows: pa.Table | None, write_uuid: uuid.UUID) -> list[DataFile]:
    """Parquet data files holding ``rows`` (in the table's Arrow schema), not yet committed.

    Many rows are split into one file per core (of at least ``_MIN_ROWS_PER_FILE``),
    written at once: pyarrow writes Parquet without the GIL.
    """
    if rows is None or not rows.num_rows:
        return []
    counter = itertools.count()  # shared, so that every file of this write gets its own name

    def write(part: pa.Table) -> list[DataFile]:
        return list(_dataframe_to_data_files(table.metadata, part, table.io, write_uuid=write_uuid, counter=counter))

    parts = max(1, min(os.cpu_count() or 1, rows.num_rows // _MIN_ROWS_PER_FILE))
    if parts == 1:
        return write(rows)
    size = -(-rows.num_rows // parts)
    with concurrent.futures.ThreadPoolExecutor(parts, thread_name_prefix="iceberg-write") as pool:
        return [f for files in pool.map(write, [rows.slice(i, size) for i in range(0, rows.num_rows, size)]) for f in files]


def _arrow_schema(table: Table) -> pa.Schema:
    return schema_to_pyarrow(table.schema(), include_field_ids=False)


def _conform(rows: pa.Table, target: pa.Schema) -> pa.Table:
    """``rows`` in the table's column order and types; its columns missing from ``rows`` as NULLs."""
    columns = [
        rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
        for f in target
    ]
    return pa.Table.from_arrays(columns, schema=target)


def _key_hits(rows: pa.Table, keys: pa.Table) -> np.ndarray:
    """Which rows of ``rows`` have their key (the columns of ``keys``) in ``keys``.

    A hash lookup of the first key column settles single-column keys and narrows
    composite ones down to the few candidate rows that a semi-join then checks.
    """
    first, *rest = keys.column_names
    hit = pc.is_in(rows.column(first), value_set=keys.column(first)).to_numpy(zero_copy_only=False)
    if rest:
        candidates = np.flatnonzero(hit)
        probe = rows.select(keys.column_names).take(candidates).append_column("__row", pa.array(candidates))
        matched = probe.join(keys, keys=keys.column_names, join_type="left semi", use_threads=False)
        hit = np.zeros(rows.num_rows, dtype=bool)
        hit[matched.column("__row").to_numpy()] = True
    return hit


def _key_filter(keys: pa.Table) -> BooleanExpression:
    """A filter matching every row with one of ``keys`` (distinct key tuples, as
    collapsing leaves them) and maybe others, to prune data files."""
    terms: list[BooleanExpression] = []
    for name in keys.column_names:
        column = keys.column(name)
        if len(column) <= _IN_FILTER_LIMIT:
            terms.append(In(name, pc.unique(column).to_pylist()))
        else:  # a range: as good for pruning, and no hashing of every key
            bounds = pc.min_max(column)
            terms.append(
                And(GreaterThanOrEqual(name, bounds["min"].as_py()), LessThanOrEqual(name, bounds["max"].as_py()))
            )
    return And(*terms) if len(terms) > 1 else terms[0]


def _promotable(source: typing.Any, table: typing.Any) -> bool:
    """Whether values of Iceberg type ``source`` can be written to a column of type ``table``."""
    if source == table:
        return True
    try:
        promote(source, table)
    except Exception:  # pyiceberg raises ResolveError, or TypeError for unrelated types
        return False
    return True
