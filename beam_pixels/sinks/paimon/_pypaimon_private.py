"""Every use of pypaimon's private API, in one place (pypaimon 2.1).

The public API of pypaimon cannot do what the connector needs here; each hook
is listed with why, and ``tests/test_pypaimon_private.py`` fails loudly when a
pypaimon upgrade changes one of them.

Write path (:class:`StreamWrite`): ``TableWrite._create_file_store_write``,
``FileStoreWrite._create_data_writer`` / ``_prepare_commit_messages`` /
``_seq_number_stats``, ``KeyValueDataWriter._write_data_to_file`` /
``_add_system_fields`` / ``_sort_by_primary_key`` / ``_merge_pending_by_pk`` /
``_write_parquet_data`` (with the writer's ``compression``, ``zstd_level`` and
``parquet_writer_options``), ``TableWrite._prepare_arrow_data`` / ``_write_precomputed_bucket``:

- Correctness: pypaimon records ``delete_row_count=0`` for files holding ``-D``
  rows, so a bucket whose only file holds deletes would read them back as live
  rows. :class:`KeyValueWriter` counts them, as Java Paimon does.
- Speed: pypaimon folds its write buffer and computes row kinds and system
  fields row by row in Python (~30k rows/s); here they run on whole columns,
  and the buckets' files are written in parallel. It also reads every manifest
  of the table at each write for the buckets' highest sequence numbers
  (:class:`_SequenceFloors` reads them once per process) and checks row by row
  that a precomputed bucket's rows share a partition; the writer keeps each new
  file's key columns for the key index, which would otherwise read them back.
- Size: pypaimon's Parquet options are the same for every column; here each column gets
  its encoding and zstd level (:func:`parquet_encodings`, :func:`zstd_levels`).

Table metadata: the options map (``options.options.to_map()``), the schema id, the
file system (``file_io``), and Arrow/Paimon type conversion (``PyarrowFieldParser``).

Maintenance (compaction and snapshot expiration, which pypaimon 2.1 does not
have): reading a bucket's live files (manifest lists and manifests), reading a
data file's raw key-value rows, writing a compacted file that keeps the rows'
sequence numbers, committing a ``COMPACT`` snapshot through the table's
snapshot commit, and the table's path layout for deleting files.
"""

from __future__ import annotations

import array

import concurrent.futures
import importlib.util
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pypaimon.common.time_utils import parse_duration  # Paimon's duration syntax, e.g. "1 h", "30 min"
from pypaimon.schema.data_types import PyarrowFieldParser
from pypaimon.write.file_store_write import FileStoreWrite
from pypaimon.write.table_write import StreamTableWrite
from pypaimon.write.writer.key_value_data_writer import KeyValueDataWriter

# pypaimon honours ``rowkind.field`` on write (and so can delete) only from 2.1 on.
ROW_KINDS_SUPPORTED = importlib.util.find_spec("pypaimon.write.row_kind") is not None


# -- write path: a delete-count fix and vectorised routing ----------------------------


