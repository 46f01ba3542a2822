"""Iceberg's REST catalog server (``iceberg-open-api``) as the connector's catalog, and catalogs
that are briefly away: a REST catalog frozen (SIGSTOP) or restarted on the same port and
database mid-stream, a SQLite catalog locked by another process. The run waits, retries with
backoff (``sink.catalog.retry.ms``) and ends exact; a catalog away for longer ends the run
with one line, and a restart loses nothing. (Paimon's catalog is its warehouse's file system:
see docs/other-engines.md.)"""

from __future__ import annotations

import re
import sqlite3
import time

import pytest
from app_helpers import SCHEMA, cdc_history, free_port, last_checkpoint, load_config, run_cli_to_end, stored_in_flight, table_state, write_properties
from engines import RestCatalogServer, feed, require
from test_app import assert_commits_account_for_everything, launch, run_args, serve  # noqa: F401 (fixtures)


COMMITTED = r"committed batch \d+"
RETRY_LINE = r"catalog unavailable while trying to \w+"


@pytest.fixture
def rest_catalog(tmp_path):
    """A REST catalog server on a free port, backed by SQLite under tmp_path; stopped at the end."""
    server = RestCatalogServer(require(), tmp_path / "rest", free_port()).start()
    yield server
    server.stop()


def _properties(tmp_path, catalog: dict[str, str], **settings: str):
    return write_properties(tmp_path, "iceberg", {
        "checkpoint.interval.ms": "1000",
        "source.stop.after.idle.ms": "3000",
        **{f"iceberg.catalog.{k}": v for k, v in catalog.items()},
        **settings,
    })


def test_a_run_through_the_rest_catalog_restarts_exactly_once_and_maintains(tmp_path, serve, launch, rest_catalog):  # noqa: F811
    history = cdc_history(2400, seed=31)
    server = serve(history[:600])
    properties = _properties(tmp_path, rest_catalog.catalog_properties(), **{
        "iceberg.maintenance.interval.ms": "1000", "iceberg.maintenance.compaction.deleted.percent": "5"})
    first = launch.cli(*run_args(properties, server.port))
    first.wait_for(COMMITTED, timeout=90)
    feeder = feed(server, history[600:1800], chunk=100, every_s=0.3)
    first.wait_for(COMMITTED, timeout=60, count=4)
    first.kill()  # SIGKILL, mid-stream
    feeder.join(30)
    in_flight = server.unconfirmed_responses()  # responses the killed run may or may not have stored
    config = load_config(properties, server.port)
    handed_out_before = len(server.handed_out())
    committed_before = sum(last_checkpoint(config).positions.values())
    server.load_cdc(history[1800:])

    second = run_cli_to_end(launch.cli(*run_args(properties, server.port)), timeout=180)

    stored, kept = stored_in_flight(table_state(config), server.handed_out(), in_flight)
    # Each change committed once: the table's positions count the changes it holds.
    assert sum(last_checkpoint(config).positions.values()) == len(kept), second.describe()
    # What the table holds of the killed run's changes beyond its own last commit (a response it
    # committed before the kill, but never confirmed by polling again, needs no replay) can only
    # have come back from the journal.
    lost = sum(len(response) for response in in_flight if not any(response is s for s in stored))
    assert "replaying" in second.output or handed_out_before - lost == committed_before, second.describe()
    assert re.search(r"maintained pixels\.iceberg_orders: .* [1-9]\d* files compacted", first.output + second.output), \
        first.describe() + second.describe()


def _streaming_run(tmp_path, serve, launch, catalog: dict[str, str], seed: int, chunk: int = 100):  # noqa: F811
    """A run into ``catalog`` with 2,000 changes arriving over a few seconds, three commits in:
    the mock server, the properties file, the run and the thread feeding the server."""
    history = cdc_history(2000, seed=seed)
    server = serve(history[:200])
    properties = _properties(tmp_path, catalog)
    run = launch.cli(*run_args(properties, server.port))
    run.wait_for(COMMITTED, timeout=90)
    feeder = feed(server, history[200:], chunk=chunk, every_s=0.5)
    run.wait_for(COMMITTED, timeout=60, count=3)
    return server, properties, run, feeder


