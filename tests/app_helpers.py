"""What a user of ``beam-pixels`` sees, for tests/test_app.py.

A properties file written to a temporary directory, the command run as a
subprocess with its output in files (read while it runs), its progress lines
parsed, and the table it wrote read back and compared with what the mock server
handed out.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from beam_pixels import app
from beam_pixels.buckets import partition_buckets
from beam_pixels.config import PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.testing import mock_data

SCHEMA_SPEC = "id:BIGINT,name:STRING,price:DECIMAL(10,2),score:DOUBLE,qty:INT,ts:TIMESTAMP,flag:BOOLEAN"
SCHEMA = SourceSchema.parse(SCHEMA_SPEC, ["id"])
SINKS = ("iceberg", "paimon")
REPO = Path(__file__).resolve().parent.parent

COMMIT_LINE = re.compile(r"committed batch (\d+) to (\S+): (\d+) changes")
DONE_LINE = re.compile(
    r"^done: (\d+) records polled in (\d+) round\(s\).*; last committed batch (\d+), positions (.*)$", re.MULTILINE
)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cdc_history(n_events: int, seed: int = 0) -> list[mock_data.Event]:
    """A change history over about a quarter as many keys: inserts, updates, deletes, snapshots."""
    return mock_data.generate_cdc(SCHEMA, n_keys=max(1, n_events // 4), n_events=n_events, seed=seed)


def local_run_properties(directory: Path, sink: str) -> dict[str, str]:
    """The settings every short local test run shares: the loopback server, quick polls and
    rounds, and warehouses under ``directory``/warehouse; no table, no port."""
    return {
        "pixels.server.host": "127.0.0.1",
        "source.poll.interval.ms": "50",
        "source.stop.after.idle.ms": "1200",
        "checkpoint.interval.ms": "1500",
        "sink.type": sink,
        "iceberg.catalog.warehouse": str(directory / "warehouse" / "iceberg"),
        "paimon.catalog.warehouse": str(directory / "warehouse" / "paimon"),
    }


def save_properties(path: Path, props: dict[str, str]) -> Path:
    """Write ``props`` as a properties file at ``path``."""
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")
    return path


def write_properties(directory: Path, sink: str, settings: dict[str, str] | None = None) -> Path:
    """A properties file for a short local run of the test table into ``directory``/warehouse,
    with ``settings`` (property name -> value) on top; the port is left to ``--set``."""
    props = {**local_run_properties(directory, sink), "source.schema": SCHEMA_SPEC, "source.primary.key": "id"}
    props.update(settings or {})
    return save_properties(directory / f"{sink}.properties", props)


def load_config(properties: Path, port: int) -> PixelsConfig:
    """The configuration the run reads: the file plus the port given with --set."""
    return PixelsConfig.load(properties, [f"pixels.server.port={port}"])


@dataclass(frozen=True)
class Commit:
    batch_id: int
    table: str
    changes: int


@dataclass(frozen=True)
class Done:
    records: int
    rounds: int
    batch_id: int
    positions: dict[int, int]


class Run:
    """One subprocess (``python -m beam_pixels ...`` or a script); stdout and stderr go to
    files in ``workdir`` so large output never blocks it, and can be read while it runs."""

    _count = 0

    def __init__(self, argv: list[str], workdir: Path):
        Run._count += 1
        self.name = f"run{Run._count}"
        self.stdout_path = workdir / f"{self.name}.stdout"
        self.stderr_path = workdir / f"{self.name}.stderr"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, cwd=workdir, stdout=out, stderr=err, env=env)

    @classmethod
    def cli(cls, workdir: Path, *args: str) -> Run:
        return cls([sys.executable, "-m", "beam_pixels", *args], workdir)

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def describe(self) -> str:
        """The command and its output, for assertion messages."""
        return f"{' '.join(map(str, self.proc.args))}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> None:
        """Wait until ``pattern`` (a regex) occurs ``count`` times in the output while the process runs."""
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.output)) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited ({self.proc.returncode}) before printing {pattern!r}:\n{self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.describe()}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        """The exit code; kills the process and fails if it runs longer than ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout}s:\n{self.describe()}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def commits(self) -> list[Commit]:
        return [Commit(int(b), t, int(n)) for b, t, n in COMMIT_LINE.findall(self.output)]

    def done(self) -> Done:
        match = DONE_LINE.search(self.stdout)
        assert match, f"no 'done:' summary on stdout:\n{self.describe()}"
        records, rounds, batch, positions = match.groups()
        return Done(int(records), int(rounds), int(batch), ast.literal_eval(positions))


