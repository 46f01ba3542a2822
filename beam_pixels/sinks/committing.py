"""The commit path both sinks share: window, gather per table, commit exactly once.

A sink supplies a :class:`TableWriter` (how to read the last checkpoint from its
table and how to commit records with a new one); :class:`WriteChanges` does the
rest: fixed windows of the checkpoint interval (or one global window for a
bounded run), one committer per table, replayed records skipped, commit
conflicts refreshed and retried by the committer itself, a catalog that is briefly
away (:class:`CatalogRetry`) waited for.
"""

from __future__ import annotations

import abc
import importlib
import logging
import random
import re
import threading
import time
import typing
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms import window as beam_window

from beam_pixels.changes import ChangeBatch, OpCounts, concat_records, op_counts
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.errors import ConfigError
from beam_pixels.logs import worker_logging
from beam_pixels.metrics import SINK, table_namespace
from beam_pixels.schema import SourceSchema

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = SINK


DEFAULT_DATABASE = "pixels"


class SinkConfigurationError(ConfigError):
    """A sink setting cannot work (an unusable catalog, a table that does not fit the
    schema); raised by the sinks, the message names the setting and what to do."""


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


_ANNOUNCED: set[tuple] = set()
_ANNOUNCED_LOCK = threading.Lock()


def first_time(*what) -> bool:
    """Whether this process sees ``what`` for the first time (so a table's "using existing
    table" line is printed once per run, not once per round of writers)."""
    with _ANNOUNCED_LOCK:
        if what in _ANNOUNCED:
            return False
        _ANNOUNCED.add(what)
        return True


class CommitConflict(Exception):
    """Another writer committed to the table first; refresh and try again."""


DEFAULT_CATALOG_RETRY_MS = 600_000
# Errors of a catalog that is briefly away, by class name (their libraries are optional):
# an unreachable database or a full connection pool (SQLAlchemy), a REST catalog that does not
# answer or answers 5xx / 429 (requests, pyiceberg), connections refused or timed out (OSError's);
# and a locked SQLite database (below; SQLite's other OperationalErrors are for good).
_AWAY = {
    ("sqlalchemy.exc", "OperationalError"),
    ("sqlalchemy.exc", "TimeoutError"),
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "Timeout"),
    ("pyiceberg.exceptions", "ServiceUnavailableError"),
    ("pyiceberg.exceptions", "ServerError"),
    ("pyiceberg.exceptions", "TooManyRequestsError"),
    ("pyiceberg.exceptions", "CommitStateUnknownException"),
    ("builtins", "ConnectionError"),
    ("builtins", "TimeoutError"),
}


def catalog_away(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says the catalog is briefly away,
    as opposed to refusing what was asked."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__module__ == "sqlite3":
            return "locked" in str(error) or "busy" in str(error)
        if any((kind.__module__, kind.__name__) in _AWAY for kind in type(error).__mro__):
            orig = getattr(error, "orig", None)  # SQLAlchemy's wrapper of the database's own error
            return orig is None or type(orig).__module__ != "sqlite3" or catalog_away(orig)
        error = error.__cause__ or error.__context__
    return False


class CatalogUnavailable(RuntimeError):
    """The catalog stayed away longer than ``sink.catalog.retry.ms``."""

    @staticmethod
    def found_in(error: BaseException) -> str | None:
        """The message of a :class:`CatalogUnavailable` that ended a run with ``error``, or None.
        A runner reports an error of its workers as text in an error of its own."""
        if isinstance(error, CatalogUnavailable):
            return str(error)
        found = re.search(rf"{CatalogUnavailable.__name__}: (.+)", str(error))
        return found.group(1).strip() if found else None


class CatalogRetry:
    """Calls to a table's catalog, retried with backoff while the catalog is briefly away
    (:func:`catalog_away`) for up to ``retry_ms`` from the first failure; then
    :class:`CatalogUnavailable`. Before each retry ``reconnect`` drops the catalog's
    connections. Each retry is logged and counted (``catalog_retries``)."""

    def __init__(self, table_name: str, retry_ms: int, reconnect: typing.Callable[[], None] = lambda: None):
        self._table_name = table_name
        self._retry_ms = retry_ms
        self._reconnect = reconnect
        self._retries = Metrics.counter(METRICS_NAMESPACE, "catalog_retries")

    def call(self, what: str, call: typing.Callable[[], typing.Any]) -> typing.Any:
        """``call()``, retried as the class says; ``what`` names it in the log."""
        first_failure = None
        attempt = 0
        while True:
            try:
                result = call()
            except Exception as error:
                if not catalog_away(error):
                    raise
                now = time.monotonic()
                first_failure = first_failure if first_failure is not None else now
                left = first_failure + self._retry_ms / 1000 - now
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]
                if left <= 0:
                    raise CatalogUnavailable(
                        f"{self._table_name}: the catalog was away for {now - first_failure:.0f} s while trying to "
                        f"{what} ({reason}); gave up after sink.catalog.retry.ms={self._retry_ms}. Nothing is lost: "
                        f"the changes not committed are replayed from the poll journal (or polled again) on restart"
                    ) from error
                attempt += 1
                wait = min(left, min(10.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))
                self._retries.inc()
                _LOG.warning("%s: catalog unavailable while trying to %s (%s); retry %d in %.1f s, giving up in %.0f s",
                             self._table_name, what, reason, attempt, wait, left)
                time.sleep(wait)
                self._reconnect()
                continue
            if attempt:
                _LOG.warning("%s: catalog back after %d retries (%.1f s); %s done", self._table_name, attempt,
                             time.monotonic() - first_failure, what)
            return result


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
    table_label: str = ""  # the table's name in ``tables`` ("": the job's only table)

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds > 0 else 0.0
        return (
            f"committed batch {self.batch_id} to {self.table}: {self.rows} changes "
            f"(+{self.inserts} ~{self.updates} -{self.deletes}), snapshot {self.snapshot_id}, "
            f"{self.skipped} already committed, commit_s={self.seconds:.3f} ({rate:,.0f} changes/s)"
        )


