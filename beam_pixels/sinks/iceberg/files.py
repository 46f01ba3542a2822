"""The Parquet files of an Iceberg table: data files written in row order, position deletes.

A data file holds exactly the slice of rows it was written from, in order, so
that row ``i`` of a slice is at position ``i`` of its file (what the key index
records). In a partitioned table the rows are first grouped by partition
(:mod:`.partitioning`), and every slice lies within one partition. A position-delete file lists ``(file_path, pos)`` sorted, as the
Iceberg spec asks, with its ``file_path`` bounds set so that readers apply it
only to the data files it names. The rows of the delete files written or read are
kept in memory, bounded (:data:`DELETE_ROWS`): commits and maintenance read them back.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import typing
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.conversions import to_bytes
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table import Table
from pyiceberg.typedef import Record
from pyiceberg.types import LongType, StringType

from beam_pixels.sinks.iceberg import partitioning
from beam_pixels.sinks.iceberg._pyiceberg_private import write_parquet_files

# Field ids the Iceberg spec reserves for the columns of a position-delete file.
DELETE_FILE_PATH_ID = 2147483546
DELETE_POS_ID = 2147483545
_DELETE_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": str(DELETE_FILE_PATH_ID).encode()}),
        pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": str(DELETE_POS_ID).encode()}),
    ]
)
# How a position-delete file is written: a commit writes one per partition it deletes rows in, often
# of a few hundred rows, which Parquet's defaults would store in about 3 KB, two thirds of it the
# footer's copies of the long file_path bounds (readers use the manifest's bounds) and the stored
# Arrow schema, and a dictionary of the unique positions. So: paths dictionary-encoded without
# statistics, the sorted positions delta-encoded, no Arrow schema (the field ids are in the Parquet
# schema): about 0.9 KB, a third (see docs/partitioned-tables.md).
DELETE_FILE_OPTIONS = dict(
    compression="zstd",
    use_dictionary=["file_path"],
    column_encoding={"pos": "DELTA_BINARY_PACKED"},
    write_statistics=["pos"],
    store_schema=False,
)
# The columns of a position-delete file as read (without the field ids).
_POSITIONS = pa.schema([("file_path", pa.string()), ("pos", pa.int64())])
# Rows below which a write is not split across cores (no small files for small commits).
MIN_ROWS_PER_FILE = 100_000
# Bytes of position-delete rows kept in memory (see _DeleteRows): about 12 bytes a row.
DELETE_ROWS_CAPACITY = 64 * 2**20


class _DeleteRows:
    """The ``(file_path, pos)`` rows of the position-delete files this process wrote or read, by
    path (a file never changes): a merge-on-read commit reads back the delete files it replaces,
    and a maintenance pass every delete file. The least recently used are dropped beyond
    ``capacity`` bytes; file paths are held dictionary-encoded."""

    def __init__(self, capacity: int = DELETE_ROWS_CAPACITY):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._held: collections.OrderedDict[str, pa.Table] = collections.OrderedDict()
        self._bytes = 0

    def get(self, path: str) -> pa.Table | None:
        with self._lock:
            rows = self._held.get(path)
            if rows is not None:
                self._held.move_to_end(path)
        return None if rows is None else rows.cast(_POSITIONS)

    def put(self, path: str, rows: pa.Table) -> None:
        paths = rows.column("file_path").combine_chunks().dictionary_encode()
        held = pa.table({"file_path": paths, "pos": np.array(rows.column("pos").to_numpy(), np.int64)})  # a copy
        with self._lock:
            if (old := self._held.pop(path, None)) is not None:
                self._bytes -= old.nbytes
            self._held[path] = held
            self._bytes += held.nbytes
            while self._bytes > self.capacity and self._held:
                self._bytes -= self._held.popitem(last=False)[1].nbytes


DELETE_ROWS = _DeleteRows()


def arrow_schema(table: Table) -> pa.Schema:
    """The table's columns as Arrow types, without field ids."""
    return schema_to_pyarrow(table.schema(), include_field_ids=False)


def conform(rows: pa.Table, target: pa.Schema) -> pa.Table:
    """``rows`` in the table's column order and types; its columns missing from ``rows`` as NULLs."""
    columns = [
        rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
        for f in target
    ]
    return pa.Table.from_arrays(columns, schema=target)


