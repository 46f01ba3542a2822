"""The committer's maintenance passes, run in the background, one at a time per table.

A commit takes a few milliseconds; the pass after it (compaction, expiration) can take
tens to hundreds. Run inline, every pass would delay the next commit; Paimon's own Java
writers compact asynchronously for that reason, and so does the committer: after each
commit it hands the pass to a thread and goes on. The pass never races a commit
unsafely: a deletion-vector table's commit waits while a compaction holds the table's
key-index lock, and a classic table's compaction that loses the race to a commit is
refused and planned again. A pass asked for while one runs is coalesced into one more
pass after it, so the last commit is always followed by a pass.

Passes outlive the writer (a local run builds new writers every round) and run on
daemon threads: a process that ends mid-pass leaves the table as a kill would, readable
and complete. :func:`wait` lets a run finish its last pass. Beam metrics can only be
updated from the committer's thread, so finished reports wait in :func:`finished`.
"""

from __future__ import annotations

import logging
import threading
import typing

_LOG = logging.getLogger(__name__)
_LOCK = threading.Lock()
_IDLE = threading.Condition(_LOCK)
_RUNNING: dict[str, typing.Callable[[], typing.Any] | None] = {}  # table -> the next pass asked for (None: none)
_FINISHED: dict[str, list] = {}


def start(table: str, work: typing.Callable[[], typing.Any]) -> None:
    """Run ``work`` (one pass of ``table``) on a background thread, or right after the pass
    running now (only the latest of the passes asked for in the meantime)."""
    with _LOCK:
        if table in _RUNNING:
            _RUNNING[table] = work
            return
        _RUNNING[table] = None
    threading.Thread(target=_run, args=(table, work), name=f"paimon-maintenance {table}", daemon=True).start()


def _run(table: str, work: typing.Callable[[], typing.Any]) -> None:
    while True:
        try:
            report = work()
        except Exception:  # a pass reports its own errors; anything else must not end the thread silently
            _LOG.exception("%s: maintenance pass failed", table)
            report = None
        with _LOCK:
            if report is not None:
                _FINISHED.setdefault(table, []).append(report)
            work = _RUNNING[table]
            if work is None:
                del _RUNNING[table]
                _IDLE.notify_all()
                return
            _RUNNING[table] = None


def finished(table: str) -> list:
    """The reports of ``table``'s passes finished since the last call."""
    with _LOCK:
        return _FINISHED.pop(table, [])


def wait(timeout: float | None = None) -> bool:
    """Wait until no pass runs (False if ``timeout`` seconds passed first)."""
    with _LOCK:
        return _IDLE.wait_for(lambda: not _RUNNING, timeout)
