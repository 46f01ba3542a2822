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
import itertools
import json
import os
import re
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
    stored_in_flight,
    table_state,
    wait_for_commits_of,
    wait_for_uncommitted,
    write_properties,
)

from beam_pixels.testing import mock_data
from beam_pixels.buckets import partition_buckets
from beam_pixels.config import PixelsConfig
from beam_pixels.decode import METRICS_NAMESPACE
from beam_pixels.flink import gc_log
from beam_pixels.flink.rest import FlinkRest
from beam_pixels.testing.mock_server import MockPixelsServer

# A Flink test waits for its jobs' start-up and windows: beyond the suite's 300 s.
pytestmark = pytest.mark.timeout(1200)

SCRIPT = REPO / "scripts" / "flink-local-cluster.sh"
PIPELINE_FILE = REPO / "pipelines" / "pixels_to_lakehouse.py"
REQUIRE_FLINK = os.environ.get("BEAM_PIXELS_REQUIRE_FLINK") == "1"
PARALLELISM = 2
# From submission to the first poll: the job starts (the job server ships its classpath to the
# TaskManager) and its first bundles start the SDK workers; 20-60 s on this 2-core machine.
FIRST_POLL_S = 180


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
        self.worker_pool = settings["BEAM_WORKER_POOL"]

    def script(self, *args: str) -> str:
        done = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"flink-local-cluster.sh {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def rest(self, path: str, method: str = "GET"):
        """One REST call; a GET the JobManager is too busy to answer in time (a loaded machine) is asked again."""
        request = urllib.request.Request(self.rest_url + path, method=method)
        for attempt in range(3):
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    return json.loads(response.read() or b"{}")
            except TimeoutError:
                if method != "GET" or attempt == 2:
                    raise

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
        return FlinkRest(self.rest_url).source_counter(job, name)

    def source_metric_per_subtask(self, job: str, name: str) -> dict[int, int]:
        """A ``beam_pixels.source`` counter of a job of one table, per subtask of the vertex reporting it."""
        suffix = "." + f"{METRICS_NAMESPACE}_{name}".replace(".", "_")
        found = {}
        for vertex in self.rest(f"/jobs/{job}")["vertices"]:
            base = f"/jobs/{job}/vertices/{vertex['id']}/metrics"
            ids = [m["id"] for m in self.rest(base) if m["id"].endswith(suffix)]
            if ids:
                for metric in self.rest(f"{base}?get={urllib.parse.quote(','.join(ids), safe='')}"):
                    found[int(metric["id"].split(".", 1)[0])] = int(float(metric["value"]))
        return found

    def taskmanager_pid(self, index: int) -> int:
        return int((self.state_dir / f"taskmanager-{index}.pid").read_text())

    def environment(self, external: bool) -> list[str]:
        """Beam options for SDK workers in the cluster's worker pool, or in the submitting process."""
        if external:
            return ["--environment_type", "EXTERNAL", "--environment_config", self.worker_pool]
        return ["--environment_type", "LOOPBACK"]

    def worker_pool_pid(self) -> int:
        return int((self.state_dir / "workerpool.pid").read_text())


@pytest.fixture(scope="session")
def flink(tmp_path_factory):
    """A Flink cluster and job server for the session (installed on first use, then cached)."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not found: the Flink tests need Java 11/17 and Maven")
    state = tmp_path_factory.mktemp("flink-cluster")
    # One TaskManager with four slots: less memory and CPU on a small machine; the kill test
    # starts a replacement for it. The SDK worker pool runs from this virtual environment.
    env = dict(
        os.environ, FLINK_CLUSTER_DIR=str(state), FLINK_TASKMANAGERS="1", FLINK_SLOTS="4", BEAM_PIXELS_WORKER_VENV=sys.prefix
    )
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

    def start(properties: Path, server, *, pipeline_file: bool = False, external: bool = False) -> tuple[Run, str]:
        """``beam-pixels run`` (or ``pipelines/pixels_to_lakehouse.py``) with the Flink options,
        once the job polls ``server``: (the run, the Flink job id). SDK workers: LOOPBACK (in the
        run), or with ``external`` the cluster's worker pool."""
        program = [sys.executable, str(PIPELINE_FILE)] if pipeline_file else [sys.executable, "-m", "beam_pixels", "run"]
        polls = server.polls()
        run = Run(
            [
                *program, "--config", str(properties), "--set", f"pixels.server.port={server.port}",
                "--runner", "PortableRunner", "--job_endpoint", flink.job_endpoint,
                *flink.environment(external), "--parallelism", str(PARALLELISM),
            ],
            tmp_path,
        )  # fmt: skip
        runs.append(run)
        job = flink.running_job()
        wait_until(lambda: server.polls() > polls, FIRST_POLL_S, f"job {job} polling", run)
        return run, job

    yield start
    with contextlib.suppress(Exception):
        flink.cancel_all()
    for run in runs:
        run.kill()


