"""Where every live key of a table is: (data file, row position), found without a scan.

Keys become 64-bit codes (:func:`key_codes`): a single integer-like key column is
its own code (exact); any other key (strings, decimals, composite keys) is hashed,
and a hashed match is confirmed against the key values stored in the data file
(:meth:`KeyIndex.find` with ``verify``), so a hash collision never deletes a
wrong row. The index keeps sorted runs of ``(code, file id, position)``, 16
bytes per live row, merged like a log-structured tree: a commit adds a small
run, lookups binary-search every run, deleted entries are tombstoned and
dropped when runs merge. Each file also keeps the partition the sink gave it, so
that a row found in a file is known to be in that file's partition.

:data:`INDEXES` is the process's one cache of them: per table, the index of one
snapshot, rebuilt when the table has moved on without this process.
"""

from __future__ import annotations

import logging
import threading
import typing
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_LOG = logging.getLogger(__name__)

_EXACT_TYPES = (pa.types.is_integer, pa.types.is_date, pa.types.is_timestamp, pa.types.is_time)
_MULTIPLIER = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def is_exact(key_types: typing.Sequence[pa.DataType]) -> bool:
    """Whether keys of these column types are their own codes (no hashing, no collisions)."""
    return len(key_types) == 1 and any(check(key_types[0]) for check in _EXACT_TYPES)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit affects every output bit."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def _bytes_hash(column: pa.Array) -> np.ndarray:
    """A 64-bit polynomial hash of every value's bytes, vectorised over the Arrow buffers."""
    kind = column.type
    if not any(check(kind) for check in (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string, pa.types.is_large_string)):
        column = column.cast(pa.string())
    column = column.cast(pa.large_binary())
    n = len(column)
    offsets = np.frombuffer(column.buffers()[1], np.int64)[column.offset : column.offset + n + 1]
    data = np.frombuffer(column.buffers()[2], np.uint8) if column.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    data = data[offsets[0] : offsets[-1]].astype(np.uint64) + np.uint64(1)
    within = np.arange(len(data), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], lengths)
    powers = np.cumprod(np.full(int(lengths.max(initial=0)) + 1, _MULTIPLIER, np.uint64), dtype=np.uint64)
    with np.errstate(over="ignore"):
        sums = np.concatenate([[np.uint64(0)], np.cumsum(data * powers[within], dtype=np.uint64)])
        h = sums[offsets[1:] - offsets[0]] - sums[offsets[:-1] - offsets[0]]
        return _mix(h ^ (lengths.astype(np.uint64) * _GOLDEN))


def _integer_values(column: pa.Array) -> np.ndarray:
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type) or pa.types.is_time(column.type):
        column = column.view(pa.int64() if column.type.bit_width == 64 else pa.int32())
    return column.cast(pa.int64()).to_numpy(zero_copy_only=False)