@dataclass(frozen=True)
class WriteOutcome:
    """What :meth:`TableWriter.commit` reports back."""

    snapshot_id: int | None
    inserts: int
    updates: int
    deletes: int


class TableWriter(abc.ABC):
    """Commits change records to one table, in two steps: :meth:`prepare` writes the data
    files of one poll group's changes, :meth:`commit_prepared` makes one atomic commit of every
    prepared part of a window (one committer per table).

    Pickled to workers: hold only configuration in ``__init__`` and build catalogs and
    tables in :meth:`open`.
    """

    schema: SourceSchema
    table_name: str
    # How long calls to a briefly unavailable catalog are retried (sink.catalog.retry.ms).
    catalog_retry_ms: int = DEFAULT_CATALOG_RETRY_MS

    def retrying(self, what: str, call: typing.Callable[[], typing.Any]) -> typing.Any:
        """``call()`` retried while the catalog is briefly away (:class:`CatalogRetry`)."""
        return CatalogRetry(self.table_name, self.catalog_retry_ms, self.reconnect).call(what, call)

    def reconnect(self) -> None:
        """Drop the catalog's connections, which an error may have left in a bad state (none by default)."""

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to the catalog; create the namespace and table when missing."""

    @abc.abstractmethod
    def last_checkpoint(self) -> Checkpoint:
        """The checkpoint of the table's latest commit by this connector, read fresh."""

    @abc.abstractmethod
    def prepare(self, records: pa.Table) -> typing.Any:
        """Write the data files for ``records`` (one poll group's changes, ordered, none
        committed before) without committing them; returns a picklable handle."""

    @abc.abstractmethod
    def commit_prepared(self, parts: list, checkpoint: Checkpoint) -> int | None:
        """One atomic commit of the prepared ``parts`` that stores ``checkpoint``; returns
        the snapshot id. Raise :class:`CommitConflict` when another writer won."""

    @abc.abstractmethod
    def read_table(self) -> pa.Table:
        """The table's current rows (merged view), connector columns dropped."""

    def commit(self, records: pa.Table, checkpoint: Checkpoint) -> WriteOutcome:
        """Prepare and commit ``records`` in one go."""
        snapshot_id = self.commit_prepared([self.prepare(records)], checkpoint)
        return WriteOutcome(snapshot_id, *op_counts(records))

    def maintain(self) -> typing.Any:
        """Table maintenance, when due (none by default)."""

    def after_commit(self) -> None:
        """What the committer runs after each commit: :meth:`maintain` unless a sink runs it
        in the background."""
        self.maintain()

    def finish_maintenance(self) -> None:
        """Wait for maintenance :meth:`after_commit` left running (at the end of a run)."""

    def close(self) -> None:
        """Release catalog resources."""


