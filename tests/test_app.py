"""The application as a user runs it: ``beam-pixels run`` / ``demo`` and the pipeline file as
subprocesses, against an in-process mock Pixels server on 127.0.0.1, into real Iceberg and
Paimon tables in a temporary directory. Every test reads the table back and compares it with
the final state of exactly the changes the server handed out."""

from __future__ import annotations

import re
import signal
import sys
import threading
import time

import pytest
from app_helpers import (
    REPO,
    SCHEMA,
    SINKS,
    Commit,
    Done,
    Run,
    assert_table_is_final_state,
    cdc_history,
    free_port,
    last_checkpoint,
    load_config,
    records_per_poll_group,
    run_cli_to_end,
    wait_for_commits_of,
    wait_for_uncommitted,
    write_properties,
)

from beam_pixels import app
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.testing.mock_server import MockPixelsServer

COMMITTED = r"committed batch \d+"


@pytest.fixture
def serve():
    """Start a mock Pixels server (optionally on a given port) holding ``history``; stopped at the end."""
    servers = []

    def start(history=(), *, port=0, batch_size=50):
        server = MockPixelsServer(SCHEMA, port=port, batch_size=batch_size)
        server.load_cdc(history)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.stop()


class _Launcher:
    def __init__(self, workdir):
        self.workdir = workdir
        self.runs: list[Run] = []

    def cli(self, *args: str) -> Run:
        """``beam-pixels <args>`` in a subprocess (``python -m beam_pixels``)."""
        return self._track(Run.cli(self.workdir, *args))

    def python(self, *args: str) -> Run:
        return self._track(Run([sys.executable, *args], self.workdir))

    def _track(self, run: Run) -> Run:
        self.runs.append(run)
        return run


@pytest.fixture
def launch(tmp_path):
    """Start subprocesses in ``tmp_path``; every one still running at the end is killed."""
    launcher = _Launcher(tmp_path)
    yield launcher
    for run in launcher.runs:
        run.kill()


def config_args(properties, port, *extra: str) -> list[str]:
    """``--config <file> --set pixels.server.port=<port>`` and ``extra`` (e.g. Beam options)."""
    return ["--config", str(properties), "--set", f"pixels.server.port={port}", *extra]


def run_args(properties, port, *extra: str) -> list[str]:
    return ["run", *config_args(properties, port, *extra)]


def unavailable_line(port: int) -> str:
    """The log line of a poll retried because nothing answers on ``port``."""
    return rf"(?i)127\.0\.0\.1:{port}\b.*unavailable.*retry"


