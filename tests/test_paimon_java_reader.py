"""The connector's Paimon tables read with Paimon's own Java reader (paimon-bundle, see
``scripts/paimon-java-reader.sh``): after plain CDC commits of every column type, after the
committer's compactions and snapshot expirations (every retained snapshot), after a full
compaction, for a keyless changelog table, and after a ``beam-pixels run`` from a mock Pixels
server. Each read must hold exactly the expected rows, the same as pypaimon's read of the same
snapshot, all of them ``+I``.

Skipped when the reader is not installed (``scripts/paimon-java-reader.sh install``); with
``BEAM_PIXELS_REQUIRE_FLINK=1`` (set by ``.ci/run``) that is a failure instead.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal

import paimon_java_reader as java
import pytest
from app_helpers import SCHEMA, Run, cdc_history, expected_state, load_config, run_cli_to_end, write_properties
from test_paimon_maintenance import ORDERS, commit_batches, expected, open_table
from test_paimon_maintenance import read_rows as pypaimon_rows
from test_paimon_sink import ALL_TYPES, D, I, S, U, commit, final_state, full_row, nulls_row
from test_paimon_sink import read_rows as pypaimon_all_types
from test_pypaimon_private import live_data_file_paths

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.paimon import PaimonTableWriter
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon import dv_compaction
from beam_pixels.sinks.paimon.maintenance import live_files
from beam_pixels.testing import mock_data
from beam_pixels.testing.mock_server import MockPixelsServer

ROW_KIND = "_rowkind"


@pytest.fixture(autouse=True)
def _reader_installed():
    java.require()


def warehouse_properties(tmp_path) -> dict[str, str]:
    return {"type": "paimon", "warehouse": str(tmp_path / "warehouse")}


def orders_in_java(read: java.JavaRead) -> list[dict]:
    assert set(read.kinds) <= {"+I"} and {r[ROW_KIND] for r in read.rows} <= {"+I"}, read.kinds
    return read.sorted_rows(["region", "id"], ORDERS.names)


def test_every_column_type_reads_the_same_in_java(tmp_path):
    properties = warehouse_properties(tmp_path)
    writer = PaimonTableWriter(ALL_TYPES, "shop.items", properties, bucket=3)
    writer.open()
    first = [
        (S, None, full_row(1)),
        (S, None, full_row(2)),
        (I, None, full_row(3)),
        (I, None, nulls_row(4)),
        (I, None, full_row(4, code="CD")),
        (U, full_row(2), full_row(2, price=Decimal("-0.01"), f64=float("inf"), txt=None, fx=None)),
        (I, None, full_row(5, f32=float("-inf"), f64=-0.0, txt='quote " back\\slash\nnew line\t\x01 ☃ 😀')),
        (I, None, full_row(6)),
        (D, full_row(6), None),
    ]
    second = [
        (D, full_row(1), None),
        (U, full_row(3), full_row(30)),  # the key moves
        (U, nulls_row(4), full_row(4)),
        (I, None, full_row(6, label="back again", at=clock(0, 0))),
    ]
    commit(writer, ChangeBatch.from_changes(ALL_TYPES, first))
    commit(writer, ChangeBatch.from_changes(ALL_TYPES, second, start_position=len(first)))

    read = java.read(properties["warehouse"], "shop.items")
    assert read.version == "1.3.1" and read.snapshot == writer._table.snapshot_manager().get_latest_snapshot().id
    assert read.types["tstz"] == "TIMESTAMP(6) WITH LOCAL TIME ZONE" and read.types["fx"] == "BINARY(4)"
    assert set(read.kinds) == {"+I"}
    rows = read.sorted_rows(["id", "code"], ALL_TYPES.names)
    assert rows == final_state(ALL_TYPES, first, second)
    assert rows == pypaimon_all_types(properties, "shop.items", ALL_TYPES)
    assert [(r["id"], r["code"]) for r in rows] == [(2, "AB"), (4, "AB"), (4, "CD"), (5, "AB"), (6, "AB"), (30, "AB")]


EVENTS = SourceSchema.parse("id:BIGINT, ts:TIMESTAMP, day:DATE, note:STRING, txt:STRING, amount:DOUBLE",
                            primary_key=["id"])


def event_row(i: int, version: int = 0) -> dict:
    """An EVENTS row: ``note`` 16 hex digits (one length), ``txt`` of varied lengths."""
    return {"id": i, "ts": datetime(2024, 1, 1) + timedelta(seconds=7 * i + version),
            "day": date(2000, 1, 1) + timedelta(days=i), "note": f"{(i * 2654435761 + version) % 2**64:016x}",
            "txt": "x" * (i % 13) + str(version), "amount": i * 1.25 + version}


def test_files_in_every_encoding_the_writer_picks_read_the_same_in_java(tmp_path):
    """The writer encodes unique integers and timestamps ``DELTA_BINARY_PACKED`` and strings of
    one length ``DELTA_LENGTH_BYTE_ARRAY`` (``parquet_encodings``); Java must read them exactly."""
    import pyarrow.parquet as pq

    properties = warehouse_properties(tmp_path)
    writer = PaimonTableWriter(EVENTS, "shop.events", properties, bucket=2)
    writer.open()
    first = [(I, None, event_row(i)) for i in range(3000)]
    second = [(U, event_row(i), event_row(i, 1)) for i in range(0, 3000, 5)]
    second += [(D, event_row(i), None) for i in range(1, 3000, 7)]
    commit(writer, ChangeBatch.from_changes(EVENTS, first))
    commit(writer, ChangeBatch.from_changes(EVENTS, second, start_position=len(first)))

    encodings: dict[str, set[str]] = {}
    for path in live_data_file_paths(writer._table):
        metadata = pq.ParquetFile(path).metadata.row_group(0)
        for i in range(metadata.num_columns):
            encodings.setdefault(metadata.column(i).path_in_schema, set()).update(metadata.column(i).encodings)
    assert {"id", "_KEY_id", "ts", "day", "_SEQUENCE_NUMBER"} <= {c for c, e in encodings.items()
                                                                  if "DELTA_BINARY_PACKED" in e}
    assert "DELTA_LENGTH_BYTE_ARRAY" in encodings["note"] and "DELTA_LENGTH_BYTE_ARRAY" not in encodings["txt"]

    rows = java.read(properties["warehouse"], "shop.events").sorted_rows(["id"], EVENTS.names)
    assert rows == final_state(EVENTS, first, second)
    assert rows == pypaimon_all_types(properties, "shop.events", EVENTS)


def test_compacted_and_expired_tables_read_the_same_in_java_at_every_snapshot(tmp_path, monkeypatch):
    """The committer compacts and expires (4 to 6 snapshots kept) as it commits; keys are
    deleted and re-inserted across compactions. The table has deletion vectors (the default),
    and its oldest runs are several files (a few rows each), so rewrites take in the newer
    runs' rows of their key ranges."""
    monkeypatch.setattr(dv_compaction, "MIN_FILE_ROWS", 5)
    properties = warehouse_properties(tmp_path)
    options = {"snapshot.num-retained.min": "4", "snapshot.num-retained.max": "6", "manifest.merge-min-count": "5"}
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=3, table_options=options)
    writer.open()
    state: dict = {}
    for rounds in range(4):
        commit_batches(writer, state, 1 + 6 * rounds, 6)
        table = open_table(properties)
        latest = private.latest_snapshot(table)
        earliest = private.earliest_snapshot_id(table)
        retained = range(earliest, latest.id + 1)
        reads = java.read_many(properties["warehouse"],
                               [("pixels.orders", {})] + [("pixels.orders", {"scan.snapshot-id": str(s)}) for s in retained])
        assert reads[0].snapshot == latest.id
        assert orders_in_java(reads[0]) == expected(state), f"latest snapshot {latest.id}"
        for sid, read in zip(retained, reads[1:]):
            assert read.snapshot == sid
            assert orders_in_java(read) == pypaimon_rows(table, sid), f"snapshot {sid}"
    kinds = {private.snapshot_by_id(table, s).commit_kind for s in retained}
    assert "COMPACT" in kinds, kinds
    assert earliest > 1, "snapshots were expired"

    # Java queries by key: Paimon prunes buckets by the key's hash and files by the key
    # statistics the connector wrote (compacted files included); a wrong bound would lose rows.
    keys = [(region, i) for region in ("eu", "us") for i in range(60)]
    queries = [("pixels.orders", {"where.region": region, "where.id": str(i)}) for region, i in keys]
    queries += [("pixels.orders", {"where.id": str(i)}) for i in range(60)]
    reads = java.read_many(properties["warehouse"], queries)
    for (_, where), read in zip(queries, reads):
        def matches(row, where=where):
            return all(str(row[name.removeprefix("where.")]) == value for name, value in where.items())

        assert read.filter is not None
        assert [r for r in orders_in_java(read) if matches(r)] == [r for r in expected(state) if matches(r)], where
    assert all(read.splits <= 1 for read in reads[:len(keys)]), "a key's query reads only its bucket"


