"""Throughput benchmark: the pipeline into Iceberg and Paimon against a framework-free ceiling.

Three measurements on the same data (``--rows`` INSERTs of :data:`SCHEMA`, key
``id``), each against a fresh copy of it in a :class:`~beam_pixels.bench.server.ServerProcess`
and each in its own fresh (spawned) process, so its peak RSS is its own:

1. ``ceiling``: one thread, no framework: poll, ``RowCodec.decode_images``, write Parquet;
2. ``iceberg``: :func:`beam_pixels.app.run_local` into Iceberg (SQLite catalog);
3. ``paimon``: the same into Paimon (filesystem catalog);
4. with ``--tables N``, ``iceberg-N-tables`` and ``paimon-N-tables``: one job of N tables of
   ``--rows``/N rows each (one server, one pipeline, a commit per table), to compare with 2 and 3.

A measurement's time runs from the first poll the server sees to the end of
the measured process's work (the Parquet file closed, ``run_local`` returned
after its last commit). Each output is then read back and must hold exactly
``--rows`` distinct keys. The three measurements are taken ``--repeat`` times,
interleaved, and each reports its median run (shared machines vary a lot from
one run to the next); peak RSS is the highest of all runs. The last line
printed is the ``RESULT`` line.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import multiprocessing
import resource
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from beam_pixels.bench.server import ServerProcess, build_chunks, save_chunks
from beam_pixels.bench.workdir import WorkdirNotEmpty, work_directory
from beam_pixels.schema import SourceSchema

SCHEMA = "id:BIGINT, name:STRING, price:DECIMAL(10,2), qty:INT, ts:TIMESTAMP, flag:BOOLEAN"
KEY = "id"
SCHEMA_NAME, TABLE_NAME = "public", "orders"
DATABASE, SINK_TABLE = "pixels", "bench"
SINKS = ("iceberg", "paimon")


class BenchmarkError(RuntimeError):
    """A measurement failed or produced a wrong result; no figure may be reported."""


@dataclasses.dataclass(frozen=True)
class Options:
    """What to measure and how (see ``--help``)."""

    rows: int = 1_000_000
    repeat: int = 3
    batch_size: int = 200
    seed: int = 0
    checkpoint_interval_ms: int = 60_000
    poll_interval_ms: int = 10
    idle_timeout_ms: int = 10_000
    workdir: Path | None = None
    profile_dir: Path | None = None
    properties: tuple[tuple[str, str], ...] = ()
    tables: int = 1

    @property
    def schema(self) -> SourceSchema:
        return SourceSchema.parse(SCHEMA, [KEY])


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One measurement: ``rows`` in ``seconds`` with the measured process's peak RSS."""

    name: str
    rows: int
    seconds: float
    peak_rss_mb: float
    detail: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds

    def describe(self) -> str:
        extra = f"; {self.detail}" if self.detail else ""
        return (
            f"{self.name}: {self.rows} rows in {self.seconds:.2f} s = {self.rows_per_s:,.0f} rows/s, "
            f"peak RSS {self.peak_rss_mb:.0f} MB{extra}"
        )


