"""Merge-on-read commits: a commit rewrites no data file.

It adds the surviving after-images as new data files and deletes the older rows
of every touched key by position, in one snapshot: one position-delete file per
partition (and spec) holding such rows, since a delete file applies only to data
files of its own partition. An update that moves a row to another partition so
deletes it where it was, and adds it where it now belongs. That file also takes in
the rows of the partition's delete files but the two largest, which the snapshot
removes (as an Iceberg v3 deletion vector replaces the one before it): a partition
keeps at most three delete files, the one the last maintenance pass folded and two
that take turns holding the rows deleted since, so readers open three per partition
however many commits ran since the last pass, not one per commit.
The touched rows are found in a :class:`~beam_pixels.sinks.key_index.KeyIndex`
built from the table once per process and kept current with every commit this
process makes. A local run builds new pipelines (and writers) every round, so
the index lives in a process-wide cache keyed by the table's UUID and is used
only while the table's current snapshot is the one it describes; after another
writer's commit it is rebuilt from the table.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import time
import typing

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile, DataFileContent
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from beam_pixels.sinks.iceberg import files
from beam_pixels.sinks.iceberg._pyiceberg_private import commit_file_changes
from beam_pixels.sinks.iceberg.manifests import MANIFESTS
from beam_pixels.sinks.key_index import INDEXES, KeyIndex, is_exact, key_codes, verify

_LOG = logging.getLogger(__name__)
# The most delete files a commit leaves in a partition it deletes rows in: the one a maintenance
# pass folded, and two holding the rows deleted since (a commit replaces the smaller one). Two
# rather than one halve the delete rows written again per commit (measured: 7.8 MB of delete
# files against 8.6 MB in a 150-commit partitioned soak, 6.5 MB when nothing was replaced).
DELETE_FILES_PER_PARTITION = 3


def _cache_key(table: Table) -> tuple[str, str]:
    return "iceberg", str(table.metadata.table_uuid)


def key_index(table: Table, key_columns: list[str]) -> KeyIndex:
    """The key index of ``table``'s current snapshot: the cached one while it is current,
    else one built from the table (and cached)."""
    snapshot = table.current_snapshot()
    current = snapshot.snapshot_id if snapshot else None
    return INDEXES.get(_cache_key(table), current, lambda: build_index(table, key_columns), ".".join(table.name()))


def cached_index(table: Table) -> KeyIndex | None:
    """The cached index of ``table`` if it describes its current snapshot, else None."""
    snapshot = table.current_snapshot()
    return None if snapshot is None else INDEXES.current(_cache_key(table), snapshot.snapshot_id)


def forget_index(table: Table) -> None:
    """Drop the cached index of ``table`` (its state is unknown after a failed commit)."""
    INDEXES.forget(_cache_key(table))


def build_index(table: Table, key_columns: list[str]) -> KeyIndex:
    """Read the key columns of every live data file, less deleted positions."""
    started = time.monotonic()
    types = [files.arrow_schema(table).field(k).type for k in key_columns]
    snapshot = table.current_snapshot()
    index = KeyIndex(is_exact(types), snapshot.snapshot_id if snapshot else None)
    tasks = list(table.scan(snapshot_id=snapshot.snapshot_id).plan_files()) if snapshot else []
    delete_files = list({d.file_path: d for task in tasks for d in task.delete_files}.values())
    deleted = files.positions_by_path(files.read_position_deletes(table, delete_files))

    def load(data_file: DataFile) -> tuple[DataFile, np.ndarray, np.ndarray]:
        path = data_file.file_path
        codes = key_codes(files.read_parquet(table, path, key_columns))
        positions = np.arange(len(codes), dtype=np.int32)
        if path in deleted:
            live = np.ones(len(codes), bool)
            live[deleted[path]] = False
            codes, positions = codes[live], positions[live]
        return data_file, codes, positions

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="iceberg-index") as pool:
        loaded = pool.map(load, [task.file for task in tasks])
        index.add_files([(f.file_path, codes, positions, files.partition_of(f)) for f, codes, positions in loaded])
    _LOG.info("%s: key index built from snapshot %s: %d keys in %d files, %.1f MB, %.2fs",
              ".".join(table.name()), index.snapshot_id, len(index), len(tasks), index.nbytes / 1e6, time.monotonic() - started)
    return index


def _stored_keys(table: Table, key_columns: list[str]) -> typing.Callable[[str, np.ndarray], pa.Table]:
    def read(path: str, positions: np.ndarray) -> pa.Table:
        return files.read_parquet(table, path, key_columns).take(pa.array(positions))

    return read


def replaced_delete_files(table: Table, partitions: set) -> list[DataFile]:
    """The delete files of ``table``'s current snapshot that a commit writing a delete file into
    each of ``partitions`` takes in: all but the largest ``DELETE_FILES_PER_PARTITION - 1`` of
    each of these partitions, so that a partition keeps at most :data:`DELETE_FILES_PER_PARTITION`
    (the largest being the one a maintenance pass folded)."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return []
    by_partition = collections.defaultdict(list)
    for delete_file in MANIFESTS.delete_files(table.io, snapshot):
        if delete_file.content == DataFileContent.POSITION_DELETES and (partition := files.partition_of(delete_file)) in partitions:
            by_partition[partition].append(delete_file)
    keep = DELETE_FILES_PER_PARTITION - 1
    return [f for group in by_partition.values()
            for f in sorted(group, key=lambda f: f.record_count, reverse=True)[keep:]]