def wait_for_uncommitted(run: Run, server, records: int, timeout: float = 60) -> None:
    """Until the server has handed out ``records`` more records than the run's commits hold."""
    deadline = time.monotonic() + timeout
    while len(server.handed_out()) - sum(c.changes for c in run.commits()) < records:
        assert time.monotonic() < deadline, f"not {records} records polled and uncommitted:\n{run.describe()}"
        time.sleep(0.02)


def wait_for_commits_of(run: Run, records: int, timeout: float) -> None:
    """Until the run's commit lines hold ``records`` changes in all (read from its output: reading
    the table takes longer than the commits some tests time)."""
    deadline = time.monotonic() + timeout
    while sum(c.changes for c in run.commits()) < records:
        assert time.monotonic() < deadline, f"{records} changes not committed in {timeout}s:\n{run.describe()}"
        time.sleep(0.02)


def run_cli_to_end(run: Run, timeout: float = 90) -> Run:
    """Wait for a bounded run; it must exit 0 without a traceback."""
    code = run.wait(timeout)
    assert code == 0, run.describe()
    assert "Traceback" not in run.output, run.describe()
    return run


# --- the table --------------------------------------------------------------------


def table_rows(config: PixelsConfig) -> list[tuple]:
    """The table's rows, in source column order, read with the sink's own reader."""
    with contextlib.closing(app.open_table_writer(config)) as writer:
        table = writer.read_table()
    columns = table.select(SCHEMA.names).to_pydict()
    return list(zip(*(columns[name] for name in SCHEMA.names)))


def table_state(config: PixelsConfig) -> dict[tuple, tuple]:
    """Live rows by key, NaN made comparable; a key present twice fails."""
    rows = table_rows(config)
    state = {mock_data.key_of(SCHEMA, row): mock_data.comparable(row) for row in rows}
    assert len(state) == len(rows), f"{len(rows) - len(state)} duplicate key(s) in the table"
    return state


def final_state_of(handed_out: list) -> dict[tuple, tuple]:
    """The final state of the changes ``handed_out`` (in delivery order), NaN made comparable."""
    events = [(h.op, h.before, h.after) for h in handed_out]
    return {k: mock_data.comparable(v) for k, v in mock_data.final_state(SCHEMA, events).items()}


def expected_state(server) -> dict[tuple, tuple]:
    """The final state of everything the server handed out, NaN made comparable."""
    return final_state_of(server.handed_out())


def stored_in_flight(state: dict, handed_out: list, in_flight: list[list]) -> tuple[list, list]:
    """Which of a killed run's unconfirmed responses (``server.unconfirmed_responses()`` after
    the kill) the table ``state`` holds, and the records it holds: each response is stored
    whole (journaled before the kill, replayed on restart) or lost whole in flight, which no
    client of this protocol can prevent. Fails unless ``state`` is exactly one such outcome."""
    for stored in itertools.product([True, False], repeat=len(in_flight)):
        dropped = {id(h) for response, keep in zip(in_flight, stored) if not keep for h in response}
        kept = [h for h in handed_out if id(h) not in dropped]
        if state == final_state_of(kept):
            return [r for r, keep in zip(in_flight, stored) if keep], kept
    every = final_state_of(handed_out)
    differing = sorted(k for k in every.keys() | state.keys() if every.get(k) != state.get(k))
    raise AssertionError(f"the table is no outcome of the {len(in_flight)} responses in flight; keys differing "
                         f"from every change applied: {differing[:20]}")


def assert_table_is_final_state(config: PixelsConfig, server) -> None:
    expected, actual = expected_state(server), table_state(config)
    missing = expected.keys() - actual.keys()
    extra = actual.keys() - expected.keys()
    wrong = [k for k in expected.keys() & actual.keys() if expected[k] != actual[k]]
    assert not (missing or extra or wrong), (
        f"table differs from the final state of {len(server.handed_out())} handed-out changes: "
        f"{len(missing)} keys missing, {len(extra)} extra, {len(wrong)} with other values "
        f"(first: {sorted(missing)[:3]} {sorted(extra)[:3]} {[(expected[k], actual[k]) for k in wrong[:1]]})"
    )


def last_checkpoint(config: PixelsConfig):
    with contextlib.closing(app.open_table_writer(config)) as writer:
        return writer.last_checkpoint()


def records_per_poll_group(config: PixelsConfig, server, handed_out: list | None = None) -> dict[int, int]:
    """How many handed-out records (``handed_out``, else all the server's) came from each poll group's buckets."""
    groups = partition_buckets(list(config.buckets), config.parallelism)
    group_of = {b: g for g, buckets in enumerate(groups) for b in buckets}
    counts: dict[int, int] = {}
    for h in server.handed_out() if handed_out is None else handed_out:
        counts[group_of[h.bucket]] = counts.get(group_of[h.bucket], 0) + 1
    return counts
