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

pypaimon 2.1 internals this module hooks into (``TableWrite._create_file_store_write``,
``FileStoreWrite._create_data_writer``, ``KeyValueDataWriter._write_data_to_file``
and ``_merge_pending_by_pk``), see :class:`_KeyValueWriter`:

- Correctness: pypaimon records ``delete_row_count=0`` for files holding ``-D``
  rows, so a bucket whose only file holds deletes would read them back as live
  rows. The writer here counts them, as Java Paimon does.
- Speed: pypaimon assigns fixed buckets and folds its write buffer row by row in
  Python (~30k rows/s). Rows are routed here with a vectorised copy of Paimon's
  bucket hash for integer, date, text and binary keys (other key types keep
  pypaimon's routing), and the fold is skipped when a bucket's keys are already
  unique, which a collapsed commit guarantees.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import logging
import os
import re
import time
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pypaimon import CatalogFactory, Schema
from pypaimon.catalog.catalog_exception import TableNotExistException
from pypaimon.schema.data_types import AtomicType, DataField, PyarrowFieldParser
from pypaimon.write.file_store_write import FileStoreWrite
from pypaimon.write.table_write import StreamTableWrite
from pypaimon.write.writer.key_value_data_writer import KeyValueDataWriter

from beam_pixels.changes import changelog_rows, changelog_schema, collapse_to_final_state
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.config import SinkConfigurationError
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.committing import CommitConflict, TableWriter, WriteChanges, split_table_name

_LOG = logging.getLogger(__name__)

ROW_KIND_COLUMN = "_rowkind"
"""The ``rowkind.field`` column of primary-key tables: ``+I`` for live rows, ``-D`` for deletes."""


# pypaimon honours ``rowkind.field`` on write (and so can delete) only from 2.1 on.
ROW_KINDS_SUPPORTED = importlib.util.find_spec("pypaimon.write.row_kind") is not None

_CATALOG_TYPES = ("paimon", "filesystem")
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
    ):
        self.database, table = split_table_name(table_name, database, "paimon")
        if bucket < 1:
            raise SinkConfigurationError(f"Paimon bucket={bucket} is not valid; give a bucket count of at least 1")
        self.schema = schema
        self.table_name = f"{self.database}.{table}"
        self.bucket = bucket
        self.commit_user = commit_user or f"beam-pixels:{self.table_name}"
        self._catalog_options = _catalog_options(catalog_properties)
        self._table = None
        self._write_schema: pa.Schema | None = None

    def open(self) -> None:
        catalog = CatalogFactory.create(self._catalog_options)
        catalog.create_database(self.database, True)
        try:
            table = catalog.get_table(self.table_name)
            created = False
        except TableNotExistException:
            catalog.create_table(self.table_name, self._paimon_schema(), True)
            table = catalog.get_table(self.table_name)
            created = True
        _check_fits(table, self._paimon_schema(), self.table_name)
        self._table = table
        self._write_schema = PyarrowFieldParser.from_paimon_schema(table.table_schema.fields)
        _LOG.info(
            "Paimon warehouse %s: %s table %s (%s, commit user %s)",
            _redact(self._catalog_options["warehouse"]),
            "created" if created else "using existing",
            self.table_name,
            f"primary key {', '.join(self.schema.primary_key)}, {table.options.bucket()} buckets"
            if self.schema.primary_key
            else "append-only changelog",
            self.commit_user,
        )

    def last_checkpoint(self) -> Checkpoint:
        snapshot = self._last_own_snapshot()
        if snapshot is None:
            return Checkpoint()
        return Checkpoint.from_properties(snapshot.properties) or Checkpoint(snapshot.commit_identifier)

    def read_table(self) -> pa.Table:
        builder = self._table.new_read_builder()
        rows = builder.new_read().to_arrow(builder.new_scan().plan().splits())
        return rows.drop_columns([ROW_KIND_COLUMN]) if ROW_KIND_COLUMN in rows.column_names else rows

    def prepare(self, records: pa.Table) -> list:
        """Write the final state per key (``+I`` / ``-D`` rows) or, without a key, the
        changelog; returns pypaimon's commit messages for :meth:`commit_prepared`."""
        if self.schema.primary_key:
            rows = self._final_state_rows(records)
        else:
            rows = changelog_rows(records, self.schema)
        rows = rows.select(self._write_schema.names).cast(self._write_schema)
        write = _StreamWrite(self._table, self.commit_user)
        try:
            self._write(write, rows)
            # The identifier is the commit's business (commit_prepared); messages do not keep it.
            return write.prepare_commit(self.last_checkpoint().batch_id + 1)
        finally:
            write.close()

    def commit_prepared(self, parts: list[list], checkpoint: Checkpoint) -> int:
        """One stream commit of every part's messages: commit identifier = batch id, the
        checkpoint in the snapshot properties. A batch id the table holds is refused."""
        last = self.last_checkpoint()
        if checkpoint.batch_id <= last.batch_id:
            raise CommitConflict(
                f"{self.table_name} already holds batch {last.batch_id} of commit user {self.commit_user}; "
                f"batch {checkpoint.batch_id} must not be committed again"
            )
        committer = self._table.new_stream_write_builder()
        committer.commit_user = self.commit_user
        commit = committer.new_commit()
        try:
            messages = [message for part in parts for message in part]
            commit.commit(messages, checkpoint.batch_id, snapshot_properties=checkpoint.to_properties())
        except RuntimeError as e:
            if str(e).startswith("Commit failed"):  # pypaimon gave up retrying its atomic snapshot commit
                raise CommitConflict(str(e)) from e
            raise
        finally:
            commit.close()
        return self._last_own_snapshot().id

    def close(self) -> None:
        self._table = None

    # -- helpers -----------------------------------------------------------------

    def _paimon_schema(self) -> Schema:
        """The Paimon schema this writer creates and expects."""
        key = self.schema.primary_key
        if key:
            columns = [(c.name, c.type.to_paimon(), c.name not in key) for c in self.schema.columns]
            columns.append((ROW_KIND_COLUMN, "STRING", False))
            options = {"bucket": str(self.bucket), "rowkind.field": ROW_KIND_COLUMN}
        else:
            source_types = {c.name: c.type.to_paimon() for c in self.schema.columns}
            columns = [
                (f.name, source_types.get(f.name) or PyarrowFieldParser.to_paimon_type(f.type, True).type, f.nullable)
                for f in changelog_schema(self.schema)
            ]
            options = {}
        fields = [DataField(i, name, AtomicType(kind, nullable)) for i, (name, kind, nullable) in enumerate(columns)]
        return Schema(fields, primary_keys=list(key), options=options)

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
        """Write ``rows`` bucket by bucket when their buckets can be computed here, else let pypaimon route."""
        buckets = None
        if self.schema.primary_key:
            fields = self._table.table_schema.logical_bucket_key_fields
            keys = rows.select([f.name for f in fields])
            buckets = bucket_ids(keys, [f.type.type for f in fields], self._table.options.bucket())
        if buckets is None:
            write.write_arrow(rows)
            return
        order = np.argsort(buckets, kind="stable")
        rows = rows.take(pa.array(order))
        counts = np.bincount(buckets, minlength=self._table.options.bucket())
        start = 0
        for b, count in enumerate(counts):
            if count:
                write.write_arrow(rows.slice(start, count), bucket=b)
            start += count

    def _last_own_snapshot(self):
        """The newest snapshot committed by our commit user, or None."""
        manager = self._table.snapshot_manager()
        snapshot = manager.get_latest_snapshot()
        while snapshot is not None and snapshot.commit_user != self.commit_user:
            # None once past the first snapshot or an expired one
            snapshot = manager.get_snapshot_by_id(snapshot.id - 1) if snapshot.id > 1 else None
        return snapshot



