"""Spark 4.0 with Iceberg's Java library beside the connector: it reads every retained snapshot
of the tables the connector writes exactly as DuckDB and pyiceberg do, and maintains a table
(Iceberg's SQL procedures) while the connector writes it under a CDC stream, through the
connector's SQLite catalog and through Iceberg's REST catalog server."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

import pytest
from app_helpers import SCHEMA, assert_table_is_final_state, cdc_history, expected_state, free_port, load_config, write_properties
from engines import RestCatalogServer, feed, require, spark_rows, spark_session, with_catalog
from iceberg_helpers import duckdb_rows
from iceberg_stream import ORDERS, Stream, commit
from test_app import launch, run_args, serve  # noqa: F401 (fixtures)

from beam_pixels import app
from beam_pixels.sinks.iceberg import IcebergTableWriter, maintenance
from beam_pixels.testing import mock_data

COMPACT_ALL = maintenance.Settings(interval_ms=1, deleted_percent=1, small_file_mb=1, orphan_age_ms=3_600_000,
                                   max_manifests=4, max_compact_percent=100)


@pytest.fixture(scope="module")
def spark():
    """One Spark session (JVM) for the module: a session starts in about 10 s."""
    return spark_session(require())


def _sql_catalog(directory) -> dict[str, str]:
    return {"type": "sql", "warehouse": f"file://{directory}", "uri": f"sqlite:///{directory}/catalog.db"}


def _by_id(rows) -> list[tuple]:
    return sorted((r["id"], r["qty"], r["note"]) for r in rows)


def test_spark_reads_every_retained_snapshot_as_duckdb_and_pyiceberg_do(tmp_path, spark):
    catalog = _sql_catalog(tmp_path / "warehouse")
    (tmp_path / "warehouse").mkdir()
    # Snapshots expire once five newer ones exist: maintenance passes expire some of them.
    writer = IcebergTableWriter(ORDERS, "db.orders", catalog, maintenance_settings=COMPACT_ALL, table_properties={
        "history.expire.max-snapshot-age-ms": "1", "history.expire.min-snapshots-to-keep": "6"})
    writer.open()
    stream = Stream(ORDERS, seed=11)
    expected_at: dict[int, list[tuple]] = {}
    passes = []
    for round_ in range(12):
        result = commit(writer, [stream.batch(stream.changes(150))])
        expected_at[result.snapshot_id] = _by_id(stream.expected())
        if round_ in (5, 9):
            passes.append(writer.maintain_now())
            expected_at[writer._table.current_snapshot().snapshot_id] = _by_id(stream.expected())

    table = writer._catalog.load_table(("db", "orders"))
    retained = [s.snapshot_id for s in table.metadata.snapshots]
    assert sum(p.snapshots_expired for p in passes) > 0 and sum(p.files_compacted for p in passes) > 0, passes
    assert len(retained) < len(expected_at), "no snapshot expired"
    # Merge-on-read: some delete file of the current snapshot deletes rows of several data files.
    data_files_per_delete_file: dict[str, set[str]] = {}
    for task in table.scan().plan_files():
        for delete in task.delete_files:
            data_files_per_delete_file.setdefault(delete.file_path, set()).add(task.file.file_path)
    assert max(map(len, data_files_per_delete_file.values()), default=0) >= 2, data_files_per_delete_file

    session = with_catalog(spark, catalog)
    for snapshot_id in retained:
        pyiceberg = _by_id(table.scan(snapshot_id=snapshot_id).to_arrow().to_pylist())
        duckdb = _by_id(_duckdb_rows_at(table.metadata_location, snapshot_id))
        spark_read = _by_id(spark_rows(session, f"SELECT * FROM pixels.db.orders VERSION AS OF {snapshot_id}"))
        assert spark_read == duckdb == pyiceberg == expected_at[snapshot_id], f"snapshot {snapshot_id}"
    writer.close()


def _duckdb_rows_at(metadata_location: str, snapshot_id: int) -> list[dict]:
    from beam_pixels.testing.duckdb_reader import connect

    con = connect()
    try:
        cursor = con.execute("SELECT * FROM iceberg_scan(?, snapshot_from_id = ?)", [metadata_location, snapshot_id])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.close()


# --- Spark maintains the table while the connector writes it ------------------------------


@contextlib.contextmanager
def _catalog_for(kind: str, tmp_path):
    """The connector's iceberg.catalog.* keys: its SQLite catalog, or a REST catalog server."""
    if kind == "sql":
        (tmp_path / "warehouse" / "iceberg").mkdir(parents=True)
        yield _sql_catalog(tmp_path / "warehouse" / "iceberg")
        return
    server = RestCatalogServer(require(), tmp_path / "rest", free_port()).start()
    try:
        yield server.catalog_properties()
    finally:
        server.stop()


def _call(session, procedure: str, arguments: str) -> tuple[dict | None, str | None]:
    """One procedure call: its first output row, or why it failed (a lost race, a locked catalog)."""
    try:
        rows = spark_rows(session, f"CALL pixels.system.{procedure}({arguments})")
        return (rows[0] if rows else {}), None
    except Exception as error:  # py4j carries the Java exception's text
        lines = [line for line in str(error).splitlines() if "Exception" in line and not line.lstrip().startswith("at ")]
        return None, " | ".join(lines[:3])[:600]