def result_line(ceiling: Measurement, iceberg: Measurement, paimon: Measurement, *many_tables: Measurement) -> str:
    """The ``RESULT`` line: rates, pipeline/ceiling ratios, the pipelines' highest peak RSS; with
    ``many_tables`` (Iceberg's and Paimon's job of N tables) their rates and ratios to one table."""
    line = (
        f"RESULT ceiling_rows_per_s={ceiling.rows_per_s:.0f} iceberg_rows_per_s={iceberg.rows_per_s:.0f} "
        f"paimon_rows_per_s={paimon.rows_per_s:.0f} iceberg_ratio={iceberg.rows_per_s / ceiling.rows_per_s:.2f} "
        f"paimon_ratio={paimon.rows_per_s / ceiling.rows_per_s:.2f} "
        f"peak_rss_mb={max(iceberg.peak_rss_mb, paimon.peak_rss_mb, *(m.peak_rss_mb for m in many_tables)):.0f}"
    )
    for one, many in zip((iceberg, paimon), many_tables):
        name = many.name.replace("-", "_")
        line += f" {name}_rows_per_s={many.rows_per_s:.0f} {name}_ratio={many.rows_per_s / one.rows_per_s:.2f}"
    return line


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints one line per measurement, then the ``RESULT`` line."""
    options = _parse_args(argv)
    try:
        with work_directory(options.workdir, "beam-pixels-bench-") as workdir:
            measurements = run(options, workdir)
    except (BenchmarkError, WorkdirNotEmpty) as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    print(result_line(*measurements), flush=True)
    return 0


def run(options: Options, workdir: Path) -> tuple[Measurement, ...]:
    """Build the data once, then measure the ceiling, Iceberg and Paimon (and N tables of each);
    verify every output."""
    chunks = workdir / "chunks.pkl"
    started = time.monotonic()
    _in_child("build", _build_data, options, chunks)
    if options.tables > 1:
        _in_child("build", _build_tables_data, options, workdir)
    size_mb = chunks.stat().st_size / 2**20
    print(f"data: {options.rows} rows of ({SCHEMA}), {size_mb:.1f} MB of responses prebuilt in "
          f"{time.monotonic() - started:.1f} s", flush=True)
    print(f"code: {code_version()}", flush=True)
    if options.properties:
        print("pipeline properties set: " + ", ".join(f"{k}={v}" for k, v in options.properties), flush=True)
    if options.profile_dir is not None:
        options.profile_dir.mkdir(parents=True, exist_ok=True)
        print(f"profiling into {options.profile_dir}: the figures below include cProfile's overhead", flush=True)

    measurements = list(_MEASUREMENTS)
    if options.tables > 1:
        measurements += [(f"{sink}-{options.tables}-tables", _pipeline_tables, verify)
                         for sink, verify in (("iceberg", iceberg_keys), ("paimon", paimon_keys))]
    runs: dict[str, list[Measurement]] = {name: [] for name, _, _ in measurements}
    for attempt in range(1, options.repeat + 1):
        for name, target, verify in measurements:
            out = workdir / name
            _remove(out)  # the previous run's output
            if target is _pipeline_tables:
                measurement = _measure(name, target, options, _table_chunks(options, workdir), workdir)
                for table in _table_names(options):
                    check_keys(f"{name} {table}", verify(out, table), options.rows // options.tables)
            else:
                measurement = _measure(name, target, options, chunks, workdir)
                check_keys(name, verify(out), options.rows)
            suffix = f" (run {attempt} of {options.repeat})" if options.repeat > 1 else ""
            print(measurement.describe() + suffix, flush=True)
            runs[name].append(measurement)
    return tuple(median_run(runs[name]) for name, _, _ in measurements)


def median_run(measurements: list[Measurement]) -> Measurement:
    """The run of median speed (the slower middle one of an even count), with the
    highest peak RSS of all the runs."""
    ordered = sorted(measurements, key=lambda m: m.rows_per_s)
    middle = ordered[(len(ordered) - 1) // 2]
    return dataclasses.replace(middle, peak_rss_mb=max(m.peak_rss_mb for m in measurements))


def measure_ceiling(options: Options, chunks: Path, workdir: Path) -> Measurement:
    """One measurement of the ceiling on ``chunks`` (prebuilt responses of ``options.rows`` rows),
    its Parquet file in ``workdir``; e.g. for the Flink benchmark, against the same data."""
    return _measure("ceiling", _ceiling, options, chunks, workdir)


def _remove(out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.with_suffix(".parquet").unlink(missing_ok=True)


def code_version() -> str:
    """The commit of the measured ``beam_pixels`` and its uncommitted files (the tree may be shared)."""
    package = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=package, capture_output=True,
                               text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    changed = sorted(line[3:] for line in dirty if line.strip())
    return f"{head} + uncommitted: {', '.join(changed)}" if changed else head


def _parse_args(argv: list[str] | None) -> Options:
    d = Options()
    parser = argparse.ArgumentParser(prog="throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=d.rows, help="rows to move (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=d.repeat,
                        help="take each measurement this many times and report the median (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="records per bucket per poll on the server (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of the generated rows")
    parser.add_argument("--checkpoint-interval-ms", type=int, default=d.checkpoint_interval_ms,
                        help="checkpoint.interval.ms of the pipelines: a local round's length (default %(default)s)")
    parser.add_argument("--poll-interval-ms", type=int, default=d.poll_interval_ms,
                        help="source.poll.interval.ms of the pipelines (default %(default)s)")
    parser.add_argument("--idle-timeout-ms", type=int, default=d.idle_timeout_ms,
                        help="give up after this long without records (default %(default)s)")
    parser.add_argument("--workdir", type=Path,
                        help="a new or empty directory to keep the data, Parquet file and warehouses in "
                             "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--profile-dir", type=Path, help="write a cProfile dump per measurement here")
    parser.add_argument("--property", dest="properties", action="append", default=[], metavar="KEY=VALUE",
                        help="set a pipeline property, e.g. source.journal.dir=off (repeatable)")
    parser.add_argument("--tables", type=int, default=d.tables,
                        help="also measure one job of this many tables of --rows/N rows each, into Iceberg and "
                             "Paimon, against one table of --rows (default %(default)s: not measured)")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.batch_size < 1 or args.repeat < 1 or args.tables < 1:
        parser.error("--rows, --repeat, --batch-size and --tables must be at least 1")
    if args.rows % args.tables:
        parser.error(f"--rows {args.rows} is not a multiple of --tables {args.tables}")
    if any("=" not in p for p in args.properties):
        parser.error("--property takes KEY=VALUE")
    args.properties = tuple(tuple(p.split("=", 1)) for p in args.properties)
    return Options(**vars(args))


# -- running a measurement in its own process ----------------------------------------------


def _in_child(name: str, target: Callable, *args) -> Any:
    """Run ``target(*args)`` in a fresh spawned process; returns what it returned."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(target, args, send), name=f"bench-{name}")
    process.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:
        ok, value = False, "the process died without a report"
    process.join()
    if not ok or process.exitcode:
        raise BenchmarkError(f"{name} (exit code {process.exitcode}): {value}")
    return value


