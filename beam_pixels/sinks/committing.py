"""The commit path both sinks share: window, gather per table, commit exactly once.

A sink supplies a :class:`TableWriter` (how to read the last checkpoint from its
table and how to commit records with a new one); :class:`WriteChanges` does the
rest: fixed windows of the checkpoint interval (or one global window for a
bounded run), one committer per table, replayed records skipped, commit
conflicts refreshed and retried by the committer itself.
"""

from __future__ import annotations

import abc
import logging
import random
import time
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window

from beam_pixels.changes import concat_records
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.config import SinkConfigurationError
from beam_pixels.schema import SourceSchema

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "beam_pixels.sink"


DEFAULT_DATABASE = "pixels"


def split_table_name(table_name: str, database: str | None, sink: str) -> tuple[str, str]:
    """(database, table) from ``table`` or ``database.table`` and an optional database;
    errors name ``<sink>.table.name``."""
    prefix, _, name = table_name.rpartition(".")
    if not name:
        raise SinkConfigurationError(f"{sink}.table.name {table_name!r} is empty; expected 'table' or 'database.table'")
    if prefix and database and prefix != database:
        raise SinkConfigurationError(
            f"{sink}.table.name {table_name!r} names database {prefix!r} but the database is set to {database!r}; "
            f"set only one of them"
        )
    return prefix or database or DEFAULT_DATABASE, name


class CommitConflict(Exception):
    """Another writer committed to the table first; refresh and try again."""


@dataclass(frozen=True)
class CommitResult:
    """What one commit did, for progress lines and tests."""

    table: str
    batch_id: int
    snapshot_id: int | None
    rows: int
    inserts: int
    updates: int
    deletes: int
    skipped: int
    seconds: float
    positions: dict[int, int]

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (
            f"committed batch {self.batch_id} to {self.table}: {self.rows} changes "
            f"(+{self.inserts} ~{self.updates} -{self.deletes}), snapshot {self.snapshot_id}, "
            f"{self.skipped} already committed, {self.seconds:.2f}s ({rate:,.0f} changes/s)"
        )


@dataclass(frozen=True)
class WriteOutcome:
    """What a :meth:`TableWriter.commit` reports back."""

    snapshot_id: int | None
    inserts: int
    updates: int
    deletes: int


class TableWriter(abc.ABC):
    """Commits change records to one table. Pickled to workers: hold only configuration
    in ``__init__`` and build catalogs and tables in :meth:`open`."""

    schema: SourceSchema
    table_name: str

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to the catalog; create the namespace and table when missing."""

    @abc.abstractmethod
    def last_checkpoint(self) -> Checkpoint:
        """The checkpoint of the table's latest commit by this connector, read fresh."""

    @abc.abstractmethod
    def commit(self, records: pa.Table, checkpoint: Checkpoint) -> WriteOutcome:
        """Apply ``records`` (ordered, none committed before) in one atomic commit that
        stores ``checkpoint``. Raise :class:`CommitConflict` when another writer won."""

    @abc.abstractmethod
    def read_table(self) -> pa.Table:
        """The table's current rows (merged view), connector columns dropped."""

    def close(self) -> None:
        """Release catalog resources."""


class WriteChanges(beam.PTransform):
    """Commit a PCollection of ``ChangeBatch`` to a table, once per window.

    ``window_ms`` set: fixed windows of that length, one commit per window, for
    streaming runners that fire windows in event-time order. ``window_ms=None``:
    one commit when the (bounded) input ends. Outputs one :class:`CommitResult`
    per commit.
    """

    def __init__(self, writer: TableWriter, window_ms: int | None = None, commit_retries: int = 5):
        super().__init__()
        self._writer = writer
        self._window_ms = window_ms
        self._retries = commit_retries

    def expand(self, batches):
        if self._window_ms:
            windowing = beam_window.FixedWindows(self._window_ms / 1000.0)
        else:
            windowing = beam_window.GlobalWindows()
        table = self._writer.table_name
        return (
            batches
            | "Window" >> beam.WindowInto(windowing)
            | "KeyByTable" >> beam.Map(lambda batch: (table, batch))
            | "GatherPerTable" >> beam.GroupByKey()
            | "Commit" >> beam.ParDo(_CommitFn(self._writer, self._retries))
        )


class _CommitFn(beam.DoFn):
    """Commits one table's window of batches, skipping what the table already holds."""

    def __init__(self, writer: TableWriter, retries: int):
        self._writer = writer
        self._retries = retries
        self._commits = Metrics.counter(METRICS_NAMESPACE, "commits")
        self._rows = Metrics.counter(METRICS_NAMESPACE, "rows_committed")
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "rows_skipped_as_committed")
        self._conflicts = Metrics.counter(METRICS_NAMESPACE, "commit_conflicts")
        self._latency = Metrics.distribution(METRICS_NAMESPACE, "commit_ms")

    def setup(self):
        self._writer.open()

    def teardown(self):
        self._writer.close()

    def process(self, element):
        _, batches = element
        started = time.monotonic()
        records = concat_records(batches, self._writer.schema)
        for attempt in range(self._retries + 1):
            last = self._writer.last_checkpoint()
            todo = last.uncommitted(records)
            skipped = records.num_rows - todo.num_rows
            if skipped:
                self._skipped.inc(skipped)
            if todo.num_rows == 0:
                _LOG.info("%s: all %d changes already committed; nothing to do", self._writer.table_name, skipped)
                return
            checkpoint = last.advance(todo)
            try:
                outcome = self._writer.commit(todo, checkpoint)
            except CommitConflict as conflict:
                self._conflicts.inc()
                if attempt == self._retries:
                    raise RuntimeError(
                        f"{self._writer.table_name}: gave up after {attempt + 1} conflicting commits; "
                        f"raise the commit retries or stop the other writer"
                    ) from conflict
                wait = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                _LOG.warning("%s: commit conflict (%s); refreshing and retrying in %.2fs", self._writer.table_name, conflict, wait)
                time.sleep(wait)
                continue
            seconds = time.monotonic() - started
            self._commits.inc()
            self._rows.inc(todo.num_rows)
            self._latency.update(int(seconds * 1000))
            result = CommitResult(
                table=self._writer.table_name,
                batch_id=checkpoint.batch_id,
                snapshot_id=outcome.snapshot_id,
                rows=todo.num_rows,
                inserts=outcome.inserts,
                updates=outcome.updates,
                deletes=outcome.deletes,
                skipped=skipped,
                seconds=seconds,
                positions=dict(checkpoint.positions),
            )
            _LOG.info(result.summary())
            yield result
            return