@dataclass(frozen=True)
class _PreparedPart:
    """One poll group's share of a window: its positions ``[first, end)``, counts and the
    writer's handle to the data files written for it (None when nothing was left to write)."""

    poll_group: int
    first: int
    end: int
    counts: OpCounts
    skipped: int
    handle: typing.Any

    @property
    def rows(self) -> int:
        return sum(self.counts)


class WriteChanges(beam.PTransform):
    """Commit a PCollection of ``ChangeBatch`` to a table, once per window: the one write
    transform of every sink (``WriteToIceberg`` and ``WriteToPaimon`` only build its writer).

    A table's changes of a window are gathered in one place, where each poll group's are
    written to data files (:meth:`TableWriter.prepare`) and then committed all at once, by
    one committer per table. ``window_ms`` set: fixed windows of that length, one commit per window, for
    streaming runners that fire windows in event-time order. ``window_ms=None``: one
    commit when the (bounded) input ends. Outputs one :class:`CommitResult` per commit.
    """

    def __init__(self, writer: TableWriter, window_ms: int | None = None, commit_retries: int = 5):
        super().__init__()
        self._writer = writer
        self._window_ms = window_ms
        self._retries = commit_retries

    @property
    def writer(self) -> TableWriter:
        """The table writer this transform commits with (e.g. to read the last checkpoint)."""
        return self._writer

    @property
    def window_ms(self) -> int | None:
        return self._window_ms

    @property
    def commit_retries(self) -> int:
        return self._retries

    def expand(self, batches):
        return _write(batches, {"": self}, self._window_ms)


class WriteTables(beam.PTransform):
    """Commit the ``ChangeBatch`` es of several tables of a job, each as its own :class:`WriteChanges`
    would (its writer, sink and commit retries), through one set of steps.

    ``writes`` maps each table's label to its write; a batch's ``table_label`` picks it. Each
    table still commits on its own, once per window, with its own batch ids and positions, exactly
    once; its :class:`CommitResult` carries its label, and its metrics are in the namespace
    ``beam_pixels.sink.<label>``. The tables share the steps, so what a runner pays per step and
    bundle does not grow with them; they also share the committer, so a table whose commit is
    retried (a catalog away, conflicts) holds back the commits after it by as long.

    ``keep_open`` (a local run's id) keeps the tables' writers open in :data:`KEPT_WRITERS` when
    the pipeline ends, for the next run of the same pipeline (a local run's next round).
    """

    def __init__(self, writes: typing.Mapping[str, WriteChanges], keep_open: str = ""):
        super().__init__()
        windows = {write.window_ms for write in writes.values()}
        if len(windows) != 1:
            raise ValueError(f"WriteTables needs writes of one window length, got {sorted(map(str, windows))}")
        self._writes = dict(writes)
        self._window_ms = windows.pop()
        self._keep_open = keep_open

    def expand(self, batches):
        return _write(batches, self._writes, self._window_ms, self._keep_open)


def _write(batches, writes: typing.Mapping[str, WriteChanges], window_ms: int | None, keep_open: str = ""):
    """The steps of :class:`WriteChanges` and :class:`WriteTables`: each table's window gathered
    once, then its poll groups' data files written and committed in the same step. (Writing the
    poll groups' files in a step of their own, in parallel, cost a second watermark hop on
    streaming runners, 0.5-1.4 s per window on Flink, for about 0.25 s of parallel writing:
    docs/performance.md.)"""
    if window_ms:
        windowing = beam_window.FixedWindows(window_ms / 1000.0)
    else:
        windowing = beam_window.GlobalWindows()
    return (
        batches
        | "Window" >> beam.WindowInto(windowing)
        | "KeyByTable"
        >> beam.ParDo(_KeyByTable(type(write.writer).__module__ for write in writes.values())).with_output_types(
            typing.Tuple[str, ChangeBatch]  # batches keep their compact Arrow coder
        )
        | "GatherPerTable" >> beam.GroupByKey()
        | "WriteAndCommit" >> beam.ParDo(_WriteAndCommitFn({
            label: _TableCommitter(write.writer, write.commit_retries, label) for label, write in writes.items()
        }, keep_open))
    )


