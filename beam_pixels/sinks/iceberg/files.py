"""The Parquet files of an Iceberg table: data files written in row order, position deletes.

A data file holds exactly the slice of rows it was written from, in order, so
that row ``i`` of a slice is at position ``i`` of its file (what the key index
records). A position-delete file lists ``(file_path, pos)`` sorted, as the
Iceberg spec asks, with its ``file_path`` bounds set so that readers apply it
only to the data files it names.
"""

from __future__ import annotations

import os
import uuid

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
# Rows below which a write is not split across cores (no small files for small commits).
MIN_ROWS_PER_FILE = 100_000


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


def write_data_files(
    table: Table,
    rows: pa.Table | None,
    write_uuid: uuid.UUID,
    max_rows_per_file: int | None = None,
    *,
    per_core: bool = True,
) -> list[DataFile]:
    """Parquet data files holding ``rows`` (in the table's Arrow schema), not yet committed,
    one per :func:`slices` entry and in that order; written at once (pyarrow writes
    Parquet without the GIL)."""
    if rows is None or not rows.num_rows:
        return []
    parts = slices(rows.num_rows, max_rows_per_file, per_core=per_core)
    batches = [rows.slice(offset, length).to_batches() for offset, length in parts]
    return write_parquet_files(table, rows.schema, batches, write_uuid)


def write_position_deletes(table: Table, paths: pa.Array, positions: np.ndarray, write_uuid: uuid.UUID) -> DataFile:
    """One position-delete file deleting row ``positions[i]`` of data file ``paths[i]``."""
    deletes = pa.table([paths.cast(pa.string()), pa.array(positions, pa.int64())], schema=_DELETE_SCHEMA)
    deletes = deletes.sort_by([("file_path", "ascending"), ("pos", "ascending")])
    location = table.location_provider().new_data_location(f"delete-{write_uuid}.parquet")
    output = table.io.new_output(location)
    with output.create(overwrite=True) as stream:
        pq.write_table(deletes, stream, compression="zstd")
    bounds = pc.min_max(deletes.column("file_path"))
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    pos = pc.min_max(deletes.column("pos"))
    return DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=location,
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=deletes.num_rows,
        file_size_in_bytes=len(output),
        lower_bounds={DELETE_FILE_PATH_ID: to_bytes(StringType(), low), DELETE_POS_ID: to_bytes(LongType(), pos["min"].as_py())},
        upper_bounds={DELETE_FILE_PATH_ID: to_bytes(StringType(), high), DELETE_POS_ID: to_bytes(LongType(), pos["max"].as_py())},
        spec_id=table.metadata.default_spec_id,
        sort_order_id=None,
        equality_ids=None,
        key_metadata=None,
    )


def read_parquet(table: Table, path: str, columns: list[str] | None = None) -> pa.Table:
    """The rows of one file of the table as stored (no deletes applied)."""
    with table.io.new_input(path).open() as stream:
        return pq.read_table(stream, columns=columns)


def read_position_deletes(table: Table, delete_files: list[DataFile]) -> pa.Table:
    """Every ``(file_path, pos)`` of ``delete_files``."""
    parts = [read_parquet(table, f.file_path, ["file_path", "pos"]) for f in delete_files]
    if not parts:
        return pa.table({"file_path": pa.array([], pa.string()), "pos": pa.array([], pa.int64())})
    return pa.concat_tables([p.cast(pa.schema([("file_path", pa.string()), ("pos", pa.int64())])) for p in parts])


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
