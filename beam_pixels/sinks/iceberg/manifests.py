"""The files Iceberg snapshots reach, read from manifest lists and manifests once per process.

A maintenance pass needs every file the retained snapshots reach (what expiry may delete, what
is an orphan). Read afresh each pass, that is every retained snapshot's manifest list and every
manifest they share, so a table that keeps many snapshots (no expiry, a long
``history.expire.max-snapshot-age-ms``) pays more with every commit. Manifest lists and
manifests are never changed once written (a new snapshot writes new ones), so
:data:`MANIFESTS` keeps them, parsed, by path, for all tables of the process, and a pass reads
only those written since the one before. It is bounded: beyond :data:`CAPACITY` file
references the least recently used are dropped (and read again when needed), and the files a
pass deletes are dropped at once. A merge-on-read commit also takes the current snapshot's live
delete files from it (:meth:`ManifestCache.delete_files`), and the live entries of the manifests
it rewrites, held as pyiceberg ``ManifestEntry``s.
"""

from __future__ import annotations

import collections
import sys
import threading
import typing

from pyiceberg.io import FileIO
from pyiceberg.manifest import DataFile, ManifestContent, ManifestEntry, ManifestFile
from pyiceberg.table.snapshots import Snapshot

# File references held (a manifest list's manifests, a manifest's live files, and one per list or
# manifest), all tables together: about 100 bytes each, each file's path held once however many
# manifests name it.
CAPACITY = 1_000_000
# The key prefix of a manifest's live entries (beside its path's {path: size}).
_ENTRIES = "entries:"

_T = typing.TypeVar("_T", tuple, dict)


class ManifestCache:
    """Manifest lists (their manifests), manifests (their live files with their sizes, or their
    live entries), by path, least recently used dropped beyond ``capacity``
    file references."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._held: collections.OrderedDict[str, tuple | dict] = collections.OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        """File references held."""
        return self._size

    @staticmethod
    def _cost(value: tuple | dict) -> int:
        return len(value) + 1

    def manifests(self, io: FileIO, snapshot: Snapshot) -> tuple[ManifestFile, ...]:
        """The manifests of ``snapshot``'s manifest list."""
        return self._get(snapshot.manifest_list, lambda: tuple(snapshot.manifests(io)))

    def files(self, io: FileIO, manifest: ManifestFile) -> dict[str, int]:
        """The live files of ``manifest`` (its entries not marked deleted), with their sizes in bytes."""

        def read() -> dict[str, int]:
            entries = manifest.fetch_manifest_entry(io, discard_deleted=True)
            return {sys.intern(e.data_file.file_path): e.data_file.file_size_in_bytes for e in entries}

        return self._get(manifest.manifest_path, read)

    def entries(self, io: FileIO, manifest: ManifestFile) -> tuple[ManifestEntry, ...]:
        """The live entries of ``manifest`` (a commit rewrites the manifests holding files it removes)."""
        return self._get(_ENTRIES + manifest.manifest_path,
                         lambda: tuple(manifest.fetch_manifest_entry(io, discard_deleted=True)))

    def delete_files(self, io: FileIO, snapshot: Snapshot) -> list[DataFile]:
        """The live delete files of ``snapshot`` (a commit replaces some of them)."""
        return [e.data_file for manifest in self.manifests(io, snapshot) if manifest.content == ManifestContent.DELETES
                for e in self.entries(io, manifest)]

    def reachable(self, io: FileIO, snapshots: typing.Iterable[Snapshot]) -> dict[str, int]:
        """Every file ``snapshots`` reach (manifest lists, manifests, data and delete files), with
        its size when known (else 0)."""
        out: dict[str, int] = {}
        for snapshot in snapshots:
            out[snapshot.manifest_list] = 0
            for manifest in self.manifests(io, snapshot):
                if manifest.manifest_path not in out:
                    out[manifest.manifest_path] = manifest.manifest_length
                    out.update(self.files(io, manifest))
        return out

    def forget(self, paths: typing.Iterable[str]) -> None:
        """Drop what is held for ``paths`` (files deleted: never read again)."""
        with self._lock:
            for path in paths:
                for key in (path, _ENTRIES + path):
                    if (value := self._held.pop(key, None)) is not None:
                        self._size -= self._cost(value)

    def _get(self, path: str, read: typing.Callable[[], _T]) -> _T:
        with self._lock:
            if (value := self._held.get(path)) is not None:
                self._held.move_to_end(path)
                return value
        value = read()  # outside the lock: passes on other tables go on meanwhile
        with self._lock:
            if path not in self._held:
                self._held[path] = value
                self._size += self._cost(value)
                while self._size > self.capacity and len(self._held) > 1:
                    self._size -= self._cost(self._held.popitem(last=False)[1])
        return value


MANIFESTS = ManifestCache()
