"""Bucket compaction for primary-key tables, as Paimon's universal compaction does it.

A bucket of a primary-key table is a log-structured merge tree: every commit adds
one level-0 file (a sorted run of its own); levels 1..``num-levels``-1 hold one
sorted run each. Readers merge every run of a bucket, so the number of runs is
what a read costs. :func:`pick` chooses what to merge, with Paimon's
``UniversalCompaction`` rules and options (read from the table):

1. size amplification: when the runs above the oldest add up to more than
   ``compaction.max-size-amplification-percent`` (200) of it, merge everything
   (a full compaction);
2. size ratio: merge the newest runs while each next run is no bigger than what
   is picked so far plus ``compaction.size-ratio`` percent (1);
3. run count: with more than ``num-sorted-run.compaction-trigger`` (5) runs,
   merge the newest runs down to that count (and more while the size ratio allows).

1 and 2 apply from ``num-sorted-run.compaction-trigger`` runs on. With the table
option ``full-compaction.delta-commits`` = N, every N-th commit also merges each
bucket fully (:func:`pick_full`): one run per bucket, read without merging, at the
price of rewriting the table. Work per change
stays bounded: new changes are merged with other small, new runs; the big old run
is rewritten only when the rest have grown to twice its size.

:func:`merge_runs` merges with Arrow (sort by key, sequence number and run age,
keep each key's last row): the rows keep their sequence numbers, so changes
committed after the compaction was planned still win. Retractions (``-U``/``-D``)
are dropped only when every file of the bucket is merged into the top level;
otherwise they must still hide older rows below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.options import int_option

TRIGGER_OPTION = "num-sorted-run.compaction-trigger"
DEFAULT_TRIGGER = 5


@dataclass(frozen=True)
class CompactionOptions:
    """Paimon's universal-compaction options, plus the connector's bound per pass."""

    trigger: int = DEFAULT_TRIGGER
    max_size_amplification_percent: int = 200
    size_ratio: int = 1
    num_levels: int = DEFAULT_TRIGGER + 1
    max_bytes_per_pass: int = 256 * 2**20
    full_compaction_delta_commits: int | None = None

    @property
    def max_level(self) -> int:
        return self.num_levels - 1

    @classmethod
    def of(cls, options: dict[str, str], trigger: int | None = None,
           max_bytes_per_pass: int = 256 * 2**20) -> "CompactionOptions":
        """From table options (Paimon's names and defaults); ``trigger`` overrides the table's."""
        if trigger is None:
            trigger = int_option(options, TRIGGER_OPTION, DEFAULT_TRIGGER, 1)
        num_levels = int_option(options, "num-levels", trigger + 1, 2)
        return cls(
            trigger=trigger,
            max_size_amplification_percent=int_option(options, "compaction.max-size-amplification-percent", 200, 0),
            size_ratio=int_option(options, "compaction.size-ratio", 1, 0),
            num_levels=num_levels,
            max_bytes_per_pass=max_bytes_per_pass,
            full_compaction_delta_commits=int_option(options, "full-compaction.delta-commits", 0, 1) or None,
        )


@dataclass(frozen=True)
class SortedRun:
    """One sorted run of a bucket: a level-0 file, or every file of a higher level."""

    level: int
    files: tuple
    live_bytes: int | None = None  # deletion-vector tables: the bytes of its live rows

    @property
    def size(self) -> int:
        if self.live_bytes is not None:
            return self.live_bytes
        return sum(e.file.file_size for e in self.files)


@dataclass(frozen=True)
class CompactUnit:
    """The runs to merge (newest first) and the level their merge goes to."""

    runs: tuple
    output_level: int
    every_run: bool

    @property
    def files(self) -> list:
        return [e for run in self.runs for e in run.files]

    @property
    def size(self) -> int:
        return sum(run.size for run in self.runs)


def sorted_runs(entries: list) -> list[SortedRun]:
    """A bucket's runs, newest first: level-0 files by sequence number, then levels 1, 2, ..."""
    level0 = sorted((e for e in entries if e.file.level == 0), key=lambda e: e.file.max_sequence_number, reverse=True)
    runs = [SortedRun(0, (e,)) for e in level0]
    for level in sorted({e.file.level for e in entries} - {0}):
        runs.append(SortedRun(level, tuple(e for e in entries if e.file.level == level)))
    return runs


def pick(runs: list[SortedRun], options: CompactionOptions) -> CompactUnit | None:
    """What universal compaction merges in a bucket with these runs (newest first), if anything."""
    if len(runs) < options.trigger:
        return None
    older = sum(run.size for run in runs[:-1])
    if older * 100 > options.max_size_amplification_percent * runs[-1].size:
        return CompactUnit(tuple(runs), options.max_level, True)
    unit = _pick_for_size_ratio(runs, options, 1, force=False)
    if unit is not None:
        return unit
    if len(runs) > options.trigger:
        return _pick_for_size_ratio(runs, options, len(runs) - options.trigger + 1, force=True)
    return None


def pick_full(runs: list[SortedRun], options: CompactionOptions) -> CompactUnit | None:
    """Every run into the top level, unless the bucket is already one top-level run without retractions."""
    if not runs:
        return None
    top = runs[0].level == options.max_level and not any(e.file.delete_row_count for e in runs[0].files)
    if len(runs) == 1 and top:
        return None
    return CompactUnit(tuple(runs), options.max_level, True)


def _pick_for_size_ratio(runs: list[SortedRun], options: CompactionOptions, count: int, force: bool):
    size = sum(run.size for run in runs[:count])
    while count < len(runs) and size * (100 + options.size_ratio) / 100 >= runs[count].size:
        size += runs[count].size
        count += 1
    if count > 1 or force:
        return unit_below(runs, options.max_level, count)
    return None


def unit_below(runs: list[SortedRun], max_level: int, count: int) -> CompactUnit:
    """Paimon's ``createUnit``: below the next older run's level, never level 0."""
    output = max_level if count == len(runs) else max(0, runs[count].level - 1)
    while output == 0 and count < len(runs):
        output = runs[count].level
        count += 1
    if count == len(runs):
        output = max_level
    return CompactUnit(tuple(runs[:count]), output, count == len(runs))


def merge_runs(tables: list[pa.Table], key_columns: list[str], drop_retractions: bool) -> pa.Table:
    """Merge raw key-value tables (oldest first) into one sorted run: each key's row with
    the highest sequence number (the newer table on a tie), sequence numbers kept; with
    ``drop_retractions`` its ``-U``/``-D`` rows are left out."""
    schema = tables[-1].schema
    rank = pa.chunked_array(
        [pa.array(np.full(t.num_rows, i, np.int32)) for i, t in enumerate(tables)], type=pa.int32()
    )
    rows = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
    order_columns = [rows.column(k) for k in key_columns] + [rows.column(private.SEQUENCE_COLUMN), rank]
    names = [str(i) for i in range(len(order_columns))]
    order = pc.sort_indices(pa.table(order_columns, names=names), sort_keys=[(n, "ascending") for n in names],
                            null_placement="at_start")
    rows = rows.take(order)
    n = rows.num_rows
    if n > 1:
        last = None
        for name in key_columns:
            column = rows.column(name)
            differs = pc.not_equal(column.slice(0, n - 1), column.slice(1))
            last = differs if last is None else pc.or_(last, differs)
        keep = pa.concat_arrays([pc.fill_null(last, True).combine_chunks(), pa.array([True])])
        rows = rows.filter(keep)
    if drop_retractions:
        kinds = rows.column(private.VALUE_KIND_COLUMN)
        rows = rows.filter(pc.or_(pc.equal(kinds, 0), pc.equal(kinds, 2)))
    return rows


@dataclass
class BucketCompaction:
    """One bucket's compaction: its input entries and its new files (uncommitted)."""

    partition: tuple
    bucket: int
    unit: CompactUnit
    outputs: list

    @property
    def inputs(self) -> list:
        return self.unit.files


def compact_bucket(table, partition: tuple, bucket: int, unit: CompactUnit) -> BucketCompaction:
    """Read, merge and write one bucket's unit; the new files are not committed. The
    unit's runs are all the bucket's files when ``unit.every_run`` (then its output is
    the top level and retractions are dropped)."""
    key_columns = [private.KEY_PREFIX + k for k in table.trimmed_primary_keys]
    tables = [private.read_key_values(table, e) for run in reversed(unit.runs) for e in run.files]
    merged = merge_runs(tables, key_columns, drop_retractions=unit.every_run)
    outputs = []
    if merged.num_rows:
        outputs = private.write_compacted(table, partition, bucket, merged, unit.output_level)
    return BucketCompaction(partition, bucket, unit, outputs)
