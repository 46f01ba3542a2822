"""The application: Pixels -> ReadFromPixels -> WriteToIceberg / WriteToPaimon, from properties.

On an in-process runner (the default) the job runs as a sequence of bounded
rounds of about ``checkpoint.interval.ms``: each round resumes from the
positions the table has committed, polls, and commits once. (Beam's local
runners hold windowed output until a splittable DoFn finishes, so rounds are
how a local run commits continuously.) On a distributed runner (Flink) it
submits one unbounded pipeline that commits once per fixed window.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_pixels import source
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.config import PixelsConfig, SinkConfigurationError
from beam_pixels.dead_letters import WriteDeadLetters
from beam_pixels.journal import TrimJournal
from beam_pixels.sinks.committing import TableWriter

_LOG = logging.getLogger(__name__)

IN_PROCESS_RUNNERS = {None, "DirectRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner"}


def sink_transform(config: PixelsConfig, window_ms: int | None = None) -> beam.PTransform:
    """WriteToIceberg or WriteToPaimon, as ``sink.type`` says."""
    if config.sink_type == "paimon":
        from beam_pixels.sinks.paimon import WriteToPaimon

        return WriteToPaimon.from_config(config, window_ms=window_ms)
    from beam_pixels.sinks.iceberg import WriteToIceberg

    return WriteToIceberg.from_config(config, window_ms=window_ms)


def open_table_writer(config: PixelsConfig) -> TableWriter:
    """The configured sink's table writer, opened (the table created when missing), for the
    driver to read checkpoints and tables; the caller closes it."""
    writer = sink_transform(config).writer
    try:
        writer.retrying("open the table", writer.open)
    except OSError as error:
        raise SinkConfigurationError(
            f"{config.sink_type}.catalog.warehouse cannot be used: {error}; check the location and its permissions"
        ) from error
    return writer


def build_pipeline(
    p: beam.Pipeline,
    config: PixelsConfig,
    *,
    local_run: bool,
    start_positions: dict[int, int] | None = None,
    max_duration_ms: int = 0,
    window_ms: int | None = None,
):
    """Add the whole job to ``p``; returns the PCollection of CommitResults."""
    journal = config.journal_location(local_run)
    read = p | "ReadFromPixels" >> source.ReadFromPixels.from_config(
        config, start_positions=start_positions, max_duration_ms=max_duration_ms, journal=journal
    )
    _ = read.dead_letters | "WriteDeadLetters" >> WriteDeadLetters(config.dead_letter_location(local_run))
    commits = read.changes | "WriteToLakehouse" >> sink_transform(config, window_ms)
    if journal:
        _ = commits | "TrimJournal" >> TrimJournal(journal)
    return commits



@dataclass
class RunSummary:
    """What a run did, over all its rounds."""

    rounds: int = 0
    records: int = 0
    seconds: float = 0.0
    checkpoint: Checkpoint = field(default_factory=Checkpoint)

    def describe(self) -> str:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        return (
            f"done: {self.records} records polled in {self.rounds} round(s), {self.seconds:.1f}s "
            f"({rate:,.0f} records/s); last committed batch {self.checkpoint.batch_id}, "
            f"positions {self.checkpoint.positions or '{}'}"
        )


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


def run_local(config: PixelsConfig, pipeline_args: list[str] | None = None) -> RunSummary:
    """Run as bounded rounds on the in-process runner until a bound or a signal ends it."""
    writer = open_table_writer(config)
    summary = RunSummary(checkpoint=writer.retrying("read the last checkpoint", writer.last_checkpoint))
    journal = config.journal_location(local_run=True)
    _LOG.info("poll journal: %s", journal or "off (records polled but not yet committed are lost in a crash)")
    _LOG.info("dead letters: %s", config.dead_letter_location(local_run=True) or "logged only")
    started = time.monotonic()
    idle_ms = 0.0
    _LOG.info("resuming %s from batch %d, positions %s", writer.table_name, summary.checkpoint.batch_id, summary.checkpoint.positions)
    with _StopOnSignal() as stop:
        while True:
            p = beam.Pipeline(options=PipelineOptions(pipeline_args or [], runner="FnApiRunner"))
            build_pipeline(
                p,
                config.with_bounds(max_records=_round_record_limit(config, summary.records)),
                local_run=True,
                start_positions=summary.checkpoint.positions,
                max_duration_ms=config.checkpoint_interval_ms,
            )
            round_started = time.monotonic()
            result = p.run()
            result.wait_until_finish()
            records = _counter(result, "records")
            summary.rounds += 1
            summary.records += records
            summary.checkpoint = writer.retrying("read the last checkpoint", writer.last_checkpoint)
            idle_ms = idle_ms + (time.monotonic() - round_started) * 1000 if records == 0 else 0.0
            if stop.requested or (config.max_records and summary.records >= config.max_records):
                break
            every_group_idle = _counter(result, "groups_stopped_idle") >= config.parallelism
            if config.stop_after_idle_ms and (every_group_idle or idle_ms >= config.stop_after_idle_ms):
                break
    writer.finish_maintenance()
    writer.close()
    summary.seconds = time.monotonic() - started
    return summary


def _round_record_limit(config: PixelsConfig, records_so_far: int) -> int:
    """Records after which a round ends: what source.max.records leaves, capped by
    checkpoint.max.records (0 = no limit)."""
    limits = [config.checkpoint_max_records]
    if config.max_records:
        limits.append(config.max_records - records_so_far)
    return min((limit for limit in limits if limit), default=0)


def _counter(result, name: str) -> int:
    counters = result.metrics().query(MetricsFilter().with_namespace(source.METRICS_NAMESPACE).with_name(name))["counters"]
    return sum(c.committed or c.attempted or 0 for c in counters)


def run_distributed(config: PixelsConfig, pipeline_args: list[str]) -> None:
    """Submit one unbounded pipeline (e.g. FlinkRunner) committing every checkpoint interval."""
    options = PipelineOptions(
        pipeline_args,
        streaming=True,
        checkpointing_interval=config.checkpoint_interval_ms,
        # Flink: a bundle left open (seen with a job's first bundle) is finished at the next checkpoint.
        finish_bundle_before_checkpointing=True,
    )
    bounded = config.stop_after_idle_ms or config.max_records
    with contextlib.closing(open_table_writer(config)) as writer:
        checkpoint = writer.last_checkpoint()
    _LOG.info("resuming %s from batch %d, positions %s", writer.table_name, checkpoint.batch_id, checkpoint.positions)
    if not config.journal_location(local_run=False):
        _LOG.warning("no poll journal (source.journal.dir): records polled but not yet committed are lost "
                     "when a task fails or the job is cancelled")
    p = beam.Pipeline(options=options)
    build_pipeline(
        p,
        config,
        local_run=False,
        start_positions=checkpoint.positions,
        window_ms=None if bounded else config.checkpoint_interval_ms,
    )
    result = p.run()
    result.wait_until_finish()


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


def run(config: PixelsConfig, pipeline_args: list[str]) -> RunSummary | None:
    """Run the job on the runner named in ``pipeline_args`` (in-process rounds by default)."""
    runner = PipelineOptions(pipeline_args).view_as(StandardOptions).runner
    if runner in IN_PROCESS_RUNNERS:
        return run_local(config, _without_runner(pipeline_args))
    run_distributed(config, pipeline_args)
    return None
