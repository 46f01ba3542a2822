"""Apache Paimon sink: commit the change stream to a Paimon table exactly once.

How it maps onto pypaimon (>= 2.1, pure Python):

- A source table with a primary key becomes a primary-key table with fixed
  buckets and the row-kind column ``_rowkind`` (table option ``rowkind.field``).
  Each commit collapses its changes to the final state per key, then writes
  ``+I`` for every surviving after-image and ``-D`` (key only, other columns
  NULL) for every touched key without a survivor. Keys are unique within a
  commit, so Paimon's default ``deduplicate`` engine (latest sequence number
  wins, across commits) yields the exact final state without relying on the
  order of rows inside one commit. The merged read drops ``-D`` rows.
- Tables the connector creates use Paimon's deletion-vector mode (unless write-only):
  a commit writes ``+I`` rows only and marks the stored row of every touched key
  deleted instead (:mod:`.merge_on_read`), so readers read every file as it is,
  without merging.
- Partition keys (``partition_keys``, for tables the connector creates; an existing
  table keeps its own): a primary-key table's Paimon key is the source key followed by
  the partition keys it lacks (Paimon's rule), so the table has fixed buckets in each
  partition. An update that changes a partition column writes the row into its new
  partition and, through the key index (keyed by the source key), marks the old row
  deleted in its old partition's deletion vector; so partition keys outside the source
  key need deletion vectors, and are refused without them. docs/partitioned-tables.md.
- A source table without a key becomes an append table holding the changelog
  (``changes.changelog_rows``: ``_op``, ``_poll_group``, ``_position``).
- Every commit is one stream commit with commit identifier = batch id, by a
  commit user that is stable for the table (default ``beam-pixels:<db>.<table>``),
  and the :class:`Checkpoint` (batch id and per-poll-group positions) in the
  *snapshot properties*: ``StreamTableCommit.commit(..., snapshot_properties=)``
  writes them into the same snapshot file that the atomic commit publishes, so
  positions and data can never disagree and no side file is needed.
  :meth:`PaimonTableWriter.last_checkpoint` walks back from the latest snapshot
  to the newest one by our commit user. pypaimon does not filter commits whose
  identifier was already committed, so :meth:`PaimonTableWriter.commit` checks.

pypaimon's private API is used only in :mod:`._pypaimon_private` (the write path's
delete-count fix and vectorised system fields); rows are routed to buckets with
a vectorised copy of Paimon's bucket hash (:mod:`.bucketing`).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pyarrow as pa
from pypaimon import CatalogFactory, Schema
from pypaimon.catalog.catalog_exception import TableNotExistException
from pypaimon.schema.data_types import AtomicType, DataField
from pypaimon.schema.schema_change import SchemaChange
from pypaimon.write.table_write import StreamTableWrite

from beam_pixels.changes import changelog_rows, changelog_schema, collapse_to_final_state
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.schema import SourceSchema
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
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon import background, deletion_vectors, merge_on_read
from beam_pixels.sinks.paimon._pypaimon_private import ROW_KINDS_SUPPORTED, StreamWrite
from beam_pixels.sinks.paimon.bucketing import bucket_ids
from beam_pixels.sinks.paimon.dv_compaction import DEFAULT_FILE_PERCENT, MIN_FILE_ROWS
from beam_pixels.sinks.paimon.maintenance import MaintenanceOptions, PassReport, live_files, record_metrics, run_pass

_LOG = logging.getLogger(__name__)

ROW_KIND_COLUMN = "_rowkind"
"""The ``rowkind.field`` column of primary-key tables: ``+I`` for live rows, ``-D`` for deletes."""

_CATALOG_TYPES = ("paimon", "filesystem")
DEFAULT_PK_TABLE_OPTIONS = {"deletion-vectors.enabled": "true"}
"""Options of the primary-key tables the connector creates unless ``paimon.table.options.*`` says otherwise
or the table is write-only: deletion vectors, so that readers never merge sorted runs (:mod:`.merge_on_read`)."""

DEFAULT_DELETION_VECTOR_TABLE_OPTIONS = {"num-levels": "16", "compaction.delete-ratio-threshold": "0.35"}
"""And for those with deletion vectors: 16 levels, so that a bucket holds up to 15 sorted runs before
its newest must merge (the soak benchmark's storage fell from 2.6 to 1.9 times the live rows, median,
with 12 against Paimon's default of 6; a model of a soak bucket under the real compaction picks (issue 22)
has the tiered merges' retained rewrites fall from 0.23 to 0.16 of the table from 12 to 16, and the
storage rise again at 20, with more small runs and deletion vectors; a run costs a reader one more file, well under a millisecond); files
rewritten at 35% deleted rows rather than Paimon's 20% (see :mod:`.dv_compaction`)."""

