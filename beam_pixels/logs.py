"""Readable logs: INFO from beam_pixels, warnings from everything else, in the command line and in
the SDK workers of Beam's worker pool."""

from __future__ import annotations

import logging
import sys
import threading


class _DropBeamImportNoise(logging.Filter):
    """Beam warns on import about optional Google Cloud clients this tool never uses."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


class _DropCatalogOutageTraceback(logging.Filter):
    """Beam logs the error that ends a bundle with its traceback; a catalog away for longer than
    sink.catalog.retry.ms ends the run with one line of its own (``beam_pixels.cli``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "CatalogUnavailable"


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
_WORKER_SETUP = threading.Lock()


def configure_logging(verbose: bool = False) -> None:
    """Readable logs: INFO from beam_pixels, warnings from everything else."""
    logging.basicConfig(level=logging.WARNING, format=FORMAT, datefmt=DATE_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropBeamImportNoise())
        handler.addFilter(_DropCatalogOutageTraceback())
    logging.getLogger("beam_pixels").setLevel(logging.DEBUG if verbose else logging.INFO)


def worker_logging() -> None:
    """In an SDK worker of Beam's worker pool (``--environment_type EXTERNAL``), INFO from
    beam_pixels on stderr, which the pool writes to its log.

    The pool starts each worker as ``python -c "...SdkHarness(...).run()"`` with no logging
    setup (and its stdout discarded), so Python printed only warnings, and an operator following
    a detached job found no ``committed batch`` line. Anywhere else (``beam-pixels run``, whose
    LOOPBACK workers share its logging; a runner that set up its own; tests) nothing changes.
    """
    ours = logging.getLogger("beam_pixels")
    with _WORKER_SETUP:
        if sys.argv[:1] != ["-c"] or ours.level != logging.NOTSET:
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False  # not twice, through a handler Beam's import left on the root logger
