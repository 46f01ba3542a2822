"""Many tables in one job (issue 20): one properties file names three tables with different
schemas and keys (one keyless), one mock Pixels server streams changes to each over gRPC on
127.0.0.1, and ``beam-pixels run`` commits each table on its own. Every table is read back by a
reader this project did not write: DuckDB for Iceberg, pypaimon for Paimon."""

from __future__ import annotations

import collections
import contextlib
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from app_helpers import REPO, Run, free_port, local_run_properties, run_cli_to_end, save_properties
from iceberg_helpers import duckdb_rows

from beam_pixels import app
from beam_pixels.changes import Op
from beam_pixels.config import ConfigError, PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.testing import mock_data
from beam_pixels.testing.mock_server import MockPixelsServer

# name -> (source.schema, source.primary.key)
TABLES = {
    "orders": ("id:BIGINT,customer:BIGINT,amount:DECIMAL(12,2),status:STRING,at:TIMESTAMP", "id"),
    "customers": ("cid:INT,name:STRING,score:DOUBLE,since:DATE,vip:BOOLEAN", "cid"),
    "page_views": ("customer:BIGINT,url:STRING,seen:TIMESTAMP", ""),
}
EVENTS = {"orders": 900, "customers": 500, "page_views": 400}


def schema_of(name: str) -> SourceSchema:
    spec, key = TABLES[name]
    return SourceSchema.parse(spec, [key] if key else [])


def properties(tmp_path: Path, sink: str, port: int, **settings: str) -> Path:
    """Three tables, shared server and sink settings, a short bounded local run."""
    props = {
        **local_run_properties(tmp_path, sink),
        "pixels.server.port": str(port),
        "tables": ",".join(TABLES),
        "source.stop.after.idle.ms": "1500",
        "paimon.bucket": "2",
        "table.customers.iceberg.table.name": "dim_customers",
        "table.customers.paimon.table.name": "dim_customers",
    }
    for name, (spec, key) in TABLES.items():
        props[f"table.{name}.source.schema"] = spec
        props[f"table.{name}.source.primary.key"] = key
    props.update(settings)
    return save_properties(tmp_path / f"{sink}.properties", props)