def key_codes(keys: pa.Table) -> np.ndarray:
    """The int64 code of every row of ``keys`` (its key columns, in primary-key order)."""
    columns = [keys.column(i).combine_chunks() for i in range(keys.num_columns)]
    if is_exact([c.type for c in columns]):
        return _integer_values(columns[0])
    h = np.zeros(keys.num_rows, np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:
            if any(check(column.type) for check in _EXACT_TYPES):
                part = _mix(_integer_values(column).view(np.uint64) + _GOLDEN)
            else:
                part = _bytes_hash(column)
            h = _mix(h * _MULTIPLIER + part)
    return h.view(np.int64)


@dataclass
class _Run:
    codes: np.ndarray  # int64, sorted
    files: np.ndarray  # int32 file ids, -1 = deleted
    positions: np.ndarray  # int32 row positions in the file


@dataclass(frozen=True)
class Hits:
    """Index entries that matched looked-up codes: which query, where, and the entry."""

    query: np.ndarray
    files: np.ndarray
    positions: np.ndarray
    entries: list[tuple[int, np.ndarray]]  # (run number, entry numbers) per run, for :meth:`KeyIndex.forget`


class KeyIndex:
    """The live keys of one table as of ``snapshot_id`` (see the module docstring)."""

    def __init__(self, exact: bool, snapshot_id: int | None):
        self.exact = exact
        self.snapshot_id = snapshot_id
        self.lock = threading.Lock()
        self._runs: list[_Run] = []
        self._paths: list[str] = []
        self._partitions: list[typing.Hashable] = []
        self._ids: dict[str, int] = {}
        self._tombstones = 0

    def __len__(self) -> int:
        return sum(len(r.codes) for r in self._runs) - self._tombstones

    @property
    def nbytes(self) -> int:
        return sum(r.codes.nbytes + r.files.nbytes + r.positions.nbytes for r in self._runs)

    def path(self, file_id: int) -> str:
        return self._paths[file_id]

    def partition(self, file_id: int) -> typing.Hashable:
        """The partition of a file, as given to :meth:`add_file` (None: unpartitioned)."""
        return self._partitions[file_id]

    def add_file(
        self, path: str, codes: np.ndarray, positions: np.ndarray | None = None, partition: typing.Hashable = None
    ) -> None:
        """Record data file ``path`` (in ``partition``) whose row ``positions[i]`` (default: ``i``)
        has key ``codes[i]``."""
        self.add_files([(path, codes, positions, partition)])

    def add_files(self, files: typing.Sequence[tuple[str, np.ndarray, np.ndarray | None, typing.Hashable]]) -> None:
        """:meth:`add_file` for each ``(path, codes, positions, partition)``, as one run: a commit of
        many files sorts its keys once instead of merging a run per file."""
        if not files:
            return
        ids, positions = [], []
        for path, codes, rows, partition in files:
            file_id = self._ids.setdefault(path, len(self._paths))
            if file_id == len(self._paths):
                self._paths.append(path)
                self._partitions.append(partition)
            ids.append(np.full(len(codes), file_id, np.int32))
            positions.append(np.arange(len(codes), dtype=np.int32) if rows is None else rows.astype(np.int32, copy=False))
        codes = np.concatenate([f[1] for f in files])
        order = np.argsort(codes, kind="stable")
        self._runs.append(_Run(codes[order], np.concatenate(ids)[order], np.concatenate(positions)[order]))
        self._settle()

    def find(self, codes: np.ndarray) -> Hits:
        """Every live entry whose code is one of ``codes`` (hashed keys: candidates to verify)."""
        queries, files, positions, entries = [], [], [], []
        order = np.argsort(codes, kind="stable")  # sorted needles: a binary search walks the same path
        codes = codes[order]
        for number, run in enumerate(self._runs):
            lo = np.searchsorted(run.codes, codes, "left")
            counts = np.searchsorted(run.codes, codes, "right") - lo
            total = int(counts.sum())
            if not total:
                continue
            starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
            entry = starts + np.arange(total)
            query = np.repeat(order, counts)
            live = run.files[entry] >= 0
            entry, query = entry[live], query[live]
            queries.append(query)
            files.append(run.files[entry])
            positions.append(run.positions[entry])
            entries.append((number, entry))
        if not queries:
            empty = np.zeros(0, np.int64)
            return Hits(empty, empty.astype(np.int32), empty.astype(np.int32), [])
        return Hits(np.concatenate(queries), np.concatenate(files), np.concatenate(positions), entries)

    def forget(self, hits: Hits, keep: np.ndarray | None = None) -> None:
        """Tombstone the entries of ``hits`` (those where ``keep`` is True, if given)."""
        offset = 0
        for number, entry in hits.entries:
            chosen = entry if keep is None else entry[keep[offset : offset + len(entry)]]
            offset += len(entry)
            self._runs[number].files[chosen] = -1
            self._tombstones += len(chosen)

    def forget_rows(self, path: str, codes: np.ndarray, positions: np.ndarray) -> None:
        """Tombstone the entries of data file ``path``'s rows at ``positions`` (keys ``codes``):
        rows moved to another file."""
        file_id = self._ids.get(path)
        if file_id is None or not len(codes):
            return
        hits = self.find(codes)
        self.forget(hits, (hits.files == file_id) & np.isin(hits.positions, positions))

    def forget_files(self, paths: typing.Iterable[str]) -> None:
        """Tombstone every entry of these data files (rewritten by compaction)."""
        ids = np.array([self._ids[p] for p in paths if p in self._ids], np.int32)
        for run in self._runs:
            gone = np.isin(run.files, ids)
            self._tombstones += int(gone.sum())
            run.files[gone] = -1
        self._settle()

    def _settle(self) -> None:
        """Merge the newest runs while a run is not much larger than the next; drop
        tombstones when they are half the entries."""
        while len(self._runs) > 1 and len(self._runs[-2].codes) <= 2 * len(self._runs[-1].codes):
            self._runs[-2:] = [self._merge(self._runs[-2:])]
        if self._tombstones and 2 * self._tombstones >= sum(len(r.codes) for r in self._runs):
            self._runs = [self._merge(self._runs)]

    def _merge(self, runs: list[_Run]) -> _Run:
        codes = np.concatenate([r.codes for r in runs])
        files = np.concatenate([r.files for r in runs])
        positions = np.concatenate([r.positions for r in runs])
        live = files >= 0
        self._tombstones -= int((~live).sum())
        codes, files, positions = codes[live], files[live], positions[live]
        order = np.argsort(codes, kind="stable")  # timsort: linear on concatenated sorted runs
        return _Run(codes[order], files[order], positions[order])


def verify(hits: Hits, touched: pa.Table, stored_keys: typing.Callable[[str, np.ndarray], pa.Table], index: KeyIndex) -> np.ndarray:
    """Which ``hits`` of hashed codes really hold their touched key: compares ``touched``
    (key columns) with the keys ``stored_keys(path, positions)`` reads from each file."""
    ok = np.zeros(len(hits.query), bool)
    for file_id in np.unique(hits.files):
        mine = np.flatnonzero(hits.files == file_id)
        stored = stored_keys(index.path(int(file_id)), hits.positions[mine])
        wanted = touched.take(pa.array(hits.query[mine]))
        same = np.ones(len(mine), bool)
        for name in touched.column_names:
            same &= pc.equal(stored.column(name).cast(wanted.column(name).type), wanted.column(name)).to_numpy(zero_copy_only=False)
        ok[mine] = same
    return ok


_Indexed = typing.TypeVar("_Indexed")  # anything with the ``snapshot_id`` it describes


class SnapshotCache(typing.Generic[_Indexed]):
    """Per table, the index of one of its snapshots; an entry is used only while it
    describes the snapshot the caller sees as current. Thread-safe."""

    def __init__(self):
        self._entries: dict[typing.Hashable, _Indexed] = {}
        self._lock = threading.Lock()

    def peek(self, table: typing.Hashable) -> _Indexed | None:
        """The entry of ``table``, whatever snapshot it describes."""
        with self._lock:
            return self._entries.get(table)

    def current(self, table: typing.Hashable, snapshot_id: int | None) -> _Indexed | None:
        """The entry of ``table`` if it describes ``snapshot_id``, else None."""
        entry = self.peek(table)
        return entry if entry is not None and entry.snapshot_id == snapshot_id else None

    def get(
        self, table: typing.Hashable, snapshot_id: int | None, build: typing.Callable[[], _Indexed], name: str
    ) -> _Indexed:
        """The entry of ``table`` at ``snapshot_id``: the cached one, else ``build()``'s (then cached)."""
        with self._lock:
            entry = self._entries.get(table)
            if entry is not None and entry.snapshot_id == snapshot_id:
                return entry
            if entry is not None:
                _LOG.info("%s: changed by another writer (snapshot %s, index at %s); rebuilding the key index",
                          name, snapshot_id, entry.snapshot_id)
            entry = self._entries[table] = build()
            return entry

    def forget(self, table: typing.Hashable) -> None:
        """Drop the entry of ``table`` (its state is unknown after a failed commit)."""
        with self._lock:
            self._entries.pop(table, None)


INDEXES: SnapshotCache = SnapshotCache()
"""The key indexes of this process, keyed by ``(format, table identity)``."""
