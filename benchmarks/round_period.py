"""The local round period of a job of N tables in a steady stream.

Usage: python benchmarks/round_period.py [--tables 1 3 10] [--rate 2000] [--interval-ms 2000]
       [--seconds 30] [--sink iceberg]

For each table count: one mock Pixels server serving every table, fed ``--rate`` rows/s spread
over the tables; ``run_local`` of one job of those tables for ``--seconds``, then stopped. Prints
the period of each round (the time between the ends of two rounds, so pipeline construction,
the runner and the commits are all in it), their median, and the commits' own time.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time

from beam_pixels import app
from beam_pixels.config import PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.testing.mock_server import MockPixelsServer

SCHEMA = SourceSchema.parse("id:BIGINT,name:STRING,amount:DOUBLE", ["id"])
_COMMIT_S = re.compile(r"commit_s=([0-9.]+)")


class _Rounds(logging.Handler):
    """When each round ended, and each commit's own time (from the application's log lines)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.ends: list[float] = []
        self.commit_s: list[float] = []

    def emit(self, record):
        message = record.getMessage()
        if record.name == "beam_pixels.app" and message.startswith("round ") and message.endswith("ms"):
            round_number = int(message.split()[1].rstrip(":"))
            if len(self.ends) < round_number:
                self.ends.append(time.monotonic())
        elif message.startswith("committed batch"):
            found = _COMMIT_S.search(message)
            if found:
                self.commit_s.append(float(found.group(1)))


def measure(tables: int, rate: int, interval_ms: int, seconds: float, sink: str, workdir: str) -> dict:
    names = [f"t{i}" for i in range(tables)]
    server = MockPixelsServer(SCHEMA, table_name=names[0], batch_size=500)
    served = [server, *(server.serve_table(SCHEMA, table_name=n) for n in names[1:])]
    stop = threading.Event()

    def feed():
        key = 0
        tick = 0.1
        per_tick = max(1, rate * tick // tables)
        while not stop.wait(tick):
            for table in served:
                table.load_rows((key + i, f"row {key + i}", float(i)) for i in range(int(per_tick)))
            key += int(per_tick)

    properties = {
        "pixels.server.host": "127.0.0.1",
        "pixels.server.port": "0",
        "source.poll.interval.ms": "100",
        "checkpoint.interval.ms": str(interval_ms),
        "sink.type": sink,
        f"{sink}.catalog.warehouse": os.path.join(workdir, f"{sink}-{tables}"),
        "tables": ",".join(names),
        **{f"table.{n}.source.schema": str(SCHEMA) for n in names},
        **{f"table.{n}.source.primary.key": "id" for n in names},
    }
    handler = _Rounds()
    logging.getLogger().addHandler(handler)
    logging.getLogger("beam_pixels.app").setLevel(logging.DEBUG)
    logging.getLogger("beam_pixels.sinks.committing").setLevel(logging.INFO)
    server.start()
    properties["pixels.server.port"] = str(server.port)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    # As Ctrl-C would: the run finishes its round, commits and ends.
    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        summary = app.run_local(PixelsConfig.from_properties(properties))
    finally:
        timer.cancel()
        stop.set()
        feeder.join()
        server.stop()
        logging.getLogger().removeHandler(handler)
    periods = [b - a for a, b in zip(handler.ends, handler.ends[1:])]
    steady = periods[1:] or periods  # the first period carries the runner's warm-up
    commits_per_round = statistics.median(handler.commit_s) * tables if handler.commit_s else 0.0
    return {
        "tables": tables,
        "rounds": summary.rounds,
        "records": summary.records,
        "periods": periods,
        "median_s": statistics.median(steady) if steady else float("nan"),
        "commits_s": commits_per_round,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--rate", type=int, default=2000, help="rows/s over all tables")
    parser.add_argument("--interval-ms", type=int, default=2000, help="checkpoint.interval.ms")
    parser.add_argument("--seconds", type=float, default=30, help="how long each job runs")
    parser.add_argument("--sink", choices=["iceberg", "paimon"], default="iceberg")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="round-period-") as workdir:
        for tables in args.tables:
            m = measure(tables, args.rate, args.interval_ms, args.seconds, args.sink, workdir)
            print(f"tables={m['tables']} rounds={m['rounds']} records={m['records']} "
                  f"median_round_s={m['median_s']:.2f} commits_per_round_s={m['commits_s']:.2f} "
                  f"periods={' '.join(f'{p:.2f}' for p in m['periods'])} load={os.getloadavg()[0]:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