def feed_slowly(server, history, chunks: int, every_s: float) -> None:
    """Load ``history`` into ``server`` in ``chunks`` parts, one every ``every_s`` seconds."""
    size = -(-len(history) // chunks)
    for start in range(0, len(history), size):
        time.sleep(every_s)
        server.load_cdc(history[start : start + size])


def assert_commits_account_for_everything(run: Run, config, server, since: Checkpoint | None = None) -> list[Commit]:
    """The table is the final state of all handed-out changes, its positions count them per poll
    group, and the run printed one line per commit, with batch ids consecutive after ``since``
    (the table's checkpoint before the run), for every change it polled."""
    since = since or Checkpoint()
    assert server.pending() == 0, "the run ended with records still on the server"
    assert_table_is_final_state(config, server)
    checkpoint = last_checkpoint(config)
    assert checkpoint.positions == records_per_poll_group(config, server)
    commits = run.commits()
    assert [c.batch_id for c in commits] == list(range(since.batch_id + 1, checkpoint.batch_id + 1)), run.describe()
    assert {c.table for c in commits} == {f"pixels.{config.sink_type}_orders"}
    assert sum(c.changes for c in commits) == len(server.handed_out()) - sum(since.positions.values())
    return commits


def assert_summary_is_the_tables(run: Run, config) -> Done:
    """The 'done:' line gives the table's last batch id and positions."""
    checkpoint = last_checkpoint(config)
    done = run.done()
    assert (done.batch_id, done.positions) == (checkpoint.batch_id, checkpoint.positions), run.describe()
    return done


# --- 1. end to end ------------------------------------------------------------------


@pytest.mark.parametrize("sink", SINKS)
def test_run_writes_the_final_state_of_what_the_server_handed_out(tmp_path, serve, launch, sink):
    server = serve(cdc_history(600))
    properties = write_properties(tmp_path, sink)

    run = run_cli_to_end(launch.cli(*run_args(properties, server.port)))

    assert len(server.handed_out()) == 600
    config = load_config(properties, server.port)
    assert_commits_account_for_everything(run, config, server)
    done = assert_summary_is_the_tables(run, config)
    assert (done.records, done.positions) == (600, {0: 600})


def test_a_run_bounded_by_max_records_ends_by_itself(tmp_path, serve, launch):
    # One record per bucket per poll: a poll returns at most 128 of the 600.
    server = serve(cdc_history(600, seed=1), batch_size=1)
    properties = write_properties(
        tmp_path, "iceberg", {"source.stop.after.idle.ms": "0", "source.max.records": "200"}
    )

    run = run_cli_to_end(launch.cli(*run_args(properties, server.port)))

    handed_out = len(server.handed_out())
    assert 200 <= handed_out < 600 and server.pending() == 600 - handed_out
    config = load_config(properties, server.port)
    assert_table_is_final_state(config, server)
    done = assert_summary_is_the_tables(run, config)
    assert (done.records, done.positions) == (handed_out, {0: handed_out})


# --- 2. several rounds ----------------------------------------------------------------


@pytest.mark.parametrize("sink", SINKS)
def test_a_run_commits_round_after_round_while_data_keeps_arriving(tmp_path, serve, launch, sink):
    history = cdc_history(900, seed=2)
    server = serve(history[:150])
    properties = write_properties(
        tmp_path, sink, {"checkpoint.interval.ms": "1000", "source.parallelism": "2"}
    )

    run = launch.cli(*run_args(properties, server.port))
    run.wait_for(COMMITTED, timeout=60)
    feed_slowly(server, history[150:], chunks=6, every_s=0.5)
    run_cli_to_end(run)

    assert len(server.handed_out()) == 900
    config = load_config(properties, server.port)
    commits = assert_commits_account_for_everything(run, config, server)
    assert len(commits) >= 2, run.describe()
    done = assert_summary_is_the_tables(run, config)
    assert done.records == 900 and set(done.positions) == {0, 1}


# --- 3. a second run resumes ----------------------------------------------------------


@pytest.mark.parametrize("sink", SINKS)
def test_a_second_run_resumes_from_the_committed_positions(tmp_path, serve, launch, sink):
    history = cdc_history(800, seed=3)
    server = serve(history[:400])
    properties = write_properties(tmp_path, sink)
    config = load_config(properties, server.port)
    first = run_cli_to_end(launch.cli(*run_args(properties, server.port)))
    after_first = last_checkpoint(config)
    assert after_first.positions == {0: 400}

    server.load_cdc(history[400:])
    second = run_cli_to_end(launch.cli(*run_args(properties, server.port)))

    assert len(server.handed_out()) == 800
    assert first.commits()[-1].batch_id == after_first.batch_id
    assert assert_commits_account_for_everything(second, config, server, since=after_first), second.describe()
    done = assert_summary_is_the_tables(second, config)
    assert (done.records, done.positions) == (400, {0: 800})


# --- 4. stopping with a signal ----------------------------------------------------------


@pytest.mark.parametrize("sink, signal_name", [("iceberg", "SIGINT"), ("paimon", "SIGINT"), ("iceberg", "SIGTERM")])
def test_a_signal_commits_what_the_current_round_polled_and_exits_0(tmp_path, serve, launch, sink, signal_name):
    history = cdc_history(600, seed=4)
    server = serve(history[:300])
    # No idle bound: the run would go on forever. Rounds of 3 s, so the signal lands mid-round.
    properties = write_properties(
        tmp_path, sink, {"source.stop.after.idle.ms": "0", "checkpoint.interval.ms": "3000"}
    )
    run = launch.cli(*run_args(properties, server.port))
    run.wait_for(COMMITTED, timeout=60)
    server.load_cdc(history[300:])
    deadline = time.monotonic() + 10
    while server.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.pending() == 0, "the run did not poll the new records"
    commits_before_signal = len(run.commits())

    run.proc.send_signal(getattr(signal, signal_name))

    run_cli_to_end(run, timeout=30)
    assert f"{signal_name}: finishing the current round" in run.stderr
    config = load_config(properties, server.port)
    assert len(server.handed_out()) == 600
    commits = assert_commits_account_for_everything(run, config, server)
    assert len(commits) > commits_before_signal, "the interrupted round committed nothing"
    assert assert_summary_is_the_tables(run, config).positions == {0: 600}


def test_sigint_while_the_server_is_unreachable_exits_0(tmp_path, launch):
    port = free_port()  # nothing listens there
    properties = write_properties(tmp_path, "iceberg", {"source.stop.after.idle.ms": "0"})
    run = launch.cli(*run_args(properties, port))
    run.wait_for(unavailable_line(port), timeout=30)

    run.proc.send_signal(signal.SIGINT)

    run_cli_to_end(run, timeout=10)  # no longer than the longest retry back-off
    done = run.done()
    assert (done.records, done.batch_id, done.positions) == (0, 0, {})


# --- 5. configuration errors --------------------------------------------------------------



@pytest.mark.parametrize(
    "settings, named",
    [
        pytest.param(["pixels.server.port=99999"], "pixels.server.port", id="port-out-of-range"),
        pytest.param(["sink.type=delta"], "sink.type", id="unknown-sink"),
        pytest.param(["source.primary.key=nope"], "source.primary.key", id="key-not-a-column"),
        pytest.param(["source.schema=id:BIGINTEGER,name:STRING"], "source.schema", id="unknown-type"),
        pytest.param(["source.buckets=0-200"], "source.buckets", id="bucket-out-of-range"),
        pytest.param(
            ["iceberg.catalog.warehouse=s3://bucket/warehouse"], "iceberg.catalog",
            id="sql-catalog-without-uri-on-s3",
        ),
        pytest.param(
            ["source.schema=id:DOUBLE,name:STRING"], "source.primary.key",
            id="iceberg-float-key",
        ),
        pytest.param(
            ["iceberg.catalog.warehouse=/proc/no/warehouse"], "iceberg.catalog.warehouse",
            id="iceberg-warehouse-cannot-be-created",
        ),
        pytest.param(
            ["sink.type=paimon", "paimon.catalog.warehouse=/proc/no/warehouse"], "paimon.catalog.warehouse",
            id="paimon-warehouse-cannot-be-created",
        ),
    ],
)
def test_a_bad_setting_exits_2_naming_the_key_without_a_traceback(tmp_path, launch, settings, named):
    properties = write_properties(tmp_path, "iceberg")
    overrides = [arg for setting in settings for arg in ("--set", setting)]
    # A dead port: a run that got past the configuration would retry forever.
    run = launch.cli(*run_args(properties, free_port(), *overrides))
    assert_configuration_error(run, named)


def test_a_missing_properties_file_exits_2_naming_it(tmp_path, launch):
    missing = tmp_path / "no-such.properties"
    assert_configuration_error(launch.cli("run", "--config", str(missing)), str(missing))


def assert_configuration_error(run: Run, named: str) -> None:
    assert run.wait(30) == 2, run.describe()
    assert "Traceback" not in run.output, run.describe()
    last = run.stderr.strip().splitlines()[-1]
    assert "configuration error" in last and named in last, f"the last line should name {named}:\n{run.describe()}"


# --- 6, 7. the server away ------------------------------------------------------------------


def test_a_run_started_before_the_server_waits_for_it(tmp_path, serve, launch):
    port = free_port()
    properties = write_properties(tmp_path, "iceberg")
    run = launch.cli(*run_args(properties, port))
    run.wait_for(unavailable_line(port), timeout=30)
    time.sleep(1.5)
    assert run.proc.poll() is None, f"the run gave up on a server that is not up yet:\n{run.describe()}"

    server = serve(cdc_history(400, seed=6), port=port)

    run_cli_to_end(run, timeout=60)
    assert len(server.handed_out()) == 400
    config = load_config(properties, port)
    assert_commits_account_for_everything(run, config, server)
    assert_summary_is_the_tables(run, config)


def test_a_run_outlives_a_server_restart(tmp_path, serve, launch):
    history = cdc_history(800, seed=7)
    server = serve(history[:400])
    # Idle bound above the round length: the run goes on after its first commit.
    properties = write_properties(
        tmp_path, "paimon", {"checkpoint.interval.ms": "1000", "source.stop.after.idle.ms": "2500"}
    )
    run = launch.cli(*run_args(properties, server.port))
    run.wait_for(COMMITTED, timeout=60)

    server.stop()
    run.wait_for(unavailable_line(server.port), timeout=30)
    server.load_cdc(history[400:])
    server.start()

    run_cli_to_end(run, timeout=60)
    assert len(server.handed_out()) == 800
    config = load_config(properties, server.port)
    assert_commits_account_for_everything(run, config, server)
    assert assert_summary_is_the_tables(run, config).positions == {0: 800}


@pytest.mark.parametrize("sink", SINKS)
def test_what_was_handed_out_before_an_outage_is_committed_during_it(tmp_path, serve, launch, sink):
    interval_s = 1.5
    history = cdc_history(3000, seed=12)
    server = serve(history[:300], batch_size=10)
    # The idle bound is shorter than the outage: time unreachable must not count as idle.
    properties = write_properties(
        tmp_path, sink,
        {"checkpoint.interval.ms": str(int(interval_s * 1000)), "source.stop.after.idle.ms": "2000",
         "source.parallelism": "2"},
    )
    config = load_config(properties, server.port)
    run = launch.cli(*run_args(properties, server.port))
    run.wait_for(COMMITTED, timeout=60)
    feeder = threading.Thread(target=feed_slowly, args=(server, history[300:], 30, 0.1))
    feeder.start()
    wait_for_uncommitted(run, server, 100)  # mid-stream: polled in the current round, more arriving

    server.stop(grace=1.0)  # polls in flight are answered; later ones fail
    stopped = time.monotonic()
    handed_out = len(server.handed_out())
    assert sum(c.changes for c in run.commits()) < handed_out, "the round committed before the outage"
    assert feeder.is_alive(), "the stream ended before the outage"

    wait_for_commits_of(run, handed_out, timeout=30)
    landed_s = time.monotonic() - stopped
    print(f"{sink}: {handed_out} records handed out before the outage committed {landed_s:.2f}s into it")
    assert landed_s <= 2 * interval_s, f"committed {landed_s:.1f}s into the outage:\n{run.describe()}"
    assert last_checkpoint(config).positions == records_per_poll_group(config, server)
    assert_table_is_final_state(config, server)  # exact: nothing missing, extra or stale
    run.wait_for(r"unreachable for \d+\.\ds", timeout=10)

    while time.monotonic() - stopped < 4:  # an outage twice the idle bound
        assert run.proc.poll() is None, f"the run ended during the outage:\n{run.describe()}"
        time.sleep(0.2)
    assert len(server.handed_out()) == handed_out
    assert last_checkpoint(config).positions == records_per_poll_group(config, server)
    feeder.join()
    server.start()  # same port, queues kept

    run_cli_to_end(run, timeout=60)
    assert len(server.handed_out()) == 3000
    assert_commits_account_for_everything(run, config, server)
    answered = re.search(r"answered again after \d+ failed attempt\(s\) over (\d+\.\d)s", run.output)
    assert answered and float(answered.group(1)) >= 4, run.describe()  # the whole outage, counted once


# --- 8. the demo ----------------------------------------------------------------------------


@pytest.mark.parametrize("sink", SINKS)
def test_demo_checks_its_table_against_what_the_server_handed_out(tmp_path, launch, sink):
    warehouse = tmp_path / "demo-warehouse"
    run = run_cli_to_end(launch.cli("demo", "--sink", sink, "--rows", "400", "--warehouse", str(warehouse)))

    assert "table equals the final state of the 400 changes handed out: yes" in run.stdout, run.describe()
    assert run.commits() and run.done().records == 400, run.describe()
    assert (warehouse / sink).is_dir()


# --- 9. other runners and the pipeline file -------------------------------------------------


@pytest.mark.parametrize("sink", SINKS)
def test_run_through_the_portable_job_service(tmp_path, serve, launch, job_service, sink):
    server = serve(cdc_history(500, seed=9))
    properties = write_properties(tmp_path, sink)
    portable = ["--runner", "PortableRunner", "--job_endpoint", job_service, "--environment_type", "LOOPBACK"]

    run = run_cli_to_end(launch.cli(*run_args(properties, server.port, *portable)), timeout=120)

    assert len(server.handed_out()) == 500
    commits = assert_commits_account_for_everything(run, load_config(properties, server.port), server)
    assert len(commits) == 1, "a bounded run on a distributed runner commits once, at its end"


PIPELINE_FILE = str(REPO / "pipelines" / "pixels_to_lakehouse.py")


def test_the_pipeline_file_runs_on_the_local_runner(tmp_path, serve, launch):
    server = serve(cdc_history(500, seed=10))
    properties = write_properties(tmp_path, "paimon")

    run = run_cli_to_end(launch.python(PIPELINE_FILE, *config_args(properties, server.port, "--runner", "FnApiRunner")))

    assert len(server.handed_out()) == 500
    assert_commits_account_for_everything(run, load_config(properties, server.port), server)


def test_the_pipeline_file_resumes_from_the_committed_positions(tmp_path, serve, launch):
    history = cdc_history(600, seed=11)
    server = serve(history[:300])
    properties = write_properties(tmp_path, "iceberg")
    config = load_config(properties, server.port)
    args = [PIPELINE_FILE, *config_args(properties, server.port, "--runner", "FnApiRunner")]
    run_cli_to_end(launch.python(*args))
    after_first = last_checkpoint(config)

    server.load_cdc(history[300:])
    second = run_cli_to_end(launch.python(*args))

    assert len(server.handed_out()) == 600
    assert_commits_account_for_everything(second, config, server, since=after_first)


def test_a_flink_submission_asks_flink_to_checkpoint_every_checkpoint_interval(tmp_path, monkeypatch):
    """What ``run --runner FlinkRunner`` hands Beam to submit (no Flink cluster offline): streaming,
    and Flink's checkpointing_interval at checkpoint.interval.ms, as the README says."""

    class Submitted(Exception):
        pass

    submitted = []

    def capture_pipeline(options=None, **_):
        submitted.append(options)
        raise Submitted

    monkeypatch.setattr(app.beam, "Pipeline", capture_pipeline)
    properties = write_properties(tmp_path, "iceberg", {"source.stop.after.idle.ms": "0"})
    with pytest.raises(Submitted):
        app.run(load_config(properties, free_port()), ["--runner", "FlinkRunner", "--flink_master", "localhost:1"])

    # Beam's Flink job service handle adds the options the Flink job server describes, like this one.
    options = submitted[0].get_all_options(
        add_extra_args_fn=lambda parser: parser.add_argument("--checkpointing_interval", type=int)
    )
    assert options["streaming"] is True
    assert options["checkpointing_interval"] == 1500, options
