"""The pipeline on a real Flink: a standalone cluster (JobManager and TaskManager JVMs) and Beam's
Flink job server started by ``scripts/flink-local-cluster.sh`` once per session (one
TaskManager with four slots), ``beam-pixels
run`` submitting to it (PortableRunner, LOOPBACK SDK workers), a mock Pixels server on 127.0.0.1
whose CDC stream keeps arriving while the job runs, and real Iceberg / Paimon tables read back
while the job commits and after it.

Without Java or Maven (or when the cluster cannot be installed) the tests are skipped with the
reason; ``BEAM_PIXELS_REQUIRE_FLINK=1`` (set by ``.ci/run``) makes that a failure instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from app_helpers import (
    REPO,
    SCHEMA,
    Run,
    cdc_history,
    expected_state,
    last_checkpoint,
    load_config,
    records_per_poll_group,
    table_state,
    wait_for_commits_of,
    wait_for_uncommitted,
    write_properties,
)

from beam_pixels import mock_data
from beam_pixels.buckets import partition_buckets
from beam_pixels.mock_server import MockPixelsServer

# A Flink test submits up to SUBMISSIONS jobs and waits for their windows: beyond the suite's 300 s.
pytestmark = pytest.mark.timeout(1200)

SCRIPT = REPO / "scripts" / "flink-local-cluster.sh"
PIPELINE_FILE = REPO / "pipelines" / "pixels_to_lakehouse.py"
REQUIRE_FLINK = os.environ.get("BEAM_PIXELS_REQUIRE_FLINK") == "1"
PARALLELISM = 2
# From RUNNING to the first poll: a job's first bundles start its SDK workers, 40 s on a quiet
# machine. Under load some jobs never got there: the first stage got Beam's impulse, asked the
# SDK worker for its bundle, and neither side had work in flight afterwards (2.62 job server,
# apache-beam 2.77). Such a submission is cancelled and made again, at most SUBMISSIONS times;
# STALLS lists them (printed with -s).
FIRST_POLL_S = 150
SUBMISSIONS = 3
STALLS: list[str] = []


def _unavailable(reason: str):
    if REQUIRE_FLINK:
        pytest.fail(f"{reason} (BEAM_PIXELS_REQUIRE_FLINK=1 forbids skipping the Flink tests)")
    pytest.skip(reason)


@dataclass
class FlinkCluster:
    """The running cluster, as ``cluster.env`` describes it, and its REST API."""

    state_dir: Path
    env: dict

    def __post_init__(self):
        settings = dict(
            line.split("=", 1) for line in (self.state_dir / "cluster.env").read_text().splitlines() if "=" in line
        )
        self.rest_url = settings["FLINK_REST_URL"]
        self.job_endpoint = settings["BEAM_JOB_ENDPOINT"]
        self.flink_master = settings["FLINK_MASTER"]
        self.job_server_jar = settings["BEAM_FLINK_JOB_SERVER_JAR"]

    def script(self, *args: str) -> str:
        done = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"flink-local-cluster.sh {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def rest(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.rest_url + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")

    def running_job(self, timeout: float = 180) -> str:
        """The id of the one job RUNNING with all its tasks running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = [j["id"] for j in self.rest("/jobs")["jobs"] if j["status"] == "RUNNING"]
            if len(running) == 1:
                vertices = self.rest(f"/jobs/{running[0]}")["vertices"]
                if all(v["status"] == "RUNNING" for v in vertices):
                    return running[0]
            time.sleep(0.5)
        raise AssertionError(f"no running job within {timeout}s: {self.rest('/jobs')}")

    def cancel_all(self) -> None:
        for job in self.rest("/jobs")["jobs"]:
            if job["status"] not in ("CANCELED", "FAILED", "FINISHED"):
                self.rest(f"/jobs/{job['id']}?mode=cancel", method="PATCH")
        deadline = time.monotonic() + 60
        while any(j["status"] not in ("CANCELED", "FAILED", "FINISHED") for j in self.rest("/jobs")["jobs"]):
            assert time.monotonic() < deadline, f"jobs not cancelled: {self.rest('/jobs')}"
            time.sleep(0.5)

    def checkpoint_counts(self, job: str) -> dict:
        return self.rest(f"/jobs/{job}/checkpoints")["counts"]

    def source_metric(self, job: str, name: str) -> int:
        """A ``beam_pixels.source`` counter summed over the job's subtasks (as Flink reports it)."""
        total = 0
        for vertex in self.rest(f"/jobs/{job}")["vertices"]:
            base = f"/jobs/{job}/vertices/{vertex['id']}/metrics"
            ids = [m["id"] for m in self.rest(base) if m["id"].endswith(f".beam_pixels_source_{name}")]
            if ids:
                query = urllib.parse.quote(",".join(ids), safe="")
                total += sum(int(float(m["value"])) for m in self.rest(f"{base}?get={query}"))
        return total

    def taskmanager_pid(self, index: int) -> int:
        return int((self.state_dir / f"taskmanager-{index}.pid").read_text())


