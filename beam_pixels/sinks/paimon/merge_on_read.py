"""Deletion-vector commits: a commit rewrites no stored row, and readers never merge.

For a primary-key table in Paimon's deletion-vector mode (``deletion-vectors.enabled``),
:mod:`.writer` writes each commit's surviving after-images as ``+I`` rows, one
sorted file per bucket, and :func:`commit` makes them visible in one snapshot:

- the stored row of every touched key (updated or deleted) is marked in its file's
  deletion vector, found with :class:`~.deletion_vectors.LiveRows`; each changed
  bucket gets one new deletion-vector index file;
- the new files become the bucket's newest sorted run, one level above the newest
  run it holds (the oldest run sits at the top level, ``num-levels`` - 1), each file
  sinking into the deepest run it can join with no file of its level or above overlapping
  its keys (:func:`_new_file_level`: a bulk load in key order joins the oldest run). When level
  1 is taken, a ``COMPACT`` snapshot first moves the runs from level 1 up across the
  free levels above them (a change of the manifest entries only, as Paimon's compaction
  "upgrades" a file; so the next commits find level 1 free)
  or, when every level is taken, merges the runs of levels 1 and 2 (maintenance
  normally keeps levels free, see :mod:`.compaction`), so the ``APPEND`` snapshot
  holds only new files, as streaming readers expect.

So every level above 0 stays one sorted run of non-overlapping files, as Paimon's
own writers and compaction expect, and Paimon readers (pypaimon, Java) read each
file as it is, less its deletion vector. The ``APPEND`` snapshot holds the checkpoint
in its properties (a ``COMPACT`` one repeats the previous checkpoint); each is committed
only on top of the snapshot it was planned on: any other commit in between makes it a
:class:`CommitConflict`, and the committer retries from the new table state.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from beam_pixels.checkpoint import Checkpoint
from beam_pixels.sinks.committing import CommitConflict
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon import deletion_vectors
from beam_pixels.sinks.paimon.dv_compaction import Rewrite, discard, merge_live_runs


@dataclasses.dataclass(frozen=True)
class PreparedFiles:
    """One part of a commit: pypaimon's commit messages (level-0 ``+I`` files), the key
    code of every row of every new file, and the keys the part touched."""

    messages: list
    codes: dict  # data file name -> int64 key codes, in file order
    touched_keys: pa.Table


def key_codes_of(written: dict[str, pa.Table]) -> dict:
    """The key code of every row of every new data file, from its key columns as written
    (``{file name: key columns, in file order}``)."""
    from beam_pixels.sinks.key_index import key_codes

    return {name: key_codes(keys) for name, keys in written.items()}


def commit(table, key_columns: list[str], parts: list[PreparedFiles], checkpoint: Checkpoint, last: Checkpoint,
           commit_user: str, max_level: int, live_files) -> int:
    """Commit ``parts`` in one ``APPEND`` snapshot holding ``checkpoint`` (module docstring),
    after a ``COMPACT`` snapshot (holding ``last``, the table's checkpoint) if runs must move
    or merge to free level 1 of a bucket; returns the ``APPEND`` snapshot's id."""
    state = deletion_vectors.live_rows(table, key_columns, live_files)
    with state.lock:
        buckets = {(tuple(m.partition), m.bucket) for p in parts for m in p.messages if m.new_files}
        _free_level_one(table, state, buckets, last, commit_user, max_level, key_columns)
        planned_on = private.latest_snapshot(table)
        touched = [p.touched_keys for p in parts if p.touched_keys is not None and p.touched_keys.num_rows]
        index_adds = []
        try:
            found = state.find(pa.concat_tables(touched) if touched else None, table)
            vectors = _vectors_after(state, found)
            by_bucket = _by_bucket(state)
            bases = {bucket: _new_run_level(entries, max_level) for bucket, entries in by_bucket.items()}
            added = []
            for message in (m for p in parts for m in p.messages):
                bucket = (tuple(message.partition), message.bucket)
                entries = by_bucket.setdefault(bucket, [])
                for meta in message.new_files:
                    meta.level = _new_file_level(entries, meta, bases.get(bucket, max_level), max_level)
                    added.append(private.new_entry(table, 0, bucket[0], bucket[1], table.total_buckets, meta))
                    entries.append(added[-1])
            changed = {state.bucket_of(name) for name in found}
            index_adds, index_deletes = state.write_index_changes(table, changed, vectors)
            snapshot = private.commit_compact(
                table, commit_user, checkpoint.batch_id, checkpoint.to_properties(), planned_on, [], added,
                rewrite_manifests=False, commit_kind="APPEND", index_adds=index_adds, index_deletes=index_deletes,
                exclusive=True)
            if snapshot is None:
                raise private.CompactionConflict("lost the snapshot commit race too often")
        except private.CompactionConflict as conflict:
            _undo(table, index_adds, [])
            raise CommitConflict(f"{table.table_path}: {conflict}") from conflict
        except BaseException:
            _undo(table, index_adds, [])
            raise
        codes = {name: c for part in parts for name, c in part.codes.items()}
        state.apply(snapshot.id, [], added, codes, vectors, changed, index_adds)
        state.rows_deleted += sum(len(positions) for positions in found.values())
        return snapshot.id


def _free_level_one(table, state, buckets: set, last: Checkpoint, commit_user: str, max_level: int,
                    key_columns: list[str]) -> None:
    """Make level 1 free in each of ``buckets``, in one ``COMPACT`` snapshot: the runs from
    level 1 up move up across the free levels above them (manifest entries only), or, when every level is taken,
    the runs of levels 1 and 2 are merged into level 2."""
    by_bucket = _by_bucket(state)
    deleted, added, merges, codes = [], [], [], {}
    vectors = {bucket: dict(v) for bucket, v in state.vectors.items()}
    for bucket in buckets:
        entries = by_bucket.get(bucket, [])
        levels = {e.file.level for e in entries}
        if 1 not in levels:
            continue
        if levels == set(range(1, max_level + 1)):
            inputs = [e for e in entries if e.file.level in (1, 2)]
            merge = merge_live_runs(table, bucket, Rewrite(inputs, 2), vectors.get(bucket, {}), key_columns)
            merges.append(merge)
            deleted += merge.inputs
            added += merge.outputs
            codes.update(merge.codes)
            for name in merge.input_names:
                vectors.get(bucket, {}).pop(name, None)
        else:
            top = 1
            while top + 1 in levels:
                top += 1
            shift = min(level for level in levels | {max_level + 1} if level > top) - top - 1
            for entry in entries:
                if entry.file.level <= top:
                    deleted.append(entry)
                    added.append(dataclasses.replace(entry, file=dataclasses.replace(entry.file,
                                                                                     level=entry.file.level + shift)))
    if not deleted:
        return
    changed = {m.bucket for m in merges}
    index_adds = []
    try:
        index_adds, index_deletes = state.write_index_changes(table, changed, vectors)
        snapshot = private.commit_compact(
            table, commit_user, last.batch_id, last.to_properties(), private.latest_snapshot(table), deleted, added,
            rewrite_manifests=False, index_adds=index_adds, index_deletes=index_deletes, exclusive=True)
        if snapshot is None:
            raise private.CompactionConflict("lost the snapshot commit race too often")
    except private.CompactionConflict as conflict:
        _undo(table, index_adds, merges)
        raise CommitConflict(f"{table.table_path}: {conflict}") from conflict
    except BaseException:
        _undo(table, index_adds, merges)
        raise
    state.apply(snapshot.id, deleted, added, codes, vectors, changed, index_adds)


def _new_run_level(entries: list, max_level: int) -> int:
    """The level of a bucket's new run: just above its newest run (level 1 is free), or the top."""
    levels = [e.file.level for e in entries]
    return min(levels) - 1 if levels else max_level


def _new_file_level(entries: list, meta, base: int, max_level: int) -> int:
    """The deepest level a new file can go to: from ``base`` (its commit's new run) down
    across every level that holds no file overlapping its key range. Each level stays a
    sorted run of non-overlapping files, and the levels above the file hold none of its
    keys, so its keys' older rows all lie below it. A bulk load in key order that arrives in
    several commits (a table read in key order) thus joins the oldest run instead of
    stacking runs that compaction would later rewrite into it (keeping the old copies for
    the retention)."""
    level = base
    while level < max_level and not any(e.file.level == level + 1 and _overlaps(e.file, meta) for e in entries):
        level += 1
    return level


def _overlaps(a, b) -> bool:
    """Whether two data files' key ranges overlap."""
    return not (tuple(a.max_key.values) < tuple(b.min_key.values) or tuple(b.max_key.values) < tuple(a.min_key.values))


def _vectors_after(state, found: dict) -> dict:
    """Each bucket's deletion vectors with ``found`` positions added (new dicts where changed)."""
    vectors = {bucket: dict(v) for bucket, v in state.vectors.items()}
    for name, positions in found.items():
        bucket = vectors.setdefault(state.bucket_of(name), {})
        old = bucket.get(name)
        bucket[name] = positions if old is None else deletion_vectors.merge_sorted(old, positions)
    return vectors


def _by_bucket(state) -> dict:
    buckets = {}
    for entry in state.entries.values():
        buckets.setdefault((private.entry_partition(entry), entry.bucket), []).append(entry)
    return buckets


def _undo(table, index_adds: list, merges: list) -> None:
    """After a failed commit: delete what it wrote, drop the (possibly changed) cached state."""
    discard(table, merges, index_adds)
    deletion_vectors.forget(table)