def _child_main(target: Callable, args: tuple, send) -> None:
    try:
        send.send((True, target(*args)))
    except BaseException:
        send.send((False, traceback.format_exc()))
        raise


def _measure(name: str, target: Callable, options: Options, chunks, workdir: Path) -> Measurement:
    """One measurement against a fresh server (``chunks``: a file, or each table's); checks the
    server handed out every row."""
    with ServerProcess(chunks, SCHEMA_NAME, TABLE_NAME) as server:
        ended, peak_rss_kb, detail = _in_child(name, _profiled, name, target, options, server.port, workdir / name)
        first_poll, handed_out = server.first_poll, server.records_handed_out
    if handed_out != options.rows:
        raise BenchmarkError(f"{name}: the server handed out {handed_out} of {options.rows} rows")
    return Measurement(name, options.rows, ended - first_poll, peak_rss_kb / 1024, detail)


def _profiled(name: str, target: Callable, options: Options, port: int, out: Path) -> tuple[float, int, str]:
    """Child body: run ``target`` (under cProfile with ``--profile-dir``); returns
    ``(end time, peak RSS in KiB, detail)``.

    A first decode of nothing beforehand keeps one-off costs out of the timing
    (pyarrow imports pandas on its first numpy conversion, about 0.35 s).
    """
    from beam_pixels.codec import RowCodec

    RowCodec(options.schema).decode_images([])
    if options.profile_dir is None:
        detail = target(name, options, port, out)
    else:
        profile = cProfile.Profile()
        detail = profile.runcall(target, name, options, port, out)
        profile.dump_stats(options.profile_dir / f"{name}.prof")
    return time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, detail


def _build_data(options: Options, path: Path) -> None:
    save_chunks(
        build_chunks(options.schema, options.rows, seed=options.seed, batch_size=options.batch_size,
                     schema_name=SCHEMA_NAME, table_name=TABLE_NAME),
        path,
    )


def _table_names(options: Options) -> list[str]:
    return [f"{TABLE_NAME}_{i}" for i in range(options.tables)]


def _table_chunks(options: Options, workdir: Path) -> dict[str, Path]:
    return {table: workdir / f"chunks-{table}.pkl" for table in _table_names(options)}


def _build_tables_data(options: Options, workdir: Path) -> None:
    """``--rows``/N rows for each of the N tables, each with rows of its own."""
    for i, (table, path) in enumerate(_table_chunks(options, workdir).items()):
        save_chunks(build_chunks(options.schema, options.rows // options.tables, seed=options.seed + i,
                                 batch_size=options.batch_size, schema_name=SCHEMA_NAME, table_name=table), path)


# -- the measured work ---------------------------------------------------------------------


def _ceiling(name: str, options: Options, port: int, out: Path) -> str:
    """Poll all buckets, decode the after-images to Arrow, append them to one Parquet file."""
    import pyarrow.parquet as pq

    from beam_pixels.client import PixelsClient
    from beam_pixels.codec import RowCodec
    from beam_pixels.protocol import sink_pb2

    codec = RowCodec(options.schema)
    buckets = list(range(128))
    received, polls, writer = 0, 0, None
    idle_since = time.monotonic()
    with PixelsClient("127.0.0.1", port) as client:
        while received < options.rows:
            payload = client.poll_raw(SCHEMA_NAME, TABLE_NAME, buckets)
            polls += 1
            if not payload:
                if (time.monotonic() - idle_since) * 1000 > options.idle_timeout_ms:
                    raise BenchmarkError(f"ceiling: no records for {options.idle_timeout_ms} ms after {received}")
                time.sleep(options.poll_interval_ms / 1000)
                continue
            records = sink_pb2.PollResponse.FromString(payload).records
            images, errors = codec.decode_images([r.after for r in records])
            if errors:
                first = next(iter(errors.values()))
                raise BenchmarkError(f"ceiling: {len(errors)} records failed to decode, the first: {first}")
            table = pa.Table.from_struct_array(images)
            if writer is None:
                writer = pq.ParquetWriter(out.with_suffix(".parquet"), table.schema)
            writer.write_table(table)
            received += len(records)
            idle_since = time.monotonic()
    writer.close()
    return f"{polls} polls"