class _KeyByTable(beam.DoFn):
    """``(table label, batch)`` for the grouping step. Its setup imports the tables' sink modules
    (pyiceberg, pypaimon): the runner fuses this step with the poller, so they load as the job
    starts, not when the first window reaches the write step of a fresh SDK worker (the
    cluster's worker pool, a restarted one), where they held that window's writes back by
    0.1-0.35 s (docs/performance.md)."""

    def __init__(self, modules: typing.Iterable[str]):
        self._modules = sorted(set(modules))

    def setup(self):
        for module in self._modules:
            importlib.import_module(module)

    def process(self, batch: ChangeBatch):
        yield batch.table_label, batch


def _of_table(tables: typing.Mapping[str, typing.Any], label: str) -> typing.Any:
    """What ``tables`` holds for the table labelled ``label``; an error names a table without one."""
    found = tables.get(label)
    if found is None:
        raise KeyError(f"a batch of table {label!r} reached a write of the tables {sorted(tables)}; "
                       "label each read as its write (table_label)")
    return found


class _WriteAndCommitFn(beam.DoFn):
    """One table's window: each poll group's uncommitted changes written to data files, then one
    commit of them all by the table's :class:`_TableCommitter`."""

    def __init__(self, committers: typing.Mapping[str, _TableCommitter], keep_open: str = ""):
        self._committers = dict(committers)
        self._keep_open = keep_open
        namespaces = {label: table_namespace(METRICS_NAMESPACE, label) for label in committers}
        self._skipped = {label: Metrics.counter(ns, "rows_skipped_as_committed") for label, ns in namespaces.items()}
        self._latency = {label: Metrics.distribution(ns, "write_data_files_ms") for label, ns in namespaces.items()}

    def setup(self):
        worker_logging()
        self._open = _OpenWriters(self._keep_open)  # a table's writer opens at its first changes

    def teardown(self):
        self._open.close()

    def process(self, element, window=beam.DoFn.WindowParam):
        label, batches = element
        committer = _of_table(self._committers, label)
        writer = committer.writer = self._open.writer(label, committer.writer)
        by_group: dict[int, list[ChangeBatch]] = {}
        for batch in batches:
            by_group.setdefault(batch.poll_group, []).append(batch)
        read_started = time.monotonic()
        last = writer.retrying("read the last checkpoint", writer.last_checkpoint)
        read_s = time.monotonic() - read_started
        parts = [self._prepare(label, writer, group, by_group[group], last, window) for group in sorted(by_group)]
        yield from committer.commit(parts, last, read_s, _after_end(window))
        self._open.note_checkpoint(label, committer.checkpoint)

    def _prepare(self, label: str, writer: TableWriter, poll_group: int, batches: list[ChangeBatch],
                 last: Checkpoint, window) -> _PreparedPart:
        """Write one poll group's changes that ``last`` does not hold to data files."""
        started = time.monotonic()
        late = _after_end(window)
        records = concat_records(batches, writer.schema)
        todo = last.uncommitted(records)
        skipped = records.num_rows - todo.num_rows
        self._skipped[label].inc(skipped)
        positions = todo.column("position").to_numpy()
        handle = writer.prepare(todo) if todo.num_rows else None
        first, end = (int(positions[0]), int(positions[-1]) + 1) if todo.num_rows else (0, 0)
        seconds = time.monotonic() - started
        self._latency[label].update(int(seconds * 1000))
        _LOG.info("%s: wrote %d changes of poll group %d in %.3f s%s", writer.table_name, todo.num_rows, poll_group,
                  seconds, late)
        return _PreparedPart(poll_group, first, end, op_counts(todo), skipped, handle)


class _OpenWriters:
    """The table writers a DoFn instance has opened, by table label: opened at a table's first
    element, closed at teardown, or, with ``keep_open``, taken from and left in :data:`KEPT_WRITERS`."""

    def __init__(self, keep_open: str):
        self._keep_open = keep_open
        self._writers: dict[str, TableWriter] = {}

    def writer(self, label: str, writer: TableWriter) -> TableWriter:
        """``writer`` opened (or the one opened before it for ``label``)."""
        opened = self._writers.get(label)
        if opened is None:
            if self._keep_open:
                opened = KEPT_WRITERS.opened(self._keep_open, label, writer)
            else:
                opened = writer
                writer.retrying("open the table", writer.open)
            self._writers[label] = opened
        return opened

    def note_checkpoint(self, label: str, checkpoint: Checkpoint | None) -> None:
        """With ``keep_open``: the table labelled ``label`` holds ``checkpoint`` now (see
        :meth:`KeptWriters.checkpoint`)."""
        if self._keep_open and checkpoint is not None:
            KEPT_WRITERS.note_checkpoint(self._keep_open, label, checkpoint)

    def close(self) -> None:
        if not self._keep_open:
            for writer in self._writers.values():
                writer.close()
        self._writers.clear()


