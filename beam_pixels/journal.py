"""The poll journal: what the server handed out, kept durably until the table has it.

A Pixels server forgets what it hands out, so a run that dies between a poll and
the commit would lose those records. With a journal, every non-empty response
is stored before any of it is emitted, as one segment per response named by the
record positions it holds (``<start>-<count>.pb`` under ``group-<n>/``). A
restarted run first replays the segments at or after the table's committed
positions, then polls anew; after each commit, segments wholly below the
committed positions are deleted and the committed position is recorded as an
empty marker segment (see :meth:`PollJournal.trim`).

Segments are written durably by :class:`beam_pixels.storage.Location` (local
paths, ``file://`` or object-store URIs).
"""

from __future__ import annotations

import logging
import re
import typing
from dataclasses import dataclass

import apache_beam as beam

from beam_pixels.storage import Location

_LOG = logging.getLogger(__name__)
_SEGMENT_RE = re.compile(r"^(\d{20})-(\d{10})\.pb$")


@dataclass(frozen=True, order=True)
class Segment:
    """One journaled poll response: records ``[start, start + count)`` of a poll group."""

    start: int
    count: int
    path: str

    @property
    def end(self) -> int:
        return self.start + self.count


class PollJournal:
    """Durable per-poll-group log of raw poll responses. Picklable; opens lazily."""

    def __init__(self, location: str):
        self.location = location
        self._files = Location(location)

    def append(self, group: int, start: int, count: int, payload: bytes) -> Segment:
        """Store one response durably; returns only once it would survive a crash."""
        path = self._files.write(f"{_group_dir(group)}/{start:020d}-{count:010d}.pb", payload)
        return Segment(start, count, path)

    def segments(self, group: int) -> list[Segment]:
        """The group's segments in position order."""
        return [s for s in self._entries(group) if s.count]

    def committed_floor(self, group: int) -> int:
        """The highest committed position a trim recorded for the group (0 if none): every
        position below it is in the table."""
        return max((s.start for s in self._entries(group) if not s.count), default=0)

    def _entries(self, group: int) -> list[Segment]:
        """Segments and commit markers (empty segments at a committed position), sorted."""
        found = []
        for info in self._files.list(_group_dir(group)):
            match = _SEGMENT_RE.match(info.base_name)
            if match:
                found.append(Segment(int(match.group(1)), int(match.group(2)), info.path))
        return sorted(found)

    def read(self, segment: Segment) -> bytes:
        return self._files.read(segment.path)

    def trim(self, positions: typing.Mapping[int, int]) -> int:
        """Delete segments wholly below each group's committed position; returns how many.

        First records the committed position as a marker (an empty segment there, older
        markers deleted): a poller restored from an older runner checkpoint (Flink) resumes
        numbering at the marker instead of giving new records positions the table holds.
        """
        removed = 0
        for group, committed in positions.items():
            entries = self._entries(group)
            if committed and not any(s.start == committed and not s.count for s in entries):
                self._files.write(f"{_group_dir(group)}/{committed:020d}-{0:010d}.pb", b"")
            for segment in entries:
                if segment.end <= committed and not (segment.start == committed and not segment.count):
                    self._files.delete(segment.path)
                    removed += segment.count > 0
        if removed:
            _LOG.debug("journal %s: removed %d committed segment(s)", self.location, removed)
        return removed


def _group_dir(group: int) -> str:
    return f"group-{group:04d}"


class TrimJournal(beam.PTransform):
    """After each commit (a ``CommitResult``), delete the journal segments it covers."""

    def __init__(self, location: str):
        super().__init__()
        self._journal = PollJournal(location)

    def expand(self, commits):
        return commits | "TrimCommitted" >> beam.Map(lambda result, journal: journal.trim(result.positions), self._journal)
