"""Snapshot expiration by the table's own retention options, as Paimon's ``ExpireSnapshotsImpl``.

Options (Paimon's names and defaults): ``snapshot.num-retained.min`` (10) snapshots
are always kept; beyond ``snapshot.num-retained.max`` (unlimited) they always go;
in between, those older than ``snapshot.time-retained`` (1 h) go;
``snapshot.expire.limit`` (10) bounds how many one pass expires.

Expiring snapshots ``[earliest, end)`` deletes, in an order that leaves a readable
table at every step (a crash part way is finished by the next pass):

1. data files that a snapshot in ``(earliest, end]`` removed (compacted away):
   no retained snapshot reaches them, since files never come back once removed;
2. then, per expired snapshot from the oldest: its manifest lists and the
   manifests that the first retained snapshot does not reference (a manifest
   reachable from a later snapshot is reachable from every snapshot in between),
   then the snapshot file itself, then the ``EARLIEST`` hint.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from beam_pixels.sinks.paimon import _pypaimon_private as private

_LOG = logging.getLogger(__name__)

_DURATION = re.compile(r"\s*(\d+)\s*([a-z]*)\s*")
_UNITS_MS = {
    "": 1, "ms": 1, "milli": 1, "millis": 1, "millisecond": 1, "milliseconds": 1,
    "s": 1000, "sec": 1000, "secs": 1000, "second": 1000, "seconds": 1000,
    "min": 60_000, "mins": 60_000, "minute": 60_000, "minutes": 60_000, "m": 60_000,
    "h": 3_600_000, "hour": 3_600_000, "hours": 3_600_000,
    "d": 86_400_000, "day": 86_400_000, "days": 86_400_000,
}


def parse_duration_ms(text: str, name: str) -> int:
    """A Paimon duration option (``1 h``, ``30min``, ``500 ms``, ``2d``) in milliseconds."""
    match = _DURATION.fullmatch(str(text).lower())
    if not match or match.group(2) not in _UNITS_MS:
        raise ValueError(
            f"Paimon table option {name}={text!r} is not valid; accepted: a duration such as 1 h, 30 min, 10 s, 500 ms"
        )
    return int(match.group(1)) * _UNITS_MS[match.group(2)]


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

        def number(name: str, default: int) -> int:
            text = options.get(name)
            if text is None:
                return default
            if not str(text).strip().isdigit() or int(text) < 1:
                raise ValueError(f"Paimon table option {name}={text!r} is not valid; accepted: an integer >= 1")
            return int(text)

        retained = options.get("snapshot.time-retained")
        return cls(
            min_retained=number("snapshot.num-retained.min", 10),
            max_retained=number("snapshot.num-retained.max", 2**31 - 1),
            time_retained_ms=3_600_000 if retained is None else parse_duration_ms(retained, "snapshot.time-retained"),
            expire_limit=number("snapshot.expire.limit", 10),
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
    io = table.file_io
    deleted_files = 0
    reclaimed = 0

    def delete(path: str) -> None:
        nonlocal deleted_files, reclaimed
        try:
            size = io.get_file_size(path)
        except (OSError, FileNotFoundError):
            return
        if io.delete_quietly(path) is not False:
            deleted_files += 1
            reclaimed += size

    # 1. data files removed by a snapshot in (earliest, end]
    for snapshot_id in range(earliest + 1, end + 1):
        snapshot = private.snapshot_by_id(table, snapshot_id)
        if snapshot is None:
            continue
        try:
            entries = private.delta_entries(table, snapshot)
        except FileNotFoundError:
            continue  # a pass that crashed already took its manifests; its data files were deleted first
        for entry in entries:
            if entry.kind == 1:
                for path in private.data_file_paths(table, entry):
                    delete(path)

    # 2. metadata of each expired snapshot, the oldest first
    retained = private.snapshot_by_id(table, end)
    keep_lists, keep_manifests = private.snapshot_metadata_files(table, retained)
    keep = set(keep_lists) | set(keep_manifests)
    expired = 0
    for snapshot_id in range(earliest, end):
        snapshot = private.snapshot_by_id(table, snapshot_id)
        if snapshot is not None:
            try:
                lists, manifests = private.snapshot_metadata_files(table, snapshot)
            except FileNotFoundError:
                lists, manifests = [], []
            for name in manifests + lists:
                if name not in keep:
                    delete(private.manifest_path(table, name))
            delete(private.snapshot_path(table, snapshot_id))
            expired += 1
        private.write_earliest_hint(table, snapshot_id + 1)
    return ExpireResult(expired, deleted_files, reclaimed)
