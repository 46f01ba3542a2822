"""Snapshot expiration by the table's own retention options, as Paimon's ``ExpireSnapshotsImpl``.

Options (Paimon's names and defaults): ``snapshot.num-retained.min`` (10) snapshots
are always kept; beyond ``snapshot.num-retained.max`` (unlimited) they always go;
in between, those older than ``snapshot.time-retained`` (1 h) go;
``snapshot.expire.limit`` (10) bounds how many one pass expires.

Expiring snapshots ``[earliest, end)`` goes one snapshot at a time, the oldest
first, so that every snapshot file on storage stays fully readable at every step:

1. read what snapshot ``e`` alone reaches: its manifest lists, the manifests the
   next snapshot does not reference (a manifest reachable from a later snapshot
   is reachable from every snapshot in between), and the data files the next
   snapshot removed (compacted away; files never come back once removed);
2. delete the snapshot file and move the ``EARLIEST`` hint past it;
3. delete those files.

A crash between 2 and 3 leaves that snapshot's files behind as orphans (Paimon's
``remove_orphan_files`` procedure deletes them), never a snapshot that cannot be read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.options import int_option


def parse_duration_ms(text: str, name: str) -> int:
    """A Paimon duration option (``1 h``, ``30min``, ``500 ms``, ``2d``) in milliseconds, parsed as Paimon does."""
    try:
        return private.parse_duration(str(text))
    except ValueError as error:
        raise ValueError(
            f"Paimon table option {name}={text!r} is not valid ({error}); accepted: a duration such as 1 h, 30 min, 10 s, 500 ms"
        ) from None


@dataclass(frozen=True)
class RetentionOptions:
    """How many snapshots, and how old, a table keeps."""

    min_retained: int = 10
    max_retained: int = 2**31 - 1
    time_retained_ms: int = 3_600_000
    expire_limit: int = 10

    @classmethod
    def of(cls, options: dict[str, str]) -> "RetentionOptions":
        """From table options, Paimon's defaults where the table sets none."""

        retained = options.get("snapshot.time-retained")
        return cls(
            min_retained=int_option(options, "snapshot.num-retained.min", 10, 1),
            max_retained=int_option(options, "snapshot.num-retained.max", 2**31 - 1, 1),
            time_retained_ms=3_600_000 if retained is None else parse_duration_ms(retained, "snapshot.time-retained"),
            expire_limit=int_option(options, "snapshot.expire.limit", 10, 1),
        )


@dataclass(frozen=True)
class ExpireResult:
    snapshots: int = 0
    files: int = 0
    bytes: int = 0


def expire_end(table, retention: RetentionOptions, now_ms: int | None = None) -> tuple[int, int] | None:
    """``(earliest, end)``: the snapshots ``[earliest, end)`` to expire now, or None."""
    latest = private.latest_snapshot(table)
    earliest = private.earliest_snapshot_id(table)
    if latest is None or earliest is None:
        return None
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    older_than = now_ms - retention.time_retained_ms
    first = max(latest.id - retention.max_retained + 1, earliest)
    end = latest.id - retention.min_retained + 1
    end = min(end, earliest + retention.expire_limit)
    for snapshot_id in range(first, end):
        snapshot = private.snapshot_by_id(table, snapshot_id)
        if snapshot is not None and older_than <= snapshot.time_millis:
            end = snapshot_id
            break
    return (earliest, end) if end > earliest else None


def expire(table, retention: RetentionOptions, now_ms: int | None = None) -> ExpireResult:
    """Expire what ``retention`` says; returns what was deleted."""
    span = expire_end(table, retention, now_ms)
    if span is None:
        return ExpireResult()
    earliest, end = span
    io = private.file_io(table)
    expired = deleted_files = reclaimed = 0
    following = private.snapshot_by_id(table, earliest)
    for snapshot_id in range(earliest, end):
        snapshot, following = following, private.snapshot_by_id(table, snapshot_id + 1)
        if snapshot is None:
            continue
        keep_lists, keep_manifests = private.snapshot_metadata_files(table, following)
        lists, manifests = private.snapshot_metadata_files(table, snapshot)
        keep = set(keep_lists) | set(keep_manifests)
        paths = [private.manifest_path(table, n) for n in manifests + lists if n not in keep]
        delta = private.delta_entries(table, following)
        moved = {e.file.file_name for e in delta if e.kind == 0}  # deleted at one level, added at another
        paths += [path for e in delta if e.kind == 1 and e.file.file_name not in moved
                  for path in private.data_file_paths(table, e)]
        index_manifest, index_paths = private.index_files(table, snapshot)
        keep_index_manifest, keep_index_paths = private.index_files(table, following)
        if index_manifest and index_manifest != keep_index_manifest:
            paths.append(private.manifest_path(table, index_manifest))
        paths += sorted(set(index_paths) - set(keep_index_paths))
        io.delete_quietly(private.snapshot_path(table, snapshot_id))
        private.write_earliest_hint(table, snapshot_id + 1)
        expired += 1
        for path in paths:
            try:
                size = io.get_file_size(path)
            except (OSError, ValueError):  # gone already, or no size to count
                size = 0
            io.delete_quietly(path)
            deleted_files += 1
            reclaimed += size
    return ExpireResult(expired, deleted_files, reclaimed)
