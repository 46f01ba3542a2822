"""``beam-pixels``: the command line (``run``, ``demo``, ``mock-server``, ``bench``, ``soak``, ``maintain``).

User errors (bad properties, a bad schema, an unreachable catalog path) end with
a one-line message and exit code 2, never a traceback; so does a catalog that stayed
away longer than ``sink.catalog.retry.ms``, with exit code 3.
"""

from __future__ import annotations

import argparse
import logging
import sys

from beam_pixels.config import ConfigError, PixelsConfig
from beam_pixels.logs import configure_logging
from beam_pixels.schema import SchemaError

USER_ERROR = 2
CATALOG_AWAY = 3
INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="pixels-client.properties file (default: built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one property (repeatable; later wins)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beam-pixels",
        description="Stream Pixels sink change records into Apache Iceberg or Apache Paimon with Apache Beam.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the pipeline from properties",
        description="Run Pixels -> Iceberg/Paimon. Unknown --flags are Beam pipeline options "
        "(--runner FlinkRunner --flink_master HOST:PORT ...).",
    )
    _add_config_arguments(run)
    run.add_argument(
        "--detach", action="store_true",
        help="on a Flink cluster: return once the job polls, printing its id and Flink UI address, and leave it "
        "running (needs --flink_master HOST:PORT and SDK workers outside this process, e.g. --environment_type "
        "EXTERNAL; see docs/flink-cluster.md)",
    )

    demo = commands.add_parser("demo", help="run the embedded default: mock server -> local warehouse")
    demo.add_argument("--sink", choices=("iceberg", "paimon"), default="iceberg")
    demo.add_argument("--rows", type=int, default=2000, help="change events the mock server hands out")
    demo.add_argument("--warehouse", default="./demo-warehouse", help="local warehouse directory")
    demo.add_argument("--tables", type=int, choices=(1, 2, 3), default=1,
                      help="tables in one job: orders, then customers, then page_views (no primary key)")

    commands.add_parser(
        "bench",
        add_help=False,
        help="throughput benchmark against a framework-free ceiling (options: beam-pixels bench --help)",
    )

    commands.add_parser(
        "soak",
        add_help=False,
        help="soak benchmark: one run against an endless CDC stream, commit by commit (beam-pixels soak --help; "
        "on a local Flink cluster: beam-pixels soak --runner flink --help)",
    )

    mock = commands.add_parser(
        "mock-server", help="serve generated change records over the Pixels protocol (every table of the file)")
    _add_config_arguments(mock)
    mock.add_argument("--host", default="127.0.0.1")
    mock.add_argument("--port", type=int, help="default: pixels.server.port")
    mock.add_argument("--rows", type=int, default=1000, help="rows (keys with --cdc) to generate, per table")
    mock.add_argument("--cdc", action="store_true", help="inserts, updates, deletes and snapshots per key")
    mock.add_argument("--seed", type=int, default=0)
    mock.add_argument("--batch-size", type=int, default=200, help="records per bucket per poll")

    maintain = commands.add_parser(
        "maintain",
        help="one Iceberg table maintenance pass now: expire snapshots, delete unreachable and orphan files, compact",
    )
    _add_config_arguments(maintain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    configure_logging(args.verbose)
    if args.command == "bench":
        from beam_pixels.bench.throughput import main as bench

        if "--soak" in extra:
            from beam_pixels.bench.soak import main as soak

            return soak([a for a in extra if a != "--soak"])
        return bench(extra)
    if args.command == "soak":
        from beam_pixels.bench import flink_soak
        from beam_pixels.bench.soak import main as soak

        runner, rest = flink_soak.runner_of(extra)
        if runner not in ("local", "flink"):
            print(f"beam-pixels soak: --runner {runner!r}: expected local or flink", file=sys.stderr)
            return USER_ERROR
        return flink_soak.main(rest) if runner == "flink" else soak(rest)
    if extra and args.command != "run":
        print(f"beam-pixels {args.command}: unrecognized arguments: {' '.join(extra)}", file=sys.stderr)
        return USER_ERROR
    try:
        if args.command == "run":
            return _run(args, extra)
        if args.command == "maintain":
            return _maintain(args)
        if args.command == "demo":
            from beam_pixels.demo import run_demo

            return run_demo(args.sink, args.rows, args.warehouse, args.tables)
        return _mock_server(args)
    except (ConfigError, SchemaError) as error:
        print(f"beam-pixels: configuration error: {error}", file=sys.stderr)
        return USER_ERROR
    except KeyboardInterrupt as interrupt:
        print(f"beam-pixels {args.command}: stopped by {interrupt or 'SIGINT'}", file=sys.stderr)
        return INTERRUPTED


def _run(args, pipeline_args: list[str]) -> int:
    from beam_pixels import app

    config = PixelsConfig.load(args.config, args.overrides)
    logging.getLogger("beam_pixels").info("configuration: %s", config)
    try:
        summary = app.run(config, pipeline_args, detach=args.detach)
    except app.DetachError as error:
        print(f"beam-pixels run: {error}", file=sys.stderr)
        return USER_ERROR
    except app.DetachFailed as error:
        print(f"beam-pixels run: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        from beam_pixels.sinks.committing import CatalogUnavailable

        gave_up = CatalogUnavailable.found_in(error)
        if gave_up is None:
            raise
        print(f"beam-pixels: {gave_up}", file=sys.stderr, flush=True)
        return CATALOG_AWAY
    if summary is not None:
        print(summary.describe(), flush=True)
    return 0


def _maintain(args) -> int:
    """One maintenance pass on each Iceberg table the configuration names (``iceberg.maintenance.*``)."""
    tables = PixelsConfig.load(args.config, args.overrides).tables()
    not_iceberg = next((c for c in tables.values() if c.sink_type != "iceberg"), None)
    if not_iceberg is not None:
        print(f"beam-pixels maintain: sink.type={not_iceberg.sink_type}; maintenance passes are for iceberg tables",
              file=sys.stderr)
        return USER_ERROR
    from beam_pixels.sinks import sink_for

    for config in tables.values():
        writer = sink_for(config).writer
        writer.open()
        try:
            print(writer.maintain_now().summary(writer.table_name), flush=True)
        finally:
            writer.close()
    return 0


def _mock_server(args) -> int:
    from beam_pixels.testing.mock_server import serve

    config = PixelsConfig.load(args.config, args.overrides)
    first, *more = config.tables().values()
    serve(
        first.source_schema,
        host=args.host,
        port=args.port if args.port is not None else config.server_port,
        rows=args.rows,
        cdc=args.cdc,
        seed=args.seed,
        schema_name=first.schema_name,
        table_name=first.table_name,
        bucket_count=first.bucket_count,
        batch_size=args.batch_size,
        encoding=first.value_encoding,
        more_tables=[(c.source_schema, c.schema_name, c.table_name) for c in more],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