def commit(
    table: Table,
    key_columns: list[str],
    touched_keys: pa.Table,
    added: list[DataFile],
    added_codes: list[np.ndarray],
    properties: dict[str, str],
) -> int:
    """One snapshot: ``added`` data files (key codes per row in ``added_codes``) and
    position-delete files (one per partition) for the stored rows of ``touched_keys``; returns its id.
    Raises ``CommitFailedException`` if another writer committed first."""
    index = key_index(table, key_columns)
    with index.lock:
        hits = index.find(key_codes(touched_keys) if touched_keys is not None else np.zeros(0, np.int64))
        keep = None
        if not index.exact and len(hits.query):
            keep = verify(hits, touched_keys, _stored_keys(table, key_columns), index)
        found_files = hits.files if keep is None else hits.files[keep]
        positions = hits.positions if keep is None else hits.positions[keep]
        deletes, replaced = [], []
        if len(positions):
            file_ids, file_of_hit = np.unique(found_files, return_inverse=True)
            paths = [index.path(int(f)) for f in file_ids]
            partitions = {path: index.partition(int(f)) for path, f in zip(paths, file_ids)}
            rows = files.position_rows(pa.array(paths).take(pa.array(file_of_hit)), positions)
            replaced = replaced_delete_files(table, set(partitions.values()))
            replaced_rows = files.read_delete_files(table, replaced)
            for delete_file, old in zip(replaced, replaced_rows):
                partitions.update(dict.fromkeys(pc.unique(old.column("file_path")).to_pylist(), files.partition_of(delete_file)))
            rows = pa.concat_tables([rows, *replaced_rows])
            deletes = files.write_partitioned_deletes(
                table, rows.column("file_path").combine_chunks(), rows.column("pos").to_numpy(), partitions)
        operation = Operation.OVERWRITE if len(positions) else Operation.APPEND
        try:
            snapshot_id = commit_file_changes(table, properties, added=[*added, *deletes], removed=replaced, operation=operation)
        except CommitFailedException:
            for delete_file in deletes:
                table.io.delete(delete_file.file_path)
            raise
        except Exception:
            forget_index(table)
            raise
        index.forget(hits, keep)
        index.add_files([(f.file_path, codes, None, files.partition_of(f)) for f, codes in zip(added, added_codes)])
        index.snapshot_id = snapshot_id
        return snapshot_id
