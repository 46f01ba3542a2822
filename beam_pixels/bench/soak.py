"""Soak benchmark: one ``beam-pixels run`` against an endless CDC stream, measured commit by commit.

A :class:`~beam_pixels.bench.soak_server.SoakServerProcess` serves a preload of
``--preload`` keys, then ``--rate`` changes/s (30% inserts, 60% updates, 10%
deletes). The application runs as a user runs it, ``python -m beam_pixels run
--config <props>`` in a subprocess, into a local Iceberg or Paimon warehouse.
Each commit's progress line (its ``commit_s=``) is read from the application's
log, and the table is measured: bytes of files new since the last commit,
bytes under the table location, data and delete files, snapshots kept; every
``--read-every`` commits a full read is timed with a reader the project did not
write (DuckDB's iceberg extension; pypaimon's reader). After ``--commits``
commits of the stream (or ``--duration-s``) the generator stops, the
application drains, commits and is stopped with SIGINT, and the table is
compared row by row with the server's expected state. The live rows are then
written into a fresh table of the same schema in one commit by the sink's
reference library (pyiceberg's ``Table.append``; pypaimon's batch write, as many
buckets), for the live data size and the fresh read time (:func:`write_fresh`). Figures go to ``soak.csv`` / ``soak.json`` in the
work directory; the last line printed is::

    RESULT sink=iceberg preload=P commits=N commit_s_first=X commit_s_last=X storage_ratio=X read_ratio=X correct=yes|no storage_ratio_max=X cycle_s_first=X cycle_s_last=X

With ``--partitioned`` the stream is the clocked variant (:data:`soak_server.CLOCKED_SCHEMA`:
also ``ts``, a clock that advances :data:`CLOCK_US` per insert or update, and its ``day``) and both
tables, the soak's and the fresh one, are partitioned as :data:`PARTITIONING` says for the
sink. Every commit also counts the data and delete files it wrote (``files_written``).

``storage_ratio_max`` is the largest per-commit storage ratio from a minute into the
stream on (bytes under the table location over the live rows at that commit, counted
from the progress lines, times the bytes per row of the fresh table); ``cycle_s`` is a
commit's ``commit_s`` plus the seconds of the maintenance pass logged after it.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pixels.bench import soak_server
from beam_pixels.bench.soak_server import SoakServerProcess, StreamOptions
from beam_pixels.bench.workdir import work_directory

SINKS = ("iceberg", "paimon")
DATABASE, TABLE, FRESH_TABLE = "pixels", "soak", "soak_fresh"
COMMIT_LINE = re.compile(
    r"committed batch (?P<batch>\d+) to \S+: (?P<changes>\d+) changes \(\+(?P<inserts>\d+) ~\d+ -(?P<deletes>\d+)\)"
    r".* commit_s=(?P<commit_s>[0-9.]+)"
)
# The line each sink logs per maintenance pass, after the commit it follows (Iceberg:
# "..., 2 manifests, 0.12s" and maybe " (notes)"; Paimon: "...reclaimed 1.2 MB; 0.26s" and maybe
# "; errors: ..."). Paimon logs a pass that found nothing to do at DEBUG only: no line, ~0 s.
MAINTENANCE_LINE = re.compile(r"maintained \S+: .*[,;] (?P<seconds>[0-9.]+)s(?: \(.*\))?(?:; errors: .*)?$")
# The partitioned variant: an insert or update advances the clock a quarter second (a simulated day per
# 345,600 changes: 1M preloaded keys span ~3 days, 2,000 changes/s add a day every ~3 minutes),
# and each sink's partitioning by it, in one place.
CLOCK_US = 250_000
PARTITIONING = {
    "iceberg": {"iceberg.partition.spec": "day(ts),bucket(16,id)"},
    "paimon": {"paimon.partition.keys": "day"},
}
COLUMNS = ("id", "version", "amount", "note")
CLOCKED_COLUMNS = (*COLUMNS, "ts", "day")
# storage_ratio_max counts the commits from this long after the stream started.
STORAGE_SETTLE_S = 60.0
REPO = Path(__file__).resolve().parents[2]


@dataclasses.dataclass(frozen=True)
class Options:
    sink: str = "iceberg"
    preload: int = 1_000_000
    rate: float = 2000.0
    commits: int = 50
    duration_s: float = 0.0
    checkpoint_interval_ms: int = 5000
    read_every: int = 10
    seed: int = 0
    bucket_count: int = 128
    batch_size: int = 200
    properties: tuple[tuple[str, str], ...] = ()
    workdir: Path | None = None
    drain_timeout_s: float = 600.0
    partitioned: bool = False

    @property
    def clock_us(self) -> int:
        return CLOCK_US if self.partitioned else 0

    @property
    def columns(self) -> tuple[str, ...]:
        return CLOCKED_COLUMNS if self.partitioned else COLUMNS


@dataclasses.dataclass
class CommitFigures:
    """One commit of the stream, as measured right after its progress line."""

    commit: int
    batch_id: int
    elapsed_s: float
    changes: int
    commit_s: float
    bytes_written: int
    table_bytes: int
    data_files: int
    delete_files: int
    snapshots: int
    metadata_files: int = 0
    metadata_bytes: int = 0
    cycle_s: float = 0.0
    pending: int = 0
    read_s: float | None = None
    rows_read: int | None = None
    phase: str = "stream"
    live_rows: int = 0  # rows of the table after this commit: inserts less deletes committed so far
    maint_s: float = 0.0  # the maintenance pass that followed this commit (0: none logged)
    storage_ratio: float | None = None  # table_bytes / live bytes (live_rows x bytes per fresh row)
    files_written: int = 0  # data and delete files new since the previous commit


def maintenance_seconds(line: str) -> float | None:
    """The seconds of a maintenance pass line of either sink, None for any other line."""
    match = MAINTENANCE_LINE.search(line)
    return float(match.group("seconds")) if match else None


def set_storage_ratios(commits: list[CommitFigures], bytes_per_row: float) -> None:
    """Each commit's bytes under the table over its live rows' bytes, estimated as its live
    rows times ``bytes_per_row`` (of the same rows freshly written)."""
    for c in commits:
        c.storage_ratio = c.table_bytes / (c.live_rows * bytes_per_row) if c.live_rows and bytes_per_row else None


def storage_ratio_max(commits: list[CommitFigures], stream_started_s: float, settle_s: float = STORAGE_SETTLE_S) -> float:
    """The largest per-commit storage ratio of the commits ``settle_s`` or more after the
    stream started (NaN if none)."""
    ratios = [c.storage_ratio for c in commits
              if c.elapsed_s >= stream_started_s + settle_s and c.storage_ratio is not None]
    return max(ratios) if ratios else float("nan")


def first_last(values: list[float], share: float = 0.1) -> tuple[float, float]:
    """Medians of the first and the last ``share`` of ``values`` (at least one value each)."""
    if not values:
        return float("nan"), float("nan")
    n = max(1, int(round(len(values) * share)))
    return statistics.median(values[:n]), statistics.median(values[-n:])


def result_line(sink: str, preload: int, commits: list[CommitFigures], storage_ratio: float, read_ratio: float,
                correct: bool, ratio_max: float = float("nan")) -> str:
    """The last line: ``commits`` are the stream's; ``ratio_max`` is :func:`storage_ratio_max`;
    cycle = commit_s + maint_s."""
    first, last = first_last([c.commit_s for c in commits])
    cycle_first, cycle_last = first_last([c.commit_s + c.maint_s for c in commits])
    return (
        f"RESULT sink={sink} preload={preload} commits={len(commits)} commit_s_first={first:.3f} "
        f"commit_s_last={last:.3f} storage_ratio={storage_ratio:.2f} read_ratio={read_ratio:.2f} "
        f"correct={'yes' if correct else 'no'} storage_ratio_max={ratio_max:.2f} "
        f"cycle_s_first={cycle_first:.3f} cycle_s_last={cycle_last:.3f}"
    )


# --- the tables ----------------------------------------------------------------


def _local_path(location: str) -> Path:
    return Path(location[len("file://"):] if location.startswith("file://") else location)


def walk_sizes(root: Path) -> dict[str, int]:
    """Every file under ``root`` and its size (files vanishing meanwhile are skipped)."""
    sizes = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            try:
                sizes[path] = os.stat(path).st_size
            except FileNotFoundError:
                pass
    return sizes


class SinkTable:
    """Read-only views of one table of a sink, with readers the project did not write."""

    def __init__(self, sink: str, warehouse: Path, table: str, columns: tuple[str, ...] = COLUMNS):
        self.sink = sink
        self.warehouse = warehouse
        self.table = table
        self.columns = columns

    # catalog / table access, opened fresh each time (the application commits meanwhile)
    def _catalog(self):
        if self.sink == "iceberg":
            from pyiceberg.catalog import load_catalog

            return load_catalog(
                "pixels", type="sql", uri=f"sqlite:///{self.warehouse / 'catalog.db'}", warehouse=f"file://{self.warehouse}"
            )
        from pypaimon import CatalogFactory

        return CatalogFactory.create({"warehouse": f"file://{self.warehouse}"})

    def _iceberg(self):
        return self._catalog().load_table((DATABASE, self.table))

    def _paimon(self):
        return self._catalog().get_table(f"{DATABASE}.{self.table}")

    def location(self) -> Path:
        if self.sink == "iceberg":
            return _local_path(self._iceberg().location())
        return self.warehouse / f"{DATABASE}.db" / self.table

    def is_metadata(self, path: str) -> bool:
        """Whether a file under the table location is metadata (Iceberg: ``metadata/``;
        Paimon: snapshots, manifests, schemas), not data or deletes."""
        parts = Path(path).parts
        names = ("metadata",) if self.sink == "iceberg" else ("snapshot", "manifest", "schema")
        return any(name in parts for name in names)

    def files(self) -> dict:
        """Data files, delete files and snapshots kept in the current table state."""
        if self.sink == "iceberg":
            table = self._iceberg()
            snapshot = table.current_snapshot()
            summary = snapshot.summary.additional_properties if snapshot and snapshot.summary else {}
            return {
                "data_files": int(summary.get("total-data-files", 0)),
                "delete_files": int(summary.get("total-delete-files", 0)),
                "snapshots": len(table.metadata.snapshots),
            }
        table = self._paimon()
        splits = table.new_read_builder().new_scan().plan().splits()
        location = self.location()
        snapshots = len(list((location / "snapshot").glob("snapshot-*")))
        index = location / "index"
        return {
            "data_files": sum(len(split.files) for split in splits),
            "delete_files": len(list(index.iterdir())) if index.is_dir() else 0,
            "snapshots": snapshots,
        }

    def read(self) -> pa.Table:
        """The whole table (its soak columns) with the outside reader."""
        if self.sink == "iceberg":
            from beam_pixels.testing.duckdb_reader import read_iceberg

            return read_iceberg(self._iceberg().metadata_location, ", ".join(self.columns))
        table = self._paimon()
        builder = table.new_read_builder().with_projection(list(self.columns))
        return builder.new_read().to_arrow(builder.new_scan().plan().splits())

    def timed_read(self) -> tuple[float, pa.Table]:
        started = time.monotonic()
        rows = self.read()
        return time.monotonic() - started, rows


# --- the run ---------------------------------------------------------------------


def _properties(options: Options, port: int, warehouse: Path) -> dict[str, str]:
    props = {
        "pixels.server.host": "127.0.0.1",
        "pixels.server.port": str(port),
        "schema.name": "public",
        "table.name": "orders",
        "source.schema": soak_server.CLOCKED_SCHEMA if options.partitioned else soak_server.SCHEMA,
        "source.primary.key": soak_server.KEY,
        "source.bucket.count": str(options.bucket_count),
        "source.poll.interval.ms": "100",
        "checkpoint.interval.ms": str(options.checkpoint_interval_ms),
        "sink.type": options.sink,
        "iceberg.catalog.type": "sql",
        "iceberg.catalog.uri": f"sqlite:///{warehouse / 'catalog.db'}",
        "iceberg.catalog.warehouse": str(warehouse),
        "iceberg.table.name": f"{DATABASE}.{TABLE}",
        "paimon.catalog.warehouse": str(warehouse),
        "paimon.table.name": f"{DATABASE}.{TABLE}",
    }
    if options.partitioned:
        props.update(PARTITIONING[options.sink])
    props.update(dict(options.properties))
    return props


def _write_properties(props: dict[str, str], path: Path) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))


class _LogTail:
    """New complete lines of a growing file."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.partial = b""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        return [line.decode("utf-8", "replace") for line in complete]


