"""Throughput of the pipeline on a Flink cluster started by ``scripts/flink-local-cluster.sh``.

    scripts/flink-local-cluster.sh start
    python benchmarks/flink_throughput.py [--rows 200000] [--sinks iceberg paimon] [--parallelism 2] \
        [--repeat 1] [--workdir DIR] [-- PIPELINE_ARG...]

For each sink: the benchmark server (prebuilt responses, its own process, see
:mod:`beam_pixels.bench.server`) holds ``--rows`` INSERTs; ``beam-pixels run`` submits the
unbounded pipeline (PortableRunner, LOOPBACK) with ``--parallelism`` poll groups and Flink
parallelism; the time runs from the first poll the server sees until the table's committed
positions account for every row (a commit per window of ``--window-ms``). The table must then
hold exactly ``--rows`` distinct keys. Job submission and start-up are not timed. First, in the
same run, the single-thread ceiling of :mod:`beam_pixels.bench.throughput` (poll, decode, write
Parquet; no framework) on the same data, since a shared machine's speed varies from run to run.
Per measurement it prints the rate, where the last rows' time went (polling, the rest of their
window, the writes and the commit, from the run's log) and the TaskManagers' GC pauses while timed
(their GC logs, see ``scripts/flink-local-cluster.sh``); then a ``RESULT`` line with each sink's
rate and its ratio to the ceiling (with ``--repeat``, the medians). The job measured second on the
cluster runs slower whichever sink it is, so to compare the sinks use ``--repeat`` (an even
number): every other round measures them in the other order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from beam_pixels import app
from beam_pixels.bench import throughput
from beam_pixels.bench.server import ServerProcess, build_chunks, save_chunks
from beam_pixels.bench.throughput import KEY, SCHEMA, SCHEMA_NAME, TABLE_NAME
from beam_pixels.bench.workdir import work_directory
from beam_pixels.config import PixelsConfig
from beam_pixels.flink import gc_log
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.committing import window_end_label

DEFAULT_STATE = Path.home() / ".cache" / "beam-pixels" / "flink-cluster"


def cluster_settings(state_dir: Path) -> dict[str, str]:
    env = state_dir / "cluster.env"
    if not env.exists():
        sys.exit(f"no cluster in {state_dir}: run scripts/flink-local-cluster.sh start first")
    return dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)


def cancel_running_jobs(rest_url: str) -> None:
    with urllib.request.urlopen(rest_url + "/jobs", timeout=10) as response:
        jobs = json.load(response)["jobs"]
    for job in jobs:
        if job["status"] == "RUNNING":
            urllib.request.urlopen(urllib.request.Request(f"{rest_url}/jobs/{job['id']}?mode=cancel", method="PATCH"))


# From submission to the first poll: the job's start-up, 20-60 s on a 2-core machine.
FIRST_POLL_S = 180


def submit(path: Path, server: ServerProcess, args, cluster: dict[str, str], log) -> subprocess.Popen:
    """``beam-pixels run`` to the cluster, once its job polls the server."""
    run = subprocess.Popen(
        [sys.executable, "-m", "beam_pixels", "run", "--config", str(path), "--set", f"pixels.server.port={server.port}",
         "--runner", "PortableRunner", "--job_endpoint", cluster["BEAM_JOB_ENDPOINT"],
         "--environment_type", "LOOPBACK", "--parallelism", str(args.parallelism), *args.pipeline_args],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + FIRST_POLL_S
    while not server.first_poll and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.2)
    if not server.first_poll:
        cancel_running_jobs(cluster["FLINK_REST_URL"])
        run.kill()
        raise RuntimeError(f"the job did not poll within {FIRST_POLL_S} s (or the run ended); see {log.name}")
    return run


def measure(sink: str, chunks_path: Path, rows: int, args, cluster: dict[str, str], workdir: Path) -> float:
    """Rows per second into ``sink``, from the first poll to the commit holding the last row."""
    properties = {
        "pixels.server.host": "127.0.0.1",
        "source.schema": SCHEMA,
        "source.primary.key": KEY,
        "source.poll.interval.ms": "10",
        "source.stop.after.idle.ms": "0",
        "source.parallelism": str(args.parallelism),
        "source.journal.dir": str(workdir / sink / "journal"),
        "checkpoint.interval.ms": str(args.window_ms),
        "sink.type": sink,
        "iceberg.catalog.warehouse": str(workdir / sink / "iceberg"),
        "paimon.catalog.warehouse": str(workdir / sink / "paimon"),
        "iceberg.table.name": "pixels.bench",
        "paimon.table.name": "pixels.bench",
    }
    path = workdir / f"{sink}.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in properties.items()), encoding="utf-8")
    with ServerProcess(chunks_path, SCHEMA_NAME, TABLE_NAME) as server:
        config = PixelsConfig.load(path, [f"pixels.server.port={server.port}"])
        log = open(workdir / f"{sink}.log", "wb")
        run = None
        try:
            run = submit(path, server, args, cluster, log)
            with contextlib.closing(app.open_table_writer(config)) as writer:
                deadline = time.monotonic() + args.timeout_s
                while sum(writer.last_checkpoint().positions.values()) < rows:
                    if run.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{sink}: the run ended or timed out; see {workdir / f'{sink}.log'}")
                    time.sleep(0.2)
                committed = time.time()
                seconds = committed - server.first_poll
                polled = server.last_records - server.first_poll
                # The last rows' window (event time = poll time, fixed windows aligned to the epoch) ends here:
                window_s = args.window_ms / 1000
                window_end = math.ceil(server.last_records / window_s) * window_s
                keys = writer.read_table().column(KEY).unique()
            if len(keys) != rows:
                raise RuntimeError(f"{sink}: the table holds {len(keys)} distinct keys, {rows} expected")
        finally:
            cancel_running_jobs(cluster["FLINK_REST_URL"])
            if run is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    run.wait(60)
                run.kill()
            log.close()
    print(f"{sink}: {rows} rows in {seconds:.1f} s = {rows / seconds:,.0f} rows/s (polled in {polled:.1f} s, "
          f"committed {committed - server.last_records:.1f} s after the last rows were polled; their window ended "
          f"{window_end - server.last_records:.1f} s after them)", flush=True)
    # LOOPBACK workers log in the run's output; the cluster's worker pool (EXTERNAL) in its own log
    external = "EXTERNAL" in " ".join(args.pipeline_args)  # --environment_type EXTERNAL, or =EXTERNAL
    worker_log = Path(args.cluster_dir) / "log" / "workerpool.log" if external else workdir / f"{sink}.log"
    print(f"{sink}: {last_window_stages(worker_log, server.last_records, window_s)}", flush=True)
    print(f"{sink}: {gc_pauses(Path(args.cluster_dir) / 'log', server.first_poll, committed)}", flush=True)
    return rows / seconds


# What the write path logs per poll group's data files and per commit (see committing._after_end).
_STAGE = re.compile(r"(?:wrote (?P<rows>\d+) changes of poll group (?P<group>\d+) in (?P<write_s>[\d.]+) s"
                    r"|committed batch .*commit_s=(?P<commit_s>[\d.]+) ).*started (?P<offset>[\d.]+) s "
                    r"(?P<side>after|before) the window's end \((?P<end>[\d:.]+)\)")


def last_window_stages(log_path: Path, last_records: float, window_s: float) -> str:
    """When the last commit's data files and the commit itself started, from the log, counted from
    the last rows' poll (the server's clock is the workers' here), and how long each took."""
    stages = [match for match in map(_STAGE.search, log_path.read_text(errors="replace").splitlines()) if match]
    commits = [match for match in stages if match["commit_s"]]
    if not commits:
        return "no commit lines in the log"
    label = commits[-1]["end"]
    first_end = math.ceil(last_records / window_s) * window_s
    ends = [first_end + k * window_s for k in range(-2, 4) if window_end_label(first_end + k * window_s) == label]
    if not ends:
        return f"the last commit's window ({label}) is not near the last rows' poll"

    def started(match) -> float:
        offset = float(match["offset"]) * (1 if match["side"] == "after" else -1)
        return ends[0] + offset - last_records

    writes = [match for match in stages if match["write_s"] and match["end"] == label]
    return ("last window (ends " + label + "): "
            + "; ".join(f"poll group {w['group']}'s {int(w['rows']):,} rows written from {started(w):+.2f} s "
                        f"for {float(w['write_s']):.2f} s" for w in writes)
            + f"; commit from {started(commits[-1]):+.2f} s for {float(commits[-1]['commit_s']):.2f} s "
              "(from the last rows' poll)")


