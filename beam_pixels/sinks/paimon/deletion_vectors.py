"""Where every live row of a deletion-vector table is, and which stored rows are deleted.

A primary-key table with ``deletion-vectors.enabled`` is read without merging:
every file above level 0 is read as it is, less the positions its deletion vector
marks (Paimon's deletion-vector mode). So each key must be live in exactly one
file, and a commit that changes a key marks its older row deleted. To find that
row without a scan, :class:`LiveRows` keeps a
:class:`~beam_pixels.sinks.key_index.KeyIndex` (key code -> data file, position; 16
bytes per live row) and each bucket's deletion vectors, built from the table
once per process and kept current with every commit and compaction this process
makes. A local run builds new writers every round, so it lives in a process-wide
cache keyed by the table location, used only while the table's latest snapshot is
the one it describes; after another writer's commit it is rebuilt from the table.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from beam_pixels.sinks.key_index import INDEXES, KeyIndex, is_exact, key_codes, verify
from beam_pixels.sinks.paimon import _pypaimon_private as private

_LOG = logging.getLogger(__name__)


def enabled(options: dict[str, str]) -> bool:
    """Whether table options turn Paimon's deletion-vector mode on."""
    return str(options.get("deletion-vectors.enabled", "false")).strip().lower() == "true"


@dataclass
class LiveRows:
    """The live rows of a deletion-vector table as of ``snapshot_id`` (module docstring)."""

    snapshot_id: int | None
    index: KeyIndex
    key_columns: list[str]
    entries: dict[str, object] = field(default_factory=dict)  # data file name -> ADD manifest entry
    vectors: dict[tuple, dict[str, np.ndarray]] = field(default_factory=dict)  # (partition, bucket) -> file -> positions
    index_entries: dict[tuple, list] = field(default_factory=dict)  # (partition, bucket) -> DV index manifest entries
    rows_deleted: int = 0  # stored rows the commits since the state was built marked deleted (:mod:`.pacing`)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bucket_of(self, name: str) -> tuple:
        entry = self.entries[name]
        return private.entry_partition(entry), entry.bucket

    def live_count(self, name: str) -> int:
        """Rows of data file ``name`` not marked deleted."""
        entry = self.entries[name]
        return entry.file.row_count - len(self.vectors.get(self.bucket_of(name), {}).get(name, ()))

    def find(self, touched: pa.Table, table) -> dict[str, np.ndarray]:
        """``{data file name: positions}`` of the stored rows of the keys in ``touched``
        (key columns), and forgets them in the key index (call under :attr:`lock`)."""
        if touched is None or not touched.num_rows:
            return {}
        hits = self.index.find(key_codes(touched))
        keep = None
        if not self.index.exact and len(hits.query):
            keep = verify(hits, touched, self._stored_keys(table), self.index)
        files = hits.files if keep is None else hits.files[keep]
        positions = hits.positions if keep is None else hits.positions[keep]
        self.index.forget(hits, keep)
        found = {}
        for file_id in np.unique(files):
            found[self.index.path(int(file_id))] = np.sort(positions[files == file_id]).astype(np.uint32)
        return found

    def add_files(self, files: list[tuple[object, np.ndarray, np.ndarray | None]]) -> None:
        """Record data files now live: ``(entry, codes, positions)``, the rows at ``positions``
        (None: all) having key ``codes``; the key index takes them as one run."""
        for entry, _, _ in files:
            self.entries[entry.file.file_name] = entry
        self.index.add_files([(entry.file.file_name, codes, positions, None) for entry, codes, positions in files])

    def drop_files(self, names: list[str]) -> None:
        """Forget data files rewritten away (their rows and their deletion vectors)."""
        self.index.forget_files(names)
        for name in names:
            entry = self.entries.pop(name, None)
            if entry is not None:
                self.vectors.get((private.entry_partition(entry), entry.bucket), {}).pop(name, None)

    def deleted_positions(self, entry) -> np.ndarray:
        """The positions of data file ``entry`` its deletion vector marks."""
        bucket = (private.entry_partition(entry), entry.bucket)
        return self.vectors.get(bucket, {}).get(entry.file.file_name, np.zeros(0, np.uint32))

    def read_live(self, table, entry, columns: list[str] | None = None) -> tuple[pa.Table, np.ndarray]:
        """A data file's rows less those deleted, and their positions in the file."""
        return without_deleted(private.read_key_values(table, entry, columns), self.deleted_positions(entry))

    def write_index_changes(self, table, changed: set, vectors: dict) -> tuple[list, list]:
        """New deletion-vector index files for the ``changed`` buckets (one each, from
        ``vectors``, none when empty) and the deletes of their current ones, uncommitted."""
        adds, deletes = [], []
        try:
            for bucket in changed:
                deletes += [private.deleting_index(e) for e in self.index_entries.get(bucket, [])]
                if vectors.get(bucket):
                    adds.append(private.write_deletion_vectors(table, bucket[0], bucket[1], vectors[bucket]))
        except BaseException:
            for entry in adds:
                private.delete_index_file(table, entry)
            raise
        return adds, deletes

    def apply(self, snapshot_id: int, deleted: list, added: list, codes: dict, vectors: dict, changed: set,
              index_adds: list, moved: dict | None = None) -> None:
        """Bring the state to committed ``snapshot_id``: ``deleted`` entries replaced by ``added``
        (rows with key ``codes`` per new file name; an entry without codes is a file moved to
        another level), rows ``moved`` out of files that stay (``{name: (codes, positions)}``),
        and the ``changed`` buckets' deletion ``vectors`` in ``index_adds``."""
        names_added = {e.file.file_name for e in added}
        self.drop_files([e.file.file_name for e in deleted if e.file.file_name not in names_added])
        for name, (moved_codes, positions) in (moved or {}).items():
            self.index.forget_rows(name, moved_codes, positions)
        self.add_files([(entry, codes[entry.file.file_name], None) for entry in added if entry.file.file_name in codes])
        for entry in added:
            if entry.file.file_name not in codes:
                self.entries[entry.file.file_name] = entry
        for bucket in changed:
            self.vectors[bucket] = vectors.get(bucket, {})
            self.index_entries[bucket] = [e for e in index_adds if (private.entry_partition(e), e.bucket) == bucket]
        self.snapshot_id = snapshot_id

    def _stored_keys(self, table):
        def read(name: str, positions: np.ndarray) -> pa.Table:
            rows = private.read_key_values(table, self.entries[name], self.key_columns)
            return rows.take(pa.array(positions)).rename_columns(
                [c.removeprefix(private.KEY_PREFIX) for c in self.key_columns])

        return read


