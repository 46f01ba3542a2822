"""Kill ``beam-pixels run`` with SIGKILL at random moments, restart it, and check the table.

    python benchmarks/chaos.py [--cycles 10] [--rows 20000] [--sink iceberg|paimon] [--seed 1]

A mock Pixels server runs in this process and hands out ``--rows`` INSERTs,
added gradually so that kills land while data flows. The run writes a table
without a primary key (an append-only changelog: one row per change), so every
duplicate and every loss shows. After ``--cycles`` kills, a last run drains the
server and stops when idle. It prints

    cycles=N expected=N found=N duplicates=N lost=N lost_in_flight=N

``lost_in_flight`` counts lost records whose response the killed client never
came back after: handed out by the server but possibly never received, which no
client of a protocol without acknowledgements can save. Exit status 0 when
there are no duplicates and no loss beyond those.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

from beam_pixels import app
from beam_pixels.logs import configure_logging
from beam_pixels.config import PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.testing.mock_server import MockPixelsServer

SCHEMA = "id:BIGINT,name:STRING,qty:INT"


def _feed(server: MockPixelsServer, rows: int, seconds: float, done: threading.Event) -> None:
    """Add ``rows`` rows to the server evenly over about ``seconds``."""
    steps = max(1, int(seconds / 0.05))
    per_step = max(1, rows // steps)
    for start in range(0, rows, per_step):
        server.load_rows([(i, f"row-{i}", i % 1000) for i in range(start, min(rows, start + per_step))])
        time.sleep(0.05)
    done.set()


def _properties(port: int, sink: str, workdir: str) -> dict[str, str]:
    return {
        "pixels.server.host": "127.0.0.1",
        "pixels.server.port": str(port),
        "source.schema": SCHEMA,
        "source.poll.interval.ms": "20",
        "source.stop.after.idle.ms": "2000",
        "checkpoint.interval.ms": "700",
        "sink.type": sink,
        "iceberg.catalog.warehouse": os.path.join(workdir, "warehouse", "iceberg"),
        "paimon.catalog.warehouse": os.path.join(workdir, "warehouse", "paimon"),
    }


def _wait_until_polling(server: MockPixelsServer, handed_out_before: int, run: subprocess.Popen) -> None:
    """Wait (up to 60 s) until the run has received records: Beam takes seconds to start,
    longer on a loaded machine, and a kill before the first poll tests nothing."""
    deadline = time.monotonic() + 60
    while len(server.handed_out()) == handed_out_before and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def _run_command(config_path: str) -> list[str]:
    return [sys.executable, "-m", "beam_pixels", "run", "--config", config_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=10, help="how many times to kill the run")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--sink", choices=("iceberg", "paimon"), default="iceberg")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="where the warehouse and logs go (default: a temporary directory)")
    args = parser.parse_args(argv)
    configure_logging()
    rng = random.Random(args.seed)
    workdir = args.workdir or tempfile.mkdtemp(prefix="beam-pixels-chaos-")
    log = open(os.path.join(workdir, "runs.log"), "ab")

    schema = SourceSchema.parse(SCHEMA)
    with MockPixelsServer(schema, batch_size=4).start() as server:
        properties = _properties(server.port, args.sink, workdir)
        config_path = os.path.join(workdir, "chaos.properties")
        with open(config_path, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in properties.items())
        fed = threading.Event()
        feeder = threading.Thread(target=_feed, args=(server, args.rows, args.cycles * 3.0, fed), daemon=True)
        feeder.start()

        for cycle in range(args.cycles):
            before = len(server.handed_out())
            run = subprocess.Popen(_run_command(config_path), stdout=log, stderr=log)
            _wait_until_polling(server, before, run)
            time.sleep(rng.uniform(0.1, 2.0))  # a random moment while the run polls and commits
            run.kill()
            run.wait()
            print(f"cycle {cycle + 1}: killed; {len(server.handed_out())} records handed out so far", flush=True)
        fed.wait()
        final = subprocess.run(_run_command(config_path), stdout=log, stderr=log, timeout=600)
        if final.returncode != 0:
            print(f"the last run failed with exit status {final.returncode}; see {workdir}/runs.log")
            return 1
        handed_out = collections.Counter(h.after[0] for h in server.handed_out())
        in_flight = {h.after[0] for h in server.unconfirmed()}

    with contextlib.closing(app.open_table_writer(PixelsConfig.from_properties(properties))) as writer:
        found = collections.Counter(writer.read_table().column("id").to_pylist())
    duplicates = sum(n - 1 for n in found.values() if n > 1) + sum(
        n for i, n in found.items() if i not in handed_out
    )
    lost = [i for i in handed_out if i not in found]
    lost_in_flight = sum(1 for i in lost if i in in_flight)
    print(f"runs logged in {workdir}/runs.log")
    print(
        f"cycles={args.cycles} expected={sum(handed_out.values())} found={sum(found.values())} "
        f"duplicates={duplicates} lost={len(lost)} lost_in_flight={lost_in_flight}"
    )
    return 0 if duplicates == 0 and len(lost) == lost_in_flight else 1


if __name__ == "__main__":
    sys.exit(main())
