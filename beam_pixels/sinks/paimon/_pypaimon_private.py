"""Every use of pypaimon's private API, in one place (pypaimon 2.1).

The public API of pypaimon cannot do what the connector needs here; each hook
is listed with why, and ``tests/test_pypaimon_private.py`` fails loudly when a
pypaimon upgrade changes one of them.

Write path (:class:`StreamWrite`): ``TableWrite._create_file_store_write``,
``FileStoreWrite._create_data_writer`` / ``_prepare_commit_messages``,
``KeyValueDataWriter._write_data_to_file`` / ``_add_system_fields`` /
``_merge_pending_by_pk``, ``TableWrite._prepare_arrow_data``:

- Correctness: pypaimon records ``delete_row_count=0`` for files holding ``-D``
  rows, so a bucket whose only file holds deletes would read them back as live
  rows. :class:`KeyValueWriter` counts them, as Java Paimon does.
- Speed: pypaimon folds its write buffer and computes row kinds and system
  fields row by row in Python (~30k rows/s); here they run on whole columns,
  and the buckets' files are written in parallel.

Maintenance (compaction and snapshot expiration, which pypaimon 2.1 does not
have): reading a bucket's live files (manifest lists and manifests), reading a
data file's raw key-value rows, writing a compacted file that keeps the rows'
sequence numbers, committing a ``COMPACT`` snapshot through the table's
snapshot commit, and the table's path layout for deleting files.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pypaimon.write.file_store_write import FileStoreWrite
from pypaimon.write.table_write import StreamTableWrite
from pypaimon.write.writer.key_value_data_writer import KeyValueDataWriter

# pypaimon honours ``rowkind.field`` on write (and so can delete) only from 2.1 on.
ROW_KINDS_SUPPORTED = importlib.util.find_spec("pypaimon.write.row_kind") is not None


# -- write path: a delete-count fix and vectorised routing ----------------------------


class KeyValueWriter(KeyValueDataWriter):
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
        arrays.append(pa.array(row_kinds(self.options, data), type=pa.int8()))
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
            writer.__class__ = KeyValueWriter
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


class StreamWrite(StreamTableWrite):
    """A stream write whose primary-key buckets use :class:`KeyValueWriter`, and whose
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
        kinds = row_kinds(table.options, data)
        ignore_delete = table.options.ignore_delete()
        ignore_before = str(raw.get("ignore-update-before", "false")).lower() == "true"
        if not ignore_delete and not ignore_before:
            return data
        dropped = (ignore_delete & np.isin(kinds, (1, 3))) | (ignore_before & (kinds == 1))
        return data.filter(pa.array(~dropped))


# RowKind values in order: +I 0, -U 1, +U 2, -D 3.
_ROW_KIND_STRINGS = pa.array(["+I", "-U", "+U", "-D"])


def row_kinds(options, data) -> np.ndarray:
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