def without_deleted(rows: pa.Table, deleted: np.ndarray | None) -> tuple[pa.Table, np.ndarray]:
    """A file's ``rows`` less those at the ``deleted`` positions, and the positions of the rest."""
    positions = np.arange(rows.num_rows, dtype=np.int32)
    if deleted is not None and len(deleted):
        live = np.ones(rows.num_rows, bool)
        live[deleted] = False
        rows, positions = rows.filter(pa.array(live)), positions[live]
    return rows, positions


def merge_sorted(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The sorted union of sorted ``old`` and ``new`` positions, in O(len(old) + len(new)):
    a commit adds a few positions to a vector that grows to many (``np.union1d`` sorts it all)."""
    at = np.searchsorted(old, new)
    if len(old):
        new, at = _absent(old, new, at)
    return np.insert(old, at, new).astype(np.uint32, copy=False)


def _absent(old: np.ndarray, new: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``new`` and ``at`` less the positions ``old`` already holds."""
    fresh = old[np.minimum(at, len(old) - 1)] != new
    return new[fresh], at[fresh]


def live_rows(table, key_columns: list[str], live_files) -> LiveRows:
    """The :class:`LiveRows` of ``table``'s latest snapshot: the cached one while it is
    current, else one built from the table (``live_files(table, snapshot)`` lists its files).
    The cached one is checked under its lock: a pass in the background may be between its
    commit and bringing the state up to it."""
    state = INDEXES.peek(_cache_key(table))
    if state is not None:
        with state.lock:
            latest = private.latest_snapshot(table)
            if state.snapshot_id == (latest.id if latest else None):
                return state
    latest = private.latest_snapshot(table)
    current = latest.id if latest else None
    return INDEXES.get(_cache_key(table), current, lambda: build(table, key_columns, latest, live_files), table.table_path)


def forget(table) -> None:
    """Drop the cached state of ``table`` (unknown after a failed commit)."""
    INDEXES.forget(_cache_key(table))


def _cache_key(table) -> tuple[str, str]:
    return "paimon", table.table_path


def build(table, key_columns: list[str], snapshot, live_files) -> LiveRows:
    """Read the key columns of every live file above level 0, less deleted positions."""
    started = time.monotonic()
    fields = {f.name: f for f in table.schema().fields}
    stored = private.stored_key_columns(table, key_columns)
    types = [private.arrow_type(fields[k]) for k in key_columns]
    state = LiveRows(snapshot.id if snapshot else None, KeyIndex(is_exact(types), None), stored)
    if snapshot is None:
        return state
    entries = [e for bucket in live_files(table, snapshot).values() for e in bucket]
    level0 = [e.file.file_name for e in entries if e.file.level == 0]
    if level0:
        raise RuntimeError(
            f"{table.table_path} holds {len(level0)} level-0 files (e.g. {level0[0]}), written while the table was "
            f"write-only; run Paimon's compaction job once (see the README) before the connector maintains it")
    state.index_entries = private.deletion_vector_index(table, snapshot)
    for bucket, index_entries in state.index_entries.items():
        vectors = state.vectors.setdefault(bucket, {})
        for entry in index_entries:
            vectors.update(private.read_deletion_vectors(table, entry))

    def load(entry):
        rows, positions = state.read_live(table, entry, stored)
        return entry, key_codes(rows), positions

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="paimon-index") as pool:
        state.add_files(list(pool.map(load, entries)))
    _LOG.info("%s: key index built from snapshot %s: %d keys in %d files, %.1f MB, %.2fs", table.table_path,
              state.snapshot_id, len(state.index), len(entries), state.index.nbytes / 1e6, time.monotonic() - started)
    return state