class WriteToPaimon(beam.PTransform):
    """Commit a PCollection of ``ChangeBatch`` to a Paimon table exactly once.

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
    ):
        super().__init__()
        self._writer = PaimonTableWriter(schema, table_name, catalog_properties, database=database, bucket=bucket)
        self._window_ms = window_ms
        self._commit_retries = commit_retries

    @classmethod
    def from_config(cls, config: Any, window_ms: int | None = None) -> "WriteToPaimon":
        """The sink a ``PixelsConfig`` describes (``paimon.*`` keys)."""
        return cls(
            config.source_schema,
            config.paimon_table,
            config.catalog_properties("paimon"),
            database=config.paimon_database,
            bucket=config.paimon_bucket,
            window_ms=window_ms,
            commit_retries=config.paimon_commit_retries,
        )

    @property
    def writer(self) -> TableWriter:
        """The table writer this transform commits with (e.g. to read the last checkpoint)."""
        return self._writer

    def expand(self, batches):
        return batches | WriteChanges(self._writer, self._window_ms, self._commit_retries)


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


def _check_fits(table, expected: Schema, name: str) -> None:
    """Raise naming every column, key or option of ``table`` that differs from ``expected``."""
    actual = {f.name: str(f.type) for f in table.table_schema.fields}
    wanted = {f.name: str(f.type) for f in expected.fields}
    problems = [f"column {n!r} is missing from the table (expected {t})" for n, t in wanted.items() if n not in actual]
    problems += [f"column {n!r} is not in source.schema" for n in actual if n not in wanted]
    problems += [
        f"column {n!r} is {actual[n]} in the table, {t} expected"
        for n, t in wanted.items()
        if n in actual and _normal(actual[n]) != _normal(t)
    ]
    if list(table.table_schema.primary_keys) != list(expected.primary_keys):
        problems.append(
            f"primary key is ({', '.join(table.table_schema.primary_keys)}) in the table, "
            f"({', '.join(expected.primary_keys)}) expected"
        )
    elif expected.primary_keys:
        options = table.options.options.to_map()
        problems += [
            f"table option {k}={options.get(k)!r}, {value!r} expected"
            for k, (value, unset) in _REQUIRED_PK_OPTIONS.items()
            if options.get(k, unset) != value
        ]
    if problems:
        raise SinkConfigurationError(
            f"Paimon table {name} does not fit source.schema: {'; '.join(problems)}. "
            f"Drop the table or point paimon.table.name at a new one."
        )


def _normal(type_name: str) -> str:
    return type_name.replace(" ", "").upper()


# -- pypaimon 2.1 write path: a delete-count fix and vectorised routing ---------------


def _sequence_floor() -> int:
    """The lowest sequence number a write may start from: the wall clock in nanoseconds.

    pypaimon starts a write's sequence numbers after the highest one the table's latest
    snapshot holds. On a streaming runner the next window's data files are written while
    the previous window's commit is still pending, so both would start from the same
    snapshot and a key changed in both could keep its older value. Windows of one poll
    group are written one after the other, so the clock orders them (with room for a
    million rows per millisecond between writes).
    """
    return time.time_ns()


class _KeyValueWriter(KeyValueDataWriter):
    """pypaimon 2.1's primary-key file writer with two fixes.

    It records retractions (``-U``/``-D``) in the file's ``delete_row_count``:
    pypaimon writes 0, and every Paimon reader then takes a bucket's lone
    level-0 file as raw-convertible and returns its ``-D`` rows as live rows.
    And it skips the row-by-row buffer fold when the keys are already unique.
    """

    def _write_data_to_file(self, data: pa.Table) -> None:
        written = len(self.committed_files)
        super()._write_data_to_file(data)
        if len(self.committed_files) > written:
            kinds = data.column("_VALUE_KIND").to_numpy()
            self.committed_files[-1].delete_row_count = int(np.count_nonzero((kinds == 1) | (kinds == 3)))

    def _add_system_fields(self, data: pa.RecordBatch) -> pa.RecordBatch:
        """pypaimon's ``_KEY_*``, ``_SEQUENCE_NUMBER`` and ``_VALUE_KIND`` columns, built
        with numpy and Arrow instead of a Python call per row."""
        if not ROW_KINDS_SUPPORTED:
            return super()._add_system_fields(data)
        n = data.num_rows
        names, arrays = [], []
        for pk_key in self.trimmed_primary_keys:
            if pk_key in data.schema.names:
                field = data.schema.field(pk_key)
                names.append(pa.field(f"_KEY_{pk_key}", field.type, nullable=field.nullable))
                arrays.append(data.column(pk_key))
        generator = self.sequence_generator
        arrays.append(pa.array(np.arange(generator.current + 1, generator.current + 1 + n, dtype=np.int64)))
        generator.current += n
        names.append(pa.field("_SEQUENCE_NUMBER", pa.int64(), nullable=False))
        arrays.append(pa.array(_row_kinds(self.options, data), type=pa.int8()))
        names.append(pa.field("_VALUE_KIND", pa.int8(), nullable=False))
        names.extend(data.schema)
        arrays.extend(data.columns)
        return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(names))

    def _merge_pending_by_pk(self, data: pa.Table) -> pa.Table:
        n = data.num_rows
        if n < 2:
            return data
        repeated = None
        for name in self.trimmed_primary_keys:
            column = data.column(name)
            same = pc.equal(column.slice(1), column.slice(0, n - 1))
            repeated = same if repeated is None else pc.and_(repeated, same)
        if not pc.any(repeated).as_py():  # sorted by key: no neighbours equal, no duplicates
            return data
        return super()._merge_pending_by_pk(data)


class _FileStoreWrite(FileStoreWrite):
    def _create_data_writer(self, partition, bucket, options):
        writer = super()._create_data_writer(partition, bucket, options)
        if type(writer) is KeyValueDataWriter:
            writer.__class__ = _KeyValueWriter
            if not hasattr(self, "_floor"):
                self._floor = _sequence_floor()  # one per write: its buckets start alike
            generator = writer.sequence_generator
            generator.start = generator.current = max(generator.current, self._floor)
        return writer

    def _prepare_commit_messages(self, commit_identifier):
        """pypaimon's, with the buckets' pending rows written to their files at once (a
        thread per bucket, up to the cores: pyarrow writes Parquet without the GIL).
        A writer's ``prepare_commit`` only writes what is pending, so pypaimon then
        finds every bucket written and collects the files."""
        writers = list(self.data_writers.values())
        workers = min(len(writers), os.cpu_count() or 1)
        if workers > 1:
            with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="paimon-write") as pool:
                list(pool.map(lambda writer: writer.prepare_commit(), writers))
        return super()._prepare_commit_messages(commit_identifier)


class _StreamWrite(StreamTableWrite):
    """A stream write whose primary-key buckets use :class:`_KeyValueWriter`, and whose
    row-kind check runs on whole columns."""

    def _create_file_store_write(self, commit_user):
        return _FileStoreWrite(self.table, commit_user)

    def _prepare_arrow_data(self, data):
        """pypaimon's checks and ``rowkind.field`` filter (``pypaimon.write.row_kind.
        filter_write_batch``) with the row kinds computed per column, not per row."""
        table = getattr(self, "table", None)
        if table is None or not ROW_KINDS_SUPPORTED:
            return super()._prepare_arrow_data(data)
        from pypaimon.schema.arrow_schema import normalize_arrow_strings

        self._validate_pyarrow_schema(data.schema)
        data = normalize_arrow_strings(data)
        raw = table.options.options.to_map()
        if not table.is_primary_key_table or "rowkind.field" not in raw:
            return data
        kinds = _row_kinds(table.options, data)
        ignore_delete = table.options.ignore_delete()
        ignore_before = str(raw.get("ignore-update-before", "false")).lower() == "true"
        if not ignore_delete and not ignore_before:
            return data
        dropped = (ignore_delete & np.isin(kinds, (1, 3))) | (ignore_before & (kinds == 1))
        return data.filter(pa.array(~dropped))


# RowKind values in order: +I 0, -U 1, +U 2, -D 3.
_ROW_KIND_STRINGS = pa.array(["+I", "-U", "+U", "-D"])


def _row_kinds(options, data) -> np.ndarray:
    """``pypaimon.write.row_kind.row_kinds`` as an int8 array, with its errors."""
    name = options.options.to_map().get("rowkind.field")
    if name is None:
        return np.zeros(data.num_rows, dtype=np.int8)
    if name not in data.schema.names:
        raise ValueError("Cannot find rowkind field %s in table schema" % name)
    column = data.column(name)
    if not pa.types.is_string(column.type):
        raise ValueError("rowkind.field column must be a string")
    kinds = pc.index_in(column, value_set=_ROW_KIND_STRINGS)
    if kinds.null_count:
        first = column[pc.index(pc.is_null(kinds), True).as_py()].as_py()
        raise ValueError(f"Unknown row kind string: {first}")
    return kinds.to_numpy(zero_copy_only=False).astype(np.int8)


_INT_KEYS = {"TINYINT": "<i1", "SMALLINT": "<i2", "INT": "<i4", "INTEGER": "<i4", "BIGINT": "<i8", "DATE": "<i4"}
_BYTES_KEYS = ("CHAR", "VARCHAR", "STRING", "BINARY", "VARBINARY", "BYTES")
_MAX_KEY_ROW_BYTES = 512
_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def bucket_ids(keys: pa.Table, type_names: list[str], num_buckets: int) -> np.ndarray | None:
    """Paimon's fixed bucket of each key row, or None for key types not covered here.

    Paimon hashes the key's BinaryRow bytes (8-byte header, one 8-byte slot per
    field, text/binary over 7 bytes in a word-aligned tail) with murmur3-32 over
    4-byte words, seed 42, and takes ``abs(hash % buckets)`` in Java arithmetic.
    """
    n, arity = keys.num_rows, keys.num_columns
    header = ((arity + 63 + 8) // 64) * 8
    fixed = header + 8 * arity
    plans = []
    tail = np.zeros(n, np.int64)
    for column, type_name in zip(keys.columns, type_names):
        column = column.combine_chunks()
        base = type_name.split("(")[0].upper()
        if column.null_count or not (base in _INT_KEYS or base in _BYTES_KEYS):
            return None
        if base in _INT_KEYS:
            plans.append((column.to_numpy(zero_copy_only=False).astype(_INT_KEYS[base]), None))
            continue
        column = column.cast(pa.binary())
        offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset : column.offset + n + 1]
        lengths = np.diff(offsets).astype(np.int64)
        plans.append((column, (offsets, lengths, tail.copy())))
        tail += np.where(lengths > 7, (lengths + 7) // 8 * 8, 0)
    width = fixed + int(tail.max(initial=0))
    if width > _MAX_KEY_ROW_BYTES:
        return None

    rows = np.zeros((n, width), np.uint8)
    for i, (values, var) in enumerate(plans):
        slot = header + 8 * i
        if var is None:
            rows[:, slot : slot + values.itemsize] = values.view(np.uint8).reshape(n, values.itemsize)
            continue
        offsets, lengths, tail_before = var
        long = lengths > 7
        start = np.where(long, fixed + tail_before, slot)
        data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        row_of_byte = np.repeat(np.arange(n), lengths)
        position = np.arange(len(data)) - np.repeat(offsets[:-1] - offsets[0], lengths)
        rows[row_of_byte, start[row_of_byte] + position] = data
        rows[~long, slot + 7] = 0x80 | lengths[~long]
        pointer = ((fixed + tail_before) << 32 | lengths).astype("<i8")
        rows[long, slot : slot + 8] = pointer[long].view(np.uint8).reshape(-1, 8)

    words = rows.view("<u4")
    word_count = (fixed + tail) // 4
    h = np.full(n, 42, np.uint32)
    for j in range(words.shape[1]):
        k = words[:, j] * _C1
        k = ((k << np.uint32(15)) | (k >> np.uint32(17))) * _C2
        mixed = h ^ k
        mixed = ((mixed << np.uint32(13)) | (mixed >> np.uint32(19))) * np.uint32(5) + np.uint32(0xE6546B64)
        h = np.where(j < word_count, mixed, h)
    h ^= (word_count * 4).astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return np.abs(np.fmod(h.view(np.int32).astype(np.int64), num_buckets))