def _pipeline(sink: str, options: Options, port: int, out: Path) -> str:
    """``run_local`` into ``sink`` until ``--rows`` records are polled, then its last commit."""
    from beam_pixels.app import run_local
    from beam_pixels.config import PixelsConfig

    summary = run_local(PixelsConfig.from_properties(_properties(sink, options, port, out)))
    if summary.records != options.rows:
        raise BenchmarkError(f"{sink}: run_local polled {summary.records} of {options.rows} records")
    return (f"{summary.rounds} round(s) of {summary.seconds / summary.rounds:.2f} s on average, last batch "
            f"{summary.checkpoint.batch_id}, run_local {summary.seconds:.2f} s")


def _pipeline_tables(name: str, options: Options, port: int, out: Path) -> str:
    """``run_local`` of one job of ``--tables`` tables into the sink ``name`` starts with."""
    from beam_pixels.app import run_local
    from beam_pixels.config import PixelsConfig

    sink = name.split("-")[0]
    properties = _properties(sink, options, port, out)
    properties["source.max.records"] = str(options.rows // options.tables)  # each table's
    properties["tables"] = ",".join(_table_names(options))
    del properties["table.name"], properties[f"{sink}.table.name"]  # each table polls and writes its own
    summary = run_local(PixelsConfig.from_properties(properties))
    if summary.records != options.rows:
        raise BenchmarkError(f"{name}: run_local polled {summary.records} of {options.rows} records")
    batches = sorted(c.batch_id for c in summary.checkpoints.values())
    return (f"{summary.rounds} round(s) of {summary.seconds / summary.rounds:.2f} s on average, last batches "
            f"{batches[0]}..{batches[-1]}, run_local {summary.seconds:.2f} s")


def _properties(sink: str, options: Options, port: int, out: Path) -> dict[str, str]:
    """The pipeline's properties: one table of :data:`SCHEMA` from the server on ``port`` into
    ``sink`` in the warehouse ``out``."""
    return {
        "pixels.server.host": "127.0.0.1",
        "pixels.server.port": str(port),
        "schema.name": SCHEMA_NAME,
        "table.name": TABLE_NAME,
        "source.schema": SCHEMA,
        "source.primary.key": KEY,
        "source.poll.interval.ms": str(options.poll_interval_ms),
        "source.max.records": str(options.rows),
        "source.stop.after.idle.ms": str(options.idle_timeout_ms),
        "checkpoint.interval.ms": str(options.checkpoint_interval_ms),
        "sink.type": sink,
        f"{sink}.catalog.warehouse": str(out),
        f"{sink}.database.name": DATABASE,
        f"{sink}.table.name": SINK_TABLE,
        **dict(options.properties),
    }


# -- verifying the outputs -----------------------------------------------------------------


def check_keys(name: str, ids: pa.ChunkedArray, rows: int) -> None:
    """Raise :class:`BenchmarkError` unless ``ids`` holds exactly ``rows`` distinct keys."""
    distinct = pc.count_distinct(ids).as_py()
    if len(ids) != rows or distinct != rows:
        raise BenchmarkError(f"{name}: the output holds {len(ids)} rows with {distinct} distinct keys, not {rows}")


def parquet_keys(out: Path) -> pa.ChunkedArray:
    """The key column of the ceiling's Parquet file."""
    import pyarrow.parquet as pq

    return pq.read_table(out.with_suffix(".parquet"), columns=[KEY]).column(KEY)


def iceberg_keys(warehouse: Path, table: str = SINK_TABLE) -> pa.ChunkedArray:
    """The key column of the Iceberg table a pipeline measurement wrote into ``warehouse``."""
    from pyiceberg.catalog import load_catalog

    catalog = load_catalog(
        "pixels", type="sql", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=f"file://{warehouse}"
    )
    return catalog.load_table((DATABASE, table)).scan(selected_fields=(KEY,)).to_arrow().column(KEY)


def paimon_keys(warehouse: Path, table: str = SINK_TABLE) -> pa.ChunkedArray:
    """The key column of the Paimon table a pipeline measurement wrote into ``warehouse``."""
    from pypaimon import CatalogFactory

    table = CatalogFactory.create({"warehouse": f"file://{warehouse}", "metastore": "filesystem"}).get_table(
        f"{DATABASE}.{table}"
    )
    builder = table.new_read_builder().with_projection([KEY])
    return builder.new_read().to_arrow(builder.new_scan().plan().splits()).column(KEY)


_MEASUREMENTS = (("ceiling", _ceiling, parquet_keys), ("iceberg", _pipeline, iceberg_keys), ("paimon", _pipeline, paimon_keys))
