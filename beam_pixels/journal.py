"""The poll journal: what the server handed out, kept durably until the table has it.

A Pixels server forgets what it hands out, so a run that dies between a poll and
the commit would lose those records. With a journal, every non-empty response
is stored before any of it is emitted, as one segment per response named by the
record positions it holds (``<start>-<count>.pb`` under ``group-<n>/``). A
restarted run first replays the segments at or after the table's committed
positions, then polls anew; after each commit, segments wholly below the
committed positions are deleted.

Locations are local paths, ``file://`` URIs (written with fsync and an atomic
rename) or object-store URIs that pyarrow understands, e.g.
``s3://bucket/journal?endpoint_override=127.0.0.1:9000&scheme=http`` (one PUT
per segment, which object stores make atomic).
"""

from __future__ import annotations

import logging
import os
import re
import typing
from dataclasses import dataclass

from pyarrow import fs as pafs

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
        self._fs: pafs.FileSystem | None = None
        self._root = ""

    def __getstate__(self):
        return {"location": self.location}

    def __setstate__(self, state):
        self.__init__(state["location"])

    @property
    def _filesystem(self) -> pafs.FileSystem:
        """The journal's filesystem, opened on first use (sets the root path too)."""
        if self._fs is None:
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", self.location):
                self._fs, root = pafs.FileSystem.from_uri(self.location)
            else:
                self._fs, root = pafs.LocalFileSystem(), os.path.abspath(self.location)
            self._root = root.rstrip("/")
        return self._fs

    def _group_dir(self, group: int) -> str:
        self._filesystem  # noqa: B018 - opens the filesystem, which sets the root
        return f"{self._root}/group-{group:04d}"

    def append(self, group: int, start: int, count: int, payload: bytes) -> Segment:
        """Store one response durably; returns only once it would survive a crash."""
        directory = self._group_dir(group)
        segment = Segment(start, count, f"{directory}/{start:020d}-{count:010d}.pb")
        if isinstance(self._filesystem, pafs.LocalFileSystem):
            _write_local_durably(directory, segment.path, payload)
        else:
            with self._filesystem.open_output_stream(segment.path) as out:
                out.write(payload)
        return segment

    def segments(self, group: int) -> list[Segment]:
        """The group's segments in position order."""
        directory = self._group_dir(group)
        infos = self._filesystem.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        found = []
        for info in infos:
            match = _SEGMENT_RE.match(info.base_name)
            if match and info.type == pafs.FileType.File:
                found.append(Segment(int(match.group(1)), int(match.group(2)), info.path))
        return sorted(found)

    def read(self, segment: Segment) -> bytes:
        with self._filesystem.open_input_stream(segment.path) as stream:
            return stream.read()

    def trim(self, positions: typing.Mapping[int, int]) -> int:
        """Delete segments wholly below each group's committed position; returns how many."""
        removed = 0
        for group, committed in positions.items():
            for segment in self.segments(group):
                if segment.end <= committed:
                    self._filesystem.delete_file(segment.path)
                    removed += 1
        if removed:
            _LOG.debug("journal %s: removed %d committed segment(s)", self.location, removed)
        return removed


def _write_local_durably(directory: str, path: str, payload: bytes) -> None:
    """Write to a temporary file, fsync it, rename it into place, fsync the directory."""
    os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