def slices(num_rows: int, max_rows_per_file: int | None = None, *, per_core: bool = True) -> list[tuple[int, int]]:
    """``(offset, length)`` of the files ``num_rows`` rows are written to, as evenly as
    possible: no file above ``max_rows_per_file`` rows (if given), and with ``per_core``
    at least one file per core for large writes (at least :data:`MIN_ROWS_PER_FILE`
    each), so that they are written in parallel."""
    if not num_rows:
        return []
    parts = -(-num_rows // max_rows_per_file) if max_rows_per_file else 1
    if per_core:
        parts = max(parts, min(os.cpu_count() or 1, num_rows // MIN_ROWS_PER_FILE))
    size = -(-num_rows // parts)
    return [(i, min(size, num_rows - i)) for i in range(0, num_rows, size)]


def commit_rows_per_file(table: Table, rows: pa.Table, max_percent: int, target_file_mb: int) -> int:
    """The most rows a data file of a commit of ``rows`` holds: about ``max_percent`` of
    the table's rows after the commit (at least :data:`MIN_ROWS_PER_FILE`), so that a
    large commit (a preload) is several files of which compaction can rewrite one at a
    time; and no more than ``target_file_mb`` of Arrow data (Parquet is smaller)."""
    snapshot = table.current_snapshot()
    summary = snapshot.summary.additional_properties if snapshot is not None and snapshot.summary else {}
    stored = int(summary.get("total-records", 0))
    share = max(MIN_ROWS_PER_FILE, (stored + rows.num_rows) * max_percent // 100)
    arrow_bytes_per_row = rows.nbytes / max(1, rows.num_rows)
    return max(1, min(share, int(target_file_mb * 2**20 / max(arrow_bytes_per_row, 1.0))))


@dataclass(frozen=True)
class WrittenFiles:
    """Data files written from some rows: ``files[i]`` holds ``rows.slice(*slices[i])`` in
    order, ``rows`` being the input rows grouped by partition (as given if unpartitioned)."""

    files: list[DataFile]
    rows: pa.Table
    slices: list[tuple[int, int]]


def write_data_files(
    table: Table,
    rows: pa.Table | None,
    write_uuid: uuid.UUID,
    max_rows_per_file: int | None = None,
    *,
    per_core: bool = True,
) -> WrittenFiles:
    """Parquet data files holding ``rows`` (in the table's Arrow schema), not yet committed:
    per partition of the table's current spec, one per :func:`slices` entry of its rows;
    written at once (pyarrow writes Parquet without the GIL)."""
    if rows is None or not rows.num_rows:
        return WrittenFiles([], rows, [])
    groups = partitioning.partition_rows(table.spec(), table.schema(), rows)
    if len(groups) > 1:
        rows = rows.take(pa.array(np.concatenate([g.rows for g in groups])))
    parts, keys, offset = [], [], 0
    for group in groups:
        for start, length in slices(len(group.rows), max_rows_per_file, per_core=per_core):
            parts.append((offset + start, length))
            keys.append(group.key)
        offset += len(group.rows)
    batches = [rows.slice(start, length).to_batches() for start, length in parts]
    return WrittenFiles(write_parquet_files(table, rows.schema, batches, write_uuid, keys), rows, parts)


def write_partitioned_deletes(
    table: Table, paths: pa.Array, positions: np.ndarray, partition_of: typing.Mapping[str, tuple[int, Record]]
) -> list[DataFile]:
    """Position-delete files deleting row ``positions[i]`` of data file ``paths[i]``: one per
    partition (spec id and partition tuple, ``partition_of[path]``) of those data files, as
    Iceberg requires of a delete file. The rows are sorted and grouped once, and the files
    written at once (pyarrow writes Parquet without the GIL): a commit that touches many
    partitions writes many small files."""
    deletes = pa.table([paths.cast(pa.string()), pa.array(positions, pa.int64())], schema=_DELETE_SCHEMA)
    deletes = deletes.sort_by([("file_path", "ascending"), ("pos", "ascending")])
    encoded = deletes.column("file_path").combine_chunks().dictionary_encode()
    groups: dict[tuple[int, Record], int] = {}
    group_of_path = np.array(
        [groups.setdefault(partition_of[path], len(groups)) for path in encoded.dictionary.to_pylist()], np.int64
    )
    group_of_row = group_of_path[encoded.indices.to_numpy(zero_copy_only=False)]
    deletes = deletes.take(pa.array(np.argsort(group_of_row, kind="stable")))  # still sorted within a group
    ends = np.cumsum(np.bincount(group_of_row, minlength=len(groups)))
    parts = [(int(end - count), int(count)) for end, count in zip(ends, np.diff(ends, prepend=0))]
    return _on_cores(lambda group, part: _write_deletes(table, deletes.slice(*part), *group), list(groups), parts)


def _write_deletes(table: Table, deletes: pa.Table, spec_id: int, partition: Record) -> DataFile:
    """One position-delete file of ``deletes`` (sorted by file path and position), all of
    them rows of data files of ``partition`` under spec ``spec_id``."""
    location = table.location_provider().new_data_location(f"delete-{uuid.uuid4()}.parquet")
    output = table.io.new_output(location)
    with output.create(overwrite=True) as stream:
        pq.write_table(deletes, stream, **DELETE_FILE_OPTIONS)
    DELETE_ROWS.put(location, deletes)
    paths, pos = deletes.column("file_path"), pc.min_max(deletes.column("pos"))
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=location,
        file_format=FileFormat.PARQUET,
        partition=partition,
        record_count=deletes.num_rows,
        file_size_in_bytes=len(output),
        lower_bounds={DELETE_FILE_PATH_ID: to_bytes(StringType(), paths[0].as_py()),
                      DELETE_POS_ID: to_bytes(LongType(), pos["min"].as_py())},
        upper_bounds={DELETE_FILE_PATH_ID: to_bytes(StringType(), paths[-1].as_py()),
                      DELETE_POS_ID: to_bytes(LongType(), pos["max"].as_py())},
        sort_order_id=None,
        equality_ids=None,
        key_metadata=None,
    )
    delete_file.spec_id = spec_id
    return delete_file


def partition_of(data_file: DataFile) -> tuple[int, Record]:
    """A data file's partition: its spec id and partition tuple."""
    return data_file.spec_id, data_file.partition


def read_parquet(table: Table, path: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of one file of the table as stored (no deletes applied)."""
    with table.io.new_input(path).open() as stream:
        return pq.read_table(stream, columns=columns)


def read_delete_files(table: Table, delete_files: typing.Sequence[DataFile]) -> list[pa.Table]:
    """The ``(file_path, pos)`` rows of each of ``delete_files``: those held in memory
    (:data:`DELETE_ROWS`), the others read at once (pyarrow reads Parquet without the GIL; a
    partitioned table has a delete file per partition per commit)."""
    def read(delete_file: DataFile) -> pa.Table:
        if (rows := DELETE_ROWS.get(delete_file.file_path)) is None:
            rows = read_parquet(table, delete_file.file_path, ["file_path", "pos"]).cast(_POSITIONS)
            DELETE_ROWS.put(delete_file.file_path, rows)
        return rows

    return _on_cores(read, list(delete_files))


def _on_cores(function: typing.Callable, *arguments: list) -> list:
    """``function`` over the ``arguments`` lists, on a thread per core (pyarrow reads and writes
    Parquet without the GIL); in this thread when there is one item (an unpartitioned commit's
    single delete file pays for no thread pool)."""
    if len(arguments[0]) <= 1:
        return list(map(function, *arguments))
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="iceberg-files") as pool:
        return list(pool.map(function, *arguments))


def read_position_deletes(table: Table, delete_files: typing.Sequence[DataFile]) -> pa.Table:
    """Every ``(file_path, pos)`` of ``delete_files``."""
    return pa.concat_tables([_POSITIONS.empty_table(), *read_delete_files(table, delete_files)])


def position_rows(paths: pa.Array, positions: np.ndarray) -> pa.Table:
    """``(file_path, pos)`` rows deleting row ``positions[i]`` of data file ``paths[i]``, as
    :func:`read_delete_files` returns them."""
    return pa.table([paths.cast(pa.string()), pa.array(positions, pa.int64())], schema=_POSITIONS)


def positions_by_path(deletes: pa.Table) -> dict[str, np.ndarray]:
    """The deleted positions of every data file that ``deletes`` (file_path, pos) names."""
    if not deletes.num_rows:
        return {}
    encoded = deletes.column("file_path").combine_chunks().dictionary_encode()
    ids = encoded.indices.to_numpy()
    positions = deletes.column("pos").to_numpy()
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(len(encoded.dictionary) + 1))
    return {path: positions[order[bounds[i] : bounds[i + 1]]] for i, path in enumerate(encoded.dictionary.to_pylist())}