def test_maintain_and_full_compaction_read_the_same_in_java(tmp_path):
    """A write-only table of many level-0 runs, then a pass of ``maintain()`` (universal
    compaction), then full compactions into the top level that drop the ``-D`` rows."""
    properties = warehouse_properties(tmp_path)
    write_only = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, write_only=True)
    write_only.open()
    state: dict = {}
    commit_batches(write_only, state, 1, 8)
    assert orders_in_java(java.read(properties["warehouse"], "pixels.orders")) == expected(state)

    compacting = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=2)
    compacting.open()
    report = compacting.maintain()
    assert report.buckets == 2, report.line()
    assert orders_in_java(java.read(properties["warehouse"], "pixels.orders")) == expected(state)

    # full compactions every third commit, on a table created with that option (without
    # deletion vectors: with them every bucket is read without merging anyway)
    full = PaimonTableWriter(ORDERS, "full", properties, bucket=2,
                             table_options={"full-compaction.delta-commits": "3", "deletion-vectors.enabled": "false"})
    full.open()
    state = {}
    reads = []
    for batch in range(1, 10):
        commit_batches(full, state, batch, 1)
        table = open_table(properties, "pixels.full")
        levels = {e.file.level for entries in live_files(table, private.latest_snapshot(table)).values()
                  for e in entries}
        assert (levels == {5}) == (batch % 3 == 0), f"batch {batch}: levels {levels}"
        reads.append(("pixels.full", {"scan.snapshot-id": str(private.latest_snapshot(table).id)}))
        assert pypaimon_rows(table) == expected(state)
    final = java.read_many(properties["warehouse"], reads)
    table = open_table(properties, "pixels.full")
    for (_, options), read in zip(reads, final):
        assert orders_in_java(read) == pypaimon_rows(table, int(options["scan.snapshot-id"]))
    assert orders_in_java(final[-1]) == expected(state)