def _peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory (VmHWM), in MiB; NaN when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _say(text: str) -> None:
    print(text, flush=True)


def run(options: Options, workdir: Path) -> tuple[str, list[CommitFigures]]:
    """Run the soak; returns the RESULT line and the per-commit figures (stream commits)."""
    warehouse = workdir / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    stream = StreamOptions(preload=options.preload, rate=options.rate, seed=options.seed,
                           bucket_count=options.bucket_count, batch_size=options.batch_size,
                           clock_us=options.clock_us)
    table = SinkTable(options.sink, warehouse, TABLE, options.columns)
    figures: list[CommitFigures] = []
    all_commits: list[CommitFigures] = []
    started = time.monotonic()
    with SoakServerProcess(stream) as server:
        props = _properties(options, server.port, warehouse)
        config_path = workdir / "soak.properties"
        _write_properties(props, config_path)
        _say(f"soak: sink {options.sink}, preload {options.preload:,} keys, then {options.rate:,.0f} changes/s; "
             f"checkpoint.interval.ms={options.checkpoint_interval_ms}; server on 127.0.0.1:{server.port}"
             + (f"; partitioned: {', '.join(f'{k}={v}' for k, v in PARTITIONING[options.sink].items())}, "
                f"the clock {CLOCK_US / 1e6:g} s per change" if options.partitioned else ""))
        if options.properties:
            _say("soak: properties set: " + ", ".join(f"{k}={v}" for k, v in options.properties))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        out, err = open(workdir / "app.out", "wb"), open(workdir / "app.err", "wb")
        app = subprocess.Popen([sys.executable, "-m", "beam_pixels", "run", "--config", str(config_path)],
                               cwd=workdir, stdout=out, stderr=err, env=env)
        tail = _LogTail(workdir / "app.err")
        seen: dict[str, int] = {}
        stream_commits = 0
        preload_reported = False
        stream_started_at = time.monotonic() if options.preload == 0 else None
        stream_started_s = 0.0  # seconds after start, as CommitFigures.elapsed_s
        committed = 0  # changes committed so far, per the progress lines
        live_rows = 0  # inserts less deletes committed so far
        # Full reads run in their own process, so commits keep being measured meanwhile.
        reader = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        reading: tuple[CommitFigures, concurrent.futures.Future] | None = None

        def measure(match: re.Match, phase: str) -> CommitFigures:
            nonlocal live_rows
            now = time.monotonic() - started  # when the driver saw the progress line
            live_rows += int(match.group("inserts")) - int(match.group("deletes"))
            location = table.location()
            sizes = walk_sizes(location)
            new = [path for path, size in sizes.items() if seen.get(path) != size]
            written = sum(sizes[path] for path in new)
            seen.clear()
            seen.update(sizes)
            files = table.files()
            metadata = [size for path, size in sizes.items() if table.is_metadata(path)]
            files.update(metadata_files=len(metadata), metadata_bytes=sum(metadata))
            files["cycle_s"] = now - all_commits[-1].elapsed_s if all_commits else 0.0
            figure = CommitFigures(
                commit=len(all_commits) + 1, batch_id=int(match.group("batch")), elapsed_s=now,
                changes=int(match.group("changes")), commit_s=float(match.group("commit_s")), bytes_written=written,
                table_bytes=sum(sizes.values()), pending=server.pending, phase=phase, live_rows=live_rows,
                files_written=sum(not table.is_metadata(path) for path in new), **files,
            )
            all_commits.append(figure)
            return figure

        try:
            while True:
                if app.poll() is not None:
                    raise RuntimeError(f"the application exited with code {app.returncode}; see {workdir / 'app.err'}")
                for line in tail.lines():
                    match = COMMIT_LINE.search(line)
                    if not match:
                        if (seconds := maintenance_seconds(line)) is not None and all_commits:
                            all_commits[-1].maint_s += seconds
                        continue
                    if committed < options.preload:
                        # up to the commit that completes the preload (it may hold the stream's first changes)
                        figure = measure(match, "preload")
                        committed += figure.changes
                        if committed >= options.preload:
                            stream_started_at = time.monotonic()
                            stream_started_s = figure.elapsed_s
                            _say(_describe(figure))
                            _say(f"soak: preload of {options.preload:,} keys committed {figure.elapsed_s:.1f} s "
                                 f"after start, in {figure.commit} commit(s)")
                            continue
                    else:
                        figure = measure(match, "stream")
                        committed += figure.changes
                        stream_commits += 1
                        if options.read_every and stream_commits % options.read_every == 0:
                            if reading is None or reading[1].done():
                                reading = (figure, reader.submit(_timed_read, options.sink, warehouse, TABLE, options.columns))
                            else:
                                _say(f"soak: the previous full read is still running; no read at commit {figure.commit}")
                        figures.append(figure)
                    _say(_describe(figure))
                if reading is not None and reading[1].done() and reading[0].read_s is None:
                    _finish_read(*reading)
                if server.stats.preload_handed_out_at.value and not preload_reported:
                    preload_reported = True
                    _say(f"soak: preload of {options.preload:,} keys handed out {time.monotonic() - started:.1f} s "
                         f"after start; the stream of {options.rate:,.0f} changes/s begins")
                enough = stream_commits >= options.commits if options.commits else False
                if options.duration_s and stream_started_at is not None:
                    enough = enough or time.monotonic() - stream_started_at >= options.duration_s
                if enough:
                    break
                time.sleep(0.05)
            # Drain: no more changes; everything queued is handed out, then the app's
            # SIGINT finishes its round with a commit of everything it polled.
            server.stop_generating()
            deadline = time.monotonic() + options.drain_timeout_s
            while server.pending and time.monotonic() < deadline:
                if app.poll() is not None:
                    raise RuntimeError(f"the application exited with code {app.returncode}; see {workdir / 'app.err'}")
                time.sleep(0.1)
            if server.pending:
                raise RuntimeError(f"{server.pending} records still undelivered after {options.drain_timeout_s} s")
            handed_out = server.stats.handed_out.value
            peak_rss = {"application": _peak_rss_mb(app.pid), "server": _peak_rss_mb(server.pid)}
            _say(f"soak: peak RSS so far: application {peak_rss['application']:.0f} MB, "
                 f"server {peak_rss['server']:.0f} MB")
            _say(f"soak: generator stopped; all {handed_out:,} records handed out; stopping the application (SIGINT)")
            app.send_signal(signal.SIGINT)
            try:
                app.wait(options.drain_timeout_s)
            except subprocess.TimeoutExpired:
                app.kill()
                raise RuntimeError("the application did not stop after SIGINT") from None
            for line in tail.lines():
                match = COMMIT_LINE.search(line)
                if match:
                    _say(_describe(measure(match, "drain")))
                elif (seconds := maintenance_seconds(line)) is not None and all_commits:
                    all_commits[-1].maint_s += seconds
            expected = server.dump_expected(workdir / "expected.npz")
            generated = {k[len("generated_"):]: int(v) for k, v in expected.items() if k.startswith("generated_")}
            _say(f"soak: generated {generated}; {len(expected['keys']):,} live keys expected; "
                 f"{server.stats.skipped.value} changes skipped while the application lagged")
            if reading is not None and reading[0].read_s is None:
                _finish_read(*reading)
        finally:
            reader.shutdown(wait=False, cancel_futures=True)
            if app.poll() is None:
                app.kill()
                app.wait()
            out.close()
            err.close()

    _write_figures(workdir, all_commits, {"sink": options.sink, "preload": options.preload, "rate": options.rate})
    # Correctness, row by row.
    final_read_s, final_rows = table.timed_read()
    correct, why = check_rows(final_rows, expected["keys"], expected["versions"], options.clock_us)
    _say(f"soak: table check: {'correct' if correct else 'WRONG: ' + why} ({final_rows.num_rows:,} rows)")
    table_bytes = sum(walk_sizes(table.location()).values())

    # The same live rows, freshly written in one commit.
    fresh = SinkTable(options.sink, warehouse, FRESH_TABLE, options.columns)
    write_fresh(options.sink, warehouse, expected["keys"], expected["versions"], options.clock_us)
    fresh_bytes = sum(walk_sizes(fresh.location()).values())
    fresh_read_s = min(fresh.timed_read()[0] for _ in range(2))
    final_read_s = min(final_read_s, table.timed_read()[0])
    storage_ratio = table_bytes / fresh_bytes if fresh_bytes else float("nan")
    read_ratio = final_read_s / fresh_read_s if fresh_read_s else float("nan")
    _say(f"soak: table {table_bytes / 2**20:.1f} MB, read {final_read_s:.2f} s; same live rows freshly written: "
         f"{fresh_bytes / 2**20:.1f} MB, read {fresh_read_s:.2f} s")
    live_expected = len(expected["keys"])
    if all_commits and all_commits[-1].live_rows != live_expected:
        _say(f"soak: WARNING: the progress lines add up to {all_commits[-1].live_rows:,} live rows, "
             f"the server expects {live_expected:,}; per-commit storage ratios are off by that much")
    bytes_per_row = fresh_bytes / live_expected if live_expected else 0.0
    set_storage_ratios(all_commits, bytes_per_row)
    ratio_max = storage_ratio_max(all_commits, stream_started_s)
    settled = [c.storage_ratio for c in all_commits
               if c.elapsed_s >= stream_started_s + STORAGE_SETTLE_S and c.storage_ratio is not None]
    if settled:
        _say(f"soak: storage ratio per commit from {STORAGE_SETTLE_S:.0f} s into the stream: "
             f"{min(settled):.2f}-{max(settled):.2f} (median {statistics.median(settled):.2f}, {len(settled)} commits)")
    if figures:
        per_commit = [c.files_written for c in figures]
        _say(f"soak: data and delete files written per stream commit: median {statistics.median(per_commit):.0f}, "
             f"max {max(per_commit)}, {sum(per_commit):,} in {len(per_commit)} commits; at the end "
             f"{all_commits[-1].data_files} data and {all_commits[-1].delete_files} delete files live")
    cycle_first, cycle_last = first_last([c.commit_s + c.maint_s for c in figures])
    _write_figures(workdir, all_commits, {
        "sink": options.sink, "preload": options.preload, "rate": options.rate,
        "checkpoint_interval_ms": options.checkpoint_interval_ms, "properties": dict(options.properties),
        "table_bytes": table_bytes, "fresh_bytes": fresh_bytes, "final_read_s": final_read_s,
        "fresh_read_s": fresh_read_s, "correct": correct, "peak_rss_mb": peak_rss,
        "storage_ratio": storage_ratio, "read_ratio": read_ratio, "fresh_bytes_per_row": bytes_per_row,
        "stream_started_s": stream_started_s, "storage_ratio_max": ratio_max, "live_rows_expected": live_expected,
        "cycle_s_first": cycle_first, "cycle_s_last": cycle_last, "partitioned": options.partitioned,
    })
    _say(_table(figures))
    return result_line(options.sink, options.preload, figures, storage_ratio, read_ratio, correct, ratio_max), figures