@pytest.fixture(scope="session")
def flink(tmp_path_factory):
    """A Flink cluster and job server for the session (installed on first use, then cached)."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not found: the Flink tests need Java 11/17 and Maven")
    state = tmp_path_factory.mktemp("flink-cluster")
    # One TaskManager with four slots: less memory and CPU on a small machine; the kill test
    # starts a replacement for it.
    env = dict(os.environ, FLINK_CLUSTER_DIR=str(state), FLINK_TASKMANAGERS="1", FLINK_SLOTS="4")
    started = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=1200)
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120)
        _unavailable(f"the local Flink cluster did not start:\n{started.stdout}\n{started.stderr[-3000:]}")
    cluster = FlinkCluster(state, env)
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=120)


class Feeder:
    """A mock Pixels server whose change stream keeps arriving: ``history`` loaded in chunks."""

    def __init__(self, history, *, chunk: int = 100, every_s: float = 0.5):
        self.server = MockPixelsServer(SCHEMA, port=0, batch_size=50).start()
        self._history, self._chunk, self._every_s = history, chunk, every_s
        self._loaded = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _feed(self):
        while self._loaded < len(self._history) and not self._stop.wait(self._every_s):
            self.server.load_cdc(self._history[self._loaded : self._loaded + self._chunk])
            self._loaded += self._chunk

    @property
    def arriving(self) -> bool:
        return self._thread.is_alive()

    def wait_all_loaded(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the feeder did not finish"

    def stop(self):
        self._stop.set()
        self.server.stop()


@pytest.fixture
def feeders():
    started = []

    def start(history, **kwargs) -> Feeder:
        feeder = Feeder(history, **kwargs)
        started.append(feeder)
        return feeder

    yield start
    for feeder in started:
        feeder.stop()


@pytest.fixture
def submit(flink, tmp_path):
    """Submit ``beam-pixels run`` to the cluster; at the end every job is cancelled and every run killed."""
    runs = []

    def start(properties: Path, server, *, pipeline_file: bool = False) -> tuple[Run, str]:
        """``beam-pixels run`` (or ``pipelines/pixels_to_lakehouse.py``) with the Flink options,
        once the job polls ``server``: (the run, the Flink job id). A submission that does not
        poll within :data:`FIRST_POLL_S` is cancelled and made again (see STALLS)."""
        program = [sys.executable, str(PIPELINE_FILE)] if pipeline_file else [sys.executable, "-m", "beam_pixels", "run"]
        for attempt in range(SUBMISSIONS):
            polls = server.polls()
            run = Run(
                [
                    *program, "--config", str(properties), "--set", f"pixels.server.port={server.port}",
                    "--runner", "PortableRunner", "--job_endpoint", flink.job_endpoint,
                    "--environment_type", "LOOPBACK", "--parallelism", str(PARALLELISM),
                ],
                tmp_path,
            )  # fmt: skip
            runs.append(run)
            job = flink.running_job()
            deadline = time.monotonic() + FIRST_POLL_S
            while server.polls() == polls and time.monotonic() < deadline and run.proc.poll() is None:
                time.sleep(0.5)
            if server.polls() > polls:
                return run, job
            assert run.proc.poll() is None, f"the run exited before polling:\n{run.describe()}"
            STALLS.append(job)
            print(f"job {job} did not poll within {FIRST_POLL_S}s (attempt {attempt + 1}); cancelling, resubmitting")
            flink.cancel_all()
            run.kill()
        raise AssertionError(f"{SUBMISSIONS} submissions in a row never polled: {STALLS}")

    yield start
    with contextlib.suppress(Exception):
        flink.cancel_all()
    for run in runs:
        run.kill()


def streaming_properties(tmp_path: Path, sink: str) -> Path:
    """Unbounded (no idle stop), two poll groups, 2 s windows, the journal on a shared directory."""
    return write_properties(
        tmp_path,
        sink,
        {
            "source.stop.after.idle.ms": "0",
            "source.parallelism": str(PARALLELISM),
            "source.poll.interval.ms": "100",
            "checkpoint.interval.ms": "2000",
            "source.journal.dir": str(tmp_path / "journal"),
        },
    )


def committed_snapshot(config):
    """(checkpoint, live rows by key) of one table version: read until no commit came in between."""
    while True:
        before = last_checkpoint(config)
        state = table_state(config)
        if last_checkpoint(config) == before:
            return before, state


def state_at(server, config, positions: dict[int, int]) -> dict:
    """The final state of the first ``positions[g]`` records handed out from each poll group."""
    groups = partition_buckets(list(config.buckets), config.parallelism)
    group_of = {b: g for g, buckets in enumerate(groups) for b in buckets}
    seen: dict[int, int] = {}
    events = []
    for h in server.handed_out():
        g = group_of[h.bucket]
        if seen.get(g, 0) < positions.get(g, 0):
            events.append((h.op, h.before, h.after))
        seen[g] = seen.get(g, 0) + 1
    return {k: mock_data.comparable(v) for k, v in mock_data.final_state(SCHEMA, events).items()}


def wait_until(condition, timeout: float, what: str, run: Run | None = None):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if run is not None and run.proc.poll() is not None:
            raise AssertionError(f"the run exited while waiting for {what}:\n{run.describe()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}" + (f"\n{run.describe()}" if run else ""))
        time.sleep(0.5)
    return value


def wait_all_committed(feeder: Feeder, config, run: Run, timeout: float = 120) -> None:
    """Until everything fed was handed out and the table's positions count all of it."""
    feeder.wait_all_loaded(timeout)
    wait_until(
        lambda: feeder.server.pending() == 0
        and last_checkpoint(config).positions == records_per_poll_group(config, feeder.server),
        timeout,
        "every record handed out and committed",
        run,
    )