WINDOW_S = 2.0  # the streaming runs' windows: checkpoint.interval.ms


def streaming_properties(tmp_path: Path, sink: str, checkpoint_interval_ms: int = int(WINDOW_S * 1000)) -> Path:
    """Unbounded (no idle stop), two poll groups, 2 s windows (unless told), the journal on a shared directory."""
    return write_properties(
        tmp_path,
        sink,
        {
            "source.stop.after.idle.ms": "0",
            "source.parallelism": str(PARALLELISM),
            "source.poll.interval.ms": "100",
            "checkpoint.interval.ms": str(checkpoint_interval_ms),
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


def wait_all_committed_but_lost_in_flight(feeder: Feeder, config, timeout: float = 120) -> None:
    """After SDK workers were killed or stopped mid-stream: until everything fed was handed out and
    the table holds all of it but whole responses that no worker confirmed by polling again (lost
    in flight with a dead worker: the protocol cannot prevent it), each stored whole or not at all,
    every stored record committed once."""
    server = feeder.server
    feeder.wait_all_loaded(timeout)

    def accounted() -> bool:
        committed = sum(last_checkpoint(config).positions.values())
        unconfirmed = [len(response) for response in server.unconfirmed_responses()]
        handed_out = len(server.handed_out())
        return server.pending() == 0 and any(
            handed_out - sum(size for size, lost in zip(unconfirmed, losses) if lost) == committed
            for losses in itertools.product([False, True], repeat=len(unconfirmed)))

    wait_until(accounted, timeout, "every record handed out committed, but responses lost in flight")
    time.sleep(2 * WINDOW_S)  # live workers poll again (confirming their last response) and commit it
    wait_until(accounted, 60, "every record handed out committed, but responses lost in flight")
    _, kept = stored_in_flight(table_state(config), server.handed_out(), server.unconfirmed_responses())
    assert last_checkpoint(config).positions == records_per_poll_group(config, server, kept)


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
    # Bundles of at most 100 ms (beam-pixels' default, not Flink runner's 1 s): each stage passes the
    # watermark on sooner, so a window commits sooner after its end.
    execution_config = flink.rest(f"/jobs/{job}/config")["execution-config"]
    assert execution_config["user-config"]["maxBundleTimeMills"] == "100"
    # Chained operators hand a window's batches on without copying them (beam_pixels.flink.options).
    assert execution_config["object-reuse-mode"] is True

    # The source's Beam metrics, through Flink's REST API (reported at the metric fetch interval).
    handed_out = len(feeder.server.handed_out())
    wait_until(lambda: flink.source_metric(job, "records") == handed_out, 60, f"records metric = {handed_out}")
    assert flink.source_metric(job, "polls") >= handed_out / 50 / PARALLELISM
    # Each poll group on a subtask of its own (beam_pixels.flink.placement), not both on one.
    per_subtask = flink.source_metric_per_subtask(job, "records")
    assert sorted(per_subtask) == list(range(PARALLELISM)) and all(per_subtask.values()), per_subtask


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


def test_each_taskmanager_logs_its_garbage_collection_pauses(flink):
    log = flink.state_dir / "log" / f"gc-taskmanager-{flink.taskmanager_pid(1)}.log"
    wait_until(lambda: log.exists() and gc_log.heap_after_latest_mb(log), 60, f"a GC pause line in {log}")


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
    # resubmitted as the pipeline file, which must run on Flink as well, with the same Flink options
    second_run, second_job = submit(properties, feeder.server, pipeline_file=True)
    assert flink.rest(f"/jobs/{second_job}/config")["execution-config"]["object-reuse-mode"] is True

    wait_all_committed(feeder, config, second_run, timeout=FIRST_POLL_S + 120)
    assert_table_is_exactly_what_was_handed_out(config, feeder.server)
    assert last_checkpoint(config).batch_id > at_cancel.batch_id
    assert second_run.commits()[0].batch_id == at_cancel.batch_id + 1, second_run.describe()


def _job_servers_started_by(run: Run, jar: str) -> set[int]:
    """Pids of the JVMs running the job server launcher jar that ``run`` started (other users of
    the machine may run that jar too)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == run.proc.pid and jar.encode() in (stat.parent / "cmdline").read_bytes():
                found.add(int(stat.parent.name))
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
        job_servers = _job_servers_started_by(run, flink.job_server_jar)
        run.kill()
        for pid in job_servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- SDK workers with the cluster (the worker pool), detached jobs, the job server a run starts ---


def _pid_gone(pid: int) -> bool:
    """No such process any more (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("sink", ["iceberg"])
def test_with_the_worker_pool_the_job_outlives_its_killed_client_a_killed_taskmanager_and_pool(
    tmp_path, flink, feeders, submit, sink
):
    """EXTERNAL SDK workers: the job keeps committing after ``kill -9`` of the submitting run, then
    of the TaskManager and the worker pool (the script's ``start`` restarts both), and the table
    ends exact."""
    properties = streaming_properties(tmp_path, sink)
    # a minute of stream: it still arrives when the TaskManager and the pool are back
    feeder = feeders(cdc_history(6000, seed=31), chunk=50, every_s=0.5)
    config = load_config(properties, feeder.server.port)
    pool_log = flink.state_dir / "log" / "workerpool.log"
    logged_before = pool_log.stat().st_size if pool_log.exists() else 0  # earlier jobs' lines are not this one's
    run, job = submit(properties, feeder.server, external=True)
    feeder.start()
    wait_until(lambda: last_checkpoint(config).batch_id >= 1, 120, "a first commit", run)

    run.proc.send_signal(signal.SIGKILL)
    run.proc.wait(30)
    after_client = last_checkpoint(config).batch_id
    wait_until(lambda: last_checkpoint(config).batch_id >= after_client + 2, 60, "two commits after the client's kill -9")
    # an operator following the job finds its commits in the pool's log
    with pool_log.open("rb") as log:
        log.seek(logged_before)
        logged = log.read().decode(errors="replace")
    assert re.search(rf"INFO beam_pixels\.\S+: committed batch {after_client + 1} ", logged), logged[-3000:]
    wait_until(lambda: flink.checkpoint_counts(job)["completed"] >= 1, 60, "a completed Flink checkpoint")

    taskmanager, pool = flink.taskmanager_pid(1), flink.worker_pool_pid()
    os.kill(taskmanager, signal.SIGKILL)
    os.kill(pool, signal.SIGKILL)
    wait_until(lambda: _pid_gone(taskmanager) and _pid_gone(pool), 30, "the killed TaskManager and worker pool gone")
    assert "# workerpool: not running" in flink.script("status")
    flink.script("start")  # what a supervisor would do
    assert flink.worker_pool_pid() != pool and flink.taskmanager_pid(1) != taskmanager
    wait_until(lambda: flink.checkpoint_counts(job)["restored"] >= 1, 120, "a restore from the checkpoint")
    assert feeder.arriving, "the kills came after the stream stopped arriving"

    wait_all_committed_but_lost_in_flight(feeder, config, FIRST_POLL_S + 120)


def _detached_run(flink, properties: Path, server, tmp_path: Path) -> tuple[Run, str]:
    """``beam-pixels run --detach`` with the worker pool: exits 0 once the job polls; (the run, the job id)."""
    polls = server.polls()
    run = Run.cli(
        tmp_path, "run", "--config", str(properties), "--set", f"pixels.server.port={server.port}",
        "--runner", "PortableRunner", "--job_endpoint", flink.job_endpoint, "--flink_master", flink.flink_master,
        *flink.environment(external=True), "--parallelism", str(PARALLELISM), "--detach",
    )  # fmt: skip
    assert run.wait(FIRST_POLL_S + 60) == 0, run.describe()
    assert server.polls() > polls, "the detached run returned before its job polled"
    job = re.search(r"^detached: Flink job ([0-9a-f]{32}) ", run.stdout, re.MULTILINE)
    assert job, run.describe()
    assert f"Flink UI: {flink.rest_url}/#/job/running/{job[1]}/overview" in run.stdout, run.describe()
    assert flink.rest(f"/jobs/{job[1]}")["state"] == "RUNNING"
    return run, job[1]


@pytest.mark.parametrize("sink", ["paimon"])
def test_detach_returns_once_the_job_polls_and_a_resubmitted_job_resumes_from_the_tables_positions(
    tmp_path, flink, feeders, sink
):
    properties = streaming_properties(tmp_path, sink)
    feeder = feeders(cdc_history(3000, seed=32), chunk=100, every_s=0.5)
    config = load_config(properties, feeder.server.port)
    try:
        _, first_job = _detached_run(flink, properties, feeder.server, tmp_path)
        feeder.start()
        wait_until(lambda: last_checkpoint(config).batch_id >= 2, 120, "two commits of the detached job")

        flink.cancel_all()  # an upgrade: cancel, submit again
        at_cancel = last_checkpoint(config)
        _, second_job = _detached_run(flink, properties, feeder.server, tmp_path)
        assert second_job != first_job
        wait_until(lambda: last_checkpoint(config).batch_id > at_cancel.batch_id, 120, "a commit of the new job")
        # positions count every record once: the new job resumed where the table was, neither
        # polling again what was committed nor skipping what was not (the cancelled job's workers
        # stop with it, mid-poll at worst)
        wait_all_committed_but_lost_in_flight(feeder, config)
    finally:
        flink.cancel_all()


@pytest.mark.parametrize("sink", ["iceberg"])
def test_detach_refuses_loopback_workers(tmp_path, flink, sink):
    run = Run.cli(
        tmp_path, "run", "--config", str(streaming_properties(tmp_path, sink)), "--runner", "PortableRunner",
        "--job_endpoint", flink.job_endpoint, "--flink_master", flink.flink_master,
        "--environment_type", "LOOPBACK", "--detach",
    )  # fmt: skip
    assert run.wait(60) == 2, run.describe()
    assert "--detach with --environment_type LOOPBACK" in run.stderr
    assert flink.rest("/jobs")["jobs"] == [] or all(j["status"] != "RUNNING" for j in flink.rest("/jobs")["jobs"])


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGTERM, then SIGKILL 1 s later", "SIGKILL"])
def test_a_stopped_run_leaves_no_job_server_behind(tmp_path, flink, feeders, stop):
    """``--runner FlinkRunner --flink_master [local]``: the run starts a job server JVM holding a
    MiniCluster; however the run is stopped, that JVM ends within seconds. SIGTERM (as Ctrl-C)
    cancels the job, stops the job server and says so."""
    properties = streaming_properties(tmp_path, "iceberg")
    feeder = feeders(cdc_history(200, seed=33)).start()
    run = Run.cli(
        tmp_path, "run", "--config", str(properties), "--set", f"pixels.server.port={feeder.server.port}",
        "--runner", "FlinkRunner", "--flink_version", "1.19", "--flink_job_server_jar", flink.job_server_jar,
        "--flink_master", "[local]", "--environment_type", "LOOPBACK", "--parallelism", "1",
    )  # fmt: skip
    job_servers: set[int] = set()
    try:
        wait_until(lambda: feeder.server.polls() > 0, FIRST_POLL_S, "the job polling", run)
        job_servers = _job_servers_started_by(run, flink.job_server_jar)
        assert len(job_servers) == 1, job_servers
        if stop == "SIGTERM":
            run.proc.send_signal(signal.SIGTERM)
            assert run.wait(60) == 130, run.describe()
            assert "interrupted: cancelling the job" in run.stderr, run.describe()
            assert "beam-pixels run: stopped by SIGTERM" in run.stderr, run.describe()
        elif stop == "SIGKILL":
            run.proc.send_signal(signal.SIGKILL)
        else:
            run.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.proc.wait(1)
            run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(30)
        wait_until(lambda: all(_pid_gone(pid) for pid in job_servers), 30, f"the job server JVM {job_servers} gone")
    finally:
        job_servers |= _job_servers_started_by(run, flink.job_server_jar)
        run.kill()
        for pid in job_servers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sink", ["iceberg"])
def test_what_was_handed_out_before_an_outage_is_committed_during_it(tmp_path, flink, feeders, submit, sink):
    """The Pixels server stops mid-stream: the poller's retries give way to the watermark, so
    every record handed out before the outage is committed within two windows while the server
    is still down, and the rest after it comes back on the same port."""
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
    assert landed_s <= 2 * WINDOW_S, f"committed {landed_s:.1f}s into the outage:\n{run.describe()}"
    assert last_checkpoint(config).positions == handed_out
    assert table_state(config) == expected_state(server)  # exact: nothing missing, extra or stale
    wait_until(lambda: flink.source_metric(job, "poll_failures") > 0, 60, "poll_failures counted")
    assert "PollEvents" in run.output and "unreachable for" in run.output, run.describe()
    assert {j["status"] for j in flink.rest("/jobs")["jobs"] if j["id"] == job} == {"RUNNING"}

    feeder.wait_all_loaded(60)  # all of it queued while the server is down
    server.start()  # same port, queues kept
    wait_all_committed(feeder, config, run)
    assert_table_is_exactly_what_was_handed_out(config, server)


def latest_checkpoint_state(flink, job: str) -> tuple[int, int]:
    """(id, state size in bytes) of the job's latest completed Flink checkpoint ((0, 0) before one)."""
    completed = (flink.rest(f"/jobs/{job}/checkpoints").get("latest") or {}).get("completed") or {}
    return int(completed.get("id", 0)), int(completed.get("state_size", 0))


@pytest.mark.parametrize("sink", ["iceberg"])
def test_checkpoint_state_stays_flat_through_a_busy_and_an_idle_phase(tmp_path, flink, feeders, submit, sink):
    """apache/beam#27648: Beam 2.62.0 kept each SDF self-checkpoint's residual in a keyed state of
    its own, never cleared, so the job's checkpoints grew by ~5 KB a residual forever. With the
    patched runner classes the launcher jar puts first (scripts/flink/beam-sdf-residual-state.patch),
    the state 150 checkpoints after the first poll is at most 1.2x that after 30: a busy phase
    (the stream arriving) first, then an idle one (the job polling an empty stream)."""
    properties = streaming_properties(tmp_path, sink, checkpoint_interval_ms=500)
    feeder = feeders(cdc_history(8000, seed=25), chunk=100, every_s=0.5)
    config = load_config(properties, feeder.server.port)
    run, job = submit(properties, feeder.server)
    feeder.start()
    first, _ = latest_checkpoint_state(flink, job)

    def state_after(checkpoints: int) -> int:
        wanted = first + checkpoints
        return wait_until(
            lambda: (s := latest_checkpoint_state(flink, job))[0] >= wanted and s, 300, f"checkpoint {wanted}", run
        )[1]

    early = state_after(30)
    assert feeder.arriving, "the stream stopped arriving before checkpoint 30: no busy phase measured"
    wait_all_committed(feeder, config, run)
    late = state_after(150)
    print(f"checkpoint state: {early:,} B at the first poll's checkpoint + 30, {late:,} B at + 150")
    assert late <= 1.2 * early, f"checkpoint state grew from {early:,} B (first poll + 30) to {late:,} B (+150)"
    assert_table_is_exactly_what_was_handed_out(config, feeder.server)


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_three_tables_in_one_job_commit_each_on_its_own_and_end_exact(tmp_path, flink, submit, sink):
    """Issue 20 on Flink: three tables (one keyless) from one server in one job, each committing
    its own windows; every table read back by DuckDB or pypaimon (tests/test_many_tables.py)."""
    from test_many_tables import Streams, assert_table_exact, properties

    streams = Streams(seed=13, chunks=20, every_s=0.5).start()
    try:
        props = properties(tmp_path, sink, streams.server.port, **{
            "source.stop.after.idle.ms": "0", "checkpoint.interval.ms": "2000",
            "source.journal.dir": str(tmp_path / "journal")})
        run, job = submit(props, streams.server)
        streams.feed_once_polled(run)
        # One set of steps for every table: the job's vertices do not grow with the tables.
        names = " ".join(v["name"] for v in flink.rest(f"/jobs/{job}")["vertices"])
        assert names.count("ReadFromPixels/Poll") == 1 and "orders/" not in names, names
        streams.wait_all_loaded()
        tables = PixelsConfig.load(props).tables()

        def received(name: str) -> int:
            return sum(last_checkpoint(tables[name]).positions.values())

        wait_until(lambda: all(received(n) == len(t.handed_out()) and t.pending() == 0
                               for n, t in streams.tables.items()), 180, "every table committed whole", run)
        for name, table in tables.items():
            assert_table_exact(table, streams.tables[name])
            assert last_checkpoint(table).batch_id >= 2, name
        # Each table's metrics name it (namespace beam_pixels.source.<table>), in the Flink job too.
        rest = FlinkRest(flink.rest_url)
        for name, served in streams.tables.items():
            wait_until(lambda: rest.source_counter(job, "records", [name]) == len(served.handed_out()), 60,
                       f"{name}'s records metric", run)
    finally:
        streams.stop()
