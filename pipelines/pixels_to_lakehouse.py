"""Pixels -> Iceberg / Paimon as a plain Beam pipeline file: copy it and change what you need.

    python pipelines/pixels_to_lakehouse.py --config pipelines/pixels-client.properties \
        [--set key=value ...] [Beam pipeline options, e.g. --runner FlinkRunner --flink_master host:8081]

It is the pipeline ``beam-pixels run`` runs, spelled out with the library's
transforms, in one pass: with source.stop.after.idle.ms or source.max.records
set it ends by itself and commits once; otherwise it streams and commits once
per checkpoint.interval.ms (for runners such as Flink). ``beam-pixels run``
adds continuous local operation as a sequence of such bounded rounds.
"""

import argparse
import contextlib
import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from beam_pixels.flink import job_server, placement
from beam_pixels.flink.options import submission_options
from beam_pixels.app import IN_PROCESS_RUNNERS, open_table_writer
from beam_pixels.logs import configure_logging
from beam_pixels.config import ConfigError, PixelsConfig
from beam_pixels.dead_letters import WriteDeadLetters
from beam_pixels.journal import TrimJournal
from beam_pixels.sinks import sink_for
from beam_pixels.source import ReadFromPixels


def build(p: beam.Pipeline, config: PixelsConfig, *, local_run: bool, window_ms, start_positions, subtasks=None):
    """Read the change stream from where the table left off, commit it, keep dead letters."""
    journal = config.journal_location(local_run)  # responses stored before use, replayed after a crash
    # Windows close early when the server has nothing; on Flink each poll group gets a subtask of its own.
    read = p | "ReadFromPixels" >> ReadFromPixels.from_config(config, start_positions=start_positions, journal=journal,
                                                              window_ms=window_ms, subtasks=subtasks)

    # Undecodable records: written beside a local warehouse (or source.dead.letter.dir), else logged.
    _ = read.dead_letters | "WriteDeadLetters" >> WriteDeadLetters(config.dead_letter_location(local_run))

    commits = read.changes | "Write" >> sink_for(config, window_ms)
    if journal:
        _ = commits | "TrimJournal" >> TrimJournal(journal)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="pixels-client.properties")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args, beam_args = parser.parse_known_args(argv)
    configure_logging()
    try:
        config = PixelsConfig.load(args.config, args.overrides)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    if config.table_labels:
        print("configuration error: tables is set; this file runs one table: use beam-pixels run, or "
              "beam_pixels.app.build_pipeline(p, config.tables(), ...) (docs/many-tables.md)", file=sys.stderr)
        return 2

    # Resume numbering where the table's last commit left off (and replay the journal from there).
    with contextlib.closing(open_table_writer(config)) as writer:
        start_positions = writer.last_checkpoint().positions
    logging.info("resuming from positions %s", start_positions or "{} (a new table)")

    # A bounded read commits once at its end; an unbounded one once per checkpoint interval.
    bounded = bool(config.stop_after_idle_ms or config.max_records)
    # What Flink needs beside the user's options: checkpoints every interval, bundles finished at them.
    options = submission_options(beam_args, config.checkpoint_interval_ms, streaming=not bounded)
    local_run = options.view_as(StandardOptions).runner in IN_PROCESS_RUNNERS
    job_server.tie_to_this_process(options)  # a job server FlinkRunner starts ends with this process
    with beam.Pipeline(options=options) as p:
        build(
            p,
            config,
            local_run=local_run,
            window_ms=None if bounded else config.checkpoint_interval_ms,
            start_positions=start_positions,
            subtasks=None if local_run else placement.Subtasks.of(options),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
