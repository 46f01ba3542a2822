"""The Iceberg table writer and the ``WriteToIceberg`` transform.

A table with a primary key gets each window's final state per key, merge-on-read
by default (:mod:`~beam_pixels.sinks.iceberg.merge_on_read`: new data files plus
a position-delete file, no data file rewritten) or copy-on-write
(:mod:`~beam_pixels.sinks.iceberg.copy_on_write`). A table without a key gets an
append-only changelog. Every snapshot carries the
:class:`~beam_pixels.checkpoint.Checkpoint` in its summary. Between commits the
committer runs table maintenance (:mod:`~beam_pixels.sinks.iceberg.maintenance`).

pyiceberg 0.12 retries a commit that lost a race by itself
(``commit.retry.num-retries``, default 4): it refreshes the table and re-applies
the same data files on top of whatever the other writer committed. That other
writer may have committed these very records (a replay, a second run), so the
retry would apply them twice. This sink commits against the table state it read
its checkpoint from, with pyiceberg's retries off, and lets :class:`WriteChanges`
re-read the checkpoint and retry.
"""

from __future__ import annotations

import logging
import os
import typing
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
from pyiceberg.catalog import Catalog, CatalogType, load_catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError
from pyiceberg.manifest import DataFile
from pyiceberg.schema import Schema
from pyiceberg.table import Table, TableProperties
from pyiceberg.types import IntegerType, LongType, NestedField, StringType

from beam_pixels.changes import CHANGELOG_COLUMNS, changelog_rows, collapse_to_final_state
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.schema import SourceSchema, TypeKind
from beam_pixels.sinks.committing import (
    DEFAULT_CATALOG_RETRY_MS,
    CommitConflict,
    SinkConfigurationError,
    TableWriter,
    WriteChanges,
    first_time,
    split_table_name,
)
from beam_pixels.sinks.evolution import Wanted, plan
from beam_pixels.sinks.iceberg import copy_on_write, files, maintenance, merge_on_read, partitioning
from beam_pixels.sinks.iceberg._pyiceberg_private import promotable
from beam_pixels.sinks.key_index import key_codes

_LOG = logging.getLogger(__name__)

_CATALOG_TYPES = sorted(t.value for t in CatalogType)
WRITE_MODES = ("merge-on-read", "copy-on-write")
# Properties of the tables this sink creates, unless iceberg.table.properties.* says otherwise:
# format v2 (position deletes), old metadata files deleted, snapshots kept 5 minutes (at least 5),
# Parquet dictionaries of at most 16 KiB (see PARQUET_DICTIONARY_BYTES).
PARQUET_DICTIONARY_BYTES = 16 * 1024
"""pyarrow dictionary-encodes every column until its dictionary reaches ``write.parquet.dict-size-bytes``
(2 MiB by default) and never checks that it pays: a column of unique keys or random values is then stored
twice (dictionary and indices) for its first 2 MiB of distinct values, which is all of a file of 100,000
rows. At 16 KiB only columns of a few thousand distinct values (or fewer) keep a dictionary: the soak
table's compacted files of 112,000 rows take 27% fewer bytes per row (23.1 -> 17.0), its commits' small
files 17% fewer, as parquet-java's writers do by dropping a dictionary that does not compress."""
DEFAULT_TABLE_PROPERTIES = {
    "format-version": "2",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "10",
    "history.expire.max-snapshot-age-ms": "300000",
    "history.expire.min-snapshots-to-keep": "5",
    "write.parquet.dict-size-bytes": str(PARQUET_DICTIONARY_BYTES),
}


class IcebergSchemaMismatch(SinkConfigurationError):
    """An existing Iceberg table cannot hold what ``source.schema`` describes."""