def assert_table_is_exactly_what_was_handed_out(config, server) -> None:
    """Final state of everything handed out; positions count every record once (no loss, no
    duplicate: a record committed twice or never would move a position)."""
    assert table_state(config) == expected_state(server)
    assert last_checkpoint(config).positions == records_per_poll_group(config, server)


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_windows_commit_while_the_source_runs_and_the_table_ends_exact(tmp_path, flink, feeders, submit, sink):
    properties = streaming_properties(tmp_path, sink)
    feeder = feeders(cdc_history(3000, seed=21), chunk=100, every_s=0.5)
    config = load_config(properties, feeder.server.port)
    run, job = submit(properties, feeder.server)
    feeder.start()

    # Two commits while records still arrive, each a consistent prefix of the stream.
    first, first_state = wait_until(
        lambda: (s := committed_snapshot(config))[0].batch_id >= 1 and s, 120, "a first commit", run
    )
    assert first_state == state_at(feeder.server, config, first.positions)
    second, second_state = wait_until(
        lambda: (s := committed_snapshot(config))[0].batch_id > first.batch_id and s, 60, "a second commit", run
    )
    assert feeder.arriving, "the second window committed only after the stream stopped arriving"
    assert second_state == state_at(feeder.server, config, second.positions)
    assert sum(second.positions.values()) > sum(first.positions.values())

    wait_all_committed(feeder, config, run)
    assert_table_is_exactly_what_was_handed_out(config, feeder.server)
    assert last_checkpoint(config).batch_id >= 3

    # Two poll groups, each bucket polled by exactly one of them, over Flink parallelism 2.
    assert feeder.server.polled_bucket_sets() == {tuple(g) for g in partition_buckets(list(config.buckets), 2)}
    assert {v["parallelism"] for v in flink.rest(f"/jobs/{job}")["vertices"] if "Poll" in v["name"]} == {PARALLELISM}

    # The source's Beam metrics, through Flink's REST API (reported at the metric fetch interval).
    handed_out = len(feeder.server.handed_out())
    wait_until(lambda: flink.source_metric(job, "records") == handed_out, 60, f"records metric = {handed_out}")
    assert flink.source_metric(job, "polls") >= handed_out / 50 / PARALLELISM


