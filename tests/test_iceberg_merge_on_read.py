"""Merge-on-read commits against real tables (SQLite catalog), read back by pyiceberg and DuckDB.

A commit must rewrite no data file, delete replaced rows by position only, find
them with the key index (which survives new writers in the same process and is
rebuilt when another process changed the table) and never apply a change twice.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyiceberg.manifest import DataFileContent

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.sinks.committing import CommitConflict
from beam_pixels.sinks.iceberg import IcebergTableWriter
from iceberg_stream import ORDERS, REGIONAL, Stream, commit, duckdb_table_rows, pyiceberg_rows, sql_catalog

TABLE = "db.orders"


def live_files(writer: IcebergTableWriter) -> tuple[set[str], set[str]]:
    """Paths of the current snapshot's data files and position-delete files."""
    writer.last_checkpoint()
    data, deletes = set(), set()
    for task in writer._table.scan().plan_files():
        data.add(task.file.file_path)
        deletes |= {d.file_path for d in task.delete_files if d.content == DataFileContent.POSITION_DELETES}
    return data, deletes


@pytest.fixture
def writer(tmp_path):
    w = IcebergTableWriter(ORDERS, TABLE, sql_catalog(tmp_path))
    w.open()
    yield w
    w.close()


def test_commits_rewrite_no_data_file_and_both_readers_see_the_final_state(writer):
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(400, inserts=1.0))])
    every_data_file: set[str] = set()
    for n in range(8):
        before, _ = live_files(writer)
        commit(writer, [stream.batch(stream.changes(120))])
        after, deletes = live_files(writer)
        assert before <= after, f"commit {n} removed a data file"
        every_data_file |= after
        assert stream.sort(pyiceberg_rows(writer)) == stream.expected(), f"after commit {n}"
    assert deletes, "updates and deletes of stored keys are position deletes"
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    summary = writer._table.current_snapshot().summary
    assert int(summary["total-position-deletes"]) > 0
    assert int(summary["total-delete-files"]) == len(deletes)


def test_delete_files_are_stored_compactly_and_both_readers_apply_them(writer):
    """A commit's position-delete file of a few hundred rows takes about a kilobyte, not three: no
    file_path statistics (long strings, twice) nor Arrow schema in its footer, the sorted positions
    delta-encoded; pyiceberg and DuckDB apply it exactly."""
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(2000, inserts=1.0))])
    commit(writer, [stream.batch(stream.changes(300, inserts=0.0))])
    _, deletes = live_files(writer)
    assert deletes
    for path in deletes:
        footer = pq.ParquetFile(path.removeprefix("file://")).metadata
        assert b"ARROW:schema" not in (footer.metadata or {})
        file_path, pos = (footer.row_group(0).column(i) for i in range(2))
        assert not file_path.is_stats_set and pos.is_stats_set
        assert "DELTA_BINARY_PACKED" in pos.encodings and "RLE_DICTIONARY" not in pos.encodings
        assert Path(path.removeprefix("file://")).stat().st_size < 1500 + 2 * footer.num_rows, footer.num_rows
    assert stream.sort(pyiceberg_rows(writer)) == stream.sort(duckdb_table_rows(writer)) == stream.expected()


def test_key_updated_in_several_commits_deleted_and_reinserted(writer):
    stream = Stream(ORDERS)

    def row(v: int) -> dict:
        return {"id": 5, "qty": v, "note": f"v{v}"}

    steps = [
        [(Op.INSERT, None, row(1)), (Op.INSERT, None, {"id": 6, "qty": 0, "note": None})],
        [(Op.UPDATE, row(1), row(2))],
        [(Op.UPDATE, row(2), row(3)), (Op.UPDATE, row(3), row(4))],
        [(Op.DELETE, row(4), None)],
        [(Op.INSERT, None, row(5))],  # a re-insert of the deleted key
        [(Op.DELETE, row(5), None), (Op.INSERT, None, row(6)), (Op.DELETE, {"id": 99, "qty": 0, "note": None}, None)],
    ]
    expected = [
        [row(1)], [row(2)], [row(4)], [], [row(5)], [row(6)],
    ]
    for n, (changes, five) in enumerate(zip(steps, expected)):
        commit(writer, [stream.batch(changes)])
        want = sorted(five + [{"id": 6, "qty": 0, "note": None}], key=lambda r: r["id"])
        assert sorted(pyiceberg_rows(writer), key=lambda r: r["id"]) == want, f"after step {n}"
        assert sorted(duckdb_table_rows(writer), key=lambda r: r["id"]) == want, f"DuckDB after step {n}"