def _timed_read(sink: str, warehouse: Path, table: str, columns: tuple[str, ...]) -> tuple[float, int]:
    """A full read in a reader process: seconds and rows (the reader's imports not timed)."""
    if sink == "iceberg":
        import pyiceberg.catalog.sql  # noqa: F401

        from beam_pixels.testing.duckdb_reader import connect

        connect().close()
    else:
        import pypaimon  # noqa: F401
    seconds, rows = SinkTable(sink, warehouse, table, columns).timed_read()
    return seconds, rows.num_rows


def _finish_read(figure: CommitFigures, future: concurrent.futures.Future) -> None:
    figure.read_s, figure.rows_read = future.result()
    _say(f"soak: full read after commit {figure.commit}: {figure.read_s:.2f} s, {figure.rows_read:,} rows")


def check_rows(rows: pa.Table, keys: np.ndarray, versions: np.ndarray, clock_us: int = 0) -> tuple[bool, str]:
    """Whether ``rows`` are exactly the live rows of ``keys`` at ``versions`` (and, clocked
    with ``clock_us``, their ``ts`` and ``day``)."""
    if rows.num_rows != len(keys):
        return False, f"{rows.num_rows} rows, expected {len(keys)}"
    rows = rows.sort_by("id")
    ids = rows.column("id").to_numpy()
    if not np.array_equal(ids, keys):
        return False, f"keys differ, first at index {int(np.flatnonzero(ids != keys)[0])}"
    got_versions = rows.column("version").to_numpy()
    if not np.array_equal(got_versions, versions):
        i = int(np.flatnonzero(got_versions != versions)[0])
        return False, f"key {keys[i]} has version {got_versions[i]}, expected {versions[i]}"
    _, _, amount, note = soak_server.row_values(keys, versions)
    if not np.array_equal(rows.column("amount").to_numpy(), amount):
        return False, "amounts differ"
    notes = rows.column("note").combine_chunks().cast(pa.string())
    if rows.column("note").null_count or not pc.all(pc.equal(notes, notes_as_arrow(note))).as_py():
        return False, "notes differ"
    if clock_us:
        ts, day = clock_arrays(versions, clock_us)
        if not rows.column("ts").cast(ts.type).equals(pa.chunked_array([ts])):
            return False, "ts differ"
        if not rows.column("day").cast(day.type).equals(pa.chunked_array([day])):
            return False, "days differ"
    return True, ""


