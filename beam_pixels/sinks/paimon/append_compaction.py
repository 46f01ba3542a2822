"""Compaction of append tables (no primary key), as Paimon's Java writers do it.

A source table without a primary key is an append table holding the changelog;
every commit adds at least one small file, and a read opens every file. Rows of
an append table never merge, so compacting is concatenating: small files are
read in order and written again as files of about ``target-file-size``, and one
``COMPACT`` snapshot replaces the inputs by the outputs atomically.

Which files (per partition and bucket; Paimon's options, read from the table):

- A file is *small* below ``target-file-size`` (append tables: 256 MB) times
  ``compaction.small-file-ratio`` (0.7); bigger files are never rewritten.
- Unaware-bucket tables (``bucket`` = -1, the connector's default for them), as
  ``AppendCompactCoordinator``: the small files of a partition go into bins, and a
  bin is compacted once it holds at least 2 files weighing ``2 x target-file-size``
  (a file weighs its size plus ``source.split.open-file-cost``, 4 MB), or, for the
  last bin, at least ``compaction.min.file-num`` (5) files. Java bins the files by
  size; here they keep the order Paimon reads them in (sequence number, then manifest
  order), so the concatenation keeps the changelog in the order it was written.
- Fixed-bucket tables, whose order Paimon keeps, as ``BucketedAppendCompactManager``
  once running (it only queues small files): the newest consecutive small files of
  the bucket, once there are ``compaction.min.file-num`` of them (or at least two
  reaching ``2 x target-file-size``); Java slides its window from the oldest file
  and relies on sequence numbers for the order, but pypaimon gives every append file
  of a bucket the same sequence numbers, so here only the newest files (which the
  output follows in the manifest) are compacted, one unit per bucket and pass.

Not done (the connector never writes such tables): deletion vectors
(``compaction.delete-ratio-threshold``), row tracking / data evolution, formats
other than Parquet; and Java's "compact whatever is left after 5 idle rounds".
Outputs keep the inputs' sequence range (lowest min to highest max), so Paimon's
readers, which order an append bucket's files by their minimum sequence number,
still find them where the inputs were.

Outputs are listed after every other file of their bucket (a manifest delta comes
last), so when the inputs are the newest files of the bucket, as in a stream that
compacts after each commit, readers see the rows in the same order as before.

Each pass compacts at most ``paimon.compaction.max-mb-per-pass`` of input; a unit
bigger than what is left is cut to its newest files (at least two, so a pass
always progresses; the newest so the output takes their place at the end), and
the rest waits for the next pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.options import int_option, ratio_option, table_option

_LOG = logging.getLogger(__name__)

DEFAULT_TARGET_FILE_SIZE = 256 * 2**20  # Paimon's target-file-size of append tables
DEFAULT_OPEN_FILE_COST = 4 * 2**20  # source.split.open-file-cost
_UNSUPPORTED = ("deletion-vectors.enabled", "row-tracking.enabled", "data-evolution.enabled")


@dataclass(frozen=True)
class AppendCompactionOptions:
    """Paimon's append-compaction options, plus the connector's bound per pass."""

    min_file_num: int = 5
    target_file_size: int = DEFAULT_TARGET_FILE_SIZE
    small_file_ratio: float = 0.7
    open_file_cost: int = DEFAULT_OPEN_FILE_COST
    max_bytes_per_pass: int = 256 * 2**20
    disabled_by: str = ""  # a table option this compaction cannot honour; then it does nothing

    @property
    def small_file_size(self) -> int:
        """Files below this size are compacted (Paimon's ``compactionFileSize``)."""
        return int(self.target_file_size * self.small_file_ratio)

    @classmethod
    def of(cls, options: dict[str, str], max_bytes_per_pass: int = 256 * 2**20) -> "AppendCompactionOptions":
        """From table options (Paimon's names and defaults)."""
        disabled = [name for name in _UNSUPPORTED if str(options.get(name, "false")).lower() == "true"]
        return cls(
            min_file_num=int_option(options, "compaction.min.file-num", 5, 1),
            target_file_size=_memory_size(options, "target-file-size", DEFAULT_TARGET_FILE_SIZE),
            small_file_ratio=ratio_option(options, "compaction.small-file-ratio", 0.7),
            open_file_cost=_memory_size(options, "source.split.open-file-cost", DEFAULT_OPEN_FILE_COST),
            max_bytes_per_pass=max_bytes_per_pass,
            disabled_by=", ".join(f"{name}=true" for name in disabled),
        )


def _memory_size(options: dict[str, str], name: str, default: int) -> int:
    return table_option(options, name, default, private.parse_memory_size, lambda v: v >= 1, "a size such as 256 mb")


@dataclass
class AppendUnit:
    """Files of one partition and bucket to concatenate, in order, into new files."""

    partition: tuple
    bucket: int
    inputs: list
    outputs: list

    @property
    def size(self) -> int:
        return sum(e.file.file_size for e in self.inputs)


def in_order(entries: list) -> list:
    """A bucket's files in the order Paimon reads them: by minimum sequence number, then in
    manifest order (``entries`` come in that order; pypaimon writes every append file of a
    bucket with the same sequence numbers, so for its tables the manifest order decides)."""
    return sorted(entries, key=lambda e: e.file.min_sequence_number)


def pick_unaware(entries: list, options: AppendCompactionOptions) -> list[list]:
    """``AppendCompactCoordinator``'s bins over one partition's small files, in creation order."""
    bins, current, weight = [], [], 0
    for entry in in_order(entries):
        if not _compactable(entry, options) or entry.file.file_size >= options.small_file_size:
            continue
        current.append(entry)
        weight += entry.file.file_size + options.open_file_cost
        if len(current) > 1 and weight >= 2 * options.target_file_size:
            bins.append(current)
            current, weight = [], 0
    if len(current) >= max(2, options.min_file_num):
        bins.append(current)
    return bins


def pick_bucketed(entries: list, options: AppendCompactionOptions) -> list[list]:
    """``BucketedAppendCompactManager``'s pick over one bucket, from its newest file back:
    the newest consecutive small files, once there are ``compaction.min.file-num`` of them
    (or, with fewer, at least two reaching ``2 x target-file-size``). A big file, or one
    that cannot be rewritten here, ends the run: compacting across it would change the
    order. At most one unit per bucket and pass, as Java's writer runs one at a time."""
    window, size = [], 0
    for entry in reversed(in_order(entries)):
        if not _compactable(entry, options) or entry.file.file_size >= options.small_file_size:
            break
        window.insert(0, entry)
        size += entry.file.file_size
        if len(window) >= max(2, options.min_file_num) or (len(window) > 1 and size >= 2 * options.target_file_size):
            return [window]
    return []


def _compactable(entry, options: AppendCompactionOptions) -> bool:
    return entry.file.file_name.endswith(".parquet") and not entry.file.delete_row_count


def plan(table, files: dict[tuple, list], options: AppendCompactionOptions) -> tuple[list[AppendUnit], int]:
    """The units one pass compacts (oldest first, within ``max_bytes_per_pass``) and how many
    wait for a later pass. ``files`` is ``{(partition, bucket): [ADD entries]}``."""
    if options.disabled_by:
        return [], 0
    schema_id = private.schema_id(table)
    bucketed = table.options.bucket() > 0
    units = []
    for (partition, bucket), entries in files.items():
        current = [e for e in entries if e.file.schema_id == schema_id]
        groups = pick_bucketed(current, options) if bucketed else pick_unaware(current, options)
        units += [AppendUnit(partition, bucket, group, []) for group in groups]
    chosen, budget, waiting = [], options.max_bytes_per_pass, 0
    for unit in units:
        if chosen and budget <= 0:
            waiting += 1
            continue
        if unit.size > budget:
            kept, size = [], 0
            for entry in reversed(unit.inputs):  # its newest files within the budget, at least two
                if len(kept) >= 2 and size + entry.file.file_size > budget:
                    break
                kept.insert(0, entry)
                size += entry.file.file_size
            if chosen and size > budget:
                waiting += 1
                continue
            waiting += len(kept) < len(unit.inputs)
            unit.inputs = kept
        chosen.append(unit)
        budget -= unit.size
    return chosen, waiting


def compact_unit(table, unit: AppendUnit, target_file_size: int) -> AppendUnit:
    """Concatenate the unit's files in order into files of about ``target_file_size`` on
    storage, uncommitted. Where to roll is estimated from each input's bytes per row,
    corrected by what the files written so far actually took (a concatenation compresses
    better than its small inputs); the last file may be smaller."""
    low = min(e.file.min_sequence_number for e in unit.inputs)
    high = max(e.file.max_sequence_number for e in unit.inputs)
    files = private.AppendFiles(table, unit.partition, unit.bucket)
    try:
        schema = None
        pending, estimated = [], 0.0  # rows for the next file and their bytes by the inputs' rates
        scale, estimated_total, written_total = 1.0, 0.0, 0
        for entry in unit.inputs:
            rows = private.read_data_file(table, entry)
            if rows.num_rows != entry.file.row_count:
                raise RuntimeError(f"{entry.file.file_name} holds {rows.num_rows} rows, its manifest says "
                                   f"{entry.file.row_count}; not compacting it")
            schema = schema or rows.schema
            rows = rows.select(schema.names).cast(schema)
            per_row = entry.file.file_size / max(1, rows.num_rows)
            while rows.num_rows:
                room = int(np.ceil((target_file_size / scale - estimated) / per_row))
                take = max(1, min(rows.num_rows, room))
                pending.append(rows.slice(0, take))
                estimated += take * per_row
                rows = rows.slice(take)
                if estimated * scale >= target_file_size:
                    meta = files.write(pa.concat_tables(pending).combine_chunks())
                    estimated_total += estimated
                    written_total += meta.file_size
                    scale = written_total / estimated_total
                    pending, estimated = [], 0.0
        if pending:
            files.write(pa.concat_tables(pending).combine_chunks())
        unit.outputs = files.finish((low, high))
    except BaseException:
        files.abort()
        raise
    return unit


@dataclass
class AppendPass:
    """What an append-table compaction committed (or why not)."""

    units: list
    waiting: int = 0
    snapshot: object = None
    refused: str = ""
    manifests_rewritten: bool = False


def run(table, commit_user: str, checkpoint_snapshot, latest, files: dict[tuple, list],
        options: AppendCompactionOptions, manifest_merge_min_count: int) -> AppendPass:
    """Plan, write and commit one pass: the chosen units and, when the manifest list holds more
    than ``manifest_merge_min_count`` manifests, a fresh base, in one ``COMPACT`` snapshot
    planned on ``latest``. A commit that removed an input since refuses the pass (the outputs
    are deleted; it is planned again next pass); commits that only added files do not."""
    units, waiting = plan(table, files, options)
    rewrite = len(private.manifest_list(table, latest)) > manifest_merge_min_count
    result = AppendPass(units, waiting)
    if not units and not rewrite:
        return result
    try:
        for unit in units:
            compact_unit(table, unit, options.target_file_size)
        deleted = [e for u in units for e in u.inputs]
        added = [private.new_entry(table, 0, u.partition, u.bucket, u.inputs[0].total_buckets, meta)
                 for u in units for meta in u.outputs]
        result.snapshot = private.commit_compact(
            table, commit_user, checkpoint_snapshot.commit_identifier, checkpoint_snapshot.properties, latest,
            deleted, added, rewrite_manifests=rewrite,
        )
    except private.CompactionConflict as conflict:
        result.refused = str(conflict)
    except BaseException:
        _delete_outputs(table, units)
        raise
    if result.snapshot is None:
        result.refused = result.refused or "lost the snapshot commit race too often"
        _delete_outputs(table, units)
        return result
    result.manifests_rewritten = rewrite
    return result


def _delete_outputs(table, units: list) -> None:
    for unit in units:
        private.delete_written(table, unit.partition, unit.bucket, unit.outputs)