# Options a primary-key table needs for exact final states: (required value, value when unset).
_REQUIRED_PK_OPTIONS = {
    "rowkind.field": (ROW_KIND_COLUMN, None),
    "merge-engine": ("deduplicate", "deduplicate"),
    "ignore-delete": ("false", "false"),
}


class PaimonTableWriter(TableWriter):
    """Commits change records to one Paimon table (see the module docstring)."""

    def __init__(
        self,
        schema: SourceSchema,
        table_name: str,
        catalog_properties: dict[str, str],
        database: str | None = None,
        bucket: int = 4,
        commit_user: str | None = None,
        *,
        table_options: dict[str, str] | None = None,
        compaction_trigger: int | None = None,
        compaction_max_bytes: int = 256 * 2**20,
        compaction_file_percent: int = DEFAULT_FILE_PERCENT,
        write_only: bool = False,
        schema_evolution: str = "add-and-widen",
        partition_keys: tuple[str, ...] = (),
    ):
        self.database, table = split_table_name(table_name, database, "paimon")
        if bucket < 1:
            raise SinkConfigurationError(f"Paimon bucket={bucket} is not valid; give a bucket count of at least 1")
        self.schema = schema
        self.table_name = f"{self.database}.{table}"
        self.bucket = bucket
        unknown = [k for k in partition_keys if k not in schema.names]
        if unknown:
            raise SinkConfigurationError(f"Paimon partition key {unknown[0]!r} is not a column of source.schema "
                                         f"({', '.join(schema.names)})")
        self.partition_keys = tuple(partition_keys)  # an existing table's own, once open
        self.commit_user = commit_user or f"beam-pixels:{self.table_name}"
        self._catalog_options = _catalog_options(catalog_properties)
        self.table_options = dict(table_options or {})
        self.compaction_trigger = compaction_trigger
        self.compaction_max_bytes = compaction_max_bytes
        self.compaction_file_percent = compaction_file_percent
        self.write_only = write_only
        self._schema_evolution = schema_evolution
        self._maintenance: MaintenanceOptions | None = None
        self._maintained_through: int | None = None  # the latest snapshot after a pass that left nothing to do
        self._deletion_vectors = False
        self._table = None
        self._write_schema: pa.Schema | None = None

    def open(self) -> None:
        catalog = CatalogFactory.create(self._catalog_options)
        catalog.create_database(self.database, True)
        try:
            table = catalog.get_table(self.table_name)
            created = False
        except TableNotExistException:
            self._check_partitioning(self._write_only_asked(), self._paimon_schema().options)
            catalog.create_table(self.table_name, self._paimon_schema(), True)
            table = catalog.get_table(self.table_name)
            created = True
        self._take_partition_keys(table)
        table = self._fit(catalog, table)
        self._table = table
        self._write_schema = private.arrow_schema(table)
        options = private.table_options(table)
        write_only = self.write_only or str(options.get("write-only", "false")).lower() == "true"
        # Deletion-vector commits need the connector's own compaction; a write-only table
        # gets level-0 files, which Paimon's compaction job turns into deletion vectors.
        self._deletion_vectors = bool(self.schema.primary_key) and deletion_vectors.enabled(options) and not write_only
        self._check_partitioning(write_only, options)
        if not write_only:
            try:
                self._maintenance = MaintenanceOptions.of(
                    options, self.compaction_trigger, self.compaction_max_bytes, bool(self.schema.primary_key),
                    tuple(self.schema.primary_key), self.compaction_file_percent)
            except ValueError as error:
                raise SinkConfigurationError(f"Paimon table {self.table_name}: {error}") from None
        action = "created" if created else "using existing"
        if not first_time("paimon", table.table_path, action):
            return
        _LOG.info(
            "Paimon warehouse %s: %s table %s (%s, commit user %s)",
            _redact(self._catalog_options["warehouse"]),
            action,
            self.table_name,
            f"primary key {', '.join(self.schema.primary_key)}, {table.options.bucket()} buckets"
            + (", deletion vectors" if self._deletion_vectors else "")
            if self.schema.primary_key
            else "append-only changelog",
            self.commit_user,
        )
        if self.partition_keys:
            _LOG.info("Paimon table %s is partitioned by %s", self.table_name, ", ".join(self.partition_keys))

    def last_checkpoint(self) -> Checkpoint:
        snapshot = self._last_own_snapshot()
        if snapshot is None:
            return Checkpoint()
        return Checkpoint.from_properties(snapshot.properties) or Checkpoint(snapshot.commit_identifier)

    def read_table(self) -> pa.Table:
        builder = self._table.new_read_builder()
        rows = builder.new_read().to_arrow(builder.new_scan().plan().splits())
        return rows.drop_columns([ROW_KIND_COLUMN]) if ROW_KIND_COLUMN in rows.column_names else rows

    def prepare(self, records: pa.Table) -> list | merge_on_read.PreparedFiles:
        """Write the final state per key (``+I`` / ``-D`` rows; deletion-vector tables:
        ``+I`` rows only) or, without a key, the changelog; returns pypaimon's commit
        messages (deletion vectors: with key codes and touched keys) for :meth:`commit_prepared`."""
        if self._deletion_vectors:
            return self._prepare_live_rows(records)
        if self.schema.primary_key:
            rows = self._final_state_rows(records)
            self._refuse_null_partitions(rows)
        else:
            rows = changelog_rows(records, self.schema)
        rows = rows.select(self._write_schema.names).cast(self._write_schema)
        write = StreamWrite(self._table, self.commit_user)
        try:
            self._write(write, rows)
            # The identifier is the commit's business (commit_prepared); messages do not keep it.
            return write.prepare_commit(self.last_checkpoint().batch_id + 1)
        finally:
            write.close()

    def commit_prepared(self, parts: list, checkpoint: Checkpoint) -> int:
        """One stream commit of every part's messages: commit identifier = batch id, the
        checkpoint in the snapshot properties. A batch id the table holds is refused."""
        last = self.last_checkpoint()
        if checkpoint.batch_id <= last.batch_id:
            raise CommitConflict(
                f"{self.table_name} already holds batch {last.batch_id} of commit user {self.commit_user}; "
                f"batch {checkpoint.batch_id} must not be committed again"
            )
        if self._deletion_vectors:
            merge_on_read.commit(self._table, list(self.schema.primary_key), parts, checkpoint, last,
                                 self.commit_user, self._maintenance.compaction.max_level, live_files)
        else:
            self._commit_messages([message for part in parts for message in part], checkpoint)
        return self._last_own_snapshot().id

    def commit(self, records: pa.Table, checkpoint: Checkpoint):
        """Prepare and commit ``records``, then run the maintenance pass (here, not in the background)."""
        outcome = super().commit(records, checkpoint)
        self.maintain()
        return outcome

    def _commit_messages(self, messages: list, checkpoint: Checkpoint) -> None:
        """pypaimon's stream commit of ``messages``, commit identifier = batch id."""
        committer = self._table.new_stream_write_builder()
        committer.commit_user = self.commit_user
        commit = committer.new_commit()
        try:
            commit.commit(messages, checkpoint.batch_id, snapshot_properties=checkpoint.to_properties())
        except RuntimeError as e:
            if str(e).startswith("Commit failed"):  # pypaimon gave up retrying its atomic snapshot commit
                raise CommitConflict(str(e)) from e
            raise
        finally:
            commit.close()

    def maintain(self) -> PassReport | None:
        """One maintenance pass now (bucket compaction for primary-key tables, manifests,
        snapshot expiration) unless the table is write-only, or nothing was committed since a
        pass that left nothing waiting."""
        if self._maintenance is None:
            return None
        latest = private.latest_snapshot(self._table)
        if latest is not None and latest.id == self._maintained_through:
            return None
        report = _pass(self._table, self.table_name, self.commit_user, self._maintenance)
        if report is None:
            return None
        record_metrics(report)
        latest = private.latest_snapshot(self._table)
        finished = not (report.buckets_waiting or report.reclaims_deferred or report.refused or report.errors)
        self._maintained_through = latest.id if latest and finished else None
        return report

    def after_commit(self) -> None:
        """The committer's pass after each commit, in the background (:mod:`.background`):
        the next commit does not wait for it. Records the metrics of passes finished since."""
        if self._maintenance is None:
            return
        table, name, user, options = self._table, self.table_name, self.commit_user, self._maintenance
        for report in background.finished(table.table_path):
            record_metrics(report)
        catalog_options = self._catalog_options
        background.start(table.table_path, lambda: _pass(
            CatalogFactory.create(catalog_options).get_table(name), name, user, options))

    def finish_maintenance(self) -> None:
        background.wait()

    def close(self) -> None:
        self._table = None

    # -- helpers -----------------------------------------------------------------

    def _paimon_schema(self) -> Schema:
        """The Paimon schema this writer creates and expects."""
        key = self._paimon_primary_key()
        if key:
            columns = [(c.name, c.type.to_paimon(), c.name not in key) for c in self.schema.columns]
            columns.append((ROW_KIND_COLUMN, "STRING", False))
            # A write-only table is compacted by Paimon's job; with deletion vectors its
            # level-0 files would stay unread until then, so it gets none unless asked.
            options = {**({} if self._write_only_asked() else DEFAULT_PK_TABLE_OPTIONS), **self.table_options}
            if deletion_vectors.enabled(options):
                options = {**DEFAULT_DELETION_VECTOR_TABLE_OPTIONS, **options}
            options.update({"bucket": str(self.bucket), "rowkind.field": ROW_KIND_COLUMN})
        else:
            source_types = {c.name: c.type.to_paimon() for c in self.schema.columns}
            columns = [
                (f.name, source_types.get(f.name) or private.paimon_type(f.type), f.nullable)
                for f in changelog_schema(self.schema)
            ]
            options = dict(self.table_options)
        fields = [DataField(i, name, AtomicType(kind, nullable)) for i, (name, kind, nullable) in enumerate(columns)]
        return Schema(fields, partition_keys=list(self.partition_keys), primary_keys=list(key), options=options)

    def _paimon_primary_key(self) -> tuple[str, ...]:
        """The table's primary key: the source's, then the partition keys it lacks (Paimon's rule:
        a partitioned primary-key table's key holds its partition keys); none without a source key."""
        key = tuple(self.schema.primary_key)
        return key + tuple(k for k in self.partition_keys if k not in key) if key else ()

    def _write_only_asked(self) -> bool:
        return self.write_only or str(self.table_options.get("write-only", "false")).lower() == "true"

    def _take_partition_keys(self, table) -> None:
        """Honour the partition keys ``table`` has (another engine may have made it)."""
        existing = tuple(table.partition_keys)
        if self.partition_keys and existing != self.partition_keys:
            _LOG.warning("Paimon table %s exists, partitioned by (%s): writing it so, not by paimon.partition.keys=%s",
                         self.table_name, ", ".join(existing), ",".join(self.partition_keys))
        unknown = [k for k in existing if k not in self.schema.names]
        if unknown:
            raise SinkConfigurationError(
                f"Paimon table {self.table_name} is partitioned by {unknown[0]!r}, which is not a column of "
                f"source.schema; drop the table or point paimon.table.name at a new one")
        self.partition_keys = existing

    def _check_partitioning(self, write_only: bool, options: dict[str, str]) -> None:
        """Refuse a partitioned primary-key table whose cross-partition moves cannot be written: a row
        whose partition columns change is deleted in its old partition through a deletion vector
        (the key index finds it there); without deletion vectors a delete would have to name the old
        partition, which the change records do not give."""
        moving = [k for k in self.partition_keys if k not in self.schema.primary_key]
        if not self.schema.primary_key or not moving or (deletion_vectors.enabled(options) and not write_only):
            return
        why = "the table is write-only" if write_only else "deletion-vectors.enabled is not true"
        raise SinkConfigurationError(
            f"Paimon table {self.table_name}: partition key(s) {', '.join(moving)} are not in the primary key "
            f"({', '.join(self.schema.primary_key)}), so an update may move a row to another partition; the "
            f"connector deletes it in its old partition with a deletion vector, and {why}. Enable deletion "
            f"vectors and maintenance (drop paimon.write-only and write-only / deletion-vectors.enabled=false), "
            f"or add {', '.join(moving)} to source.primary.key, or drop them from paimon.partition.keys")

    def _fit(self, catalog, table):
        """``table``, evolved to take this source's rows (:mod:`beam_pixels.sinks.evolution`): added
        columns and widened types in one ``alter_table``, a new schema in the table's schema history.
        Raises, before anything changes, when the table cannot follow."""
        expected = self._paimon_schema()
        key = set(expected.primary_keys)
        meta = {f.name for f in expected.fields} - set(self.schema.names)
        wanted = [Wanted(f.name, _type_name(f.type), key=f.name in key, required=f.name in meta) for f in expected.fields]
        existing = {f.name: _type_name(f.type) for f in table.schema().fields}
        _check_key_and_options(table, expected, self.table_name)
        change = plan(f"Paimon table {self.table_name}", existing, wanted, widens=_widens, mode=self._schema_evolution)
        if not change:
            return table
        try:
            catalog.alter_table(self.table_name, [
                *(SchemaChange.add_column(c.name, AtomicType(c.type, True)) for c in change.added),
                *(SchemaChange.update_column_type(name, AtomicType(new, True), True) for name, _, new in change.widened),
            ])
        except RuntimeError:
            latest = catalog.get_table(self.table_name)
            if latest.table_schema.id == table.table_schema.id:
                raise
            return self._fit(catalog, latest)  # another worker altered it first: check again
        table = catalog.get_table(self.table_name)
        _LOG.info("Paimon table %s follows source.schema: %s (schema id %d)",
                  self.table_name, change.describe(), table.table_schema.id)
        return table

    def _prepare_live_rows(self, records: pa.Table) -> merge_on_read.PreparedFiles:
        """Deletion-vector tables: the surviving after-images as ``+I`` files, their key codes, the touched keys."""
        key = list(self.schema.primary_key)
        state = collapse_to_final_state(records, self.schema)
        rows = state.upserts.append_column(ROW_KIND_COLUMN, pa.repeat("+I", state.upserts.num_rows))
        self._refuse_null_partitions(rows)
        rows = rows.select(self._write_schema.names).cast(self._write_schema)
        touched = pa.table({k: state.touched_keys.column(k).cast(self._write_schema.field(k).type) for k in key})
        write = StreamWrite(self._table, self.commit_user)
        # A large commit (a bulk load) becomes files of the share compaction writes, so that
        # their first rewrites cost that share, not the whole bucket, and of at least a
        # deletion-vector container's rows.
        write.limit_file_rows(max(MIN_FILE_ROWS, rows.num_rows * self.compaction_file_percent
                                  // (100 * self._table.options.bucket())))
        write.keep_keys(private.stored_key_columns(self._table, key))
        try:
            self._write(write, rows)
            messages = write.prepare_commit(self.last_checkpoint().batch_id + 1)
            written = write.written_keys(messages)
        finally:
            write.close()
        return merge_on_read.PreparedFiles(messages, merge_on_read.key_codes_of(written), touched)

    def _refuse_null_partitions(self, rows: pa.Table) -> None:
        """Raise, before anything is written, when a row of a primary-key table has a NULL partition
        value: the partition keys are part of the Paimon primary key, which cannot be NULL."""
        for name in self.partition_keys:
            nulls = rows.column(name).null_count
            if nulls:
                raise ValueError(
                    f"Paimon table {self.table_name}: {nulls} row(s) of this batch have a NULL {name}, a partition "
                    f"key (paimon.partition.keys) and so part of the primary key, which cannot be NULL. Nothing was "
                    f"written; the poll journal keeps the batch. Partition by columns the source never leaves NULL.")

    def _final_state_rows(self, records: pa.Table) -> pa.Table:
        """One row per touched key: ``+I`` with its after-image, or ``-D`` when it ended deleted."""
        key = list(self.schema.primary_key)
        state = collapse_to_final_state(records, self.schema)
        deleted = state.touched_keys.join(state.upserts.select(key), keys=key, join_type="left anti")
        if deleted.num_rows and not ROW_KINDS_SUPPORTED:
            raise RuntimeError(
                f"{self.table_name}: this batch deletes {deleted.num_rows} keys but the installed pypaimon "
                f"cannot write deletes (row kinds need pypaimon >= 2.1); upgrade pypaimon. Nothing was written."
            )
        live = state.upserts.append_column(ROW_KIND_COLUMN, pa.repeat("+I", state.upserts.num_rows))
        nulls = {
            f.name: pa.nulls(deleted.num_rows, f.type) for f in self.schema.to_arrow() if f.name not in key
        }
        dead = pa.table({**{k: deleted.column(k) for k in key}, **nulls})
        dead = dead.append_column(ROW_KIND_COLUMN, pa.repeat("-D", deleted.num_rows))
        return pa.concat_tables([live, dead.select(live.column_names).cast(live.schema)])

    def _write(self, write: StreamTableWrite, rows: pa.Table) -> None:
        """Write ``rows`` by partition and bucket when their buckets can be computed here, else let
        pypaimon route them. Either way a commit writes files only in the (partition, bucket) pairs its
        rows fall in."""
        buckets = None
        if self.schema.primary_key:
            fields = self._table.schema().logical_bucket_key_fields
            keys = rows.select([f.name for f in fields])
            buckets = bucket_ids(keys, [f.type.type for f in fields], self._table.options.bucket())
        if buckets is None:
            write.write_arrow(rows)
            return
        groups = buckets + self._table.options.bucket() * _partition_numbers(rows, self.partition_keys)
        order = np.argsort(groups, kind="stable")
        rows, groups = rows.take(pa.array(order)), groups[order]
        starts = np.flatnonzero(np.diff(groups, prepend=-1))
        for start, end in zip(starts, [*starts[1:], len(groups)]):
            write.write_arrow(rows.slice(start, end - start), bucket=int(buckets[order[start]]))

    def _last_own_snapshot(self):
        """The newest snapshot committed by our commit user, or None."""
        return private.own_latest_snapshot(self._table, self.commit_user)


def _partition_numbers(rows: pa.Table, partition_keys: tuple[str, ...]) -> np.ndarray:
    """A number per row, the same for rows of the same partition (all 0 when unpartitioned)."""
    numbers = np.zeros(rows.num_rows, np.int64)
    for name in partition_keys:
        codes = rows.column(name).combine_chunks().dictionary_encode()
        values = np.asarray(codes.indices.fill_null(-1).to_numpy(zero_copy_only=False), np.int64) + 1
        numbers = numbers * (len(codes.dictionary) + 1) + values
    return numbers


def _pass(table, table_name: str, commit_user: str, options: MaintenanceOptions) -> PassReport | None:
    """One maintenance pass after ``commit_user``'s latest commit (None before its first), logged."""
    own = private.own_latest_snapshot(table, commit_user)
    if own is None:
        return None
    report = run_pass(table, table_name, commit_user, own, options)
    _LOG.log(logging.DEBUG if report.idle else logging.INFO, report.line())
    return report


class WriteToPaimon(WriteChanges):
    """Commit a PCollection of ``ChangeBatch`` to a Paimon table exactly once: :class:`WriteChanges`
    over a :class:`PaimonTableWriter` built from these arguments.

    One commit per window (``window_ms``) or, with ``window_ms=None``, one when the
    bounded input ends. Outputs a ``CommitResult`` per commit.
    """

    def __init__(
        self,
        schema: SourceSchema,
        table_name: str,
        catalog_properties: dict[str, str],
        *,
        database: str | None = None,
        bucket: int = 4,
        window_ms: int | None = None,
        commit_retries: int = 5,
        catalog_retry_ms: int = DEFAULT_CATALOG_RETRY_MS,
        table_options: dict[str, str] | None = None,
        compaction_trigger: int | None = None,
        compaction_max_bytes: int = 256 * 2**20,
        compaction_file_percent: int = DEFAULT_FILE_PERCENT,
        write_only: bool = False,
        schema_evolution: str = "add-and-widen",
        partition_keys: tuple[str, ...] = (),
    ):
        writer = PaimonTableWriter(
            schema, table_name, catalog_properties, database=database, bucket=bucket,
            table_options=table_options, compaction_trigger=compaction_trigger,
            compaction_max_bytes=compaction_max_bytes, compaction_file_percent=compaction_file_percent,
            write_only=write_only, schema_evolution=schema_evolution, partition_keys=partition_keys,
        )
        writer.catalog_retry_ms = catalog_retry_ms
        super().__init__(writer, window_ms, commit_retries)

    @classmethod
    def from_config(cls, config, window_ms: int | None = None) -> WriteToPaimon:
        """The transform a :class:`~beam_pixels.config.PixelsConfig` describes (``paimon.*`` keys)."""
        return cls(
            config.source_schema,
            config.paimon_table,
            config.catalog_properties("paimon"),
            database=config.paimon_database,
            bucket=config.paimon_bucket,
            window_ms=window_ms,
            commit_retries=config.paimon_commit_retries,
            catalog_retry_ms=config.catalog_retry_ms,
            table_options=config.table_properties("paimon"),
            compaction_trigger=config.paimon_compaction_trigger,
            compaction_max_bytes=config.paimon_compaction_max_mb * 2**20,
            compaction_file_percent=config.paimon_compaction_file_percent,
            write_only=config.paimon_write_only,
            schema_evolution=config.schema_evolution,
            partition_keys=config.paimon_partition_keys,
        )


# -- catalog options -----------------------------------------------------------------


def _catalog_options(properties: dict[str, str]) -> dict[str, str]:
    """pypaimon catalog options from ``paimon.catalog.*`` properties (``type`` becomes ``metastore``)."""
    options = dict(properties)
    catalog_type = options.pop("type", "filesystem")
    if catalog_type.lower() not in _CATALOG_TYPES:
        raise SinkConfigurationError(
            f"Paimon catalog property type={catalog_type!r} is not supported; accepted: "
            f"{' or '.join(_CATALOG_TYPES)} (both mean the filesystem catalog)"
        )
    options.setdefault("metastore", "filesystem")
    if not options.get("warehouse"):
        raise SinkConfigurationError(
            "Paimon catalog property 'warehouse' is missing; set paimon.catalog.warehouse to a local path, "
            "file:// or s3:// URI"
        )
    return options


def _redact(uri: str) -> str:
    """``uri`` without any user:password part."""
    return re.sub(r"//[^/@]*@", "//***@", uri)


def _check_key_and_options(table, expected: Schema, name: str) -> None:
    """Raise naming the primary key or option of ``table`` that differs from ``expected``."""
    problems = []
    if list(table.schema().primary_keys) != list(expected.primary_keys):
        problems.append(
            f"primary key is ({', '.join(table.schema().primary_keys)}) in the table, "
            f"({', '.join(expected.primary_keys)}) expected"
        )
    elif expected.primary_keys:
        options = private.table_options(table)
        problems += [
            f"table option {k}={options.get(k)!r}, {value!r} expected"
            for k, (value, unset) in _REQUIRED_PK_OPTIONS.items()
            if options.get(k, unset) != value
        ]
    if problems and table.table_schema.cross_partition_update():
        problems.append(f"its primary key lacks its partition keys ({', '.join(table.partition_keys)}): Paimon's "
                        f"cross-partition update mode, which pypaimon cannot write")
    if problems:
        raise SinkConfigurationError(
            f"Paimon table {name} does not fit source.schema: {'; '.join(problems)}. "
            f"Drop the table or point paimon.table.name at a new one."
        )


_INTEGERS = ("TINYINT", "SMALLINT", "INT", "BIGINT")
_TYPE_NAME = re.compile(r"^([A-Z_]+)(?:\((\d+)(?:,(\d+))?\))?$")


def _type_name(data_type) -> str:
    """A Paimon type as compared here: upper case, without blanks or NOT NULL (keys are never NULL)."""
    return re.sub(r"NOTNULL$", "", str(data_type).replace(" ", "").upper())


def _widens(old: str, new: str) -> bool:
    """Whether Paimon type ``new`` (a :func:`_type_name`) holds every value of ``old``: a wider integer,
    FLOAT -> DOUBLE, DECIMAL of more precision and the same scale, a longer VARCHAR or STRING."""
    o, n = _TYPE_NAME.match(old), _TYPE_NAME.match(new)
    if o is None or n is None:
        return False
    (old_kind, old_a, old_b), (new_kind, new_a, new_b) = o.groups(), n.groups()
    if old_kind in _INTEGERS and new_kind in _INTEGERS:
        return _INTEGERS.index(new_kind) > _INTEGERS.index(old_kind)
    if old_kind == "DECIMAL" and new_kind == "DECIMAL":
        return old_b == new_b and int(new_a) > int(old_a)
    if old_kind == "VARCHAR":
        return new_kind == "STRING" or (new_kind == "VARCHAR" and int(new_a) > int(old_a))
    return (old_kind, new_kind) == ("FLOAT", "DOUBLE")
