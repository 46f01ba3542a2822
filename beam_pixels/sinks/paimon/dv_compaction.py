"""Compaction of deletion-vector tables: runs hold live rows only, each key in one file.

In Paimon's deletion-vector mode a commit adds a bucket's new rows as its newest
sorted run and marks the stored rows they replace deleted (:mod:`.merge_on_read`).
:func:`pick` chooses, per bucket, what a maintenance pass rewrites:

1. when every level is taken, the newest runs, tiered (the two newest, then each next
   older run short of the two oldest while it is at most what is merged so far: runs
   merge as a binary counter counts, so a row is merged about log2(runs it outlives)
   times, not with every merge: at "twice", the run the merges gathered joined nearly
   every merge, rewriting the stream's recent rows again and again),
   or everything when the newer runs add up to more than
   ``compaction.max-size-amplification-percent`` of the oldest (live bytes). The run
   just above the oldest is not merged into: it is the biggest newer run (a bulk
   load's, or what tiering gathered), so merging into it rewrote most of the table in
   one pass, and rule 2 then drained the new copy into the oldest run, rewriting it
   again, while the retained snapshots kept every old copy for their time;
2. each file of the oldest run once about ``compaction.delete-ratio-threshold`` of its
   rows are deleted (:func:`_spread`), at its level, with the next files of the run while
   their live rows and its own add up to at most a file's (so a run that drains, e.g. a
   partition whose rows updates move elsewhere, keeps fewer, fuller files instead of as
   many ever smaller ones). It takes in the live rows
   the newer runs hold in its key range (from its first key to the next file's), and
   marks them deleted where they were: so the newer runs drain into the oldest run a
   file at a time, instead of the whole bucket being rewritten at once (whose old copy
   the retained snapshots would keep, doubling the table for that long). It takes rows
   from the files no other rewrite of the pass takes, so draining goes on while
   rule 1 merges the newest runs;
3. a file whose rows are all deleted is dropped;
4. each file of the run just above the oldest once about the delete ratio of its rows are
   deleted, alone, at its level. Tiering leaves that run to drain into the oldest run, and a
   drain frees a file of it only once every key of its range has been drained: meanwhile
   its deleted rows stayed stored, and its deletion vector (a bitmap of 8 KB per 65,536
   rows once 1 in 16 are deleted) was copied by every commit (in the soak, the run a bulk
   load's last commit left above the oldest held 31,000 rows, a few hundred of them live,
   for minutes).

Other newer runs are not rewritten for their deleted rows: they are drained, merged or
dropped. Maintenance paces the rewrites of rules 2 and 4 by the table's deletions
(:mod:`.pacing`). Outputs roll at a share of the bucket's live rows (``paimon.compaction.file-percent``,
at least :data:`MIN_FILE_ROWS`), so that each of these rewrites costs that share.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pixels.sinks.key_index import key_codes
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.compaction import CompactionOptions, SortedRun, merge_runs, sorted_runs, unit_below
from beam_pixels.sinks.paimon.deletion_vectors import without_deleted
from beam_pixels.sinks.paimon.options import ratio_option

DELETE_RATIO_OPTION = "compaction.delete-ratio-threshold"
DEFAULT_DELETE_RATIO = 0.2
DEFAULT_FILE_PERCENT = 25
# At least the rows of one deletion-vector container: a deletion vector (a roaring bitmap)
# holds each 65,536 positions of a file in one container, a deleted row in 2 bytes up to
# 4,096 of them, then 8 KB; with random updates most files pass that, so a file of fewer rows
# costs a whole container still, e.g. 2.7 bits a row at 24,000 rows against 1 at 65,536, in
# every copy of the index the retained snapshots keep. A large commit's files (a bulk load's)
# hold as many (:mod:`.writer`): the soak's preload, in files of 31,000 rows, cost 2.1 bits a
# row in each of the ~35 index copies a minute of snapshots kept, 0.3 of the table's size.
MIN_FILE_ROWS = 65_536


def delete_ratio(options: dict[str, str]) -> float:
    """Paimon's ``compaction.delete-ratio-threshold``: rewrite a file once this share of its rows is deleted."""
    return ratio_option(options, DELETE_RATIO_OPTION, DEFAULT_DELETE_RATIO)