def _maintenance_calls(table: str) -> dict[str, str]:
    """Iceberg's maintenance procedures and their arguments, as of now."""
    now = datetime.now(timezone.utc)
    return {
        "rewrite_data_files": f"table => {table}, options => map('min-input-files', '2')",
        "rewrite_position_delete_files": f"table => {table}, options => map('rewrite-all', 'true')",
        "expire_snapshots": f"table => {table}, older_than => TIMESTAMP '{_at(now - timedelta(seconds=5))}', retain_last => 3",
        # Iceberg's shortest safe interval: files of the connector not yet committed are younger.
        "remove_orphan_files": f"table => {table}, older_than => TIMESTAMP '{_at(now - timedelta(days=1))}'",
    }


def _maintained(done: dict[str, list], orphan: Path) -> dict[str, bool]:
    """Which procedures did their work at least once."""
    return {
        "rewrite_data_files": any(r["rewritten_data_files_count"] > 0 for r in done["rewrite_data_files"]),
        "rewrite_position_delete_files": bool(done["rewrite_position_delete_files"]),
        "expire_snapshots": any(r["deleted_data_files_count"] + r["deleted_manifest_files_count"] > 0
                                for r in done["expire_snapshots"]),
        "remove_orphan_files": not orphan.exists(),
    }


@pytest.mark.timeout(480)
@pytest.mark.parametrize("kind", ["sql", "rest"])
def test_spark_maintains_a_table_while_the_connector_writes_it(tmp_path, serve, launch, spark, kind):  # noqa: F811
    history = cdc_history(60_000, seed=21)
    server = serve(history[:1500])
    with _catalog_for(kind, tmp_path) as catalog:
        properties = write_properties(tmp_path, "iceberg", {
            "checkpoint.interval.ms": "1000",
            # Longer than a lull (the connector drains, 4 s, then Spark's call): the run must outlive it.
            "source.stop.after.idle.ms": "30000",
            # Spark maintains the table (the connector's own compaction would race its rewrites).
            "iceberg.maintenance.enabled": "false",
            **{f"iceberg.catalog.{k}": v for k, v in catalog.items()},
        })
        run = launch.cli(*run_args(properties, server.port))
        run.wait_for(r"committed batch \d+", timeout=90)
        # The stream goes on until every procedure has done its work (or 3 minutes passed).
        stop, lull = threading.Event(), threading.Event()
        feeder = feed(server, history[1500:], chunk=100, every_s=0.5, stop=stop, lull=lull)
        config = load_config(properties, server.port)
        orphan = _plant_orphan(config)
        session = with_catalog(spark, catalog)
        table = "'pixels.pixels.iceberg_orders'"  # (namespace.table alone would name the catalog pixels)
        done: dict[str, list] = {name: [] for name in _maintenance_calls(table)}
        failures: list[str] = []
        tried: set[str] = set()
        deadline = time.monotonic() + 180
        try:
            while not all(_maintained(done, orphan).values()) and time.monotonic() < deadline and feeder.is_alive():
                for procedure, arguments in _maintenance_calls(table).items():
                    # Iceberg refuses to rewrite a data file the connector deleted rows from meanwhile,
                    # which a steady stream of updates does to every file: after a try under load,
                    # rewrite_data_files runs in a lull of the stream (the connector still running),
                    # whether that try was refused or rewrote nothing.
                    in_lull = procedure == "rewrite_data_files" and procedure in tried
                    if in_lull:
                        lull.set()
                        while server.pending():  # the connector catches up and commits what it polled
                            time.sleep(0.2)
                        time.sleep(4)
                    result, failure = _call(session, procedure, arguments)
                    tried.add(procedure)
                    lull.clear()
                    (done[procedure].append(result) if failure is None else failures.append(f"{procedure}: {failure}"))
            assert run.proc.poll() is None, "the run ended while the stream went on: " + run.describe()
        finally:
            stop.set()
            feeder.join(60)
        code = run.wait(180)
        assert code == 0 and "Traceback" not in run.output, run.describe()
        assert all(_maintained(done, orphan).values()), (_maintained(done, orphan), done, failures)
        # Every change exactly once: the connector's own reader, DuckDB and Spark read the final state.
        assert server.pending() == 0
        expected = expected_state(server)
        assert_table_is_final_state(config, server)
        with contextlib.closing(app.open_table_writer(config)) as writer:
            writer.last_checkpoint()
            assert _state(duckdb_rows(writer._table.metadata_location)) == expected
        assert _state(spark_rows(with_catalog(spark, catalog), "SELECT * FROM pixels.pixels.iceberg_orders")) == expected
    # The connector noticed the foreign rewrites and rebuilt its key index from the table.
    assert re.search(r"changed by another writer .* rebuilding the key index", run.output), run.describe()


def _plant_orphan(config) -> Path:
    """A file under the table's data directory that no snapshot references, two days old."""
    with contextlib.closing(app.open_table_writer(config)) as writer:
        writer.last_checkpoint()
        location = urlparse(writer._table.location()).path
    orphan = Path(location) / "data" / "orphan-planted-by-the-test.parquet"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"not referenced")
    two_days_ago = time.time() - 2 * 86400
    os.utime(orphan, (two_days_ago, two_days_ago))
    return orphan


def _at(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _state(rows: list[dict]) -> dict[tuple, tuple]:
    """Rows by key as the mock server's model holds them."""
    values = [tuple(row[name] for name in SCHEMA.names) for row in rows]
    state = {mock_data.key_of(SCHEMA, v): mock_data.comparable(v) for v in values}
    assert len(state) == len(values), "duplicate keys"
    return state
