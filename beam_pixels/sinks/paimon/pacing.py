"""The pace of the rewrites that reclaim deleted rows in deletion-vector tables.

Random updates delete rows of every file at one pace, so files reach their delete-ratio
threshold in clusters, even with thresholds spread per file (:mod:`.dv_compaction`), and
rewritten as they came, a cluster's old copies stayed on storage for as long as the retained
snapshots reached them. A :class:`ReclaimPacer` holds these rewrites to the pace of the table's
deletions: each row the commits delete earns ``PACE / ratio`` rows of rewrite, and a pass starts
a reclaiming rewrite while the credit is positive and spends the rows of its input files (one
rewrite may take the credit below zero). A file is rewritten once its share of deleted rows
passes its threshold, spread over [0.5, 1.5) x ``ratio``, so keeping up with the deletions takes
at most ln(3) / ``ratio`` rows of rewrite per deleted row on average (all deletions in files of
the oldest run, each rewritten at its threshold): :data:`PACE` (1.2) is above ln(3), and in the
soak the rewrites took 1.6 rows per deleted row, not 3.1, so the pacer holds back bursts only.
The credit is capped at :data:`MAX_CREDIT_ROWS`, so a quiet spell does not save up for a burst,
and also grows by :data:`IDLE_ROWS_PER_S` with time, so a table that stopped changing is still
reclaimed, slowly. Rewrites that merge runs or drop files whose rows are all deleted are not paced.
"""

from __future__ import annotations

import threading
import time

from beam_pixels.sinks.paimon.dv_compaction import MIN_FILE_ROWS

PACE = 1.2
MAX_CREDIT_ROWS = 2 * MIN_FILE_ROWS  # two of the smallest files compaction writes
IDLE_ROWS_PER_S = MIN_FILE_ROWS / 60  # one such file a minute


class ReclaimPacer:
    """The credit of one table's reclaiming rewrites (module docstring), fed with the running
    count of rows its commits deleted."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._credit = float(MAX_CREDIT_ROWS)
        self._deleted_seen = 0
        self._at = clock()

    def earn(self, rows_deleted: int, ratio: float) -> None:
        """Credit for the rows deleted since the last call (``rows_deleted``: the running count,
        which starts again from 0 when the table's state is rebuilt) and for the time passed."""
        now = self._clock()
        new = rows_deleted - self._deleted_seen if rows_deleted >= self._deleted_seen else rows_deleted
        self._deleted_seen = rows_deleted
        earned = PACE * new / max(ratio, 0.01) + IDLE_ROWS_PER_S * (now - self._at)
        self._credit = min(MAX_CREDIT_ROWS, self._credit + earned)
        self._at = now

    def allows(self) -> bool:
        """Whether a reclaiming rewrite may start now."""
        return self._credit > 0

    def spend(self, rows: int) -> None:
        """A reclaiming rewrite of ``rows`` input rows started."""
        self._credit -= rows


_PACERS: dict[str, ReclaimPacer] = {}
_LOCK = threading.Lock()


def pacer(location: str) -> ReclaimPacer:
    """The pacer of the table at ``location``, for the whole process (local runs open new
    writers every round)."""
    with _LOCK:
        return _PACERS.setdefault(location, ReclaimPacer())