def clock_arrays(versions: np.ndarray, clock_us: int) -> list[pa.Array]:
    """The clocked variant's ``ts`` and ``day`` of each version, as Arrow arrays."""
    ts, day = soak_server.clock_values(versions, clock_us)
    return [pa.array(ts).cast(pa.timestamp("us")), pa.array(day).cast(pa.date32())]


def notes_as_arrow(note: np.ndarray) -> pa.Array:
    """``note`` bytes of :func:`soak_server.row_values` as an Arrow string array (no Python objects)."""
    n, width = note.shape
    offsets = (np.arange(n + 1, dtype=np.int64) * width)
    data = np.ascontiguousarray(note).ravel()
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data)).cast(pa.string())


def write_fresh(sink: str, warehouse: Path, keys: np.ndarray, versions: np.ndarray, clock_us: int = 0) -> None:
    """The live rows, sorted by key, written by the sink's reference library in one commit
    into a new table ``FRESH_TABLE`` of the same warehouse, with the soak table's schema and
    partitioning (``clock_us``: the clocked variant's ``ts`` and ``day`` too) and otherwise
    the library's defaults: pyiceberg's ``Table.append`` (Iceberg), pypaimon's
    batch write into a primary-key table of as many buckets and the same partition keys (Paimon). The project's writer
    takes no part, so the storage and read baselines are what a user gets without it."""
    source = SinkTable(sink, warehouse, TABLE)
    ids, vs, amount, note = soak_server.row_values(keys, versions)
    columns = {"id": pa.array(ids), "version": pa.array(vs), "amount": pa.array(amount), "note": notes_as_arrow(note)}
    if clock_us:
        columns["ts"], columns["day"] = clock_arrays(vs, clock_us)
    if sink == "iceberg":
        from pyiceberg.io.pyarrow import schema_to_pyarrow

        soaked = source._iceberg()
        schema = soaked.schema()
        catalog = source._catalog()
        fresh = catalog.create_table((DATABASE, FRESH_TABLE), schema=schema, partition_spec=soaked.spec())
        arrow_schema = schema_to_pyarrow(schema, include_field_ids=False)
        fresh.append(pa.Table.from_arrays([columns[f.name].cast(f.type) for f in arrow_schema], schema=arrow_schema))
        return
    from pypaimon import Schema

    from beam_pixels.sinks.paimon.writer import ROW_KIND_COLUMN

    table = source._paimon()
    columns[ROW_KIND_COLUMN] = pa.repeat(pa.scalar("+I"), len(ids))
    catalog = source._catalog()
    catalog.create_table(
        f"{DATABASE}.{FRESH_TABLE}",
        Schema(table.table_schema.fields, partition_keys=table.table_schema.partition_keys,
               primary_keys=table.table_schema.primary_keys, options={"bucket": str(table.options.bucket())}),
        False,
    )
    fresh = catalog.get_table(f"{DATABASE}.{FRESH_TABLE}")
    names = [f.name for f in fresh.table_schema.fields]
    builder = fresh.new_batch_write_builder()
    write, commit = builder.new_write(), builder.new_commit()
    try:
        write.write_arrow(pa.table({name: columns[name] for name in names}))
        commit.commit(write.prepare_commit())
    finally:
        write.close()
        commit.close()