@pytest.mark.parametrize("sink", ["iceberg"])
def test_a_killed_taskmanager_restores_from_its_checkpoint_with_the_table_exact(tmp_path, flink, feeders, submit, sink):
    properties = streaming_properties(tmp_path, sink)
    feeder = feeders(cdc_history(4000, seed=22), chunk=100, every_s=0.5)
    config = load_config(properties, feeder.server.port)
    run, job = submit(properties, feeder.server)
    feeder.start()
    wait_until(lambda: last_checkpoint(config).batch_id >= 1, 120, "a first commit", run)
    wait_until(lambda: flink.checkpoint_counts(job)["completed"] >= 1, 60, "a completed Flink checkpoint")

    killed = flink.taskmanager_pid(1)
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{killed}").exists(), 30, "the killed TaskManager gone")
    flink.script("start")  # a replacement TaskManager, as a supervisor would start one
    assert flink.taskmanager_pid(1) != killed
    wait_until(lambda: flink.checkpoint_counts(job)["restored"] >= 1, 120, "a restore from the checkpoint", run)
    assert feeder.arriving, "the kill came after the stream stopped arriving"

    wait_all_committed(feeder, config, run, timeout=FIRST_POLL_S + 120)
    assert_table_is_exactly_what_was_handed_out(config, feeder.server)


@pytest.mark.parametrize("sink", ["paimon"])
def test_cancel_and_resubmit_as_the_pipeline_file_resumes_from_the_tables_positions(tmp_path, flink, feeders, submit, sink):
    properties = streaming_properties(tmp_path, sink)
    feeder = feeders(cdc_history(3000, seed=23), chunk=100, every_s=0.5)
    config = load_config(properties, feeder.server.port)
    first_run, _ = submit(properties, feeder.server)
    feeder.start()
    wait_until(lambda: last_checkpoint(config).batch_id >= 2, 120, "two commits", first_run)

    flink.cancel_all()
    first_run.wait(60)
    at_cancel = last_checkpoint(config)
    # resubmitted as the pipeline file, which must run on Flink as well
    second_run, _ = submit(properties, feeder.server, pipeline_file=True)

    wait_all_committed(feeder, config, second_run, timeout=FIRST_POLL_S + 120)
    assert_table_is_exactly_what_was_handed_out(config, feeder.server)
    assert last_checkpoint(config).batch_id > at_cancel.batch_id
    assert second_run.commits()[0].batch_id == at_cancel.batch_id + 1, second_run.describe()