@dataclass(frozen=True)
class Rewrite:
    """One rewrite in a bucket: ``inputs`` (whole runs, or one file) into files of ``level``
    rolled at ``file_rows``; with ``absorb_from``, the live rows those (newer) files hold
    from ``inputs``' first key (``lower``, None: unbounded) to ``upper`` (excluded; None:
    unbounded) move in too. ``reclaims``: a rewrite for the file's deleted rows (rules 2 and 4),
    which maintenance paces (:mod:`.pacing`)."""

    inputs: list
    level: int
    file_rows: int | None = None
    absorb_from: tuple = ()
    lower: tuple | None = None
    upper: tuple | None = None
    reclaims: bool = False


@dataclass
class DvMerge:
    """One bucket's rewrite (uncommitted): input entries, output entries, the key code
    of every output row per output file, and the rows moved out of other files
    (``{file name: (key codes, positions)}``, to be marked deleted there)."""

    bucket: tuple
    inputs: list
    outputs: list
    codes: dict
    moved: dict = field(default_factory=dict)

    @property
    def input_names(self) -> list[str]:
        return [e.file.file_name for e in self.inputs]


def pick(entries: list, live_rows, options: CompactionOptions, ratio: float,
         file_percent: int = DEFAULT_FILE_PERCENT) -> list[Rewrite]:
    """What to rewrite in one bucket of a deletion-vector table (module docstring)."""
    def live_bytes(entry) -> int:
        meta = entry.file
        return meta.file_size * live_rows.live_count(meta.file_name) // meta.row_count if meta.row_count else 0

    runs = [SortedRun(run.level, run.files, sum(live_bytes(e) for e in run.files)) for run in sorted_runs(entries)]
    file_rows = max(MIN_FILE_ROWS, sum(live_rows.live_count(e.file.file_name) for e in entries) * file_percent // 100)
    chosen, taken = [], set()
    if len(runs) >= options.max_level:
        newer = sum(run.size for run in runs[:-1])
        if newer * 100 > options.max_size_amplification_percent * runs[-1].size:
            count = len(runs)
        else:
            count, merged = 2, runs[0].size + runs[1].size
            while count < len(runs) - 2 and merged >= runs[count].size:
                merged += runs[count].size
                count += 1
        unit = unit_below(runs, options.max_level, count)
        chosen.append(Rewrite(unit.files, unit.output_level, file_rows))
        taken = {e.file.file_name for e in unit.files}
    for entry in entries:
        name = entry.file.file_name
        if name not in taken and entry.file.row_count and not live_rows.live_count(name):
            chosen.append(Rewrite([entry], entry.file.level))
            taken.add(name)
    if len(runs) > 1:  # tiering never takes the run above the oldest: its files shed their deleted rows here
        for entry in runs[-2].files:
            rows, name = entry.file.row_count, entry.file.file_name
            if name not in taken and rows - live_rows.live_count(name) >= _spread(ratio, name) * rows:
                chosen.append(Rewrite([entry], entry.file.level, file_rows, reclaims=True))
                taken.add(name)
    if not runs or runs[-1].files[0].file.file_name in taken:
        return chosen
    oldest = sorted(runs[-1].files, key=_first_key)
    newer = tuple(e for run in runs[:-1] for e in run.files if e.file.file_name not in taken)
    number = 0
    while number < len(oldest):
        entry = oldest[number]
        rows, name = entry.file.row_count, entry.file.file_name
        live = live_rows.live_count(name)
        if name in taken or not rows or rows - live < _spread(ratio, name) * rows:
            number += 1
            continue
        inputs = [entry]
        for following in oldest[number + 1:]:  # small next files join in, up to a file's rows
            more = live_rows.live_count(following.file.file_name)
            if following.file.file_name in taken or live + more > file_rows:
                break
            inputs.append(following)
            live += more
        end = number + len(inputs)
        lower = None if number == 0 else _first_key(entry)
        upper = None if end == len(oldest) else _first_key(oldest[end])
        overlapping = tuple(e for e in newer if (upper is None or _first_key(e) < upper)
                            and (lower is None or _last_key(e) >= lower))
        chosen.append(Rewrite(inputs, entry.file.level, file_rows, overlapping, lower, upper, reclaims=True))
        taken.update(e.file.file_name for e in inputs)
        number = end
    return chosen


def _first_key(entry) -> tuple:
    return tuple(entry.file.min_key.values)


def _last_key(entry) -> tuple:
    return tuple(entry.file.max_key.values)


def _spread(ratio: float, name: str) -> float:
    """``ratio`` scaled by a factor in [0.5, 1.5) fixed per file name. Random updates delete
    rows of every file at the same pace, so with one threshold all files would be
    rewritten in the same pass, again and again; spread thresholds spread the rewrites
    (and the old copies the retained snapshots keep) over time."""
    return ratio * (0.5 + (zlib.crc32(name.encode()) % 1000) / 1000)


def merge_live_runs(table, bucket: tuple, rewrite: Rewrite, vectors: dict, key_columns: list[str]) -> DvMerge:
    """Carry out ``rewrite``: its inputs (whole runs, or files of one run) without their
    deleted rows, and the live rows of its ``absorb_from`` files in its key range, sorted by
    key, as files of its level; ``vectors`` maps a file name to its deleted positions. Each
    key is live in one file only, so the inputs just interleave."""
    order = [private.KEY_PREFIX + k for k in table.trimmed_primary_keys]  # files are sorted by Paimon's key fields
    stored = private.stored_key_columns(table, key_columns)  # the key index's columns (may hold a partition key)
    inputs = rewrite.inputs
    tables = [rows for rows in (_live(table, entry, vectors) for entry in sorted(inputs, key=lambda e: -e.file.level))
              if rows is not None]  # oldest first
    moved = {}
    for entry in rewrite.absorb_from:
        rows = private.read_key_values(table, entry)
        take = _in_range(rows.select(order), rewrite.lower, rewrite.upper)
        deleted = vectors.get(entry.file.file_name)
        if deleted is not None and len(deleted):
            take[deleted] = False
        if take.any():
            rows = rows.filter(pa.array(take))
            moved[entry.file.file_name] = (key_codes(rows.select(stored)), np.flatnonzero(take).astype(np.uint32))
            tables.append(rows)
    merged = merge_runs(tables, order, drop_retractions=True) if tables else None
    outputs, codes = [], {}
    if merged is not None and merged.num_rows:
        merged = _one_sequence_number(merged)
        all_codes = key_codes(merged.select(stored))
        start = 0
        total_buckets = inputs[0].total_buckets
        for meta in private.write_compacted(table, bucket[0], bucket[1], merged, rewrite.level, rewrite.file_rows):
            outputs.append(private.new_entry(table, 0, bucket[0], bucket[1], total_buckets, meta))
            codes[meta.file_name] = all_codes[start:start + meta.row_count]
            start += meta.row_count
    return DvMerge(bucket, list(inputs), outputs, codes, moved)


def _one_sequence_number(rows: pa.Table) -> pa.Table:
    """``rows`` with the highest of their sequence numbers on every row. Each key is live in
    one file, so a row's number only has to stay above the key's deleted older rows (it
    grows) and below the key's later changes (written after every committed row, so above
    the highest). One value compresses to nothing; distinct ones cost ~5 bytes a row."""
    index = rows.schema.get_field_index(private.SEQUENCE_COLUMN)
    highest = pc.max(rows.column(index)).as_py()
    return rows.set_column(index, rows.schema.field(index), pa.array(np.full(rows.num_rows, highest, np.int64)))


def _live(table, entry, vectors: dict) -> pa.Table | None:
    """A data file's raw rows less its deleted ones (nothing read when all are deleted)."""
    deleted = vectors.get(entry.file.file_name)
    if deleted is not None and len(deleted) == entry.file.row_count:
        return None
    return without_deleted(private.read_key_values(table, entry), deleted)[0]


def _in_range(keys: pa.Table, lower: tuple | None, upper: tuple | None) -> np.ndarray:
    """Which rows of ``keys`` (key columns) are at least ``lower`` and below ``upper``, by
    key order (Arrow's comparison, as the files are sorted); None bounds are open."""
    inside = np.ones(keys.num_rows, bool)
    if lower is not None:
        inside &= ~_before(keys, lower)
    if upper is not None:
        inside &= _before(keys, upper)
    return inside


def _before(keys: pa.Table, bound: tuple) -> np.ndarray:
    """Which rows' keys sort before ``bound`` (lexicographic over the key columns)."""
    before = np.zeros(keys.num_rows, bool)
    equal = np.ones(keys.num_rows, bool)
    for column, value in zip(keys.columns, bound):
        scalar = pa.scalar(value, type=column.type)
        before |= equal & pc.less(column, scalar).to_numpy(zero_copy_only=False)
        equal &= pc.equal(column, scalar).to_numpy(zero_copy_only=False)
    return before


def discard(table, merges: list, index_adds: list) -> None:
    """Delete the outputs of ``merges`` and the index files ``index_adds`` (not committed)."""
    for merge in merges:
        private.delete_written(table, merge.bucket[0], merge.bucket[1], [e.file for e in merge.outputs])
    for entry in index_adds:
        private.delete_index_file(table, entry)