def history(name: str, seed: int) -> list[mock_data.Event]:
    """A CDC history: inserts, updates, deletes and snapshots (for the keyless table, of rows
    identified by all their columns, as its server routes them)."""
    schema = schema_of(name)
    keyed = schema if schema.primary_key else schema.with_primary_key([schema.names[0], schema.names[1]])
    return mock_data.generate_cdc(keyed, n_keys=EVENTS[name] // 4, n_events=EVENTS[name], seed=seed)


class Streams:
    """One mock server serving every table; each table's history arrives in chunks on a thread."""

    def __init__(self, seed: int = 0, chunks: int = 40, every_s: float = 0.5, port: int = 0):
        first, *rest = TABLES
        self.server = MockPixelsServer(schema_of(first), table_name=first, port=port, batch_size=40)
        self.tables = {first: self.server, **{n: self.server.serve_table(schema_of(n), table_name=n) for n in rest}}
        self._histories = {n: history(n, seed + i) for i, n in enumerate(TABLES)}
        self._chunks, self._every_s = chunks, every_s
        self._thread = threading.Thread(target=self._feed, daemon=True)

    def start(self) -> Streams:
        """Serve, with the first chunk of every table already queued."""
        self._load(0)
        self.server.start()
        return self

    def feed_once_polled(self, run: Run, timeout: float = 120) -> None:
        """Feed the other chunks once ``run`` polls (a run under load takes long to start)."""
        deadline = time.monotonic() + timeout
        while not self.server.polls():
            assert time.monotonic() < deadline and run.proc.poll() is None, f"the run does not poll:\n{run.describe()}"
            time.sleep(0.05)
        self._thread.start()

    def _load(self, chunk: int) -> None:
        for name, events in self._histories.items():
            size = -(-len(events) // self._chunks)
            self.tables[name].load_cdc(events[chunk * size : (chunk + 1) * size])

    def _feed(self) -> None:
        for i in range(1, self._chunks):
            time.sleep(self._every_s)
            self._load(i)

    def wait_all_loaded(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the feeder did not finish"

    def handed_out(self) -> int:
        return sum(len(t.handed_out()) for t in self.tables.values())

    def in_flight(self) -> dict[str, frozenset[int]]:
        """Per table, the records of responses no later poll confirmed (see :func:`assert_table_exact`)."""
        return {name: frozenset(id(h) for h in t.unconfirmed()) for name, t in self.tables.items()}

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def launched(tmp_path):
    runs: list[Run] = []
    yield runs
    for run in runs:
        run.kill()


def cli(launched: list[Run], tmp_path: Path, *args: str) -> Run:
    launched.append(Run.cli(tmp_path, *args))
    return launched[-1]


def committed_per_table(run: Run) -> dict[str, int]:
    counts: dict[str, int] = collections.Counter()
    for commit in run.commits():
        counts[commit.table.rpartition(".")[2]] += commit.changes
    return counts


# --- reading the tables as a user would, with readers this project did not write ------------


def iceberg_rows(config: PixelsConfig) -> list[dict]:
    from pyiceberg.catalog import load_catalog

    warehouse = config.iceberg_warehouse.removeprefix("file://")
    catalog = load_catalog("pixels", type="sql", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=config.iceberg_warehouse)
    return duckdb_rows(catalog.load_table((config.iceberg_database, config.iceberg_table)).metadata_location)


def paimon_rows(config: PixelsConfig) -> list[dict]:
    from pypaimon import CatalogFactory

    catalog = CatalogFactory.create({"warehouse": config.paimon_warehouse, "metastore": "filesystem"})
    table = catalog.get_table(f"{config.paimon_database}.{config.paimon_table}")
    builder = table.new_read_builder()
    return builder.new_read().to_arrow(builder.new_scan().plan().splits()).to_pylist()


def assert_table_exact(config: PixelsConfig, server: MockPixelsServer, in_flight: frozenset[int] = frozenset()) -> None:
    """A keyed table holds the final state of what its server handed out, each key once; a keyless
    one holds one changelog row per change handed out, each position once. ``in_flight``: the
    records (``id``) of the last response to a run killed with ``kill -9``, which may have died
    with it before it was journaled (a server that forgets what it hands out allows no better:
    docs/delivery.md); they are then in no position the table holds."""
    schema = config.source_schema
    rows = iceberg_rows(config) if config.sink_type == "iceberg" else paimon_rows(config)
    name = f"{config.sink_type} table {config.table_name}"
    assert server.pending() == 0, f"{name}: records left on the server"
    with contextlib.closing(app.open_table_writer(config)) as writer:
        received = sum(writer.last_checkpoint().positions.values())
    handed_out = server.handed_out()
    if received != len(handed_out):
        handed_out = [h for h in handed_out if id(h) not in in_flight]
    assert received == len(handed_out), f"{name}: positions count {received} changes, not {len(handed_out)}"
    events = [(h.op, h.before, h.after) for h in handed_out]
    images = [mock_data.comparable(tuple(row[c] for c in schema.names)) for row in rows]
    if schema.primary_key:
        expected = {k: mock_data.comparable(v) for k, v in mock_data.final_state(schema, events).items()}
        actual = {mock_data.key_of(schema, image): image for image in images}
        assert len(actual) == len(rows), f"{name}: {len(rows) - len(actual)} duplicate keys"
        assert actual == expected, f"{name} differs from the final state of {len(events)} changes"
    else:
        positions = [(row["_poll_group"], row["_position"]) for row in rows]
        assert len(set(positions)) == len(rows), f"{name}: a change appended twice"
        ops = [Op[row["_op"]] for row in rows]
        expected = [(op, mock_data.comparable(image)) for op, image in mock_data.expected_changelog(events)]
        assert collections.Counter(zip(ops, images)) == collections.Counter(expected), f"{name}: changelog differs"


# --- configuration ----------------------------------------------------------------------------


def test_each_table_is_a_single_table_configuration_of_its_own(tmp_path):
    config = PixelsConfig.load(properties(tmp_path, "iceberg", 50051), ["table.orders.paimon.bucket=8"])
    tables = config.tables()
    assert list(tables) == ["orders", "customers", "page_views"]
    assert [t.table_name for t in tables.values()] == ["orders", "customers", "page_views"]
    assert [t.iceberg_table for t in tables.values()] == ["orders", "dim_customers", "page_views"]
    assert [t.primary_key for t in tables.values()] == [("id",), ("cid",), ()]
    assert [t.paimon_bucket for t in tables.values()] == [8, 2, 2]
    assert {t.server_port for t in tables.values()} == {50051}
    assert not config.warnings
    # Each table's journal lies apart from the others'.
    assert len({t.journal_location(local_run=True) for t in tables.values()}) == 3


def test_a_file_without_tables_is_the_one_table_it_always_was():
    config = PixelsConfig.from_properties({"source.schema": "id:INT", "source.primary.key": "id"})
    assert config.tables() == {"": config}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"table.customers.source.primary.key": "nope"}, "table customers: table.customers.source.primary.key='nope'"),
        ({"table.orders.checkpoint.interval.ms": "5"}, "table orders: table.orders.checkpoint.interval.ms cannot be set"),
        ({"table.page_views.table.name": "orders"}, "table page_views: table.name names public.orders, as table orders"),
        ({"iceberg.table.name": "everything"}, "table page_views: iceberg.table.name names pixels.everything, as table orders"),
        ({"tables": "orders,orders"}, "tables='orders,orders' is not valid ('orders' is named twice)"),
    ],
)
def test_a_bad_table_setting_names_the_table_and_the_key(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        PixelsConfig.load(properties(tmp_path, "iceberg", 50051, **settings))


def test_a_misspelt_table_key_is_warned_about_with_its_table(tmp_path):
    config = PixelsConfig.load(properties(tmp_path, "iceberg", 50051, **{"table.orders.source.schemas": "x"}))
    assert config.warnings == ("unknown key 'table.orders.source.schemas' (did you mean 'table.orders.source.schema'?)",)


def test_the_database_sync_example_is_three_tables_one_of_them_keyless():
    config = PixelsConfig.load(REPO / "pipelines" / "database-sync.properties")
    assert not config.warnings
    tables = config.tables()
    assert len(tables) == 3
    assert sorted(bool(t.primary_key) for t in tables.values()) == [False, True, True]


# --- local runs -------------------------------------------------------------------------------


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_kill_9_mid_run_and_a_restart_leave_every_table_exact(tmp_path, launched, sink):
    streams = Streams(seed=3).start()
    try:
        props = properties(tmp_path, sink, streams.server.port)
        first = cli(launched, tmp_path, "run", "--config", str(props))
        streams.feed_once_polled(first)
        # Killed once every table has committed and more was polled than committed.
        deadline = time.monotonic() + 120
        while not (len(committed_per_table(first)) == 3
                   and streams.handed_out() - sum(committed_per_table(first).values()) >= 40):
            assert time.monotonic() < deadline, f"no commit of every table with changes in flight:\n{first.describe()}"
            assert first.proc.poll() is None, first.describe()
            time.sleep(0.02)
        time.sleep(0.5)  # the poller journals what it polled (what is still in flight may die with the run)
        first.proc.kill()
        first.proc.wait(30)
        in_flight = streams.in_flight()
        streams.wait_all_loaded()

        second = run_cli_to_end(cli(launched, tmp_path, "run", "--config", str(props)), timeout=240)
        assert "per table:" in second.stdout, second.describe()
        config = PixelsConfig.load(props)
        for name, table in config.tables().items():
            assert_table_exact(table, streams.tables[name], in_flight[name])
        assert "replaying" in second.output or any(in_flight.values()), second.describe()
        # Each table committed batch after batch of its own, from 1 on, in both runs together.
        for table in config.tables().values():
            full_name = f"{table.iceberg_database if sink == 'iceberg' else table.paimon_database}." + (
                table.iceberg_table if sink == "iceberg" else table.paimon_table)
            batches = [c.batch_id for run in (first, second) for c in run.commits() if c.table == full_name]
            assert batches == list(range(1, len(batches) + 1)), (full_name, batches)
    finally:
        streams.stop()


def test_a_table_whose_server_is_away_does_not_hold_the_others_commits(tmp_path, launched):
    """customers' server (its own port) is down for the first rounds: orders and page_views commit
    round after round meanwhile; once it is up, customers catches up and every table ends exact."""
    streams = Streams(seed=5, chunks=6, every_s=0.3).start()
    away_port = free_port()
    away = MockPixelsServer(schema_of("customers"), table_name="customers", port=away_port, batch_size=40)
    away.load_cdc(history("customers", 9))
    try:
        props = properties(tmp_path, "iceberg", streams.server.port, **{"table.customers.pixels.server.port": str(away_port)})
        run = cli(launched, tmp_path, "run", "--config", str(props))
        streams.feed_once_polled(run)
        deadline = time.monotonic() + 120
        while sum(1 for c in run.commits() if c.table == "pixels.orders") < 2:
            assert time.monotonic() < deadline and run.proc.poll() is None, run.describe()
            time.sleep(0.05)
        assert "pixels.dim_customers" not in {c.table for c in run.commits()}
        assert f"127.0.0.1:{away_port}" in run.output  # the retries of customers' polls are logged
        away.start()
        run_cli_to_end(run, timeout=180)
        config = PixelsConfig.load(props)
        tables = config.tables()
        assert_table_exact(tables["orders"], streams.tables["orders"])
        assert_table_exact(tables["page_views"], streams.tables["page_views"])
        assert_table_exact(tables["customers"], away)
    finally:
        away.stop()
        streams.stop()


def test_a_table_whose_catalog_is_locked_holds_the_others_only_while_its_commit_retries(tmp_path, launched):
    """customers has a catalog of its own (the SQLite file of its own warehouse), which another
    process holds locked mid-run: customers' commit is retried, in lines naming it; the others'
    next commits wait for that round (a local round ends when every table has committed) and go
    on once the lock is released; every table ends exact, each committing batch after batch."""
    streams = Streams(seed=7, chunks=40, every_s=0.5).start()
    customers_warehouse = tmp_path / "customers-warehouse"
    try:
        props = properties(tmp_path, "iceberg", streams.server.port,
                           **{"table.customers.iceberg.catalog.warehouse": str(customers_warehouse)})
        run = cli(launched, tmp_path, "run", "--config", str(props))
        streams.feed_once_polled(run)
        deadline = time.monotonic() + 120
        while "pixels.dim_customers" not in {c.table for c in run.commits()}:
            assert time.monotonic() < deadline and run.proc.poll() is None, run.describe()
            time.sleep(0.05)

        holder = sqlite3.connect(customers_warehouse / "catalog.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        run.wait_for(r"pixels\.dim_customers: catalog unavailable while trying to \w+ .*database is locked", timeout=60)
        time.sleep(4)
        orders_while_locked = sum(1 for c in run.commits() if c.table == "pixels.orders")
        holder.execute("COMMIT")
        holder.close()
        run.wait_for(r"pixels\.dim_customers: catalog back after \d+ retries", timeout=60)
        deadline = time.monotonic() + 60
        while sum(1 for c in run.commits() if c.table == "pixels.orders") < orders_while_locked + 2:
            assert time.monotonic() < deadline and run.proc.poll() is None, f"orders stopped committing:\n{run.describe()}"
            time.sleep(0.05)
        streams.wait_all_loaded()
        run_cli_to_end(run, timeout=180)

        config = PixelsConfig.load(props)
        for name, table in config.tables().items():
            assert_table_exact(table, streams.tables[name])
            batches = [c.batch_id for c in run.commits() if c.table == f"pixels.{table.iceberg_table}"]
            assert batches == list(range(1, len(batches) + 1)), (name, batches)
        assert "unavailable" not in "".join(line for line in run.output.splitlines() if "pixels.orders" in line)
    finally:
        streams.stop()


def test_the_steps_of_a_job_do_not_grow_with_its_tables(tmp_path):
    """Every table goes through the same steps: a job of ten tables makes as many of the local
    runner's stages (bundle processors, each round) as a job of three."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    def stages(count: int) -> tuple[int, list[str]]:
        names = [f"t{i}" for i in range(count)]
        props = {"pixels.server.port": "50051", "iceberg.catalog.warehouse": str(tmp_path / "warehouse"),
                 "tables": ",".join(names), **{f"table.{n}.source.schema": TABLES["orders"][0] for n in names}}
        p = beam.Pipeline(runner=FnApiRunner())
        app.build_pipeline(p, PixelsConfig.from_properties(props).tables(), local_run=True,
                           round_keys={n: n for n in names})  # as a local run builds it
        proto = p.to_runner_api()
        polls = [t.unique_name for t in proto.components.transforms.values() if t.unique_name.endswith("/Poll")]
        return len(FnApiRunner().create_stages(proto)[1]), polls

    (three, polls), (ten, _) = stages(3), stages(10)
    assert three == ten, f"{three} stages for 3 tables, {ten} for 10"
    assert polls == ["ReadFromPixels/Poll"]