def test_a_frozen_rest_catalog_is_waited_for(tmp_path, serve, launch, rest_catalog):  # noqa: F811
    server, properties, run, feeder = _streaming_run(tmp_path, serve, launch, rest_catalog.catalog_properties(), seed=32)

    rest_catalog.freeze()
    time.sleep(5)
    before = len(run.commits())
    time.sleep(20)
    frozen_commits = len(run.commits()) - before
    rest_catalog.thaw()
    feeder.join(60)

    run_cli_to_end(run, timeout=180)
    assert frozen_commits == 0, "the run committed while its catalog was frozen: the freeze missed the run"
    assert_commits_account_for_everything(run, load_config(properties, server.port), server)


def test_a_rest_catalog_restarted_on_its_port_is_waited_for(tmp_path, serve, launch, rest_catalog):  # noqa: F811
    server, properties, run, feeder = _streaming_run(tmp_path, serve, launch, rest_catalog.catalog_properties(), seed=33)

    rest_catalog.stop()
    run.wait_for(RETRY_LINE, timeout=60)
    time.sleep(25)
    rest_catalog.start()
    feeder.join(60)

    run_cli_to_end(run, timeout=180)
    assert re.search(r"catalog back after \d+ retries", run.output), run.describe()
    assert_commits_account_for_everything(run, load_config(properties, server.port), server)


def test_a_locked_sqlite_catalog_is_waited_for(tmp_path, serve, launch):  # noqa: F811
    # The SQL catalog's SQLite file in the warehouse; changes arrive slower, for the locks below.
    server, properties, run, feeder = _streaming_run(tmp_path, serve, launch, {"type": "sql"}, seed=34, chunk=40)
    warehouse = tmp_path / "warehouse" / "iceberg"

    # Another process holds the catalog file locked for longer than SQLite's busy timeout (5 s):
    # first for writing (reads wait too), then for reading (commits wait: SQLite refuses the
    # COMMIT, which leaves the refused transaction open on the connection).
    holder = sqlite3.connect(warehouse / "catalog.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    run.wait_for(RETRY_LINE + r".*database is locked", timeout=60)
    time.sleep(3)
    holder.execute("COMMIT")
    retries = len(re.findall(RETRY_LINE, run.output))
    holder.execute("BEGIN")
    holder.execute("SELECT count(*) FROM iceberg_tables").fetchall()
    run.wait_for(r"catalog unavailable while trying to commit .*database is locked", timeout=60)
    time.sleep(3)
    holder.execute("COMMIT")
    holder.close()
    feeder.join(60)

    run_cli_to_end(run, timeout=180)
    assert retries >= 1 and re.search(r"catalog back after \d+ retries", run.output), run.describe()
    # The refused commit was not taken for done: every round's changes were committed by it.
    assert "already committed; nothing to do" not in run.output, run.describe()
    assert_commits_account_for_everything(run, load_config(properties, server.port), server)


def test_a_catalog_away_too_long_ends_the_run_with_one_line_and_loses_nothing(tmp_path, serve, launch, rest_catalog):  # noqa: F811
    history = cdc_history(1600, seed=35)
    server = serve(history[:400])
    properties = _properties(tmp_path, rest_catalog.catalog_properties(), **{"sink.catalog.retry.ms": "4000"})
    run = launch.cli(*run_args(properties, server.port))
    run.wait_for(COMMITTED, timeout=90)
    feeder = feed(server, history[400:1200], chunk=100, every_s=0.3)
    rest_catalog.stop()  # while changes keep arriving: rounds poll them and cannot commit

    assert run.wait(120) == 3, run.describe()
    feeder.join(30)
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("beam-pixels: pixels.iceberg_orders: the catalog was away for "), run.describe()
    assert "sink.catalog.retry.ms=4000" in last_line and "Nothing is lost" in last_line, last_line
    assert "Traceback" not in run.stderr, run.describe()

    rest_catalog.start()
    config = load_config(properties, server.port)
    before = last_checkpoint(config)
    server.load_cdc(history[1200:])
    second = run_cli_to_end(launch.cli(*run_args(properties, server.port)), timeout=120)
    assert len(server.handed_out()) == len(history) and server.pending() == 0 and not server.unconfirmed()
    assert_commits_account_for_everything(second, config, server, since=before)