def _launcher_jvms(jar: str) -> set[int]:
    """Pids of the JVMs running the job server launcher jar."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if jar.encode() in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
    return found


@pytest.mark.parametrize(
    "sink, master, program",
    [("iceberg", "[local]", "pipeline file"), ("paimon", "cluster", "beam-pixels run")],
)
def test_flink_runner_starts_its_job_server_from_the_launcher_jar(tmp_path, flink, feeders, sink, master, program):
    """The README's FlinkRunner recipe: Beam starts the job server itself from the launcher jar
    the script builds (``--flink_job_server_jar``), running Flink as a MiniCluster in that JVM
    (``--flink_master [local]``) or submitting to the standalone cluster; from the pipeline file
    and from ``beam-pixels run``."""
    properties = streaming_properties(tmp_path, sink)
    feeder = feeders(cdc_history(1500, seed=24), chunk=100, every_s=0.5)
    config = load_config(properties, feeder.server.port)
    before = _launcher_jvms(flink.job_server_jar)
    run = Run(
        [
            *([sys.executable, str(PIPELINE_FILE)] if program == "pipeline file" else [sys.executable, "-m", "beam_pixels", "run"]),
            "--config", str(properties),
            "--set", f"pixels.server.port={feeder.server.port}",
            "--runner", "FlinkRunner", "--flink_version", "1.19", "--flink_job_server_jar", flink.job_server_jar,
            "--flink_master", flink.flink_master if master == "cluster" else "[local]",
            "--environment_type", "LOOPBACK", "--parallelism", str(PARALLELISM),
        ],
        tmp_path,
    )  # fmt: skip
    try:
        feeder.start()
        wait_until(lambda: last_checkpoint(config).batch_id >= 1, FIRST_POLL_S + 120, "a first commit", run)
        wait_all_committed(feeder, config, run, timeout=180)
        assert_table_is_exactly_what_was_handed_out(config, feeder.server)
    finally:
        if master == "cluster":
            flink.cancel_all()
        run.kill()
        for pid in _launcher_jvms(flink.job_server_jar) - before:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sink", ["iceberg"])
def test_what_was_handed_out_before_an_outage_is_committed_during_it(tmp_path, flink, feeders, submit, sink):
    """The Pixels server stops mid-stream: the poller's retries give way to the watermark, so
    every record handed out before the outage is committed within two windows while the server
    is still down, and the rest after it comes back on the same port."""
    window_s = 2.0  # checkpoint.interval.ms of streaming_properties
    properties = streaming_properties(tmp_path, sink)
    feeder = feeders(cdc_history(3000, seed=25), chunk=100, every_s=0.5)
    server = feeder.server
    config = load_config(properties, server.port)
    run, job = submit(properties, server)
    feeder.start()
    wait_until(lambda: last_checkpoint(config).batch_id >= 1, 120, "a first commit", run)
    wait_for_uncommitted(run, server, 100)  # mid-stream: polled in the current windows, more arriving

    server.stop(grace=1.0)  # polls in flight are answered; later ones fail
    stopped = time.monotonic()
    assert feeder.arriving, "the stream ended before the outage"
    handed_out = records_per_poll_group(config, server)
    assert sum(c.changes for c in run.commits()) < sum(handed_out.values()), "committed before the outage"
    wait_for_commits_of(run, sum(handed_out.values()), timeout=60)
    landed_s = time.monotonic() - stopped
    print(f"{sum(handed_out.values())} records handed out before the outage committed {landed_s:.2f}s into it")
    assert landed_s <= 2 * window_s, f"committed {landed_s:.1f}s into the outage:\n{run.describe()}"
    assert last_checkpoint(config).positions == handed_out
    assert table_state(config) == expected_state(server)  # exact: nothing missing, extra or stale
    wait_until(lambda: flink.source_metric(job, "poll_failures") > 0, 60, "poll_failures counted")
    assert "PollEvents" in run.output and "unreachable for" in run.output, run.describe()
    assert {j["status"] for j in flink.rest("/jobs")["jobs"] if j["id"] == job} == {"RUNNING"}

    feeder.wait_all_loaded(60)  # all of it queued while the server is down
    server.start()  # same port, queues kept
    wait_all_committed(feeder, config, run)
    assert_table_is_exactly_what_was_handed_out(config, server)
