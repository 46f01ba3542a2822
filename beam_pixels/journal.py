"""The poll journal: what the server handed out, kept durably until the table has it.

A Pixels server forgets what it hands out, so a run that dies between a poll and
the commit would lose those records. With a journal, every non-empty response
is stored before any of it is emitted, as one segment per response named by the
record positions it holds (``<start>-<count>.pb`` under ``group-<n>/``). A
restarted run first replays the segments at or after the table's committed
positions, then polls anew; after each commit, segments wholly below the
committed positions are deleted and the committed position is recorded as an
empty marker segment (see :meth:`PollJournal.trim`). A local run trims on a thread of its own
(:data:`BACKGROUND_TRIMS`), so that deleting a round's segments, a file system call each, does
not lengthen the round by as much for every table; the run waits for the last trims when it ends.

Values are read by position, so a response is only meaningful with the
``source.schema`` it was polled under, and that may change between runs
(``docs/schema-changes.md``). A segment's name carries a fingerprint of that
schema (``<start>-<count>.<fingerprint>.pb``), and ``<fingerprint>.schema`` in the same
directory holds its text, written by the group's poller before the first segment that
names it. A replayed
response polled under another schema is decoded by that schema
(:meth:`PollJournal.schema_of`), never by guessing from its width. Segments of
journals from before this (no fingerprint) are read by the current schema.

Segments are written durably by :class:`beam_pixels.storage.Location` (local
paths, ``file://`` or object-store URIs).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import typing
from dataclasses import dataclass

import apache_beam as beam

from beam_pixels.storage import Location

_LOG = logging.getLogger(__name__)
_SEGMENT_RE = re.compile(r"^(\d{20})-(\d{10})(?:\.([0-9a-f]{16}))?\.pb$")


@dataclass(frozen=True, order=True)
class Segment:
    """One journaled poll response: records ``[start, start + count)`` of a poll group."""

    start: int
    count: int
    path: str
    schema_id: str | None = None  # fingerprint of the schema it was polled under (None: not recorded)

    @property
    def end(self) -> int:
        return self.start + self.count


class PollJournal:
    """Durable per-poll-group log of raw poll responses, polled under ``schema`` (the text of
    a :class:`~beam_pixels.schema.SourceSchema`; empty for a journal that only trims).
    Picklable; opens lazily."""

    def __init__(self, location: str, schema: str = ""):
        self.location = location
        self.schema = schema
        self._schema_id = hashlib.sha256(schema.encode()).hexdigest()[:16]
        self._schema_recorded: set[int] = set()  # the groups whose directory holds this schema's file
        self._files = Location(location)

    def append(self, group: int, start: int, count: int, payload: bytes) -> Segment:
        """Store one response durably; returns only once it would survive a crash."""
        if group not in self._schema_recorded:
            self._files.write(f"{_group_dir(group)}/{self._schema_id}.schema", self.schema.encode())
            self._schema_recorded.add(group)
        path = self._files.write(f"{_group_dir(group)}/{start:020d}-{count:010d}.{self._schema_id}.pb", payload)
        return Segment(start, count, path, self._schema_id)

    def schema_of(self, segment: Segment) -> str:
        """The schema ``segment`` was polled under when it is not this journal's, else empty."""
        if segment.schema_id is None or segment.schema_id == self._schema_id:
            return ""
        directory = segment.path.rsplit("/", 1)[0]
        return self._files.read(f"{directory}/{segment.schema_id}.schema").decode()

    def segments(self, group: int) -> list[Segment]:
        """The group's segments in position order."""
        return [s for s in self._entries(group) if s.count]

    def committed_floor(self, group: int) -> int:
        """The highest committed position a trim recorded for the group (0 if none): every
        position below it is in the table."""
        return max((s.start for s in self._entries(group) if not s.count), default=0)

    def _entries(self, group: int) -> list[Segment]:
        """Segments and commit markers (empty segments at a committed position), sorted. Notes
        whether the group's directory holds this journal's schema already (a listed file is whole:
        it was renamed into place once written), so that :meth:`append` does not write it again."""
        found = []
        for info in self._files.list(_group_dir(group)):
            match = _SEGMENT_RE.match(info.base_name)
            if match:
                found.append(Segment(int(match.group(1)), int(match.group(2)), info.path, match.group(3)))
            elif info.base_name == f"{self._schema_id}.schema":
                self._schema_recorded.add(group)
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


class BackgroundTrims:
    """Trims journals on a thread of their own, each journal's trims in the order of its commits.

    Deleting a segment is a file system call (1.5-3 ms on an ext4 disk; a request on an object
    store): trimming in the commit step cost a local round of 10 tables 0.3 s beyond their commits.
    Nothing waits for a trim: replay and the committed floor read only what lies at or after the
    committed positions, which a trim leaves alone, and the marker is still written durably before
    anything is deleted. Trims still pending for a journal merge into one (the highest committed
    position of each group). A failed trim is logged and done by the journal's next one. A process
    that ends before its trims leaves segments below the committed positions, which replay skips
    and the next trim deletes; :meth:`wait` lets a run finish them first.
    """

    def __init__(self):
        self._changed = threading.Condition()
        self._pending: dict[str, tuple[PollJournal, dict[int, int]]] = {}  # by journal location
        self._trimming = 0
        self._thread: threading.Thread | None = None

    def submit(self, journal: PollJournal, positions: typing.Mapping[int, int]) -> None:
        with self._changed:
            _, merged = self._pending.get(journal.location, (journal, {}))
            for group, position in positions.items():
                merged[group] = max(merged.get(group, 0), position)
            self._pending[journal.location] = (journal, merged)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="journal-trims", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def wait(self) -> None:
        """Return once every trim submitted so far is done."""
        with self._changed:
            self._changed.wait_for(lambda: not self._pending and not self._trimming)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending)
                journal, positions = self._pending.pop(next(iter(self._pending)))
                self._trimming += 1
            try:
                journal.trim(positions)
            except Exception as error:  # the next trim of this journal deletes what this one left
                _LOG.warning("journal %s: trimming to positions %s failed (%s); its next trim retries",
                             journal.location, positions, error)
            finally:
                with self._changed:
                    self._trimming -= 1
                    self._changed.notify_all()


BACKGROUND_TRIMS = BackgroundTrims()


class TrimJournal(beam.PTransform):
    """After each commit (a ``CommitResult``), delete the journal segments it covers. In a job of
    several tables ``location`` maps each table's label to its journal (``CommitResult.table_label``
    picks it; a table without one is left out). ``in_background``: hand each trim to
    :data:`BACKGROUND_TRIMS` (in-process runners: the run waits for them when it ends)."""

    def __init__(self, location: str | typing.Mapping[str, str], in_background: bool = False):
        super().__init__()
        locations = dict(location) if isinstance(location, typing.Mapping) else {"": location}
        self._journals = {label: PollJournal(where) for label, where in locations.items()}
        self._in_background = in_background

    def expand(self, commits):
        return commits | "TrimCommitted" >> beam.Map(_trim, self._journals, self._in_background)


def _trim(result, journals: typing.Mapping[str, PollJournal], in_background: bool) -> None:
    journal = journals.get(result.table_label)
    if journal is None:
        return
    if in_background:
        BACKGROUND_TRIMS.submit(journal, result.positions)
    else:
        journal.trim(result.positions)
