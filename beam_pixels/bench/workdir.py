"""The work directory of a benchmark run: the one given (new or empty), else a temporary one."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


class WorkdirNotEmpty(RuntimeError):
    """``--workdir`` names a directory that already holds files: a run never mixes its output with them."""


@contextlib.contextmanager
def work_directory(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path``, created when missing, which must be empty; without a path, a temporary
    directory named ``prefix...``, removed afterwards. Raises :class:`WorkdirNotEmpty`."""
    if path is None:
        with tempfile.TemporaryDirectory(prefix=prefix) as temporary:
            yield Path(temporary)
        return
    path.mkdir(parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise WorkdirNotEmpty(f"--workdir {path} is not empty; give a new or empty directory")
    yield path
