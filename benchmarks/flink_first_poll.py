"""Submissions in a row to a Flink cluster started by ``scripts/flink-local-cluster.sh``: how long
each job takes from submission to its first poll.

    scripts/flink-local-cluster.sh start
    python benchmarks/flink_first_poll.py [--submissions 20] [--environment-type EXTERNAL|LOOPBACK]

Each submission is ``beam-pixels run`` (PortableRunner to the script's job server) of the
unbounded pipeline into a new Iceberg table, against a mock Pixels server on 127.0.0.1; once the
server has answered the job's first poll the job is cancelled through Flink's REST API and the
next one is submitted. A job that does not poll within ``--limit-s`` fails the run: the thread
dumps of the cluster's JVMs (``jstack``) and, when py-spy is installed, of the run and the SDK
worker processes are written beside the logs first. Prints one line per submission and a
``RESULT`` line; exits 1 when a submission did not poll in time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from flink_throughput import DEFAULT_STATE, cluster_settings  # this folder's Flink benchmark

from beam_pixels.testing import mock_data
from beam_pixels.testing.mock_server import MockPixelsServer
from beam_pixels.schema import SourceSchema

SCHEMA_SPEC = "id:BIGINT,name:STRING,price:DECIMAL(10,2),score:DOUBLE,qty:INT,ts:TIMESTAMP,flag:BOOLEAN"
SCHEMA = SourceSchema.parse(SCHEMA_SPEC, ["id"])


def rest(url: str, method: str = "GET"):
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
        return json.loads(response.read() or b"{}")


def cancel_all(rest_url: str) -> None:
    for job in rest(rest_url + "/jobs")["jobs"]:
        if job["status"] not in ("CANCELED", "FAILED", "FINISHED"):
            rest(f"{rest_url}/jobs/{job['id']}?mode=cancel", method="PATCH")
    deadline = time.monotonic() + 60
    while any(j["status"] not in ("CANCELED", "FAILED", "FINISHED") for j in rest(rest_url + "/jobs")["jobs"]):
        if time.monotonic() > deadline:
            raise RuntimeError(f"jobs not cancelled within 60 s: {rest(rest_url + '/jobs')}")
        time.sleep(0.5)


def dump_threads(cluster: dict[str, str], state_dir: Path, run: subprocess.Popen, out: Path) -> None:
    """jstack of the cluster's JVMs, py-spy of the run and of every SDK worker (when installed)."""
    out.mkdir(parents=True, exist_ok=True)
    for pid_file in state_dir.glob("*.pid"):
        if pid_file.stem in ("jobmanager", "jobserver") or pid_file.stem.startswith("taskmanager"):
            pid = pid_file.read_text().strip()
            with open(out / f"{pid_file.stem}.jstack", "w") as dump:
                subprocess.run(["jstack", pid], stdout=dump, stderr=subprocess.STDOUT, timeout=60)
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return
    workers = [p.parent.name for p in Path("/proc").glob("[0-9]*/cmdline")
               if b"SdkHarness" in p.read_bytes() or b"sdk_worker" in p.read_bytes()]  # fmt: skip
    for pid in [str(run.pid), *workers]:
        with open(out / f"python-{pid}.py-spy", "w") as dump:
            subprocess.run([py_spy, "dump", "--pid", pid], stdout=dump, stderr=subprocess.STDOUT, timeout=60)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submissions", type=int, default=20)
    parser.add_argument("--environment-type", default="EXTERNAL", choices=["EXTERNAL", "LOOPBACK"])
    parser.add_argument("--parallelism", type=int, default=2, help="poll groups and Flink parallelism")
    parser.add_argument("--limit-s", type=float, default=60, help="a job must poll within this long of its submission")
    parser.add_argument("--cluster-dir", type=Path, default=Path(os.environ.get("FLINK_CLUSTER_DIR", DEFAULT_STATE)))
    parser.add_argument("--keep", type=Path, help="keep logs and dumps here (default: a temporary directory)")
    args = parser.parse_args(argv)
    cluster = cluster_settings(args.cluster_dir)
    rest_url = cluster["FLINK_REST_URL"]
    environment = ["--environment_type", args.environment_type]
    if args.environment_type == "EXTERNAL":
        environment += ["--environment_config", cluster["BEAM_WORKER_POOL"]]
    cancel_all(rest_url)
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="flink-first-poll-"))
    workdir.mkdir(parents=True, exist_ok=True)
    server = MockPixelsServer(SCHEMA, port=0, batch_size=50).start()
    server.load_cdc(mock_data.generate_cdc(SCHEMA, n_keys=100, n_events=400, seed=1))
    seconds: list[float] = []
    try:
        for n in range(1, args.submissions + 1):
            properties = workdir / f"run{n}.properties"
            properties.write_text(
                "pixels.server.host=127.0.0.1\n"
                f"pixels.server.port={server.port}\n"
                f"source.schema={SCHEMA_SPEC}\nsource.primary.key=id\n"
                "source.poll.interval.ms=100\nsource.stop.after.idle.ms=0\n"
                f"source.parallelism={args.parallelism}\ncheckpoint.interval.ms=2000\n"
                f"source.journal.dir={workdir / f'run{n}' / 'journal'}\n"
                f"sink.type=iceberg\niceberg.catalog.warehouse={workdir / f'run{n}' / 'iceberg'}\n",
                encoding="utf-8",
            )
            polls = server.polls()
            started = time.monotonic()
            with open(workdir / f"run{n}.log", "wb") as log:
                run = subprocess.Popen(
                    [sys.executable, "-m", "beam_pixels", "run", "--config", str(properties),
                     "--runner", "PortableRunner", "--job_endpoint", cluster["BEAM_JOB_ENDPOINT"],
                     *environment, "--parallelism", str(args.parallelism)],
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
            while server.polls() == polls and time.monotonic() - started < args.limit_s and run.poll() is None:
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            polled = server.polls() > polls
            print(f"submission {n}: {'first poll after' if polled else 'NO POLL within'} {elapsed:.1f} s", flush=True)
            if not polled:
                dump_threads(cluster, args.cluster_dir, run, workdir / f"run{n}-dumps")
            cancel_all(rest_url)
            run.kill()
            run.wait()
            if not polled:
                print(f"logs and thread dumps in {workdir}", flush=True)
                return 1
            seconds.append(elapsed)
    finally:
        server.stop()
    print(f"RESULT submissions={len(seconds)} environment={args.environment_type} "
          f"first_poll_s_max={max(seconds):.1f} first_poll_s_mean={sum(seconds) / len(seconds):.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