class KeyValueWriter(KeyValueDataWriter):
    """pypaimon 2.1's primary-key file writer with three fixes.

    It records retractions (``-U``/``-D``) in the file's ``delete_row_count``:
    pypaimon writes 0, and every Paimon reader then takes a bucket's lone
    level-0 file as raw-convertible and returns its ``-D`` rows as live rows.
    It skips the row-by-row buffer fold when the keys are already unique.
    It dictionary-encodes only the columns that repeat, picks a leaner encoding for
    the others (:func:`parquet_encodings`) and compresses floating-point columns a level
    harder (:func:`zstd_levels`). And
    with ``max_rows_per_file`` it writes files of about that many rows, in even parts (the
    nearest count of parts: 1.4 times as many rows stay one file, rather than two files of
    0.7; a deletion vector spends up to 8 KB on each file's every 65,536 rows, so halves
    of files would cost twice as much of it). With ``written_keys`` it keeps the key columns
    of every file it writes, in file order (the key index takes them without reading the
    files back).
    """

    max_rows_per_file: int | None = None
    key_columns: list[str] = []
    written_keys: dict[str, pa.Table] | None = None  # data file name -> its rows' key columns, in file order

    def _roll_write(self, data: pa.Table) -> None:
        limit = self.max_rows_per_file
        parts = max(1, round(data.num_rows / limit)) if limit else 1
        if parts == 1:
            return super()._roll_write(data)
        size = -(-data.num_rows // parts)
        for start in range(0, data.num_rows, size):
            super()._roll_write(data.slice(start, size))

    def _write_parquet_data(self, path, data):
        dictionary, encodings = parquet_encodings(data)
        self.parquet_writer_options = dict(self.parquet_writer_options, use_dictionary=dictionary,
                                           column_encoding=encodings)
        level = self.zstd_level
        if str(self.compression).lower() == "zstd":
            self.zstd_level = zstd_levels(data.schema, level)  # pypaimon passes it on as pyarrow's compression_level
        try:
            return super()._write_parquet_data(path, data)
        finally:
            self.zstd_level = level

    def _write_data_to_file(self, data: pa.Table) -> None:
        written = len(self.committed_files)
        super()._write_data_to_file(data)
        if len(self.committed_files) > written:
            kinds = data.column("_VALUE_KIND").to_numpy()
            meta = self.committed_files[-1]
            meta.delete_row_count = int(np.count_nonzero((kinds == 1) | (kinds == 3)))
            if self.written_keys is not None:
                self.written_keys[meta.file_name] = data.select(self.key_columns)

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

    def _sort_by_primary_key(self, data):
        """pypaimon's sort (key, then sequence fields and number), which took 40% of writing
        the files: skipped when the keys already strictly increase (a commit's rows come one
        per key, often in key order: inserts of growing ids), and done by numpy for a key of
        one integer column without duplicates (:func:`unique_integer_order`)."""
        keys = [data.column(name) for name in self.trimmed_primary_keys]
        if strictly_increasing(keys):
            return data
        order = unique_integer_order(keys)
        if order is not None:
            return data.take(order)
        return super()._sort_by_primary_key(data)

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


def strictly_increasing(columns: list) -> bool:
    """Whether the rows of ``columns`` (equal-length Arrow arrays) strictly increase in
    lexicographic order, as Arrow's ascending sort orders them; a null makes it False."""
    n = len(columns[0]) if columns else 0
    if n < 2:
        return True
    less = None
    for column in reversed(columns):
        earlier, later = column.slice(0, n - 1), column.slice(1)
        step = pc.less(earlier, later)
        less = step if less is None else pc.or_(step, pc.and_(pc.equal(earlier, later), less))
    return bool(pc.all(pc.fill_null(less, False)).as_py())


def unique_integer_order(columns: list) -> np.ndarray | None:
    """The ascending order of a key of one integer column without nulls, by numpy's sort
    (a sixth of Arrow's time for a bucket's rows); None for other keys, and when values
    repeat (their rows must keep the order of their sequence numbers, which numpy's sort
    does not promise)."""
    if len(columns) != 1 or not pa.types.is_integer(columns[0].type) or columns[0].null_count:
        return None
    values = columns[0].to_numpy()
    order = np.argsort(values)
    return order if np.all(np.diff(values[order]) > 0) else None


def parquet_encodings(data: pa.Table, sample: int = 1024) -> tuple[list[str], dict[str, str]]:
    """How each column of a file is encoded: the columns worth a Parquet dictionary, and an
    encoding for the others, judged on an even sample of ``sample`` rows (counting all of
    them cost as much as writing the file).

    A dictionary where at most half the sampled values are distinct: pyarrow's default
    dictionary-encodes every column until the dictionary reaches 1 MB, so a file of unique
    keys, sequence numbers or random strings stores each value twice (dictionary and
    index), 30-45% more bytes than plain-encoded and compressed ones. Of the others,
    integers, dates and timestamps get ``DELTA_BINARY_PACKED`` (a file's sorted keys and
    its sequence numbers take about half a byte a row instead of one), and strings whose
    sampled values all have one length ``DELTA_LENGTH_BYTE_ARRAY`` (hashes, UUIDs, codes:
    the lengths vanish instead of breaking up the bytes); strings of varied lengths
    compress better plain. Paimon's Java reader (1.3) refuses ``BYTE_STREAM_SPLIT`` and
    misreads ``DELTA_LENGTH_BYTE_ARRAY`` binaries of a fixed size, so floating-point
    numbers and binaries stay plain. Nested columns keep pyarrow's defaults.
    """
    rows = data.take(np.linspace(0, data.num_rows - 1, sample).astype(np.int64)) if data.num_rows > sample else data
    dictionary, encodings = [], {}
    for name, column in zip(rows.column_names, rows.columns):
        kind = column.type
        if pa.types.is_nested(kind):
            continue
        if pc.count_distinct(column).as_py() * 2 <= len(column):
            dictionary.append(name)
        elif pa.types.is_integer(kind) or pa.types.is_temporal(kind):
            encodings[name] = "DELTA_BINARY_PACKED"
        elif (pa.types.is_string(kind) or pa.types.is_large_string(kind)) \
                and pc.count_distinct(pc.binary_length(column)).as_py() == 1:
            encodings[name] = "DELTA_LENGTH_BYTE_ARRAY"
    return dictionary, encodings


FLOAT_ZSTD_LEVEL = 2


def zstd_levels(schema: pa.Schema, level: int) -> int | dict[str, int]:
    """The zstd level of each column: the table's (``file.compression.zstd-level``, 1 by
    default), but at least :data:`FLOAT_ZSTD_LEVEL` for floating-point columns. At level 1
    zstd leaves doubles that hold decimal values (prices, amounts: 12345.67) 30-40% bigger
    than at level 2, which writes them about 15 ns a value slower; other columns gain
    nothing from level 2, and strings lose a little."""
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    if not floats or level >= FLOAT_ZSTD_LEVEL:
        return level
    return {**{name: level for name in schema.names}, **{name: FLOAT_ZSTD_LEVEL for name in floats}}


class _SequenceFloors:
    """Where a primary-key write's sequence numbers start, per table (its path).

    pypaimon starts a write's sequence numbers after the highest one the table's latest
    snapshot holds, found by reading every manifest of the table at every write (a cost that
    grows with the table). And on a streaming runner the next window's data files are written
    while the previous window's commit is still pending, so both would start from the same
    snapshot and a key changed in both could keep its older value. So here a write starts
    above the highest number this process has handed out for the table (its windows of a
    poll group are written one after the other) and above the table's highest when this
    process first wrote it (read once), and no lower than the wall clock in nanoseconds,
    which orders the writes of processes that follow each other (with room for a million
    rows per millisecond between writes).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._highest: dict[str, int] = {}

    def floor(self, table) -> int:
        """The first sequence number of a new write of ``table``, reserved."""
        path = table.table_path
        with self._lock:
            known = path in self._highest
        found = -1 if known else max_sequence_number(table)
        with self._lock:
            floor = max(time.time_ns(), found + 1, self._highest.get(path, -1) + 1)
            self._highest[path] = floor
        return floor

    def used(self, table, highest: int) -> None:
        """Record that a write of ``table`` handed out numbers up to ``highest``."""
        with self._lock:
            self._highest[table.table_path] = max(self._highest.get(table.table_path, -1), highest)


SEQUENCE_FLOORS = _SequenceFloors()


def max_sequence_number(table) -> int:
    """The highest sequence number of any data file the table's latest snapshot lists (-1: none)."""
    from pypaimon.manifest.manifest_file_manager import ManifestFileManager

    snapshot = latest_snapshot(table)
    if snapshot is None:
        return -1
    manifests = _manifest_lists()(table).read_all(snapshot)
    entries = ManifestFileManager(table).read_entries_parallel(manifests, drop_stats=True, max_workers=4)
    return max((e.file.max_sequence_number for e in entries), default=-1)


class _FileStoreWrite(FileStoreWrite):
    max_rows_per_file: int | None = None
    key_columns: list[str] | None = None

    def __init__(self, table, commit_user):
        super().__init__(table, commit_user)
        self.written_keys: dict[str, pa.Table] = {}

    def _seq_number_stats(self, partition):
        """Primary-key tables: none; :data:`SEQUENCE_FLOORS` sets where writes start, without
        reading the table's manifests at every write."""
        return {} if self.table.is_primary_key_table else super()._seq_number_stats(partition)

    def _create_data_writer(self, partition, bucket, options):
        writer = super()._create_data_writer(partition, bucket, options)
        if type(writer) is KeyValueDataWriter:
            writer.__class__ = KeyValueWriter
            writer.max_rows_per_file = self.max_rows_per_file
            if self.key_columns is not None:
                writer.key_columns, writer.written_keys = self.key_columns, self.written_keys
            if not hasattr(self, "_floor"):
                self._floor = SEQUENCE_FLOORS.floor(self.table)  # one per write: its buckets start alike
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
        messages = super()._prepare_commit_messages(commit_identifier)
        if writers and hasattr(self, "_floor"):
            SEQUENCE_FLOORS.used(self.table, max(w.sequence_generator.current for w in writers))
        return messages


class StreamWrite(StreamTableWrite):
    """A stream write whose primary-key buckets use :class:`KeyValueWriter`, and whose
    row-kind check runs on whole columns."""

    def _create_file_store_write(self, commit_user):
        return _FileStoreWrite(self.table, commit_user)

    def limit_file_rows(self, max_rows: int) -> None:
        """Write primary-key files of at most ``max_rows`` rows each (in even parts)."""
        self.file_store_write.max_rows_per_file = max_rows

    def keep_keys(self, stored_key_columns: list[str]) -> None:
        """Keep these columns (:func:`stored_key_columns`) of every primary-key file written,
        for :meth:`written_keys`."""
        self.file_store_write.key_columns = list(stored_key_columns)

    def written_keys(self, messages: list) -> dict[str, pa.Table]:
        """The kept key columns (:meth:`keep_keys`) of every new file of ``messages``, in file order."""
        kept = self.file_store_write.written_keys
        names = [meta.file_name for message in messages for meta in message.new_files]
        missing = [name for name in names if name not in kept]
        if missing:
            raise RuntimeError(f"{self.table.table_path}: no key columns kept for data file {missing[0]}; "
                               f"call keep_keys before writing")
        return {name: kept[name] for name in names}

    def _write_precomputed_bucket(self, data, bucket):
        """pypaimon's, for fixed-bucket tables without its check, row by row in Python (a
        second per million rows), that every row is of the first row's partition: the caller
        (:meth:`~beam_pixels.sinks.paimon.writer.PaimonTableWriter._write`) groups rows by
        partition and bucket."""
        from pypaimon.table.bucket_mode import BucketMode

        if self.table.bucket_mode() != BucketMode.HASH_FIXED:
            return super()._write_precomputed_bucket(data, bucket)
        if not 0 <= bucket < self.table.options.bucket():
            raise ValueError(f"Bucket id must be between 0 and {self.table.options.bucket() - 1}")
        data = self._prepare_arrow_data(data)
        if data.num_rows:
            (partition,) = self.row_key_extractor.extract_partitions_batch(data.slice(0, 1))
            self._write_partition_bucket_batch(tuple(partition), bucket, data)

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



# -- maintenance: live files, raw key-value rows, compacted files, COMPACT snapshots ---

SEQUENCE_COLUMN = "_SEQUENCE_NUMBER"
VALUE_KIND_COLUMN = "_VALUE_KIND"
KEY_PREFIX = "_KEY_"
FILE_SOURCE_COMPACT = 1  # DataFileMeta.file_source: 0 append, 1 compact


def stored_key_columns(table, key_columns: list[str]) -> list[str]:
    """The columns of the table's primary-key data files that hold ``key_columns``: ``_KEY_<k>``
    for Paimon's key fields (the primary key less the partition keys), the value column ``<k>``
    for a partition key (constant within a file, so not among the key fields)."""
    key_fields = set(table.trimmed_primary_keys)
    return [KEY_PREFIX + k if k in key_fields else k for k in key_columns]


class CompactionConflict(Exception):
    """Another commit removed a file this compaction meant to replace; nothing was committed."""


def table_options(table) -> dict[str, str]:
    """The table's options as a plain map."""
    return dict(table.options.options.to_map())


def schema_id(table) -> int:
    """The id of the table's current schema (data files record the one they were written with)."""
    return table.table_schema.id


def arrow_schema(table) -> pa.Schema:
    """The Arrow schema pypaimon writes the table's rows with (exact types, as writes need)."""
    return PyarrowFieldParser.from_paimon_schema(table.table_schema.fields)


def arrow_type(data_field) -> pa.DataType:
    """The Arrow type of one of the table's fields."""
    return PyarrowFieldParser.from_paimon_field(data_field).type


def paimon_type(arrow: pa.DataType):
    """The nullable Paimon type pypaimon gives an Arrow type."""
    return PyarrowFieldParser.to_paimon_type(arrow, True).type


def file_io(table):
    """The table's file system (``delete_quietly(path)``, ``get_file_size(path)``)."""
    return table.file_io


def latest_snapshot(table):
    return table.snapshot_manager().get_latest_snapshot()


def snapshot_by_id(table, snapshot_id: int):
    return table.snapshot_manager().get_snapshot_by_id(snapshot_id)


def own_latest_snapshot(table, commit_user: str, latest=None):
    """``commit_user``'s newest snapshot (up to ``latest``, default the table's latest), or None."""
    snapshot = latest_snapshot(table) if latest is None else latest
    while snapshot is not None and snapshot.commit_user != commit_user:  # None past the first or an expired one
        snapshot = snapshot_by_id(table, snapshot.id - 1) if snapshot.id > 1 else None
    return snapshot


def earliest_snapshot_id(table) -> int | None:
    """The id of the oldest snapshot file present (the ``EARLIEST`` hint, then a probe)."""
    manager = table.snapshot_manager()
    hint = f"{manager.snapshot_dir}/EARLIEST"
    start = 1
    if manager.file_io.exists(hint):
        text = manager.file_io.read_file_utf8(hint).strip()
        start = int(text) if text.isdigit() else 1
    latest = manager.get_latest_snapshot()
    if latest is None:
        return None
    for snapshot_id in range(start, latest.id + 1):
        if manager.file_io.exists(manager.get_snapshot_path(snapshot_id)):
            return snapshot_id
    return latest.id


def write_earliest_hint(table, snapshot_id: int) -> None:
    manager = table.snapshot_manager()
    manager.file_io.write_file(f"{manager.snapshot_dir}/EARLIEST", str(snapshot_id), overwrite=True)


def snapshot_path(table, snapshot_id: int) -> str:
    return table.snapshot_manager().get_snapshot_path(snapshot_id)


def _manifest_lists():
    from pypaimon.manifest.manifest_list_manager import ManifestListManager

    return ManifestListManager


def manifest_path(table, name: str) -> str:
    return f"{table.table_path.rstrip('/')}/manifest/{name}"


def manifest_list(table, snapshot) -> list:
    """The manifests (base and delta) a snapshot's data files are listed in."""
    return _manifest_lists()(table).read_all(snapshot)


def snapshot_metadata_files(table, snapshot) -> tuple[list[str], list[str]]:
    """(manifest list names, manifest file names) a snapshot references."""
    lists = _manifest_lists()(table)
    list_names = [n for n in (snapshot.base_manifest_list, snapshot.delta_manifest_list,
                              snapshot.changelog_manifest_list) if n]
    manifests = []
    for name, size in ((snapshot.base_manifest_list, snapshot.base_manifest_list_size),
                       (snapshot.delta_manifest_list, snapshot.delta_manifest_list_size),
                       (snapshot.changelog_manifest_list, snapshot.changelog_manifest_list_size)):
        if name:
            manifests += [m.file_name for m in lists.read(name, size)]
    return list_names, manifests


def delta_entries(table, snapshot) -> list:
    """The manifest entries (ADD kind 0, DELETE kind 1) a snapshot's delta records."""
    from pypaimon.manifest.manifest_file_manager import ManifestFileManager

    files = ManifestFileManager(table)
    entries = []
    for manifest in _manifest_lists()(table).read_delta(snapshot):
        entries += files.read(manifest.file_name, drop_stats=False, file_size=manifest.file_size)
    return entries


def live_entries(table, snapshot) -> list:
    """Every data file of ``snapshot`` as ADD manifest entries, with their stats."""
    from pypaimon.manifest.manifest_file_manager import ManifestFileManager

    manifests = _manifest_lists()(table).read_all(snapshot)
    return ManifestFileManager(table).read_entries_parallel(manifests, drop_stats=False, max_workers=4)


def entry_key(entry):
    """What makes two manifest entries the same file (hashable)."""
    return entry.identifier()


def entry_partition(entry) -> tuple:
    return tuple(entry.partition.values)


def data_file_paths(table, entry) -> list[str]:
    """The files on storage of one data file entry (the data file and its sidecars)."""
    from pypaimon.utils.file_store_path_factory import canonical_data_file_path

    meta = entry.file
    if not meta.external_path:
        meta.file_path = canonical_data_file_path(table, entry_partition(entry), entry.bucket, meta.file_name)
    return meta.collect_files()


def read_key_values(table, entry, columns: list[str] | None = None) -> pa.Table:
    """A primary-key data file's raw rows: ``_KEY_*``, ``_SEQUENCE_NUMBER``, ``_VALUE_KIND``
    and the value columns, as written (only ``columns`` when given)."""
    import pyarrow.parquet as pq

    path = data_file_paths(table, entry)[0]
    if not path.endswith(".parquet"):
        raise NotImplementedError(f"compaction reads Parquet data files only, not {path}")
    with table.file_io.new_input_stream(path) as stream:
        return pq.read_table(pa.BufferReader(stream.read()), columns=columns)


def write_compacted(table, partition: tuple, bucket: int, rows: pa.Table, level: int,
                    max_rows: int | None = None) -> list:
    """Write ``rows`` (sorted by key, one row per key, sequence numbers kept) as files of
    ``level`` (rolled at the table's target file size, and into even parts of about
    ``max_rows`` rows); returns their metas, uncommitted."""
    writer = KeyValueWriter(table=table, partition=partition, bucket=bucket, max_seq_number=0,
                            options=table.options)
    writer.max_rows_per_file = max_rows
    try:
        writer._roll_write(rows)
    except BaseException:
        writer.abort()
        raise
    files = list(writer.committed_files)
    for meta in files:
        meta.level = level
        meta.file_source = FILE_SOURCE_COMPACT
    return files


def delete_written(table, partition: tuple, bucket: int, files: list) -> None:
    """Delete files :func:`write_compacted` wrote that will not be committed."""
    for meta in files:
        for path in meta.collect_files():
            table.file_io.delete_quietly(path)


def new_entry(table, kind: int, partition: tuple, bucket: int, total_buckets: int, meta):
    from pypaimon.manifest.schema.manifest_entry import ManifestEntry
    from pypaimon.table.row.generic_row import GenericRow

    return ManifestEntry(kind=kind, partition=GenericRow(list(partition), table.partition_keys_fields),
                         bucket=bucket, total_buckets=total_buckets, file=meta)


def deleting(entry):
    """A DELETE entry for the file of ADD entry ``entry``."""
    from pypaimon.manifest.schema.manifest_entry import ManifestEntry

    return ManifestEntry(kind=1, partition=entry.partition, bucket=entry.bucket,
                         total_buckets=entry.total_buckets, file=entry.file)


def commit_compact(table, commit_user: str, commit_identifier: int, properties: dict | None, planned_on,
                   deleted: list, added: list, rewrite_manifests: bool, retries: int = 10, *,
                   commit_kind: str = "COMPACT", index_adds: list = (), index_deletes: list = (),
                   exclusive: bool = False):
    """One atomic snapshot (``COMPACT`` unless ``commit_kind`` says otherwise): ``deleted``
    (ADD entries live at ``planned_on``) replaced by ``added``, and the deletion-vector
    index files ``index_deletes`` replaced by ``index_adds``. With ``rewrite_manifests``
    the new snapshot's base manifests are rewritten as a fresh set holding every live
    file, bounding the manifest list.

    The snapshot carries ``commit_identifier`` and ``properties`` (the connector's
    checkpoint); a ``COMPACT`` one those of ``commit_user``'s newest snapshot when it is
    committed (a compaction that ran while the connector committed must not hand the
    table an older checkpoint), the given ones only if it has none. Raises :class:`CompactionConflict` when a newer snapshot deleted one of
    ``deleted`` or, with ``exclusive``, when any snapshot follows ``planned_on`` (changes
    planned from a deletion-vector index must see every commit); returns the new
    snapshot, or None when it lost the atomic race ``retries`` times.
    """
    import time
    import uuid

    from pypaimon.manifest.index_manifest_file import IndexManifestFile
    from pypaimon.manifest.manifest_file_manager import ManifestFileManager
    from pypaimon.snapshot.snapshot import Snapshot

    lists = _manifest_lists()(table)
    manifests = ManifestFileManager(table)
    target_size = table.options.manifest_target_size()
    changes = [deleting(e) for e in deleted] + list(added)
    wanted = {entry_key(e) for e in deleted}
    checked_up_to = planned_on.id if planned_on else 0
    for _ in range(retries):
        latest = latest_snapshot(table)
        if exclusive and (latest.id if latest else 0) != checked_up_to:
            raise CompactionConflict(f"snapshot {latest.id} ({latest.commit_kind} by {latest.commit_user}) "
                                     f"was committed after snapshot {checked_up_to} these changes were planned on")
        for snapshot_id in range(checked_up_to + 1, (latest.id if latest else 0) + 1):
            between = snapshot_by_id(table, snapshot_id)
            if between is None:
                raise CompactionConflict(f"snapshot {snapshot_id} is gone; cannot check the compaction against it")
            gone = [e for e in delta_entries(table, between) if e.kind == 1 and entry_key(e) in wanted]
            if gone:
                raise CompactionConflict(
                    f"snapshot {snapshot_id} ({between.commit_kind} by {between.commit_user}) already removed "
                    f"{gone[0].file.file_name}")
        checked_up_to = latest.id if latest else 0
        if commit_kind == "COMPACT":
            commit_identifier, properties = _own_checkpoint(table, commit_user, latest, commit_identifier, properties)
        name = uuid.uuid4()
        written_manifests, written_lists = [], []
        try:
            delta = manifests.rolling_write(changes, target_size, f"manifest-{name}-delta") if changes else []
            written_manifests += [m.file_name for m in delta]
            if rewrite_manifests:
                base = manifests.rolling_write(live_entries(table, latest), target_size, f"manifest-{name}-base")
                written_manifests += [m.file_name for m in base]
            else:
                base = lists.read_all(latest) if latest else []
            base_list, delta_list = f"manifest-list-{name}-0", f"manifest-list-{name}-1"
            base_size = lists.write(base_list, base)
            written_lists.append(base_list)
            delta_size = lists.write(delta_list, delta)
            written_lists.append(delta_list)
            index_manifest = latest.index_manifest if latest else None
            if index_adds or index_deletes:
                previous = index_manifest
                index_manifest = IndexManifestFile(table).combine_changes(previous, list(index_adds), list(index_deletes))
                if index_manifest != previous:
                    written_manifests.append(index_manifest)
            delta_rows = sum(e.file.row_count for e in added) - sum(e.file.row_count for e in deleted)
            snapshot = Snapshot(
                version=3, id=checked_up_to + 1, schema_id=table.table_schema.id,
                base_manifest_list=base_list, base_manifest_list_size=base_size,
                delta_manifest_list=delta_list, delta_manifest_list_size=delta_size,
                total_record_count=((latest.total_record_count or 0) if latest else 0) + delta_rows,
                delta_record_count=delta_rows,
                commit_user=commit_user, commit_identifier=commit_identifier,
                commit_kind=commit_kind, time_millis=int(time.time() * 1000),
                watermark=latest.watermark if latest else None, index_manifest=index_manifest,
                next_row_id=latest.next_row_id if latest else None,
                properties=dict(properties) if properties else None,
            )
            commit = table.new_snapshot_commit()
            with commit:
                if commit.commit(latest.uuid if latest else None, snapshot, []):
                    return snapshot
        except BaseException:
            _delete_metadata(table, written_manifests, written_lists)
            raise
        _delete_metadata(table, [m for m in written_manifests if m], written_lists)
    return None


def _own_checkpoint(table, commit_user: str, latest, identifier: int, properties: dict | None):
    """(commit identifier, properties) of ``commit_user``'s newest snapshot up to ``latest``."""
    snapshot = own_latest_snapshot(table, commit_user, latest)
    if snapshot is None:
        return identifier, properties
    return snapshot.commit_identifier, snapshot.properties


# -- deletion vectors: the index manifest, DV index files ------------------------------

DV_INDEX_VERSION = 1  # the first byte of a deletion-vector index file, as Paimon writes it


def deletion_vector_index(table, snapshot) -> dict[tuple, list]:
    """``{(partition, bucket): [index manifest entries]}`` of the snapshot's deletion-vector index files."""
    from pypaimon.manifest.index_manifest_file import IndexManifestFile

    if snapshot is None or not snapshot.index_manifest:
        return {}
    found: dict[tuple, list] = {}
    for entry in IndexManifestFile(table).read(snapshot.index_manifest):
        if entry.kind == 0 and entry.index_file.index_type == IndexManifestFile.DELETION_VECTORS_INDEX:
            found.setdefault((tuple(entry.partition.values), entry.bucket), []).append(entry)
    return found


def index_files(table, snapshot) -> tuple[str | None, list[str]]:
    """(index manifest name, paths of every index file it lists) of ``snapshot``."""
    from pypaimon.manifest.index_manifest_file import IndexManifestFile

    if snapshot is None or not snapshot.index_manifest:
        return None, []
    factory = table.path_factory()
    paths = [factory.bucket_index_path(tuple(e.partition.values), e.bucket, e.index_file, table.file_io)
             for e in IndexManifestFile(table).read(snapshot.index_manifest) if e.kind == 0]
    return snapshot.index_manifest, paths


def read_deletion_vectors(table, entry) -> dict[str, np.ndarray]:
    """``{data file name: deleted positions (sorted uint32)}`` of one deletion-vector index file."""
    from pypaimon.deletionvectors.deletion_vector import DeletionVector
    from pypaimon.table.source.deletion_file import DeletionFile

    path = table.path_factory().bucket_index_path(tuple(entry.partition.values), entry.bucket, entry.index_file,
                                                  table.file_io)
    vectors = {}
    for name, meta in (entry.index_file.dv_ranges or {}).items():
        vector = DeletionVector.read(table.file_io, DeletionFile(path, meta.offset, meta.length, meta.cardinality))
        vectors[name] = np.asarray(vector.bit_map()._data.to_array(), dtype=np.uint32)
    return vectors


def write_deletion_vectors(table, partition: tuple, bucket: int, vectors: dict[str, np.ndarray]):
    """Write one bucket's deletion vectors (data file name -> deleted positions) as one
    index file in Paimon's format; returns its ADD index manifest entry."""
    import uuid

    from pyroaring import BitMap
    from pypaimon.deletionvectors.bitmap_deletion_vector import BitmapDeletionVector
    from pypaimon.index.deletion_vector_meta import DeletionVectorMeta
    from pypaimon.index.index_file_meta import IndexFileMeta
    from pypaimon.manifest.index_manifest_entry import IndexManifestEntry
    from pypaimon.manifest.index_manifest_file import IndexManifestFile
    from pypaimon.table.row.generic_row import GenericRow
    from pypaimon.utils.file_store_path_factory import FileStorePathFactory
    from pypaimon.utils.roaring_bitmap import RoaringBitmap

    file_name = f"{FileStorePathFactory.INDEX_PREFIX}{uuid.uuid4()}-0"
    path, external = table.path_factory().new_bucket_index_path(partition, bucket, file_name)
    chunks, ranges, position = [bytes([DV_INDEX_VERSION])], {}, 1
    for name in sorted(vectors):
        bitmap = RoaringBitmap()
        positions = array.array("I")
        positions.frombytes(np.ascontiguousarray(vectors[name], dtype=np.uint32).tobytes())
        bitmap._data = BitMap(positions)  # from a buffer of uint32: 10x faster than from a numpy array
        bitmap._data.run_optimize()  # rows moved out by compaction are position ranges
        serialized = BitmapDeletionVector(bitmap).serialize()
        ranges[name] = DeletionVectorMeta(data_file_name=name, offset=position,
                                          length=int.from_bytes(serialized[:4], "big"),
                                          cardinality=len(vectors[name]))
        chunks.append(serialized)
        position += len(serialized)
    data = b"".join(chunks)
    try:
        with table.file_io.new_output_stream(path) as stream:
            stream.write(data)
    except BaseException:
        table.file_io.delete_quietly(path)
        raise
    meta = IndexFileMeta(index_type=IndexManifestFile.DELETION_VECTORS_INDEX, file_name=file_name,
                         file_size=len(data), row_count=len(ranges), dv_ranges=ranges,
                         external_path=path if external else None)
    return IndexManifestEntry(kind=0, partition=GenericRow(list(partition), table.partition_keys_fields),
                              bucket=bucket, index_file=meta)


def deleting_index(entry):
    """A DELETE index manifest entry for the index file of ADD entry ``entry``."""
    from pypaimon.manifest.index_manifest_entry import IndexManifestEntry

    return IndexManifestEntry(kind=1, partition=entry.partition, bucket=entry.bucket, index_file=entry.index_file)


def delete_index_file(table, entry) -> None:
    """Delete an index file :func:`write_deletion_vectors` wrote that will not be committed."""
    table.file_io.delete_quietly(table.path_factory().bucket_index_path(
        tuple(entry.partition.values), entry.bucket, entry.index_file, table.file_io))


def _delete_metadata(table, manifests: list[str], lists: list[str]) -> None:
    for name in manifests + lists:
        table.file_io.delete_quietly(manifest_path(table, name))


# -- maintenance of append tables (no primary key): small files concatenated -------------


def parse_memory_size(text: str) -> int:
    """A Paimon memory size option (``256 mb``, ``128MB``, ``4 kb``, ``1024``) in bytes, parsed as pypaimon does."""
    from pypaimon.common.memory_size import MemorySize

    return MemorySize.parse(str(text)).get_bytes()


def read_data_file(table, entry) -> pa.Table:
    """An append table's data file as written: the table's columns, no system columns."""
    return read_key_values(table, entry)


class AppendFiles:
    """Writes an append table's compacted files, one Arrow table per file (level 0, marked
    as written by compaction); :meth:`abort` deletes what it wrote."""

    def __init__(self, table, partition: tuple, bucket: int):
        from pypaimon.write.writer.append_only_data_writer import AppendOnlyDataWriter

        self._writer = AppendOnlyDataWriter(table=table, partition=partition, bucket=bucket, max_seq_number=0,
                                            options=table.options)

    def write(self, rows: pa.Table):
        """Write ``rows`` as one file now; returns its meta (uncommitted)."""
        self._writer._write_data_to_file(rows)
        meta = self._writer.committed_files[-1]
        meta.level = 0
        meta.file_source = FILE_SOURCE_COMPACT
        return meta

    def finish(self, sequence_range: tuple[int, int]) -> list:
        """The metas written, with ``sequence_range`` as their min/max sequence numbers."""
        files = list(self._writer.committed_files)
        for meta in files:
            meta.min_sequence_number, meta.max_sequence_number = sequence_range
        return files

    def abort(self) -> None:
        self._writer.abort()
