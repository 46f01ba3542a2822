"""Table maintenance for a table committed every few seconds, run by the committer between commits.

One pass (:func:`run_pass`), at most once per ``iceberg.maintenance.interval.ms``:

1. expire snapshots by the table's own retention properties
   (``history.expire.max-snapshot-age-ms``, ``history.expire.min-snapshots-to-keep``);
2. delete the files only expired snapshots reached (manifest lists, manifests,
   data and delete files), and orphan files under the table location that no
   snapshot or metadata file reaches and that are older than a safety window
   (what the snapshots reach comes from :mod:`~beam_pixels.sinks.iceberg.manifests`,
   which reads each manifest list and manifest once per process, so a pass reads
   only those written since the pass before, however many snapshots the table keeps);
3. compact: rewrite data files that carry many deleted rows or are small, their
   position deletes folded away, sorted by key, and merge the manifests into one
   per content kind; or only merge manifests when there are too many. In a
   partitioned table, small files are merged only with small files of their own
   partition (and spec), in tiers (see :func:`_choose`), rewritten rows go to files of
   their partition under the current spec, and the folded delete files stay one per
   partition, at most ``max_delete_files`` of them folded a pass. A pass
   rewrites files with deletes of at most ``max_compact_percent`` of the table's data
   bytes (at least one file) and writes files of about that share of the table, so rewrites
   are spread over passes: the files a rewrite replaces stay until the snapshots
   reaching them expire, and rewriting the whole table at once would double it.

Between passes, the committer also expires snapshots and deletes the files only they reached
(:func:`run_expiry`, no orphan search) once a snapshot has been past the retention for a sixth of
it (:func:`expiry_due`): the files a pass or a commit replaced leave when the retention says, not
at the second pass after (with a 60 s retention and passes every 40 s, 84 s after on average).

Every commit of a pass requires the table state it was planned on, so it never
races the sink's own commits or another writer's: a conflict ends the pass and
nothing is lost. A pass stops early once its time budget is spent. Its log line
gives the seconds of each step (expiry, deletion, compaction). A SIGKILL at
any point leaves files nobody references, which a later pass removes as orphans.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from apache_beam.metrics import Metrics
from pyiceberg.manifest import DataFile, DataFileContent
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from beam_pixels.sinks.iceberg import files, merge_on_read
from beam_pixels.sinks.iceberg._pyiceberg_private import commit_file_changes
from beam_pixels.sinks.iceberg.manifests import MANIFESTS
from beam_pixels.sinks.key_index import key_codes

_LOG = logging.getLogger(__name__)
_NAMESPACE = "beam_pixels.iceberg.maintenance"
# Iceberg's own defaults for tables that do not set the retention properties.
_MAX_SNAPSHOT_AGE_MS = 5 * 24 * 3600 * 1000
_MIN_SNAPSHOTS_TO_KEEP = 1
# The smallest data file compaction writes, and bytes of files with deletes a pass may always rewrite
# (a tiny table is compacted whole).
MIN_FILE_BYTES = 2**20
# A small file is merged with smaller files of its partition only when they add up to at least
# 1/TIER_RATIO of it, twice it (see _tier): each merge at least triples a tier, so a growing
# partition's rows are rewritten about log3 of its growth times, not log1.5 (at 2, the merged tier
# of today's buckets was rewritten by most passes: half the bytes a pass merged).
TIER_RATIO = 1 / 2
# Snapshots are expired between passes once some snapshot has been past the retention for this
# share of it (see expiry_due): at 60 s, replaced files live 60-70 s, not until the second pass.
EXPIRY_LAG = 1 / 6
# monotonic time of the last pass per table UUID, process-wide (local runs build new writers every round).
_LAST_PASS: dict[str, float] = {}
_LAST_PASS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Settings:
    """The ``iceberg.maintenance.*`` keys (see the configuration reference)."""

    enabled: bool = True
    interval_ms: int = 30_000
    budget_ms: int = 30_000
    orphan_age_ms: int = 24 * 3600 * 1000
    deleted_percent: int = 20
    small_file_mb: int = 8
    target_file_mb: int = 128
    max_compact_mb: int = 256
    max_compact_percent: int = 10
    max_manifests: int = 16
    max_delete_files: int = 2000

    @classmethod
    def from_config(cls, config) -> Settings:
        return cls(
            enabled=config.iceberg_maintenance_enabled,
            interval_ms=config.iceberg_maintenance_interval_ms,
            budget_ms=config.iceberg_maintenance_budget_ms,
            orphan_age_ms=config.iceberg_maintenance_orphan_age_ms,
            deleted_percent=config.iceberg_maintenance_deleted_percent,
            small_file_mb=config.iceberg_maintenance_small_file_mb,
            target_file_mb=config.iceberg_maintenance_target_file_mb,
            max_compact_mb=config.iceberg_maintenance_max_compact_mb,
            max_compact_percent=config.iceberg_maintenance_max_compact_percent,
            max_manifests=config.iceberg_maintenance_max_manifests,
            max_delete_files=config.iceberg_maintenance_max_delete_files,
        )


@dataclass
class PassReport:
    """What one maintenance pass did."""

    snapshots_expired: int = 0
    files_deleted: int = 0
    bytes_reclaimed: int = 0
    files_compacted: int = 0
    files_written: int = 0
    manifests: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step: expiry, deletion, compaction
    stopped: list[str] = field(default_factory=list)

    def summary(self, table_name: str) -> str:
        timings = ", ".join(f"{phase} {seconds:.2f}s" for phase, seconds in self.phases.items())
        notes = [timings] if timings else []
        note = f" ({'; '.join(notes + self.stopped)})" if notes or self.stopped else ""
        return (
            f"maintained {table_name}: {self.snapshots_expired} snapshots expired, {self.files_deleted} files deleted "
            f"({self.bytes_reclaimed / 1e6:.1f} MB reclaimed), {self.files_compacted} files compacted into "
            f"{self.files_written}, {self.manifests} manifests, {self.seconds:.2f}s{note}"
        )


def due(table: Table, settings: Settings) -> bool:
    """Whether a pass is due for ``table``: enabled and one interval since the end of the
    last pass (or since the first call in this process)."""
    if not settings.enabled:
        return False
    now = time.monotonic()
    with _LAST_PASS_LOCK:
        last = _LAST_PASS.setdefault(str(table.metadata.table_uuid), now)
    return now - last >= settings.interval_ms / 1000


def run_pass(table: Table, settings: Settings, key_columns: list[str], properties: dict[str, str]) -> PassReport:
    """One maintenance pass on ``table`` (loaded without pyiceberg's blind retries);
    ``properties`` (the latest checkpoint) go on the snapshots it commits. Logs one line."""
    started = time.monotonic()
    deadline = started + settings.budget_ms / 1000
    report = PassReport()
    try:
        _expire_and_delete(table, settings, report, deadline, orphans=True)
        if time.monotonic() < deadline:
            with _timed(report, "compaction"):
                _compact(table, settings, key_columns, properties, report)
        else:
            report.stopped.append("time budget spent before compacting")
    finally:
        with _LAST_PASS_LOCK:
            _LAST_PASS[str(table.metadata.table_uuid)] = time.monotonic()
    _finish(table, report, started)
    Metrics.distribution(_NAMESPACE, "pass_ms").update(int(report.seconds * 1000))
    return report


def _expire_and_delete(table: Table, settings: Settings, report: PassReport, deadline: float, *, orphans: bool) -> None:
    """Expire the snapshots past the retention, then (time allowing) delete the files only they
    reached and, with ``orphans``, the orphans older than the safety window."""
    with _timed(report, "expiry"):
        expired = _expire_snapshots(table, report)
    if time.monotonic() < deadline:
        with _timed(report, "deletion"):
            _delete_unreachable(table, expired, settings, report, deadline, orphans=orphans)
    else:
        report.stopped.append("time budget spent before deleting files")


def _finish(table: Table, report: PassReport, started: float) -> None:
    """Time the pass or expiry step, log its line and count what it did."""
    report.seconds = time.monotonic() - started
    _LOG.info(report.summary(".".join(table.name())))
    for metric in ("snapshots_expired", "files_deleted", "bytes_reclaimed", "files_compacted"):
        Metrics.counter(_NAMESPACE, metric).inc(getattr(report, metric))


@contextlib.contextmanager
def _timed(report: PassReport, phase: str):
    """Record the seconds the body takes as ``report.phases[phase]``, even when it raises."""
    started = time.monotonic()
    try:
        yield
    finally:
        report.phases[phase] = time.monotonic() - started


def expiry_due(table: Table, settings: Settings) -> bool:
    """Whether snapshots should be expired now, between passes: some snapshot has been past the
    table's retention (``history.expire.max-snapshot-age-ms``) for :data:`EXPIRY_LAG` of it. The
    files a pass or a commit replaces are deleted once the snapshots reaching them expire; left
    to the next pass, they stay up to a pass interval longer than the retention asks."""
    if not settings.enabled:
        return False
    return bool(_expirable(table, time.time() * 1000 - _max_age_ms(table) * (1 + EXPIRY_LAG)))


def run_expiry(table: Table, settings: Settings) -> PassReport:
    """Expire the snapshots past the table's retention and delete the files only they reached
    (no orphan search, no compaction): the cheap part of a pass, run when :func:`expiry_due`.
    Logs one line."""
    started = time.monotonic()
    report = PassReport()
    _expire_and_delete(table, settings, report, started + settings.budget_ms / 1000, orphans=False)
    _finish(table, report, started)
    return report


def _max_age_ms(table: Table) -> int:
    return int(table.metadata.properties.get("history.expire.max-snapshot-age-ms", _MAX_SNAPSHOT_AGE_MS))


def _expirable(table: Table, older_than_ms: float) -> list:
    """The snapshots older than ``older_than_ms`` that the table's retention lets go: not among
    the newest ``history.expire.min-snapshots-to-keep``, not referenced by a branch or tag."""
    keep = int(table.metadata.properties.get("history.expire.min-snapshots-to-keep", _MIN_SNAPSHOTS_TO_KEEP))
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}
    newest_first = sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True)
    return [s for s in newest_first[keep:] if s.timestamp_ms < older_than_ms and s.snapshot_id not in protected]


def _expire_snapshots(table: Table, report: PassReport) -> dict[str, int]:
    """Expire what the table's retention properties allow; returns the files the expired
    snapshots reached (read before they leave the metadata)."""
    doomed = _expirable(table, time.time() * 1000 - _max_age_ms(table))
    if not doomed:
        return {}
    reached = MANIFESTS.reachable(table.io, doomed)
    table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in doomed]).commit()
    report.snapshots_expired = len(doomed)
    return reached


def _delete_unreachable(
    table: Table, expired: dict[str, int], settings: Settings, report: PassReport, deadline: float, *, orphans: bool
) -> None:
    """Delete files only expired snapshots reached, and (``orphans``) orphans older than the safety window."""
    retained = MANIFESTS.reachable(table.io, table.metadata.snapshots)
    in_use = {table.metadata_location, *(log.metadata_file for log in table.metadata.metadata_log)}
    in_use |= {s.statistics_path for s in table.metadata.statistics}
    in_use |= {s.statistics_path for s in table.metadata.partition_statistics}
    doomed = {path: size for path, size in expired.items() if path not in retained and path not in in_use}
    fs, root = pafs.FileSystem.from_uri(table.location())
    scheme = table.location()[: len(table.location()) - len(table.location().split("://", 1)[-1])]
    oldest = time.time() - settings.orphan_age_ms / 1000
    listing = []
    try:
        if orphans:
            listing = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as e:
        report.stopped.append(f"cannot list {table.location()}: {e}")
    for info in listing:
        if info.type != pafs.FileType.File or info.mtime is None or info.mtime.timestamp() >= oldest:
            continue
        path = scheme + info.path if scheme else info.path
        if path not in retained and path not in in_use and path not in doomed:
            doomed[path] = info.size or 0
    for path, size in doomed.items():
        if time.monotonic() > deadline:
            report.stopped.append("time budget spent while deleting files")
            break
        try:
            table.io.delete(path)
        except FileNotFoundError:
            continue
        report.files_deleted += 1
        report.bytes_reclaimed += size
    MANIFESTS.forget(doomed)


def _live_files(table: Table) -> tuple[list[DataFile], list[DataFile], int]:
    """The current snapshot's data files, delete files and number of manifests."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return [], [], 0
    data, deletes = [], []
    manifests = MANIFESTS.manifests(table.io, snapshot)
    for manifest in manifests:
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            (data if entry.data_file.content == DataFileContent.DATA else deletes).append(entry.data_file)
    return data, deletes, len(manifests)


def file_bytes(settings: Settings, table_bytes: int) -> int:
    """The size of the data files compaction writes for a table of ``table_bytes`` of data
    files: ``max_compact_percent`` of it, at least :data:`MIN_FILE_BYTES`, at most
    ``target_file_mb``."""
    share = table_bytes * settings.max_compact_percent // 100
    return min(settings.target_file_mb * 2**20, max(MIN_FILE_BYTES, share))


def _choose(data: list[DataFile], deleted: dict[str, np.ndarray], settings: Settings) -> list[DataFile]:
    """Data files to rewrite: those with at least ``deleted_percent`` of their rows deleted,
    most deleted first, then small ones (under ``small_file_mb`` and under a quarter of
    :func:`file_bytes`) merged per partition. Each kind adds up to at most
    ``max_compact_percent`` of the table's data bytes (or :data:`MIN_FILE_BYTES`; at least
    one file with deletes, two small files), all of it within ``max_compact_mb``.

    A partition can merge its smallest small files, up to the largest that is at most
    :data:`TIER_RATIO` times the smaller ones together (:func:`_tier`): files of a partition that
    grows by small commits are merged in tiers (each row rewritten a logarithmic number of times,
    not once per pass; a tier at least triples at each merge). Of these, the smallest are taken
    first across all partitions, so that the pass's bytes merge as many files as they can: the
    commits' newest small files of every partition (a partitioned table's current day: a file per
    bucket per commit) before a
    partition's larger tier is rewritten again. A partition contributes only files it can merge:
    two or more, or small files beside a rewritten file with deletes; a small file alone is left
    alone."""
    table_bytes = sum(f.file_size_in_bytes for f in data)
    small = min(settings.small_file_mb * 2**20, file_bytes(settings, table_bytes) // 4)
    most = settings.max_compact_mb * 2**20
    share_of_table = max(MIN_FILE_BYTES, table_bytes * settings.max_compact_percent / 100)

    def share(f: DataFile) -> float:
        return len(deleted.get(f.file_path, ())) / max(1, f.record_count)

    heavy = sorted((f for f in data if share(f) * 100 >= settings.deleted_percent), key=share, reverse=True)
    chosen, total = [], 0
    for f in heavy:
        if chosen and (total + f.file_size_in_bytes > share_of_table or total + f.file_size_in_bytes > most):
            break
        chosen.append(f)
        total += f.file_size_in_bytes
    heavy_paths = {f.file_path for f in heavy}
    rewritten_partitions = {files.partition_of(f) for f in chosen}
    by_partition: dict[tuple, list[DataFile]] = collections.defaultdict(list)
    for f in data:
        if f.file_path not in heavy_paths and f.file_size_in_bytes < small:
            by_partition[files.partition_of(f)].append(f)
    budget = min(most - total, share_of_table)
    eligible = []  # (partition, file) of the files each partition can merge
    for partition, group in by_partition.items():
        ascending = sorted(group, key=lambda f: f.file_size_in_bytes)
        prefix = _tier(ascending) or (ascending[:1] if partition in rewritten_partitions else [])
        if len(prefix) > 1 or (prefix and partition in rewritten_partitions):
            eligible += [(partition, f) for f in prefix]
    taken: dict[tuple, list[DataFile]] = collections.defaultdict(list)
    merged = 0
    for partition, f in sorted(eligible, key=lambda item: item[1].file_size_in_bytes):
        if merged + f.file_size_in_bytes > budget and any(len(group) > 1 for group in taken.values()):
            break  # smallest first across partitions: the budget buys the most files merged per byte
        taken[partition].append(f)
        merged += f.file_size_in_bytes
    for partition, group in taken.items():
        if len(group) > 1 or partition in rewritten_partitions:
            chosen.extend(group)
    return chosen


def _tier(ascending: list[DataFile]) -> list[DataFile]:
    """The smallest files of a partition (``ascending`` by size) that merge into one: the longest
    run from the smallest whose last file is at most :data:`TIER_RATIO` times the ones before it
    together. A larger file is a tier of its own, merged once the smaller files add up to twice
    it; a file much smaller than the next (a commit's few rows) joins the run, it does not end it."""
    end, before = 0, 0
    for number, f in enumerate(ascending):
        if number and f.file_size_in_bytes <= TIER_RATIO * before:
            end = number + 1
        before += f.file_size_in_bytes
    return ascending[:end]


def _compact(table: Table, settings: Settings, key_columns: list[str], properties: dict[str, str], report: PassReport) -> None:
    """Rewrite the chosen data files without their deleted rows, sorted by key, and fold
    the delete files into one per partition (without the rows naming rewritten data files
    or data files no longer in the table), with all manifests merged; or only merge
    manifests when there are many."""
    data, delete_files, report.manifests = _live_files(table)
    per_file = dict(zip((f.file_path for f in delete_files), files.read_delete_files(table, delete_files)))
    all_deletes = pa.concat_tables(per_file.values()) if per_file else files.read_position_deletes(table, [])
    deleted = files.positions_by_path(all_deletes)
    chosen = _choose(data, deleted, settings)
    live_paths = {f.file_path for f in data}
    gone = {path for path in deleted if path not in live_paths}  # e.g. rewritten by a copy-on-write commit
    deletes_per_partition = collections.Counter(files.partition_of(f) for f in delete_files)
    if not chosen and not gone and max(deletes_per_partition.values(), default=0) < 2:
        if report.manifests > settings.max_manifests:
            commit_file_changes(table, properties, operation=Operation.REPLACE, rewrite_manifests=True)
            report.manifests = len(MANIFESTS.manifests(table.io, table.current_snapshot()))
        return
    index = merge_on_read.cached_index(table) if key_columns else None
    chosen_paths = {f.file_path for f in chosen}
    target = files.arrow_schema(table)
    parts = [files.conform(pa.table({}), target).slice(0, 0)]
    for f in chosen:
        rows = files.conform(files.read_parquet(table, f.file_path), target)
        if f.file_path in deleted:
            live = np.ones(rows.num_rows, bool)
            live[deleted[f.file_path]] = False
            rows = rows.filter(pa.array(live))
        parts.append(rows)
    rows = pa.concat_tables(parts)
    if key_columns:
        rows = rows.sort_by([(k, "ascending") for k in key_columns])
    bytes_per_row = sum(f.file_size_in_bytes for f in chosen) / max(1, sum(f.record_count for f in chosen))
    target_bytes = file_bytes(settings, sum(f.file_size_in_bytes for f in data))
    rows_per_file = max(1, int(target_bytes / max(bytes_per_row, 1e-9)))
    written = files.write_data_files(table, rows, uuid.uuid4(), rows_per_file, per_core=False)
    new_files = written.files
    dropped = chosen_paths | gone
    folded = _fold(delete_files, per_file, dropped, settings.max_delete_files, report)
    kept = [per_file[f.file_path] for f in folded]
    kept_rows = pa.concat_tables(kept) if kept else None
    if kept_rows is not None:
        mask = pc.is_in(kept_rows.column("file_path"), value_set=pa.array(sorted(dropped), pa.string()))
        kept_rows = kept_rows.filter(pc.invert(mask))
    added = list(new_files)
    if kept_rows is not None and kept_rows.num_rows:
        partitions = {f.file_path: files.partition_of(f) for f in data}
        added += files.write_partitioned_deletes(
            table, kept_rows.column("file_path").combine_chunks(), kept_rows.column("pos").to_numpy(), partitions
        )
    try:
        snapshot_id = commit_file_changes(
            table, properties, added=added, removed=chosen + folded, operation=Operation.REPLACE, rewrite_manifests=True
        )
    except Exception:
        for f in added:
            table.io.delete(f.file_path)
        raise
    if index is not None:
        with index.lock:
            index.forget_files(chosen_paths)
            codes = key_codes(written.rows.select(key_columns))
            index.add_files([(f.file_path, codes[offset : offset + length], None, files.partition_of(f))
                             for f, (offset, length) in zip(new_files, written.slices)])
            index.snapshot_id = snapshot_id
    report.files_compacted = len(chosen) + len(folded)
    report.files_written = len(added)
    report.manifests = len(MANIFESTS.manifests(table.io, table.current_snapshot()))


def _fold(
    delete_files: list[DataFile], per_file: dict[str, pa.Table], dropped: set[str], most: int, report: PassReport
) -> list[DataFile]:
    """The delete files to fold into one per partition: every partition with a delete file naming a
    ``dropped`` data file, then those with several delete files, most first, while these add up to
    at most ``most`` files (a backlog is spread over passes; the pass notes what it left)."""
    by_partition: dict[tuple, list[DataFile]] = collections.defaultdict(list)
    for f in delete_files:
        by_partition[files.partition_of(f)].append(f)
    must = {p for p, group in by_partition.items() if any(_names_any(per_file[f.file_path], dropped) for f in group)}
    folded = [f for p in must for f in by_partition[p]]
    several = sorted((g for p, g in by_partition.items() if p not in must and len(g) > 1), key=len, reverse=True)
    chosen = 0
    for number, group in enumerate(several):
        if chosen + len(group) > most:
            left = sum(len(g) for g in several[number:])
            report.stopped.append(f"{left} delete files of {len(several) - number} partitions left to the next pass")
            break
        folded.extend(group)
        chosen += len(group)
    return folded


def _names_any(deletes: pa.Table, paths: set[str]) -> bool:
    found = pc.any(pc.is_in(deletes.column("file_path"), value_set=pa.array(sorted(paths), pa.string())))
    return bool(found.as_py())
