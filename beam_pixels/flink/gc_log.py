"""The TaskManagers' GC logs (``-Xlog:gc``, as ``scripts/flink-local-cluster.sh`` starts them): a
line per collection, ``[<ISO time>][<uptime>s] GC(n) Pause <kind> ... <before>M-><after>M(<heap>M) <ms>ms``.

The heap after a collection is what the TaskManager keeps alive; the heap used at some moment
(Flink's ``Status.JVM.Memory.Heap.Used``) also holds the garbage since the last one, which in a
large heap is most of it."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

_PAUSE = re.compile(r"^\[(?P<time>[^\]]+)\]\[[^\]]+\] GC\(\d+\) Pause (?P<kind>\w+).* "
                    r"\d+M->(?P<after>\d+)M\(\d+M\) (?P<ms>[\d.]+)ms$")
# The latest pause is in the log's last lines; a line is under 200 bytes.
_TAIL_BYTES = 16 * 1024


@dataclass(frozen=True)
class Pause:
    """One collection's pause: when it began (``time.time()``), its kind, how long, the heap after it."""

    at: float
    kind: str
    ms: float
    heap_after_mb: int


def _pauses(lines) -> list[Pause]:
    return [Pause(datetime.datetime.fromisoformat(m["time"]).timestamp(), m["kind"], float(m["ms"]), int(m["after"]))
            for m in map(_PAUSE.match, lines) if m]


def pauses(log_dir: Path, start: float, end: float) -> list[Pause]:
    """Every TaskManager's pauses that began between ``start`` and ``end`` (``time.time()``)."""
    found = []
    for path in sorted(log_dir.glob("gc-taskmanager-*.log*")):
        found += [p for p in _pauses(path.read_text(errors="replace").splitlines()) if start <= p.at <= end]
    return found


def heap_after_latest_mb(log: Path) -> int | None:
    """The heap after the latest collection in ``log`` (MB), None before the first."""
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, 2) - _TAIL_BYTES))
        found = _pauses(f.read().decode(errors="replace").splitlines())
    return found[-1].heap_after_mb if found else None