def gc_pauses(log_dir: Path, start: float, end: float) -> str:
    """The TaskManagers' garbage-collection pauses between ``start`` and ``end`` (``time.time()``)."""
    found = gc_log.pauses(log_dir, start, end)
    if not found:
        return "no GC pause in the TaskManagers while timed"
    kinds = sorted({p.kind for p in found})
    return (f"GC pauses in the TaskManagers while timed: {len(found)} ({', '.join(kinds)}), "
            f"{sum(p.ms for p in found):.0f} ms in all, the longest {max(p.ms for p in found):.0f} ms")


def ceiling_rate(chunks_path: Path, rows: int, workdir: Path) -> float:
    """The single-thread ceiling (see :mod:`beam_pixels.bench.throughput`) on the same data, in rows/s."""
    measurement = throughput.measure_ceiling(throughput.Options(rows=rows), chunks_path, workdir)
    throughput.check_keys("ceiling", throughput.parquet_keys(workdir / "ceiling"), rows)
    print(measurement.describe(), flush=True)
    return measurement.rows_per_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--sinks", nargs="+", default=["iceberg", "paimon"], choices=["iceberg", "paimon"])
    parser.add_argument("--parallelism", type=int, default=2, help="poll groups and Flink parallelism")
    # 2 s, as issue 19's Flink recipe checkpoints: 1,000,000 rows take 5-7 s to poll here, so 5 s
    # windows left the last one's data files to be written after polling, in one go (docs/performance.md).
    parser.add_argument("--window-ms", type=int, default=2000, help="checkpoint.interval.ms: window and checkpoint")
    parser.add_argument("--timeout-s", type=float, default=900)
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each sink this many times, the sinks' order reversed every other round; "
                             "the RESULT line gives the medians")
    parser.add_argument("--workdir", type=Path,
                        help="a new or empty directory to keep the data, logs and tables in (default: a temporary one)")
    parser.add_argument("--cluster-dir", type=Path, default=Path(os.environ.get("FLINK_CLUSTER_DIR", DEFAULT_STATE)))
    parser.add_argument("pipeline_args", nargs="*", metavar="-- PIPELINE_ARG",
                        help="more arguments for beam-pixels run, e.g. -- --max_bundle_time_mills=1000")
    args = parser.parse_args(argv)
    cluster = cluster_settings(args.cluster_dir)
    cancel_running_jobs(cluster["FLINK_REST_URL"])
    with work_directory(args.workdir, "flink-bench-") as workdir:
        chunks_path = workdir / "chunks.pickle"
        save_chunks(build_chunks(SourceSchema.parse(SCHEMA, [KEY]), args.rows), chunks_path)
        ceiling = ceiling_rate(chunks_path, args.rows, workdir)
        rates: dict[str, list[float]] = {sink: [] for sink in args.sinks}
        for round_number in range(args.repeat):
            # The job measured second on the cluster ran up to a quarter slower whichever sink it was.
            order = args.sinks if round_number % 2 == 0 else args.sinks[::-1]
            directory = workdir if args.repeat == 1 else workdir / f"round-{round_number + 1}"
            directory.mkdir(exist_ok=True)
            for sink in order:
                rates[sink].append(measure(sink, chunks_path, args.rows, args, cluster, directory))
    medians = {sink: statistics.median(values) for sink, values in rates.items()}
    print(f"RESULT ceiling_rows_per_s={ceiling:.0f} "
          + " ".join(f"flink_{sink}_rows_per_s={rate:.0f} flink_{sink}_ratio={rate / ceiling:.2f}"
                     for sink, rate in medians.items()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
