"""Pixels -> Iceberg / Paimon as a plain Beam pipeline file: copy it and change what you need.

    python pipelines/pixels_to_lakehouse.py --config pipelines/pixels-client.properties \
        [--set key=value ...] [Beam pipeline options, e.g. --runner FlinkRunner --flink_master host:8081]

It is the pipeline ``beam-pixels run`` runs, spelled out with the library's transforms.
"""

import argparse
import logging
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pixels.config import ConfigError, PixelsConfig
from beam_pixels.sinks.iceberg import WriteToIceberg
from beam_pixels.sinks.paimon import WriteToPaimon
from beam_pixels.source import ReadFromPixels


def build(p: beam.Pipeline, config: PixelsConfig, window_ms):
    """Read the change stream, log dead letters, commit to the configured table."""
    read = p | "ReadFromPixels" >> ReadFromPixels.from_config(config)
    _ = read.dead_letters | "LogDeadLetters" >> beam.Map(lambda d: logging.error("dead letter: %s", d.reason))
    sink = WriteToPaimon if config.sink_type == "paimon" else WriteToIceberg
    commits = read.changes | "Write" >> sink.from_config(config, window_ms=window_ms)
    _ = commits | "Progress" >> beam.Map(lambda result: print(result.summary(), flush=True))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="pixels-client.properties")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args, beam_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = PixelsConfig.load(args.config, args.overrides)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    # A bounded read (stop.after.idle.ms / max.records) commits once at its end;
    # an unbounded one commits once per checkpoint interval.
    bounded = config.stop_after_idle_ms or config.max_records
    options = PipelineOptions(beam_args, streaming=not bounded)
    with beam.Pipeline(options=options) as p:
        build(p, config, window_ms=None if bounded else config.checkpoint_interval_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
