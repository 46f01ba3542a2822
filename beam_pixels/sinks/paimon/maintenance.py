"""One maintenance pass of a primary-key table, run by the committer right after its commit.

A pass compacts the buckets that :func:`compaction.pick` says need it (those that
waited the most passes first, then the most runs, up to ``max_bytes_per_pass`` of
input, at least one bucket, so none waits for ever behind busier ones; every
bucket on the commits ``full-compaction.delta-commits`` asks for a full one; in deletion-vector
tables, rewrites for deleted rows at the pace of the table's deletions, :mod:`.pacing`), commits
them in one atomic ``COMPACT`` snapshot, rewrites the manifests into a fresh base
when the snapshot's manifest list holds more than ``manifest.merge-min-count`` (30)
manifests, then expires snapshots (:mod:`.expiration`). It logs one line and
updates Beam metrics. The committer runs it between its own commits, so it never
races them; a commit of another writer that removes a file the pass meant to
replace makes the pass refuse its compaction (it is planned again next pass).

Which files each bucket holds is kept in a process-wide cache keyed by the table
location, checked against the latest snapshot and brought up to date from the
snapshots' deltas: local runs build new writers every round, and reading every
manifest each pass would cost more as the table ages.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from apache_beam.metrics import Metrics

from beam_pixels.sinks.committing import METRICS_NAMESPACE
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon import append_compaction
from beam_pixels.sinks.paimon import deletion_vectors
from beam_pixels.sinks.paimon import dv_compaction
from beam_pixels.sinks.paimon import pacing
from beam_pixels.sinks.paimon.compaction import CompactionOptions, compact_bucket, pick, pick_full, sorted_runs
from beam_pixels.sinks.paimon.dv_compaction import DEFAULT_DELETE_RATIO, DEFAULT_FILE_PERCENT, delete_ratio, discard
from beam_pixels.sinks.paimon.expiration import RetentionOptions, expire
from beam_pixels.sinks.paimon.options import int_option

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaintenanceOptions:
    """What a pass does, from the table's options and the connector's keys."""

    compaction: CompactionOptions
    retention: RetentionOptions
    manifest_merge_min_count: int = 30
    compact_buckets: bool = True  # primary-key tables; append tables only get manifests and expiration
    key_columns: tuple = ()  # deletion-vector tables: the primary key (their compaction keeps the key index)
    delete_ratio: float = DEFAULT_DELETE_RATIO
    append: append_compaction.AppendCompactionOptions | None = None  # append tables: small files concatenated
    file_percent: int = DEFAULT_FILE_PERCENT  # deletion-vector tables: compaction outputs, as a share of the bucket

    @property
    def deletion_vectors(self) -> bool:
        return bool(self.key_columns)

    @classmethod
    def of(cls, table_options: dict[str, str], trigger: int | None, max_bytes_per_pass: int,
           compact_buckets: bool = True, key_columns: tuple = (),
           file_percent: int = DEFAULT_FILE_PERCENT) -> "MaintenanceOptions":
        return cls(
            CompactionOptions.of(table_options, trigger, max_bytes_per_pass),
            RetentionOptions.of(table_options),
            int_option(table_options, "manifest.merge-min-count", 30, 1),
            compact_buckets,
            tuple(key_columns) if deletion_vectors.enabled(table_options) else (),
            delete_ratio(table_options),
            None if compact_buckets else append_compaction.AppendCompactionOptions.of(table_options, max_bytes_per_pass),
            file_percent,
        )


@dataclass
class PassReport:
    """What one pass did."""

    table: str
    buckets: int = 0
    files_in: int = 0
    files_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    buckets_waiting: int = 0
    reclaims_deferred: int = 0  # deletion-vector tables: rewrites for deleted rows left to later passes (:mod:`.pacing`)
    manifests_rewritten: bool = False
    snapshot_id: int | None = None
    refused: str = ""
    snapshots_expired: int = 0
    files_deleted: int = 0
    bytes_reclaimed: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def compacted(self, snapshot_id: int, manifests_rewritten: bool, buckets: int, deleted: list, added: list) -> None:
        """Record a committed compaction: ``deleted`` manifest entries replaced by ``added``."""
        self.snapshot_id = snapshot_id
        self.manifests_rewritten = manifests_rewritten
        self.buckets = buckets
        self.files_in, self.files_out = len(deleted), len(added)
        self.bytes_in = sum(e.file.file_size for e in deleted)
        self.bytes_out = sum(e.file.file_size for e in added)

    @property
    def idle(self) -> bool:
        """Whether the pass found nothing to do (such passes are logged at DEBUG only)."""
        return not (
            self.buckets or self.manifests_rewritten or self.refused or self.snapshots_expired
            or self.files_deleted or self.errors
        )

    def line(self) -> str:
        compacted = (
            f"compacted {self.buckets} bucket(s), {self.files_in} files ({self.bytes_in / 2**20:.1f} MB) into "
            f"{self.files_out} ({self.bytes_out / 2**20:.1f} MB)"
        )
        if self.buckets_waiting:
            compacted += f", {self.buckets_waiting} more waiting"
        if self.reclaims_deferred:
            compacted += f" ({self.reclaims_deferred} rewrite(s) for deleted rows paced to later passes)"
        if self.manifests_rewritten:
            compacted += ", manifests rewritten"
        if self.snapshot_id is not None:
            compacted += f" in snapshot {self.snapshot_id}"
        if self.refused:
            compacted += f"; compaction refused: {self.refused}"
        return (
            f"maintained {self.table}: {compacted}; expired {self.snapshots_expired} snapshot(s), deleted "
            f"{self.files_deleted} files, reclaimed {self.bytes_reclaimed / 2**20:.1f} MB; {self.seconds:.2f}s"
            + (f"; errors: {'; '.join(self.errors)}" if self.errors else "")
        )


class _Metrics:
    def __init__(self):
        self.passes = Metrics.counter(METRICS_NAMESPACE, "paimon_maintenance_passes")
        self.buckets = Metrics.counter(METRICS_NAMESPACE, "paimon_buckets_compacted")
        self.files_in = Metrics.counter(METRICS_NAMESPACE, "paimon_compaction_files_in")
        self.files_out = Metrics.counter(METRICS_NAMESPACE, "paimon_compaction_files_out")
        self.refused = Metrics.counter(METRICS_NAMESPACE, "paimon_compactions_refused")
        self.paced = Metrics.counter(METRICS_NAMESPACE, "paimon_reclaims_deferred")
        self.expired = Metrics.counter(METRICS_NAMESPACE, "paimon_snapshots_expired")
        self.reclaimed = Metrics.counter(METRICS_NAMESPACE, "paimon_bytes_reclaimed")
        self.errors = Metrics.counter(METRICS_NAMESPACE, "paimon_maintenance_errors")
        self.latency = Metrics.distribution(METRICS_NAMESPACE, "paimon_maintenance_ms")

    def record(self, report: PassReport) -> None:
        self.passes.inc()
        self.buckets.inc(report.buckets)
        self.files_in.inc(report.files_in)
        self.files_out.inc(report.files_out)
        self.refused.inc(bool(report.refused))
        self.paced.inc(report.reclaims_deferred)
        self.expired.inc(report.snapshots_expired)
        self.reclaimed.inc(report.bytes_reclaimed)
        self.errors.inc(len(report.errors))
        self.latency.update(int(report.seconds * 1000))


# -- which files each bucket holds, per table, for the whole process ----------------------

_LIVE: dict[str, tuple[int, str, dict]] = {}
_LIVE_LOCK = threading.Lock()


def live_files(table, snapshot) -> dict[tuple, list]:
    """``{(partition, bucket): [ADD entries]}`` of ``snapshot``, from the cache when it
    can be brought up to date from deltas, else read from the manifests."""
    location = table.table_path
    with _LIVE_LOCK:
        cached = _LIVE.get(location)
    files = None
    if cached is not None and cached[0] <= snapshot.id:
        base = private.snapshot_by_id(table, cached[0])
        if base is not None and base.uuid == cached[1]:
            files = {bucket: dict(entries) for bucket, entries in cached[2].items()}
            for snapshot_id in range(cached[0] + 1, snapshot.id + 1):
                step = private.snapshot_by_id(table, snapshot_id)
                if step is None:
                    files = None
                    break
                for entry in private.delta_entries(table, step):
                    bucket = files.setdefault((private.entry_partition(entry), entry.bucket), {})
                    if entry.kind == 0:
                        bucket[private.entry_key(entry)] = entry
                    else:
                        bucket.pop(private.entry_key(entry), None)
    if files is None:
        files = {}
        for entry in private.live_entries(table, snapshot):
            files.setdefault((private.entry_partition(entry), entry.bucket), {})[private.entry_key(entry)] = entry
    with _LIVE_LOCK:
        _LIVE[location] = (snapshot.id, snapshot.uuid, files)
    return {bucket: list(entries.values()) for bucket, entries in files.items() if entries}


# -- how many passes each due bucket has waited, per table, for the whole process ---------

_WAITED: dict[str, dict[tuple, int]] = {}


def longest_waiting_first(table, due: list, bucket_of, then) -> list:
    """``due`` ordered by the passes its bucket (``bucket_of(item)``) has waited, the
    longest first, then by ``then(item)``: a budget that fits fewer buckets than are due
    serves them in turn instead of always the same busy ones."""
    with _LIVE_LOCK:
        waited = _WAITED.get(table.table_path, {})
    return sorted(due, key=lambda item: (-waited.get(bucket_of(item), 0), then(item)))


def note_waiting(table, due: set, chosen: set) -> int:
    """Count one more pass for each bucket of ``due`` this pass did not choose; how many those are."""
    location = table.table_path
    with _LIVE_LOCK:
        waited = _WAITED.get(location, {})
        _WAITED[location] = {bucket: waited.get(bucket, 0) + 1 for bucket in due - chosen}
        return len(_WAITED[location])


def run_pass(table, table_name: str, commit_user: str, checkpoint_snapshot, options: MaintenanceOptions) -> PassReport:
    """Compact, rewrite manifests when due, expire; never raises (errors go in the report).

    ``checkpoint_snapshot`` is the connector's own latest snapshot: a compaction snapshot
    repeats its commit identifier and properties, so the checkpoint stays on the latest."""
    started = time.monotonic()
    report = PassReport(table_name)
    try:
        if options.deletion_vectors:
            _compact_dv(table, commit_user, checkpoint_snapshot, options, report)
        else:
            _compact(table, commit_user, checkpoint_snapshot, options, report)
    except Exception as error:  # the data is committed; maintenance retries next pass
        _LOG.warning("%s: compaction failed: %s", table_name, error, exc_info=True)
        report.errors.append(f"compaction: {error}")
    try:
        expired = expire(table, options.retention)
        report.snapshots_expired, report.files_deleted, report.bytes_reclaimed = (
            expired.snapshots, expired.files, expired.bytes)
    except Exception as error:
        _LOG.warning("%s: snapshot expiration failed: %s", table_name, error, exc_info=True)
        report.errors.append(f"expiration: {error}")
    report.seconds = time.monotonic() - started
    return report


def record_metrics(report: PassReport) -> None:
    """Count a pass in the Beam metrics (from the committer's thread: Beam drops updates made elsewhere)."""
    _METRICS.record(report)


def _compact(table, commit_user: str, checkpoint_snapshot, options: MaintenanceOptions, report: PassReport) -> None:
    latest = private.latest_snapshot(table)
    if latest is None:
        return
    if options.append is not None:
        _compact_append(table, commit_user, checkpoint_snapshot, latest, options, report)
        return
    every = options.compaction.full_compaction_delta_commits
    full = bool(every) and checkpoint_snapshot.commit_identifier % every == 0
    due = []
    for (partition, bucket), entries in live_files(table, latest).items() if options.compact_buckets else ():
        runs = sorted_runs(entries)
        unit = pick_full(runs, options.compaction) if full else pick(runs, options.compaction)
        if unit is not None:
            due.append((len(runs), partition, bucket, unit))
    due = longest_waiting_first(table, due, lambda d: d[1:3], lambda d: (-d[0], -d[3].size))
    chosen, budget = [], options.compaction.max_bytes_per_pass
    for _, partition, bucket, unit in due:
        if chosen and unit.size > budget and not full:
            continue
        chosen.append((partition, bucket, unit))
        budget -= unit.size
    report.buckets_waiting = note_waiting(table, {d[1:3] for d in due}, {c[:2] for c in chosen})
    manifests = len(private.manifest_list(table, latest))
    rewrite = manifests > options.manifest_merge_min_count
    if not chosen and not rewrite:
        return
    workers = max(1, min(len(chosen), os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="paimon-compact") as pool:
        done = list(pool.map(lambda c: compact_bucket(table, *c), chosen))
    deleted = [e for c in done for e in c.inputs]
    added = [
        private.new_entry(table, 0, c.partition, c.bucket, c.inputs[0].total_buckets, meta)
        for c in done
        for meta in c.outputs
    ]
    try:
        snapshot = private.commit_compact(
            table, commit_user, checkpoint_snapshot.commit_identifier, checkpoint_snapshot.properties, latest,
            deleted, added, rewrite_manifests=rewrite,
        )
    except private.CompactionConflict as conflict:
        snapshot, report.refused = None, str(conflict)
    except BaseException:
        _delete_outputs(table, done)
        raise
    if snapshot is None:
        report.refused = report.refused or "lost the snapshot commit race too often"
        _delete_outputs(table, done)
        return
    report.compacted(snapshot.id, rewrite, len(done), deleted, added)


def _compact_dv(table, commit_user: str, checkpoint_snapshot, options: MaintenanceOptions, report: PassReport) -> None:
    """A deletion-vector table's compaction (:func:`dv_compaction.pick`), committed with the
    buckets' new deletion-vector index files, keeping the key index current."""
    key_columns = list(options.key_columns)
    state = deletion_vectors.live_rows(table, key_columns, live_files)
    with state.lock:
        latest = private.latest_snapshot(table)
        if latest is None:
            return
        buckets = {}
        for entry in state.entries.values():
            buckets.setdefault((private.entry_partition(entry), entry.bucket), []).append(entry)
        due = [(bucket, rewrite) for bucket, entries in buckets.items()
               for rewrite in dv_compaction.pick(entries, state, options.compaction, options.delete_ratio,
                                                 options.file_percent)]
        # then the cheapest first: most files per byte
        due = longest_waiting_first(table, due, lambda d: d[0], lambda d: sum(e.file.file_size for e in d[1].inputs))
        chosen, budget = [], options.compaction.max_bytes_per_pass
        pace = pacing.pacer(table.table_path)
        pace.earn(state.rows_deleted, options.delete_ratio)
        for bucket, rewrite in due:
            size = sum(e.file.file_size for e in rewrite.inputs)
            if chosen and size > budget:
                continue
            if rewrite.reclaims:
                if not pace.allows():
                    report.reclaims_deferred += 1
                    continue
                pace.spend(sum(e.file.row_count for e in rewrite.inputs))
            chosen.append((bucket, rewrite))
            budget -= size
        report.buckets_waiting = note_waiting(table, {d[0] for d in due}, {c[0] for c in chosen})
        rewrite = len(private.manifest_list(table, latest)) > options.manifest_merge_min_count
        if not chosen and not rewrite:
            return
        workers = max(1, min(len(chosen), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="paimon-compact") as pool:
            done = list(pool.map(lambda c: dv_compaction.merge_live_runs(
                table, c[0], c[1], state.vectors.get(c[0], {}), key_columns), chosen))
        deleted = [e for m in done for e in m.inputs]
        added = [e for m in done for e in m.outputs]
        changed = {m.bucket for m in done}
        gone = {e.file.file_name for e in deleted}
        vectors = {b: {n: p for n, p in state.vectors.get(b, {}).items() if n not in gone} for b in changed}
        moved = {}  # several rewrites of a pass may move rows out of one file (each its own key range)
        for merge in done:
            for name, (codes, positions) in merge.moved.items():
                bucket = vectors[merge.bucket]
                bucket[name] = positions if name not in bucket else deletion_vectors.merge_sorted(bucket[name], positions)
                earlier = moved.get(name)
                moved[name] = (codes, positions) if earlier is None else (
                    np.concatenate([earlier[0], codes]), np.concatenate([earlier[1], positions]))
        index_adds = []
        try:
            index_adds, index_deletes = state.write_index_changes(table, changed, vectors)
            snapshot = private.commit_compact(
                table, commit_user, checkpoint_snapshot.commit_identifier, checkpoint_snapshot.properties, latest,
                deleted, added, rewrite_manifests=rewrite, index_adds=index_adds, index_deletes=index_deletes,
                exclusive=True)
        except private.CompactionConflict as conflict:
            snapshot, report.refused = None, str(conflict)
        except BaseException:
            discard(table, done, index_adds)
            raise
        if snapshot is None:
            report.refused = report.refused or "lost the snapshot commit race too often"
            discard(table, done, index_adds)
            return
        state.apply(snapshot.id, deleted, added, {n: c for m in done for n, c in m.codes.items()}, vectors, changed,
                    index_adds, moved)
    report.compacted(snapshot.id, rewrite, len(changed), deleted, added)


def _compact_append(table, commit_user: str, checkpoint_snapshot, latest, options: MaintenanceOptions,
                    report: PassReport) -> None:
    """An append table's pass (:mod:`.append_compaction`); "buckets" in the report are the
    (partition, bucket) groups compacted."""
    done = append_compaction.run(table, commit_user, checkpoint_snapshot, latest, live_files(table, latest),
                                 options.append, options.manifest_merge_min_count)
    report.buckets_waiting, report.refused = done.waiting, done.refused
    if done.snapshot is None:
        return
    report.snapshot_id = done.snapshot.id
    report.manifests_rewritten = done.manifests_rewritten
    report.buckets = len({(u.partition, u.bucket) for u in done.units})
    report.files_in = sum(len(u.inputs) for u in done.units)
    report.files_out = sum(len(u.outputs) for u in done.units)
    report.bytes_in = sum(u.size for u in done.units)
    report.bytes_out = sum(m.file_size for u in done.units for m in u.outputs)


def _delete_outputs(table, done) -> None:
    for c in done:
        private.delete_written(table, c.partition, c.bucket, c.outputs)


_METRICS = _Metrics()