# --- output ------------------------------------------------------------------------


def _describe(f: CommitFigures) -> str:
    read = f" read {f.read_s:.2f}s ({f.rows_read:,} rows)" if f.read_s is not None else ""
    return (f"commit {f.commit} ({f.phase}) batch {f.batch_id}: {f.changes} changes, commit_s={f.commit_s:.3f}, "
            f"{f.cycle_s:.1f} s after the previous one, "
            f"wrote {f.bytes_written / 2**20:.2f} MB in {f.files_written} files, table {f.table_bytes / 2**20:.1f} MB, "
            f"{f.data_files} data / {f.delete_files} delete files, {f.snapshots} snapshots, "
            f"{f.metadata_files} metadata files ({f.metadata_bytes / 2**20:.1f} MB), "
            f"{f.pending:,} queued at the server{read}")


def _table(figures: list[CommitFigures]) -> str:
    header = f"{'commit':>6} {'t_s':>7} {'changes':>7} {'commit_s':>8} {'maint_s':>7} {'wrote_MB':>8} {'table_MB':>8} " \
             f"{'ratio':>5} {'data':>5} {'dels':>5} {'snaps':>5} {'meta_MB':>7} {'read_s':>6}"
    step = max(1, len(figures) // 20)
    rows = [header]
    for i, f in enumerate(figures):
        if i % step == 0 or i == len(figures) - 1 or f.read_s is not None:
            rows.append(
                f"{i + 1:>6} {f.elapsed_s:>7.1f} {f.changes:>7} {f.commit_s:>8.3f} {f.maint_s:>7.3f} "
                f"{f.bytes_written / 2**20:>8.2f} {f.table_bytes / 2**20:>8.1f} "
                f"{'' if f.storage_ratio is None else format(f.storage_ratio, '.2f'):>5} "
                f"{f.data_files:>5} {f.delete_files:>5} {f.snapshots:>5} "
                f"{f.metadata_bytes / 2**20:>7.2f} "
                f"{'' if f.read_s is None else format(f.read_s, '.2f'):>6}"
            )
    return "\n".join(rows)


def _write_figures(workdir: Path, commits: list[CommitFigures], summary: dict) -> None:
    rows = [dataclasses.asdict(c) for c in commits]
    with open(workdir / "soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(CommitFigures)])
        writer.writeheader()
        writer.writerows(rows)
    (workdir / "soak.json").write_text(json.dumps({"summary": summary, "commits": rows}, indent=1))


def property_item(item: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a ``--property`` argument, as a pair."""
    key, sep, value = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{item!r}: expected KEY=VALUE")
    return key.strip(), value.strip()


def soak_parser(prog: str, defaults, rate_help: str) -> argparse.ArgumentParser:
    """The arguments both soaks (local and Flink) take, with ``defaults`` (their Options())."""
    d = defaults
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--sink", choices=SINKS, default=d.sink)
    parser.add_argument("--preload", type=int, default=d.preload, help="keys inserted before the stream (default %(default)s)")
    parser.add_argument("--rate", type=float, default=d.rate, help=f"{rate_help} (default %(default)s)")
    parser.add_argument("--checkpoint-interval-ms", type=int, default=d.checkpoint_interval_ms)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--bucket-count", type=int, default=d.bucket_count)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="records per bucket per poll")
    parser.add_argument("--property", dest="properties", action="append", default=[], type=property_item, metavar="KEY=VALUE",
                        help="set an application property, e.g. iceberg.write.mode=merge-on-read (repeatable)")
    parser.add_argument("--workdir", type=Path, help="a new or empty directory to keep everything in (default: a temporary one, removed)")
    parser.add_argument("--drain-timeout-s", type=float, default=d.drain_timeout_s)
    return parser


def run_and_print(options, run_soak, prefix: str) -> int:
    """Run a soak in its work directory and print its RESULT line; 1 with the reason on failure."""
    try:
        with work_directory(options.workdir, prefix) as workdir:
            line, _ = run_soak(options, workdir)
    except RuntimeError as e:  # WorkdirNotEmpty among them
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        return 1
    print(line, flush=True)
    return 0


def _parse_args(argv: list[str] | None) -> Options:
    d = Options()
    parser = soak_parser("beam-pixels soak", d, "changes per second after the preload")
    parser.add_argument("--commits", type=int, default=d.commits, help="stop after this many stream commits (default %(default)s; 0 = no limit)")
    parser.add_argument("--duration-s", type=float, default=d.duration_s, help="or after this many seconds of stream (0 = no limit)")
    parser.add_argument("--read-every", type=int, default=d.read_every, help="time a full read every K commits (0 = never)")
    parser.add_argument("--partitioned", action="store_true",
                        help="the partitioned variant: rows carry a moving clock (ts, day) and the tables are "
                             "partitioned by it (Iceberg: day(ts),bucket(16,id); Paimon: partition keys day)")
    args = parser.parse_args(argv)
    if not args.commits and not args.duration_s:
        parser.error("give --commits or --duration-s")
    return Options(**dict(vars(args), properties=tuple(args.properties)))


def main(argv: list[str] | None = None) -> int:
    return run_and_print(_parse_args(argv), run, "beam-pixels-soak-")
