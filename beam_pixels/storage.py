"""Durable files under a location: a local path, ``file://`` URI or object-store URI.

Local writes go to a temporary file that is fsynced and renamed into place (and
the directory fsynced), so a file either exists whole or not at all, even after
a crash. Object stores get one PUT per file, which they make atomic. Object-store
URIs are whatever pyarrow understands, e.g.
``s3://bucket/path?endpoint_override=127.0.0.1:9000&scheme=http``; credentials
come from the default AWS provider chain.
"""

from __future__ import annotations

import os
import re

from pyarrow import fs as pafs

_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


class Location:
    """A directory of durable files. Picklable (only the location travels); opens lazily."""

    def __init__(self, location: str):
        self.location = location
        self._fs: pafs.FileSystem | None = None
        self._root = ""

    def __getstate__(self):
        return {"location": self.location}

    def __setstate__(self, state):
        self.__init__(state["location"])

    def _open(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            if _URI_RE.match(self.location):
                self._fs, root = pafs.FileSystem.from_uri(self.location)
            else:
                self._fs, root = pafs.LocalFileSystem(), os.path.abspath(self.location)
            self._root = root.rstrip("/")
        return self._fs, self._root

    def path(self, relative: str) -> str:
        """The full path of ``relative`` under this location."""
        return f"{self._open()[1]}/{relative}"

    def write(self, relative: str, payload: bytes) -> str:
        """Store ``payload`` at ``relative``; returns once it would survive a crash."""
        filesystem, _ = self._open()
        path = self.path(relative)
        if isinstance(filesystem, pafs.LocalFileSystem):
            _write_local_durably(path, payload)
        else:
            with filesystem.open_output_stream(path) as out:
                out.write(payload)
        return path

    def list(self, relative_dir: str, recursive: bool = False) -> list[pafs.FileInfo]:
        """Files in ``relative_dir`` (and below, if ``recursive``); none when it does not exist."""
        filesystem, _ = self._open()
        selector = pafs.FileSelector(self.path(relative_dir), allow_not_found=True, recursive=recursive)
        return [info for info in filesystem.get_file_info(selector) if info.type == pafs.FileType.File]

    def read(self, path: str) -> bytes:
        with self._open()[0].open_input_stream(path) as stream:
            return stream.read()

    def delete(self, path: str) -> None:
        self._open()[0].delete_file(path)


def _write_local_durably(path: str, payload: bytes) -> None:
    """Write to a temporary file, fsync it, rename it into place, fsync the directory."""
    directory = os.path.dirname(path)
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
