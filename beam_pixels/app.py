"""The application: Pixels -> ReadFromPixels -> WriteToIceberg / WriteToPaimon, from properties.

On an in-process runner (the default) the job runs as a sequence of bounded
rounds of about ``checkpoint.interval.ms``: each round resumes each table from the
positions it has committed, polls, and commits each table once (a job of several
tables, ``tables=...``, reads and writes them all through one set of steps, see
:func:`build_pipeline`). (Beam's local
runners hold windowed output until a splittable DoFn finishes, so rounds are
how a local run commits continuously.) On a distributed runner (Flink) it
submits one unbounded pipeline that commits once per fixed window.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import signal
import sys
import time
import typing
import uuid
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    StandardOptions,
)
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from beam_pixels import source
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.config import PixelsConfig
from beam_pixels.dead_letters import WriteDeadLetters
from beam_pixels.flink import job_server, placement
from beam_pixels.flink.options import submission_options
from beam_pixels.flink.rest import FINISHED_STATES, FlinkRest
from beam_pixels.journal import BACKGROUND_TRIMS, TrimJournal
from beam_pixels.sinks import sink_for
from beam_pixels.metrics import table_namespace
from beam_pixels.sinks.committing import KEPT_WRITERS, SinkConfigurationError, TableWriter, WriteTables

_LOG = logging.getLogger(__name__)

IN_PROCESS_RUNNERS = {None, "DirectRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"}


def open_table_writer(config: PixelsConfig) -> TableWriter:
    """The configured sink's table writer, opened (the table created when missing), for the
    driver to read checkpoints and tables; the caller closes it."""
    writer = sink_for(config).writer
    try:
        writer.retrying("open the table", writer.open)
    except OSError as error:
        raise SinkConfigurationError(
            f"{config.sink_type}.catalog.warehouse cannot be used: {error}; check the location and its permissions"
        ) from error
    return writer


def build_pipeline(
    p: beam.Pipeline,
    tables: typing.Mapping[str, PixelsConfig],
    *,
    local_run: bool,
    start_positions: typing.Mapping[str, typing.Mapping[int, int]] | None = None,
    window_ms: int | None = None,
    round_keys: typing.Mapping[str, str] | None = None,
    keep_writers_open: str = "",
    trim_in_background: bool = False,
    subtasks: placement.Subtasks | None = None,
):
    """Add a job of ``tables`` to ``p``; returns the PCollection of CommitResults.

    ``tables`` maps each table's label to its single-table configuration, as
    :meth:`PixelsConfig.tables` gives them (``{"": config}`` for a job of one table). Every table
    goes through the same steps: one read of all of them (``ReadFromPixels``, see
    :class:`~beam_pixels.source.ReadTablesFromPixels`) and one write (``WriteToLakehouse``,
    :class:`~beam_pixels.sinks.committing.WriteTables`), each element carrying its table's label,
    each table with its own server, schema, poll groups, journal, dead letters and sink, committing
    on its own. So the steps do not grow with the tables. ``start_positions`` (label -> poll group ->
    position) resumes each table's numbering; with a ``round_keys`` entry a table's read takes its
    bounds and start positions from the round planned for that key when it runs
    (:class:`~beam_pixels.source.LocalRounds`). ``keep_writers_open`` (a local run's id) leaves the
    tables' writers open for the next run of the pipeline (:class:`~beam_pixels.sinks.committing.KeptWriters`);
    ``trim_in_background`` trims the journals after each commit on a thread of this process, which
    the caller waits for (:data:`~beam_pixels.journal.BACKGROUND_TRIMS`). ``subtasks`` (a Flink
    job's) gives each poll group a subtask of its own while there are enough
    (:mod:`~beam_pixels.flink.placement`).
    """
    journals = {label: c.journal_location(local_run) for label, c in tables.items()}
    reads = [
        source.ReadFromPixels.from_config(
            c, start_positions=(start_positions or {}).get(label), journal=journals[label],
            round_key=(round_keys or {}).get(label, ""), table_label=label, window_ms=window_ms,
        )
        for label, c in tables.items()
    ]
    read = p | "ReadFromPixels" >> source.ReadTablesFromPixels(reads, subtasks)
    dead_letters = {label: c.dead_letter_location(local_run) for label, c in tables.items()}
    _ = read.dead_letters | "WriteDeadLetters" >> WriteDeadLetters(dead_letters)
    writes = {label: sink_for(c, window_ms) for label, c in tables.items()}
    commits = read.changes | "WriteToLakehouse" >> WriteTables(writes, keep_open=keep_writers_open)
    journaled = {label: journal for label, journal in journals.items() if journal}
    if journaled:
        _ = commits | "TrimJournal" >> TrimJournal(journaled, in_background=trim_in_background)
    return commits


@dataclass
class RunSummary:
    """What a run did, over all its rounds and tables."""

    rounds: int = 0
    records: int = 0
    seconds: float = 0.0
    # Each table's last committed checkpoint, by its name in ``tables`` ("" for a single-table job).
    checkpoints: dict[str, Checkpoint] = field(default_factory=lambda: {"": Checkpoint()})

    @property
    def checkpoint(self) -> Checkpoint:
        """The last committed checkpoint of a single-table job."""
        return self.checkpoints[""]

    def describe(self) -> str:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        head = f"done: {self.records} records polled in {self.rounds} round(s), {self.seconds:.1f}s ({rate:,.0f} records/s)"
        lines = [
            f"{name + ': ' if name else ''}last committed batch {c.batch_id}, positions {c.positions or '{}'}"
            for name, c in self.checkpoints.items()
        ]
        return f"{head}; {lines[0]}" if list(self.checkpoints) == [""] else "\n  ".join([f"{head}; per table:", *lines])


class _StopOnSignal:
    """SIGINT/SIGTERM end the current round (it still commits) and then the run."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop waiting
            raise KeyboardInterrupt
        self.requested = True
        print(f"{signal.Signals(signum).name}: finishing the current round, then stopping", file=sys.stderr, flush=True)
        source.request_local_stop()

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        source.clear_local_stop()


@dataclass
class _TableProgress:
    """A table's way through a local run: records polled, time idle, whether it reached
    ``source.max.records`` (``ended``) or has been idle for ``source.stop.after.idle.ms`` (``idle``)."""

    records: int = 0
    idle_ms: float = 0.0
    ended: bool = False
    idle: bool = False


def run_local(config: PixelsConfig, pipeline_args: list[str] | None = None) -> RunSummary:
    """Run as bounded rounds on the in-process runner until a bound or a signal ends it.

    A round polls every table (one poller over all of them) for ``checkpoint.interval.ms`` and commits
    each table on its own, from the positions that table has committed. A table that reached its
    ``source.max.records`` is left out of later rounds; the run ends when every table has reached
    it or has been idle for its ``source.stop.after.idle.ms``, or on a signal.
    """
    tables = config.tables()
    writers = {name: open_table_writer(c) for name, c in tables.items()}
    summary = RunSummary(checkpoints={name: _last_checkpoint(w) for name, w in writers.items()})
    progress = {name: _TableProgress() for name in tables}
    for name, c in tables.items():
        journal = c.journal_location(local_run=True)
        table = writers[name].table_name
        _LOG.info("%s: poll journal: %s", table,
                  journal or "off (records polled but not yet committed are lost in a crash)")
        _LOG.info("%s: dead letters: %s", table, c.dead_letter_location(local_run=True) or "logged only")
        _LOG.info("resuming %s from batch %d, positions %s", table, summary.checkpoints[name].batch_id,
                  summary.checkpoints[name].positions)
    started = time.monotonic()
    with contextlib.closing(_Rounds(pipeline_args or [], writers)) as rounds:
        with _StopOnSignal() as stop:
            while True:
                active = {name: c for name, c in tables.items() if not progress[name].ended}
                # The runner runs one poll group after another: every table polls until the round's
                # end, or later until it has drained the server, then ends (so rounds do not grow with tables).
                drain_after = time.time() + config.checkpoint_interval_ms / 1000
                for name, c in active.items():
                    limit = _round_record_limit(c, progress[name].records)
                    rounds.plan(name, source.Bounds(c.stop_after_idle_ms, limit, config.checkpoint_interval_ms, drain_after),
                                summary.checkpoints[name].positions)
                round_started = time.monotonic()
                result = rounds.run(active)
                round_ms = (time.monotonic() - round_started) * 1000
                summary.rounds += 1
                counters = _SourceCounters(result)
                for name, c in active.items():
                    records = counters.of(name, "records")
                    _LOG.debug("round %d: %s polled %d records; the round took %.0f ms", summary.rounds,
                               writers[name].table_name, records, round_ms)
                    summary.records += records
                    summary.checkpoints[name] = rounds.checkpoint(name, summary.checkpoints[name])
                    _follow(progress[name], c, records, round_ms, functools.partial(counters.of, name))
                if stop.requested or all(t.ended or t.idle for t in progress.values()):
                    break
        for writer in writers.values():  # before the rounds close them; Ctrl-C interrupts the wait
            writer.finish_maintenance()
        BACKGROUND_TRIMS.wait()  # the journals' last trims (the rounds trim them in the background)
    summary.seconds = time.monotonic() - started
    return summary


class _RerunnableRunner(FnApiRunner):
    """Beam's in-process runner, keeping the last pipeline it ran in its runner API form."""

    pipeline_proto: beam_runner_api_pb2.Pipeline | None = None

    def run_via_runner_api(self, pipeline_proto, options):
        self.pipeline_proto = beam_runner_api_pb2.Pipeline()
        self.pipeline_proto.CopyFrom(pipeline_proto)
        return super().run_via_runner_api(pipeline_proto, options)


class _Rounds:
    """The rounds of a local run: one pipeline reading and writing the tables of the round, built
    once and run again each round while the same tables take part. Building a pipeline and putting
    it in the runner's form took about as long as the tables' commits, each round; what changes
    between rounds is planned before each (:class:`~beam_pixels.source.LocalRounds`). The rounds
    write and commit each table with the ``writers`` the run opened (label -> writer), and close
    them when the run ends (:class:`~beam_pixels.sinks.committing.KeptWriters`)."""

    def __init__(self, pipeline_args: list[str], writers: typing.Mapping[str, TableWriter]):
        self._run_id = uuid.uuid4().hex
        for label, writer in writers.items():
            KEPT_WRITERS.keep(self._run_id, label, writer)
        self._tables: tuple[str, ...] = ()
        self._planned: set[str] = set()
        self._runner = _RerunnableRunner()
        self._options = PipelineOptions(pipeline_args)

    def _key(self, table: str) -> str:
        return f"{self._run_id}/{table}"

    def plan(self, table: str, bounds: source.Bounds, start_positions: dict[int, int]) -> None:
        """What ``table``'s read does in the next round."""
        source.LOCAL_ROUNDS.plan(self._key(table), bounds, start_positions)
        self._planned.add(table)

    def run(self, tables: dict[str, PixelsConfig]):
        """Run a round of ``tables`` (each planned); returns the runner's result."""
        if tuple(tables) == self._tables:
            return self._runner.run_via_runner_api(self._runner.pipeline_proto, self._options)
        p = beam.Pipeline(runner=self._runner, options=self._options)
        build_pipeline(p, tables, local_run=True, round_keys={name: self._key(name) for name in tables},
                       keep_writers_open=self._run_id, trim_in_background=True)
        self._tables = tuple(tables)
        _LOG.info("rounds of %s: the pipeline is built, and run again each round while these tables take part",
                  ", ".join(name or "the table" for name in tables))
        result = p.run()
        result.wait_until_finish()
        return result

    def checkpoint(self, table: str, before: Checkpoint) -> Checkpoint:
        """``table``'s checkpoint after the last round: the one its commit read or made, or ``before``
        (its checkpoint before the round) when the round had nothing to commit for it. Not read from
        the table again: the run is its only writer (:meth:`KeptWriters.checkpoint
        <beam_pixels.sinks.committing.KeptWriters.checkpoint>`)."""
        committed = KEPT_WRITERS.checkpoint(self._run_id, table)
        return before if committed is None else committed

    def close(self) -> None:
        """Drop the run's plans and close its writers."""
        for table in self._planned:
            source.LOCAL_ROUNDS.forget(self._key(table))
        KEPT_WRITERS.close(self._run_id)


def _last_checkpoint(writer: TableWriter) -> Checkpoint:
    return writer.retrying("read the last checkpoint", writer.last_checkpoint)


def _follow(table: _TableProgress, config: PixelsConfig, records: int, round_ms: float, counter) -> None:
    """Account a round's ``records`` to ``table``: whether it reached ``source.max.records``, whether
    it is idle for ``source.stop.after.idle.ms`` now (``counter(name)``: the round's counter of the table)."""
    table.records += records
    # Idle: the server answered, with nothing. Not a round spent retrying or waiting to retry
    # an unreachable server, which may hold records it could not hand out.
    idle = records == 0 and counter("empty_polls") > 0 and counter("poll_failures") == 0
    table.idle_ms = table.idle_ms + round_ms if idle else 0.0
    every_group_idle = counter("groups_stopped_idle") >= config.parallelism
    table.ended = bool(config.max_records and table.records >= config.max_records)
    table.idle = bool(config.stop_after_idle_ms and (every_group_idle or table.idle_ms >= config.stop_after_idle_ms))


def _round_record_limit(config: PixelsConfig, records_so_far: int) -> int:
    """Records after which a round ends: what source.max.records leaves, capped by
    checkpoint.max.records (0 = no limit)."""
    limits = [config.checkpoint_max_records]
    if config.max_records:
        limits.append(config.max_records - records_so_far)
    return min((limit for limit in limits if limit), default=0)


class _SourceCounters:
    """The ``beam_pixels.source`` counters of a round's tables, read from the runner's result once.
    (The runner builds its metrics anew on each ``result.metrics()``: read for each table's counters
    in turn, that took 0.01 s a table per round.)"""

    def __init__(self, result):
        self._values: collections.Counter[tuple[str, str]] = collections.Counter()
        for c in result.metrics().query(MetricsFilter())["counters"]:
            self._values[(c.key.metric.namespace, c.key.metric.name)] += c.committed or c.attempted or 0

    def of(self, table: str, name: str) -> int:
        """The counter ``name`` of the table labelled ``table``, summed over the round's steps."""
        return self._values[(table_namespace(source.METRICS_NAMESPACE, table), name)]


def run_distributed(config: PixelsConfig, pipeline_args: list[str], *, detach: bool = False) -> None:
    """Submit one unbounded pipeline (e.g. FlinkRunner) committing every checkpoint interval.

    Without ``detach`` the run waits for the job; Ctrl-C or SIGTERM cancels it, and a job server
    the run started stops with the run, even when the run is killed (see
    :mod:`beam_pixels.flink.job_server`). With ``detach`` the run returns once the job polls, leaving it
    running on the cluster (see :func:`_detach`).
    """
    options = submission_options(pipeline_args, config.checkpoint_interval_ms)
    flink_rest = _detachable(options) if detach else None
    job_server.tie_to_this_process(options)
    p = beam.Pipeline(options=options)
    tables = config.tables()
    start_positions = {}
    for name, c in tables.items():
        with contextlib.closing(open_table_writer(c)) as writer:
            checkpoint = writer.last_checkpoint()
        start_positions[name] = checkpoint.positions
        _LOG.info("resuming %s from batch %d, positions %s", writer.table_name, checkpoint.batch_id, checkpoint.positions)
        if not c.journal_location(local_run=False):
            _LOG.warning("%s: no poll journal (source.journal.dir): records polled but not yet committed are lost "
                         "when a task fails or the job is cancelled", writer.table_name)
    # Every table's read ends by itself: one commit each at the end; else one per interval.
    bounded = all(c.stop_after_idle_ms or c.max_records for c in tables.values())
    build_pipeline(p, tables, local_run=False, start_positions=start_positions,
                   window_ms=None if bounded else config.checkpoint_interval_ms, subtasks=placement.Subtasks.of(options))
    with _InterruptOnSignal():
        result = p.run()
        if flink_rest is not None:
            try:
                _detach(flink_rest, options.view_as(GoogleCloudOptions).job_name, list(tables))
            except KeyboardInterrupt:
                print("interrupted while waiting for the job's first poll: the job was submitted detached and "
                      f"is left running; find it at {flink_rest.url}", file=sys.stderr, flush=True)
                raise
            return
        _interrupt_on_signal()  # Beam's FlinkRunner put its own SIGINT handler in place
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            print("interrupted: cancelling the job", file=sys.stderr, flush=True)
            with contextlib.suppress(Exception):  # the job may have ended meanwhile
                result.cancel()
            raise


# How long ``--detach`` waits for the job to poll; its start-up (SDK workers, first bundles) takes
# 20-60 s on a small machine.
DETACH_TIMEOUT_S = 600


class DetachError(ValueError):
    """``--detach`` with options under which the job cannot outlive the run."""


class DetachFailed(RuntimeError):
    """A detached job failed, or did not poll within :data:`DETACH_TIMEOUT_S`."""


def _detachable(options: PipelineOptions) -> FlinkRest:
    """The Flink REST API to follow a detached job through; names a unique ``--job_name`` when none
    was given (the Flink job carries it). Refuses options under which the job would die with the run."""
    environment = options.view_as(PortableOptions).environment_type
    flink_master = options.view_as(FlinkRunnerOptions).flink_master
    if flink_master in (None, "", "[local]", "[auto]"):
        raise DetachError(
            f"--detach needs --flink_master HOST:PORT (the Flink cluster's REST address), got {flink_master!r}: "
            "a job on a MiniCluster ([local]) lives in the job server of this run, and the run follows the job "
            "through the cluster's REST API")
    if (environment or "").upper() == "LOOPBACK":
        raise DetachError(
            "--detach with --environment_type LOOPBACK: the SDK workers would run inside this process and "
            "the job would die with it; use --environment_type EXTERNAL --environment_config HOST:PORT (a worker "
            "pool beside each TaskManager, see docs/flink-cluster.md)")
    naming = options.view_as(GoogleCloudOptions)
    if not naming.job_name:
        naming.job_name = f"beam-pixels-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return FlinkRest(flink_master)


def _detach(flink_rest: FlinkRest, job_name: str, table_labels: list[str]) -> None:
    """Wait until the job named ``job_name`` polls the Pixels server (any of its tables), then say
    how to find it."""
    deadline = time.monotonic() + DETACH_TIMEOUT_S
    job_id = None
    while time.monotonic() < deadline:
        jobs = flink_rest.jobs_named(job_name)
        if jobs and jobs[0]["state"] in FINISHED_STATES:
            raise DetachFailed(f"Flink job {jobs[0]['jid']} ({job_name}) is {jobs[0]['state']} before its first poll; "
                               f"see {flink_rest.job_page(jobs[0]['jid'])}")
        if jobs and jobs[0]["state"] == "RUNNING":
            if job_id is None:
                job_id = jobs[0]["jid"]
                _LOG.info("Flink job %s (%s) is running; waiting for its first poll", job_id, job_name)
            if flink_rest.source_counter(job_id, "polls", table_labels) > 0:
                print(f"detached: Flink job {job_id} ({job_name}) polls; it runs on in the cluster when this run "
                      f"exits\nFlink UI: {flink_rest.job_page(job_id)}\nto stop it: curl -X PATCH "
                      f"'{flink_rest.url}/jobs/{job_id}?mode=cancel'", flush=True)
                return
        time.sleep(1)
    raise DetachFailed(f"Flink job {job_id or job_name} did not poll within {DETACH_TIMEOUT_S} s; it was left as it is: "
                       f"{flink_rest.url}")


class _InterruptOnSignal:
    """SIGTERM and SIGINT raise KeyboardInterrupt in the main thread while the job is submitted or followed."""

    def __enter__(self):
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        _interrupt_on_signal()
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _interrupt_on_signal() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _raise_interrupt)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _without_runner(args: list[str]) -> list[str]:
    """``args`` less ``--runner X`` / ``--runner=X`` (local rounds pick their runner)."""
    kept, skip_value = [], False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg == "--runner":
            skip_value = True
        elif not arg.startswith("--runner="):
            kept.append(arg)
    return kept


def run(config: PixelsConfig, pipeline_args: list[str], *, detach: bool = False) -> RunSummary | None:
    """Run the job on the runner named in ``pipeline_args`` (in-process rounds by default);
    ``detach``: return once a job submitted to a cluster polls (see :func:`run_distributed`)."""
    runner = PipelineOptions(pipeline_args).view_as(StandardOptions).runner
    if runner in IN_PROCESS_RUNNERS:
        if detach:
            raise DetachError(f"--detach needs a cluster runner (e.g. --runner PortableRunner or FlinkRunner), got {runner}")
        return run_local(config, _without_runner(pipeline_args))
    run_distributed(config, pipeline_args, detach=detach)
    return None