class IcebergTableWriter(TableWriter):
    """Commits change records to one Iceberg table (see the module docstring).

    ``table_name`` may be ``database.table``; ``database`` (default: that prefix,
    else ``pixels``) names the catalog namespace. ``catalog_properties`` go to
    pyiceberg's ``load_catalog`` unchanged, except that a ``sql`` catalog without
    ``uri`` gets a SQLite file inside its local ``warehouse`` directory. A sql
    catalog keeps tables per ``catalog_name``: other tools must use the same name.
    ``table_properties`` are set on a table this writer creates, over
    :data:`DEFAULT_TABLE_PROPERTIES`; an existing table keeps its own. So with
    ``partition_spec`` (``iceberg.partition.spec`` terms, :mod:`.partitioning`): a created
    table gets it, an existing table is written with its own current spec (a different
    configured spec is logged as a warning).
    """

    def __init__(
        self,
        schema: SourceSchema,
        table_name: str,
        catalog_properties: typing.Mapping[str, str],
        database: str | None = None,
        catalog_name: str = "pixels",
        *,
        mode: str = "merge-on-read",
        table_properties: typing.Mapping[str, str] | None = None,
        maintenance_settings: maintenance.Settings | None = None,
        schema_evolution: str = "add-and-widen",
        partition_spec: typing.Sequence[partitioning.Term] = (),
    ):
        floats = [c for c in schema.primary_key if schema.column(c).type.kind in (TypeKind.FLOAT, TypeKind.DOUBLE)]
        if floats:
            raise SinkConfigurationError(
                f"primary key column(s) {', '.join(floats)} are FLOAT/DOUBLE, which Iceberg does not allow as "
                f"identifier fields; choose other columns for source.primary.key"
            )
        if mode not in WRITE_MODES:
            raise SinkConfigurationError(f"iceberg.write.mode={mode!r} is not accepted; accepted: {', '.join(WRITE_MODES)}")
        self.schema = schema
        self.mode = mode
        self._schema_evolution = schema_evolution
        self._table_properties = {**DEFAULT_TABLE_PROPERTIES, **(table_properties or {})}
        self._maintenance = maintenance_settings or maintenance.Settings()
        self._partition_terms = tuple(partition_spec)
        try:
            self._partition_spec = partitioning.build_spec(self._partition_terms, self._expected_schema())
        except partitioning.PartitionSpecError as e:
            raise SinkConfigurationError(f"{partitioning.SPEC_KEY}: {e}") from None
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
            table = self._catalog.create_table_if_not_exists(
                self._identifier,
                schema=self._expected_schema(),
                partition_spec=self._partition_spec,
                properties=self._table_properties,
            )
            action = "created"
        if self._merges_on_read and table.metadata.format_version < 2:
            raise SinkConfigurationError(
                f"Iceberg table {self.table_name} is format v{table.metadata.format_version}; merge-on-read needs "
                f"position deletes (v2): upgrade the table (format-version=2) or set iceberg.write.mode=copy-on-write"
            )
        table = self._fit(table)
        self._table = _without_blind_retries(table)
        if not first_time("iceberg", str(table.metadata.table_uuid), action):
            return
        spec = partitioning.describe(table.spec(), table.schema())
        _LOG.info(
            "Iceberg catalog %r (type %s): %s table %s at %s, %s",
            self._catalog_name,
            self._properties.get("type", "inferred from uri"),
            action,
            self.table_name,
            table.location(),
            "unpartitioned" if spec == "unpartitioned" else f"partitioned by {spec}",
        )
        configured = ",".join(str(term) for term in self._partition_terms)
        if configured and configured != spec:
            _LOG.warning(
                "Iceberg table %s is partitioned %s, not %s=%s: writing with the table's own spec (%s applies "
                "only to tables the sink creates; evolve an existing table's spec with another engine)",
                self.table_name, spec, partitioning.SPEC_KEY, configured, partitioning.SPEC_KEY,
            )

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        self._catalog = self._table = None

    def reconnect(self) -> None:
        """Drop the catalog's pooled connections: a SQLite COMMIT refused as locked leaves its
        transaction open on the connection, whose next reads would see the refused commit as
        done (pyiceberg's close() disposes a SQL catalog's connection pool, which stays usable)."""
        if self._catalog is not None:
            self._catalog.close()

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

    @property
    def _merges_on_read(self) -> bool:
        return self.mode == "merge-on-read" and bool(self.schema.primary_key)

    def prepare(self, records: pa.Table) -> _PreparedFiles:
        """With a key: collapse to the final state and write the surviving after-images
        (merge-on-read: with the key code of every row); without: write the changelog.
        The files are committed by :meth:`commit_prepared`."""
        table = self._table
        target = files.arrow_schema(table)
        if not self.schema.primary_key:
            rows = files.conform(changelog_rows(records, self.schema), target)
            return _PreparedFiles(None, files.write_data_files(table, rows, uuid.uuid4(), self._rows_per_file(rows)).files, [])
        state = collapse_to_final_state(records, self.schema)
        rows = files.conform(state.upserts, target)
        keys = pa.table({k: state.touched_keys.column(k).cast(target.field(k).type) for k in self.schema.primary_key})
        # A large write (a preload) becomes files of a share of the table, so that compaction
        # can rewrite them one at a time. Not sorted by key: that cost ~6% of bulk-load
        # throughput; compaction sorts the files it writes.
        rows_per_file = self._rows_per_file(rows)
        written = files.write_data_files(table, rows, uuid.uuid4(), rows_per_file)
        codes = []
        if self._merges_on_read and rows.num_rows:
            all_codes = key_codes(written.rows.select(list(self.schema.primary_key)))
            codes = [all_codes[offset : offset + length] for offset, length in written.slices]
        return _PreparedFiles(keys, written.files, codes)

    def _rows_per_file(self, rows: pa.Table) -> int:
        """At most this many rows per data file of a commit (see :func:`files.commit_rows_per_file`)."""
        settings = self._maintenance
        return files.commit_rows_per_file(self._table, rows, settings.max_compact_percent, settings.target_file_mb)

    def commit_prepared(self, parts: list[_PreparedFiles], checkpoint: Checkpoint) -> int:
        """One snapshot that replaces the stored rows of every touched key (merge-on-read:
        deleted by position; copy-on-write: the files holding them rewritten without
        them), adds every prepared file and holds ``checkpoint`` in its properties."""
        keyed = [part.touched_keys for part in parts if part.touched_keys is not None]
        touched = pa.concat_tables(keyed) if keyed else None
        added = [data_file for part in parts for data_file in part.data_files]
        properties = checkpoint.to_properties()
        try:
            if self._merges_on_read:
                codes = [c for part in parts for c in part.codes]
                return merge_on_read.commit(self._table, list(self.schema.primary_key), touched, added, codes, properties)
            return copy_on_write.commit(self._table, touched, added, properties)
        except CommitFailedException as e:
            raise CommitConflict(f"{self.table_name}: {e}") from e

    def maintain(self) -> maintenance.PassReport | None:
        """Run a maintenance pass when one is due (:mod:`~beam_pixels.sinks.iceberg.maintenance`),
        else expire the snapshots past the table's retention when that is due. A pass the
        catalog interrupts is run again once it is back; a failed pass is logged, never fails
        the job: the next one starts afresh."""
        if self._table is None:
            return None
        if maintenance.due(self._table, self._maintenance):
            what, step = "run a maintenance pass", self.maintain_now
        elif maintenance.expiry_due(self._table, self._maintenance):
            what, step = "expire snapshots", lambda: maintenance.run_expiry(self._table, self._maintenance)
        else:
            return None
        try:
            return self.retrying(what, step)
        except Exception as e:  # maintenance must not stop the data
            _LOG.warning("%s: maintenance pass stopped (%s); the next pass starts afresh", self.table_name, e, exc_info=True)
            return None

    def maintain_now(self) -> maintenance.PassReport:
        """Run one maintenance pass now (``beam-pixels maintain``); the snapshots it commits
        carry the latest checkpoint forward."""
        checkpoint = self.last_checkpoint()
        return maintenance.run_pass(self._table, self._maintenance, list(self.schema.primary_key), checkpoint.to_properties())

    def _expected_schema(self) -> Schema:
        """The Iceberg schema this sink creates: the source columns, or the changelog's."""
        source = self.schema.to_iceberg()
        if self.schema.primary_key:
            return source
        fields = [NestedField(f.field_id, f.name, f.field_type, required=False) for f in source.fields]
        extra = zip(CHANGELOG_COLUMNS, (StringType(), IntegerType(), LongType()))
        fields += [NestedField(len(fields) + i + 1, name, t, required=True) for i, (name, t) in enumerate(extra)]
        return Schema(*fields)

    def _fit(self, table: Table) -> Table:
        """``table``, evolved to take this source's rows (:mod:`beam_pixels.sinks.evolution`): added
        columns and widened types in one schema update, recorded in the table's schema history.
        Raises, before anything changes, when the table cannot follow."""
        table_schema = table.schema()
        key = set(self.schema.primary_key)
        wanted = [
            Wanted(f.name, f.field_type, key=f.name in key, required=f.name in CHANGELOG_COLUMNS)
            for f in self._expected_schema().fields
        ]
        existing = {f.name: f.field_type for f in table_schema.fields}
        problems = [
            f"column {w.name!r} is required but the source may send NULL"
            for w in wanted
            if w.name in existing and table_schema.find_field(w.name).required and not (w.key or w.required)
        ]
        identifiers = sorted(table_schema.identifier_field_names())
        if identifiers != sorted(key):
            problems.append(f"identifier fields are {identifiers}, the primary key is {sorted(key)}")
        if problems:
            raise IcebergSchemaMismatch(
                f"Iceberg table {self.table_name} does not fit source.schema ({self.schema}): "
                + "; ".join(problems)
                + ". Alter the table, or write to a new table name and let the sink create it."
            )
        change = plan(f"Iceberg table {self.table_name}", existing, wanted, widens=promotable, mode=self._schema_evolution)
        if not change:
            return table
        try:
            with table.update_schema() as update:
                for column in change.added:
                    update.add_column(column.name, column.type, required=False)
                for name, _, new in change.widened:
                    update.update_column(name, field_type=new)
        except CommitFailedException:  # another worker evolved it first: check again
            return self._fit(self._catalog.load_table(self._identifier))
        table = self._catalog.load_table(self._identifier)
        _LOG.info("Iceberg table %s follows source.schema: %s (schema id %d)",
                 self.table_name, change.describe(), table.schema().schema_id)
        return table