def test_keyless_changelog_table_reads_the_same_in_java(tmp_path):
    properties = warehouse_properties(tmp_path)
    schema = SourceSchema.parse("name:STRING, qty:INT, price:DECIMAL(10,2)")
    writer = PaimonTableWriter(schema, "logs.events", properties,
                               table_options={"snapshot.num-retained.min": "2", "snapshot.time-retained": "1 ms"})
    writer.open()
    wanted = []
    for batch in range(1, 6):
        a = {"name": f"a{batch}", "qty": batch, "price": Decimal(f"{batch}.25")}
        changes = [(Op.INSERT, None, a), (Op.UPDATE, a, dict(a, qty=None)), (Op.DELETE, dict(a, qty=None), None)]
        checkpoint = writer.last_checkpoint()
        start = checkpoint.next_position(0)
        records = concat_records([ChangeBatch.from_changes(schema, changes, poll_group=0, start_position=start)], schema)
        writer.commit(records, checkpoint.advance(records))
        wanted += [
            dict(a, _op="INSERT", _poll_group=0, _position=start),
            dict(a, qty=None, _op="UPDATE", _poll_group=0, _position=start + 1),
            dict(a, qty=None, _op="DELETE", _poll_group=0, _position=start + 2),
        ]
    table = open_table(properties, "logs.events")
    latest = private.latest_snapshot(table).id  # five commits and, once five small files are there, a compaction
    assert private.earliest_snapshot_id(table) == latest - 1, "expired down to two snapshots"
    read = java.read(properties["warehouse"], "logs.events")
    assert list(read.types) == ["name", "qty", "price", "_op", "_poll_group", "_position"]
    assert set(read.kinds) == {"+I"}
    assert read.sorted_rows(["_position"]) == wanted
    builder = table.new_read_builder()
    pypaimon = builder.new_read().to_arrow(builder.new_scan().plan().splits()).to_pylist()
    assert sorted(pypaimon, key=lambda r: r["_position"]) == wanted


def test_runs_from_a_mock_server_read_the_same_in_java(tmp_path):
    """``beam-pixels run`` against a mock Pixels server, four times, each resuming where the
    last one committed (compacting and expiring as it commits), into a table Java reads as the
    final state of every change handed out."""
    history = cdc_history(2000, seed=21)
    server = MockPixelsServer(SCHEMA, batch_size=50)
    server.start()
    try:
        properties = write_properties(tmp_path, "paimon", {
            "paimon.bucket": "2", "paimon.compaction.trigger": "2",
            "paimon.table.options.snapshot.num-retained.min": "3",
            "paimon.table.options.snapshot.time-retained": "1 ms",
        })
        for part in range(4):
            server.load_cdc(history[500 * part:500 * (part + 1)])
            run_cli_to_end(Run.cli(tmp_path, "run", "--config", str(properties), "--set",
                                   f"pixels.server.port={server.port}"), timeout=120)
        assert len(server.handed_out()) == 2000
        config = load_config(properties, server.port)
        read = java.read(config.paimon_warehouse, f"{config.paimon_database}.{config.paimon_table}")
        assert read.snapshot > 4, "the committer compacted"
        assert set(read.kinds) == {"+I"}
        rows = [tuple(r[n] for n in SCHEMA.names) for r in read.rows]
        state = {mock_data.key_of(SCHEMA, row): mock_data.comparable(row) for row in rows}
        assert len(state) == len(rows), "a key read twice"
        assert state == expected_state(server)
    finally:
        server.stop()


def test_the_reader_fails_loudly_on_a_missing_table(tmp_path):
    (tmp_path / "warehouse").mkdir()
    with pytest.raises(AssertionError, match="TableNotExistException"):
        java.read(tmp_path / "warehouse", "pixels.nothing")