def test_composite_string_key_is_hashed_and_verified(tmp_path):
    writer = IcebergTableWriter(REGIONAL, "sales.by_region", sql_catalog(tmp_path))
    writer.open()
    stream = Stream(REGIONAL, seed=3)
    commit(writer, [stream.batch(stream.changes(300, inserts=1.0))])
    for _ in range(5):
        commit(writer, [stream.batch(stream.changes(150))])
        assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    writer.close()


def test_new_writers_in_the_same_process_reuse_the_index(tmp_path, caplog):
    stream = Stream(ORDERS)
    with caplog.at_level(logging.INFO, logger="beam_pixels.sinks.iceberg"):
        for _ in range(4):  # one writer per round, as local runs build a new pipeline every round
            w = IcebergTableWriter(ORDERS, TABLE, sql_catalog(tmp_path))
            w.open()
            commit(w, [stream.batch(stream.changes(100))])
            w.close()
    builds = [r for r in caplog.records if "key index built" in r.getMessage()]
    assert len(builds) == 1
    announced = [r for r in caplog.records if "table db.orders at" in r.getMessage()]
    assert len(announced) <= 2  # "created" once, "using existing" at most once
    w.open()
    assert stream.sort(pyiceberg_rows(w)) == stream.expected()
    w.close()


RIVAL = textwrap.dedent(
    """
    import sys
    from beam_pixels.changes import ChangeBatch, Op, concat_records
    from beam_pixels.sinks.iceberg import IcebergTableWriter
    from iceberg_stream import ORDERS, sql_catalog

    warehouse, first, last = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    w = IcebergTableWriter(ORDERS, "db.orders", {"type": "sql", "warehouse": warehouse})
    w.open()
    changes = [(Op.INSERT, None, {"id": i, "qty": -i, "note": "rival"}) for i in range(first, last)]
    last_checkpoint = w.last_checkpoint()
    records = concat_records([ChangeBatch.from_changes(ORDERS, changes, poll_group=9)], ORDERS)
    w.commit(records, last_checkpoint.advance(records))
    """
)


def rival_upserts(tmp_path, first: int, last: int) -> None:
    """Another process upserts keys first..last-1 (qty=-id) through its own writer and index."""
    helpers = Path(__file__).resolve().parent  # run beside the helper modules it imports
    subprocess.run([sys.executable, "-c", RIVAL, sql_catalog(tmp_path)["warehouse"], str(first), str(last)], check=True, cwd=helpers)


def test_another_process_committing_in_between_is_seen_and_nothing_applies_twice(writer, tmp_path):
    stream = Stream(ORDERS)
    commit(writer, [stream.batch([(Op.INSERT, None, {"id": i, "qty": i, "note": None}) for i in range(20)])])
    for i in range(20):
        stream.state[(i,)] = {"id": i, "qty": i, "note": None}

    last = writer.last_checkpoint()
    rival_upserts(tmp_path, 10, 30)  # overwrites keys 10..19 after this writer read the table
    for i in range(10, 30):
        stream.state[(i,)] = {"id": i, "qty": -i, "note": "rival"}
    mine = [(Op.UPDATE, stream.state[(i,)], {"id": i, "qty": 100 + i, "note": "mine"}) for i in (5, 15, 25)]
    records = concat_records([stream.batch(mine)], ORDERS)
    with pytest.raises(CommitConflict):
        writer.commit(records, last.advance(records))
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()  # nothing of the lost commit landed

    commit(writer, [ChangeBatch.from_changes(ORDERS, mine, start_position=20)])  # redone on the new state
    for _, _, after in mine:
        stream.state[(after["id"],)] = after
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    commit(writer, [ChangeBatch.from_changes(ORDERS, mine, start_position=20)])  # a replay applies nothing
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