class WriteToIceberg(WriteChanges):
    """Commit a PCollection of ``ChangeBatch`` to an Iceberg table exactly once: :class:`WriteChanges`
    over an :class:`IcebergTableWriter` built from these arguments.

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
        catalog_retry_ms: int = DEFAULT_CATALOG_RETRY_MS,
        mode: str = "merge-on-read",
        table_properties: typing.Mapping[str, str] | None = None,
        maintenance_settings: maintenance.Settings | None = None,
        schema_evolution: str = "add-and-widen",
        partition_spec: typing.Sequence[partitioning.Term] = (),
    ):
        writer = IcebergTableWriter(
            schema,
            table_name,
            catalog_properties,
            database,
            mode=mode,
            table_properties=table_properties,
            maintenance_settings=maintenance_settings,
            schema_evolution=schema_evolution,
            partition_spec=partition_spec,
        )
        writer.catalog_retry_ms = catalog_retry_ms
        super().__init__(writer, window_ms, commit_retries)

    @classmethod
    def from_config(cls, config, window_ms: int | None = None) -> WriteToIceberg:
        """The transform a :class:`~beam_pixels.config.PixelsConfig` describes (``iceberg.*`` keys)."""
        return cls(
            config.source_schema,
            config.iceberg_table,
            config.catalog_properties("iceberg"),
            database=config.iceberg_database,
            window_ms=window_ms,
            commit_retries=config.iceberg_commit_retries,
            catalog_retry_ms=config.catalog_retry_ms,
            mode=config.iceberg_write_mode,
            table_properties=config.table_properties("iceberg"),
            maintenance_settings=maintenance.Settings.from_config(config),
            schema_evolution=config.schema_evolution,
            partition_spec=config.iceberg_partition_spec,
        )


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
    """Data files written for one part of a commit, the keys it touched (None without a key)
    and, merge-on-read, the key code of every row of every data file."""

    touched_keys: pa.Table | None
    data_files: list[DataFile]
    codes: list[np.ndarray]