class KeptWriters:
    """Table writers kept open between the runs of one pipeline in this process.

    A local run runs the same pipeline again each round; opening each table's writers again each
    round (its catalog, its table, the schema check; for writing files and for committing) was
    most of what a table added to a round's length. Runs of one local run share one writer per
    table here, as a streaming runner's long-lived DoFns keep theirs: the run's own, which it
    opened to resume from (:meth:`keep`), writes the files and commits too, as the runner runs
    one step after another. :meth:`close` closes a run's writers when it ends.

    It also keeps each table's checkpoint as the table's committer last read or committed it
    (:meth:`checkpoint`), for the run to resume its next round from without reading every table
    again after each round (a catalog call and a metadata file a table).
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._writers: dict[tuple[str, str], TableWriter] = {}
        self._checkpoints: dict[tuple[str, str], Checkpoint] = {}

    def keep(self, run: str, label: str, writer: TableWriter) -> None:
        """Keep ``writer``, opened, for the table labelled ``label`` of ``run``; closed with the run."""
        with self._lock:
            self._writers[(run, label)] = writer

    def opened(self, run: str, label: str, writer: TableWriter) -> TableWriter:
        """The writer kept for the table labelled ``label`` of ``run``, or ``writer``, opened and kept."""
        key = (run, label)
        with self._lock:
            kept = self._writers.get(key)
        if kept is not None:
            return kept
        writer.retrying("open the table", writer.open)
        with self._lock:
            kept = self._writers.setdefault(key, writer)
        if kept is not writer:  # another thread opened one for this key meanwhile
            writer.close()
        return kept

    def note_checkpoint(self, run: str, label: str, checkpoint: Checkpoint) -> None:
        """The table labelled ``label`` of ``run`` holds ``checkpoint``: its committer read or committed it."""
        with self._lock:
            self._checkpoints[(run, label)] = checkpoint

    def checkpoint(self, run: str, label: str) -> Checkpoint | None:
        """The checkpoint the table labelled ``label`` of ``run`` holds as its committer last read or
        committed it (None before the run's first commit of it). It is the table's own as long as the
        run is the table's only writer, which exactly-once asks anyway (another writer's commits
        conflict with the run's)."""
        with self._lock:
            return self._checkpoints.get((run, label))

    def close(self, run: str) -> None:
        """Close and forget the writers (and checkpoints) of ``run``."""
        with self._lock:
            keys = [key for key in self._writers if key[0] == run]
            writers = [self._writers.pop(key) for key in keys]
            for key in [key for key in self._checkpoints if key[0] == run]:
                del self._checkpoints[key]
        for writer in writers:
            writer.close()


KEPT_WRITERS = KeptWriters()


class _TableCommitter:
    """Commits one table's prepared parts of a window: retried on conflicts, replayed parts skipped."""

    def __init__(self, writer: TableWriter, retries: int, table_label: str = ""):
        self.writer = writer
        self._retries = retries
        # The table's checkpoint as this committer last read or committed it (None: not yet).
        self.checkpoint: Checkpoint | None = None
        self._table_label = table_label
        namespace = table_namespace(METRICS_NAMESPACE, table_label)
        self._commits = Metrics.counter(namespace, "commits")
        self._rows = Metrics.counter(namespace, "rows_committed")
        self._conflicts = Metrics.counter(namespace, "commit_conflicts")
        self._latency = Metrics.distribution(namespace, "commit_ms")

    def commit(self, every_part: list[_PreparedPart], last: Checkpoint, read_s: float = 0.0, late: str = ""):
        """Commit the parts (yields the :class:`CommitResult`, unless the table held them all).
        ``last`` is the checkpoint the writer read before the parts were prepared, in ``read_s``
        seconds (counted in the commit's time); ``late`` ends the log line (how long after its
        window's end the commit started)."""
        started = time.monotonic() - read_s
        skipped = sum(part.skipped for part in every_part)
        parts = [part for part in every_part if part.rows]
        # The first try commits on the table state ``last`` was read from: the writer has not read
        # the table since, so a commit by another writer in between conflicts. Every other try reads
        # the table's last checkpoint first: after a conflict, and after a commit whose outcome was
        # unknown (the catalog went away mid-commit), which is found there if it was applied.
        known = iter([last])
        for attempt in range(self._retries + 1):
            try:
                done = self.writer.retrying("commit", lambda: self._commit_once(parts, next(known, None)))
            except CommitConflict as conflict:
                self._conflicts.inc()
                if attempt == self._retries:
                    raise RuntimeError(
                        f"{self.writer.table_name}: gave up after {attempt + 1} conflicting commits; "
                        f"raise the commit retries or stop the other writer"
                    ) from conflict
                wait = min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                _LOG.warning("%s: commit conflict (%s); refreshing and retrying in %.2fs", self.writer.table_name, conflict, wait)
                time.sleep(wait)
                continue
            if done is None:
                _LOG.info("%s: all %d changes already committed; nothing to do", self.writer.table_name, skipped)
                return
            parts, checkpoint, snapshot_id = done
            result = self._report(parts, checkpoint, snapshot_id, skipped, time.monotonic() - started, late)
            self.writer.after_commit()
            yield result
            return

    def _commit_once(self, parts: list[_PreparedPart], last: Checkpoint | None = None
                     ) -> tuple[list[_PreparedPart], Checkpoint, int | None] | None:
        """Commit the parts the table does not hold yet on top of its last checkpoint (``last``, else
        read now): those parts, the new checkpoint and the snapshot id; None when it holds them all."""
        if last is None:
            last = self.writer.last_checkpoint()
        self.checkpoint = last
        parts = self._not_yet_committed(parts, last)
        if not parts:
            return None
        checkpoint = last.advance_to({part.poll_group: part.end for part in parts})
        snapshot_id = self.writer.commit_prepared([part.handle for part in parts], checkpoint)
        self.checkpoint = checkpoint
        return parts, checkpoint, snapshot_id

    def _not_yet_committed(self, parts: list[_PreparedPart], last: Checkpoint) -> list[_PreparedPart]:
        """Parts whose positions the table does not hold yet. A part the table already
        holds whole (another commit won the race) is dropped; one it holds in part cannot
        be trimmed once written, so it fails the commit rather than duplicate rows."""
        kept = []
        for part in parts:
            committed = last.next_position(part.poll_group)
            if part.end <= committed:
                continue
            if part.first < committed:
                raise RuntimeError(
                    f"{self.writer.table_name}: poll group {part.poll_group} positions {part.first}..{part.end - 1} "
                    f"were written while another commit took them up to {committed - 1}; is a second pipeline "
                    f"writing this table? Stop it; a restart resumes from the table's positions"
                )
            kept.append(part)
        return kept

    def _report(self, parts, checkpoint: Checkpoint, snapshot_id, skipped: int, seconds: float, late: str) -> CommitResult:
        rows = sum(part.rows for part in parts)
        self._commits.inc()
        self._rows.inc(rows)
        self._latency.update(int(seconds * 1000))
        result = CommitResult(
            table=self.writer.table_name,
            batch_id=checkpoint.batch_id,
            snapshot_id=snapshot_id,
            rows=rows,
            inserts=sum(part.counts.inserts for part in parts),
            updates=sum(part.counts.updates for part in parts),
            deletes=sum(part.counts.deletes for part in parts),
            skipped=skipped,
            seconds=seconds,
            positions=dict(checkpoint.positions),
            table_label=self._table_label,
        )
        _LOG.info(result.summary() + late)
        return result


def _after_end(window) -> str:
    """How long after its window's end a stage started (streaming), for the log: where
    the time between a window's end and its commit goes ("before" should the watermark run ahead
    of this worker's clock). The window's end (local time) tells the lines of one window apart.
    Empty for the global window."""
    if not isinstance(window, beam_window.IntervalWindow):
        return ""
    end = window.end.micros / 1e6
    after = time.time() - end
    return f", started {abs(after):.2f} s {'after' if after >= 0 else 'before'} the window's end ({window_end_label(end)})"


def window_end_label(end: float) -> str:
    """A window's end (``time.time()`` seconds) as the log lines name it: local time to the millisecond."""
    millis = round(end * 1000)
    return time.strftime("%H:%M:%S", time.localtime(millis // 1000)) + f".{millis % 1000:03d}"
