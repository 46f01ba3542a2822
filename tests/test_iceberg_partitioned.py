"""Partitioned Iceberg tables (``iceberg.partition.spec``), written by the connector and read by
pyiceberg, DuckDB and Spark: every transform, updates that move rows to another partition,
deletes, an existing table's (evolved) spec honoured, compaction per partition, a filtered
read that plans only its partitions' files, and ``beam-pixels run`` killed with SIGKILL and
restarted."""

from __future__ import annotations

import collections
import datetime
import decimal
import logging

import pyarrow as pa
import pytest
from app_helpers import (cdc_history, last_checkpoint, load_config, run_cli_to_end,
                         stored_in_flight, table_state, write_properties)
from engines import feed, require, spark_rows, spark_session, with_catalog
from iceberg_helpers import duckdb_rows
from iceberg_stream import Stream, commit, pyiceberg_rows, sql_catalog
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.catalog import load_catalog
from pyiceberg.transforms import BucketTransform, DayTransform, MonthTransform
from pyiceberg.typedef import Record
from pyiceberg.types import (
    BinaryType,
    DateType,
    DecimalType,
    IntegerType,
    LongType,
    StringType,
    TimestampType,
    TimestamptzType,
)
from test_app import launch, run_args, serve  # noqa: F401 (fixtures)

from beam_pixels import app
from beam_pixels.config import PixelsConfig
from beam_pixels.errors import ConfigError
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.iceberg import IcebergTableWriter, files, maintenance, merge_on_read
from beam_pixels.sinks.iceberg.partitioning import Term, describe, parse_spec, partition_rows, transform_column

EVENTS = SourceSchema.parse("id:BIGINT, qty:INT, note:STRING, ts:TIMESTAMP, d:DATE", primary_key=["id"])
START = datetime.datetime(2025, 11, 20)  # 5 hours a version: rows span two years


class ClockStream(Stream):
    """The stream of :class:`iceberg_stream.Stream` whose rows also carry a moving clock: each
    new version is 5 hours later (``ts``, and its date ``d``), so an update moves its row to a
    later hour, day and month; ``qty`` (the version) moves it across truncate(100, qty)."""

    def _row(self, key: tuple) -> dict:
        row = super()._row(key)
        ts = START + datetime.timedelta(hours=5 * self.version, minutes=self.version % 60)
        return {**row, "ts": ts, "d": ts.date()}


def open_writer(tmp_path, spec: str, schema: SourceSchema = EVENTS, **kwargs) -> IcebergTableWriter:
    writer = IcebergTableWriter(schema, "db.events", sql_catalog(tmp_path), partition_spec=parse_spec(spec), **kwargs)
    writer.open()
    return writer


def by_id(rows: list[dict]) -> list[tuple]:
    return sorted((r["id"], r["qty"], r["note"], r["ts"], r["d"]) for r in rows)


def live_files(writer: IcebergTableWriter):
    """The current snapshot's data files and delete files (each once)."""
    writer.last_checkpoint()
    tasks = list(writer._table.scan().plan_files())
    deletes = {d.file_path: d for t in tasks for d in t.delete_files}
    return [t.file for t in tasks], list(deletes.values())


def assert_each_file_holds_one_partition(writer: IcebergTableWriter) -> None:
    """Every data file's rows lie in the partition the file is recorded in, under its spec."""
    table = writer._table
    specs = table.specs()
    data, _ = live_files(writer)
    for data_file in data:
        rows = files.read_parquet(table, data_file.file_path)
        groups = partition_rows(specs[data_file.spec_id], table.schema(), rows)
        assert [g.key.partition if g.key else None for g in groups] in ([data_file.partition], [None]), data_file.file_path


# --- the transforms -----------------------------------------------------------------------

_TIMES = [datetime.datetime(1969, 12, 31, 23, 59, 59), datetime.datetime(1970, 1, 1), START,
          datetime.datetime(2024, 2, 29, 13, 30), None, datetime.datetime(1900, 7, 4, 1, 2, 3)]
COLUMNS = [
    (IntegerType(), pa.array([0, -1, 7, 123456, None, -99], pa.int32())),
    (LongType(), pa.array([0, -1, 2**40, -(2**50), None, 34], pa.int64())),
    (DateType(), pa.array([datetime.date(1969, 12, 31), datetime.date(1970, 1, 1), None,
                           datetime.date(2026, 12, 31), datetime.date(1800, 3, 1), datetime.date(2000, 2, 29)])),
    (TimestampType(), pa.array(_TIMES, pa.timestamp("us"))),
    (TimestamptzType(), pa.array(_TIMES, pa.timestamp("us", tz="UTC"))),
    (StringType(), pa.array(["", "a", "héllo wörld", None, "abcdefgh", "ü" * 9])),
    (BinaryType(), pa.array([b"", b"\x00\x01\x02\x03\x04\x05", None, b"xyz", b"abcdefgh", b"\xff" * 7])),
    (DecimalType(10, 2), pa.array([decimal.Decimal("1.23"), decimal.Decimal("-0.01"), None, decimal.Decimal("99999999.99"),
                                   decimal.Decimal("0"), decimal.Decimal("-12.50")], pa.decimal128(10, 2))),
]
TERMS = [Term("identity", "c"), Term("year", "c"), Term("month", "c"), Term("day", "c"), Term("hour", "c"),
         Term("bucket", "c", 16), Term("bucket", "c", 7), Term("truncate", "c", 3), Term("truncate", "c", 10)]


def _partition_representation(source_type, value):
    """A Python value as pyiceberg's transforms take it: dates as days, timestamps as micros."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        epoch = datetime.datetime(1970, 1, 1, tzinfo=value.tzinfo)
        return (value - epoch) // datetime.timedelta(microseconds=1)
    if isinstance(value, datetime.date):
        return (value - datetime.date(1970, 1, 1)).days
    return value


# Every transform on every type it applies to (the others are refused at start: see the config test).
APPLICABLE = [
    pytest.param(term, source_type, column, id=f"{term}-{source_type}")
    for term in TERMS
    for source_type, column in COLUMNS
    if term.pyiceberg_transform().can_transform(source_type)
]


@pytest.mark.parametrize("term, source_type, column", APPLICABLE)
def test_every_transform_computes_what_pyiceberg_computes(term, source_type, column):
    transform = term.pyiceberg_transform()
    per_value = transform.transform(source_type)
    expected = [per_value(_partition_representation(source_type, v)) for v in column.to_pylist()]
    got = [_partition_representation(source_type, v) for v in transform_column(term, source_type, column).to_pylist()]
    assert got == expected


@pytest.mark.parametrize(
    "spec",
    ["id", "year(ts)", "month(d)", "day(ts)", "hour(ts)", "bucket(4,id)", "truncate(3,note)", "truncate(100,qty)",
     "day(ts),bucket(4,id)"],
)
def test_each_transform_writes_a_table_every_reader_reads_exactly(tmp_path, spec):
    writer = open_writer(tmp_path, spec)
    stream = ClockStream(EVENTS, seed=3)
    commit(writer, [stream.batch(stream.changes(150, inserts=1.0))])
    for n in range(4):  # 30% inserts, 60% updates (each moves its row to a later time), 10% deletes
        commit(writer, [stream.batch(stream.changes(80))])
        assert by_id(pyiceberg_rows(writer)) == by_id(stream.expected()), f"commit {n}"
    data, deletes = live_files(writer)
    assert len({f.partition for f in data}) > 1, "one partition only: the spec was not applied"
    assert deletes and all(d.content == DataFileContent.POSITION_DELETES for d in deletes)
    assert_each_file_holds_one_partition(writer)
    assert by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())
    assert describe(writer._table.spec(), writer._table.schema()) == spec
    writer.close()


def test_an_update_that_moves_a_row_deletes_it_in_its_old_partition(tmp_path):
    writer = open_writer(tmp_path, "month(ts)")
    stream = Stream(EVENTS)

    def row(month: int, qty: int) -> dict:
        ts = datetime.datetime(2026, month, 15, 12)
        return {"id": 1, "qty": qty, "note": f"m{month}", "ts": ts, "d": ts.date()}

    other = {"id": 2, "qty": 0, "note": "stays", "ts": datetime.datetime(2026, 1, 2), "d": datetime.date(2026, 1, 2)}
    commit(writer, [stream.batch([(0, None, row(1, 1)), (0, None, other)])])
    commit(writer, [stream.batch([(1, row(1, 1), row(4, 2))])])
    data, deletes = live_files(writer)
    month = MonthTransform().transform(TimestampType())
    january, april = (month(_partition_representation(None, datetime.datetime(2026, m, 15))) for m in (1, 4))
    assert sorted(f.partition[0] for f in data) == [january, april]
    (delete,) = deletes
    assert (delete.partition[0], delete.spec_id, delete.record_count) == (january, writer._table.spec().spec_id, 1)
    expected = [(1, 2, "m4", datetime.datetime(2026, 4, 15, 12), datetime.date(2026, 4, 15)),
                (2, 0, "stays", other["ts"], other["d"])]
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == expected
    commit(writer, [stream.batch([(2, row(4, 2), None)])])  # a delete, in April
    _, deletes = live_files(writer)
    assert sorted(d.partition[0] for d in deletes) == [january, april]
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == expected[1:]
    writer.close()


def test_a_filtered_read_plans_only_the_files_of_its_partitions(tmp_path):
    writer = open_writer(tmp_path, "day(ts),bucket(4,id)")
    stream = ClockStream(EVENTS, seed=5)
    commit(writer, [stream.batch(stream.changes(400, inserts=1.0))])
    commit(writer, [stream.batch(stream.changes(100))])
    writer.last_checkpoint()
    table = writer._table
    all_files = {t.file.file_path for t in table.scan().plan_files()}
    day = START + datetime.timedelta(days=10)
    one_day = And(GreaterThanOrEqual("ts", day.isoformat()), LessThan("ts", (day + datetime.timedelta(days=1)).isoformat()))
    planned = list(table.scan(row_filter=one_day).plan_files())
    wanted_day = DayTransform().transform(TimestampType())(_partition_representation(None, day))
    assert planned and {t.file.partition[0] for t in planned} == {wanted_day}
    assert len(planned) < len(all_files) / 5, "the filter pruned too little"
    assert {d.partition[0] for t in planned for d in t.delete_files} <= {wanted_day}
    expected = [r for r in stream.expected() if day <= r["ts"] < day + datetime.timedelta(days=1)]
    assert by_id(table.scan(row_filter=one_day).to_arrow().to_pylist()) == by_id(expected)
    one_bucket = list(table.scan(row_filter=EqualTo("id", stream.expected()[0]["id"])).plan_files())
    assert len({t.file.partition[1] for t in one_bucket}) == 1, "a key filter plans one bucket"
    writer.close()


# --- an existing table's spec ------------------------------------------------------------------


def test_an_existing_tables_spec_evolved_by_another_engine_is_honoured(tmp_path, caplog):
    writer = open_writer(tmp_path, "month(ts)")
    stream = ClockStream(EVENTS, seed=8)
    commit(writer, [stream.batch(stream.changes(200, inserts=1.0))])
    writer.close()
    # Another engine (pyiceberg here) evolves the spec: month(ts) becomes day(ts), plus bucket(4, id).
    catalog = load_catalog("pixels", **{**sql_catalog(tmp_path), "uri": f"sqlite:///{tmp_path}/warehouse/catalog.db"})
    table = catalog.load_table(("db", "events"))
    with table.update_spec() as update:
        update.remove_field("ts_month")
        update.add_field("ts", DayTransform(), "ts_day")
        update.add_field("id", BucketTransform(4), "id_bucket")
    evolved = catalog.load_table(("db", "events")).spec()
    assert evolved.spec_id == 1

    with caplog.at_level(logging.WARNING, logger="beam_pixels.sinks.iceberg.writer"):
        writer = open_writer(tmp_path, "month(ts)")
    assert any("writing with the table's own spec" in r.getMessage() and "iceberg.partition.spec=month(ts)" in r.getMessage()
               for r in caplog.records), caplog.text
    for _ in range(3):  # updates of rows written under spec 0 delete them in spec 0's partitions
        commit(writer, [stream.batch(stream.changes(100))])
    data, deletes = live_files(writer)
    assert {f.spec_id for f in data} == {0, 1} and {d.spec_id for d in deletes} == {0, 1}
    assert all(f.partition[len(evolved.fields) - 1] is not None for f in data if f.spec_id == 1)  # id_bucket written
    assert_each_file_holds_one_partition(writer)
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())

    # Compaction rewrites into the current spec, per partition; the table stays exact.
    report = maintenance.run_pass(writer._table, maintenance.Settings(deleted_percent=1, max_compact_percent=100), ["id"], {})
    assert report.files_compacted > 0, report
    assert_each_file_holds_one_partition(writer)
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())
    writer.close()


def churned_writer(tmp_path, spec: str, *, seed: int, rows: int, changes: int):
    """A writer (its maintenance off) on a table partitioned by ``spec``: ``rows`` inserted, then six
    commits of ``changes`` changes; and the stream that made them."""
    writer = open_writer(tmp_path, spec, maintenance_settings=maintenance.Settings(enabled=False))
    stream = ClockStream(EVENTS, seed=seed)
    commit(writer, [stream.batch(stream.changes(rows, inserts=1.0))])
    for _ in range(6):
        commit(writer, [stream.batch(stream.changes(changes))])
    return writer, stream


def test_a_commit_leaves_at_most_three_delete_files_in_each_partition_it_deletes_in(tmp_path):
    """Each commit takes a partition's smaller recent delete files into its own (the two largest,
    one a pass's fold, stay): readers open at most three delete files per partition, however many commits
    since the last pass, and the table stays exact."""
    writer, stream = churned_writer(tmp_path, "day(ts),bucket(4,id)", seed=12, rows=1500, changes=300)
    _, deletes = live_files(writer)
    per_partition = collections.Counter(files.partition_of(d) for d in deletes)
    assert len(per_partition) > 4 and max(per_partition.values()) <= 3 == merge_on_read.DELETE_FILES_PER_PARTITION
    snapshots = writer._table.snapshots()
    assert sum(int(s.summary.additional_properties.get("removed-delete-files", 0)) for s in snapshots) > 0
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())

    maintenance.run_pass(writer._table, maintenance.Settings(deleted_percent=100), ["id"], {})  # folds to one each
    commit(writer, [stream.batch(stream.changes(300))])
    _, deletes = live_files(writer)
    assert max(collections.Counter(files.partition_of(d) for d in deletes).values()) == 2
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())
    writer.close()


def test_maintenance_compacts_within_partitions_and_keeps_a_delete_file_per_partition(tmp_path):
    writer, stream = churned_writer(tmp_path, "bucket(4,id)", seed=9, rows=2000, changes=300)
    data, deletes = live_files(writer)
    assert len(deletes) > 4, "several delete files per partition before compaction"
    settings = maintenance.Settings(deleted_percent=5, max_compact_percent=100)
    report = maintenance.run_pass(writer._table, settings, ["id"], {})
    assert report.files_compacted > 0, report
    data, deletes = live_files(writer)
    assert len(deletes) <= 4 and len({(d.spec_id, d.partition) for d in deletes}) == len(deletes)
    assert len(data) <= 4 + 6 * 4, "small files of a partition were not merged"
    assert_each_file_holds_one_partition(writer)
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())
    # A second pass finds nothing to rewrite: no churn of files that are alone in their partition.
    again = maintenance.run_pass(writer._table, settings, ["id"], {})
    assert again.files_compacted == 0, again
    commit(writer, [stream.batch(stream.changes(200))])  # the key index followed the rewrite
    assert by_id(pyiceberg_rows(writer)) == by_id(stream.expected())
    writer.close()


def test_a_pass_folds_a_bounded_number_of_delete_files_most_first_and_merges_small_files_within_its_share(tmp_path, monkeypatch):
    writer, stream = churned_writer(tmp_path, "bucket(8,id)", seed=5, rows=4000, changes=200)
    before, deletes = live_files(writer)
    per_partition = {}
    for f in deletes:
        per_partition.setdefault(files.partition_of(f), []).append(f)
    assert min(len(group) for group in per_partition.values()) > 1, "several delete files in every partition"
    # Room for the delete files of three partitions, no more; no data file rewritten.
    bound = sum(sorted((len(g) for g in per_partition.values()), reverse=True)[:3])
    settings = maintenance.Settings(deleted_percent=100, small_file_mb=0, max_delete_files=bound)
    report = maintenance.run_pass(writer._table, settings, ["id"], {})
    after, deletes_after = live_files(writer)
    assert {f.file_path for f in after} == {f.file_path for f in before}
    folded = [f for f in deletes if f.file_path not in {d.file_path for d in deletes_after}]
    assert 0 < len(folded) <= bound
    assert "delete files of" in "; ".join(report.stopped), report  # the rest waits for the next pass
    still = {d.file_path for d in deletes_after}
    left = [p for p, group in per_partition.items() if all(f.file_path in still for f in group)]
    assert left and max(len(per_partition[p]) for p in left) <= min(
        len(per_partition[files.partition_of(f)]) for f in folded
    ), "the partitions with most delete files are folded first"
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())

    # Small files: merged within a partition, two or more at a time, within the pass's share.
    table_bytes = sum(f.file_size_in_bytes for f in after)
    monkeypatch.setattr(maintenance, "MIN_FILE_BYTES", 1)  # no floor: the share applies to this small table
    maintenance.run_pass(writer._table, maintenance.Settings(deleted_percent=100, max_compact_percent=30), ["id"], {})
    merged, _ = live_files(writer)
    rewritten = [f for f in after if f.file_path not in {a.file_path for a in merged}]
    by_part = {}
    for f in rewritten:
        by_part.setdefault(files.partition_of(f), []).append(f)
    assert by_part and all(len(group) > 1 for group in by_part.values()), "a file was rewritten alone in its partition"
    assert sum(f.file_size_in_bytes for f in rewritten) <= 2 * table_bytes * 30 / 100
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())
    commit(writer, [stream.batch(stream.changes(200))])  # the key index followed the rewrite
    assert by_id(pyiceberg_rows(writer)) == by_id(stream.expected())
    writer.close()


def _data_file(name: str, partition: tuple, size: int) -> DataFile:
    data_file = DataFile.from_args(content=DataFileContent.DATA, file_path=f"file:///t/{name}.parquet",
                                   file_format=FileFormat.PARQUET, partition=Record(*partition), record_count=size // 30,
                                   file_size_in_bytes=size)
    data_file.spec_id = 0
    return data_file


def test_a_pass_spends_its_bytes_on_the_newest_small_files_of_every_partition_first():
    """Today's partitions of a day(ts),bucket(4,id) table: each holds a merged tier (200 KB) and 12
    commits' small files (10 KB each), yesterday's a few of 40 KB and one of 15 KB (the day's last
    commit, less than half the next: it must not keep the others from merging). A pass whose budget covers every
    small file but not the tiers merges the small files of all partitions (files per partition down
    from 13 to 2, yesterday's from 4 to 1), not the tiers of the partitions with most files first (which
    left yesterday's partitions as they were)."""
    today, yesterday = 20_001, 20_000
    data = []
    for bucket in range(4):
        data.append(_data_file(f"tier-{bucket}", (today, bucket), 200_000))
        data += [_data_file(f"commit-{bucket}-{i}", (today, bucket), 10_000) for i in range(12)]
        data += [_data_file(f"old-{bucket}-{i}", (yesterday, bucket), 40_000) for i in range(3)]
        data.append(_data_file(f"last-{bucket}", (yesterday, bucket), 15_000))  # the day's last commit: few rows
    small = sum(f.file_size_in_bytes for f in data if f.file_size_in_bytes < 200_000)
    settings = maintenance.Settings(max_compact_mb=1, max_compact_percent=100)  # a budget of 1 MiB
    assert small < 2**20 < small + 200_000
    chosen = maintenance._choose(data, {}, settings)
    assert sum(f.file_size_in_bytes for f in chosen) <= 2**20
    assert {f.file_path for f in chosen} == {f.file_path for f in data if f.file_size_in_bytes < 200_000}
    left = collections.Counter(files.partition_of(f) for f in data if f not in chosen)
    merged = collections.Counter(files.partition_of(f) for f in chosen)
    assert max(left[p] + (merged[p] > 0) for p in {files.partition_of(f) for f in data}) <= 2


def test_a_growing_partition_is_merged_in_tiers_that_each_rewrite_rarely():
    """Today's bucket as passes see it: each pass finds 14 new commit files (8 KB each) beside the
    tiers merged before. Over six passes (a day) the merges rewrite at most 1.7 times the
    partition's bytes (a tier is merged once the smaller files add up to twice it; at once they
    add up to half of it, the merged tier was rewritten by most passes: 2.2 times), and the
    partition holds at most three files after a pass."""
    settings = maintenance.Settings(max_compact_mb=1024, max_compact_percent=100)  # no budget limit
    partition, data, rewritten, most = (20_001, 3), [], 0, 0
    for number in range(6):
        data += [_data_file(f"commit-{number}-{i}", partition, 8_000) for i in range(14)]
        chosen = maintenance._choose(data, {}, settings)
        rewritten += sum(f.file_size_in_bytes for f in chosen)
        merged = _data_file(f"merged-{number}", partition, sum(f.file_size_in_bytes for f in chosen))
        data = [f for f in data if f not in chosen] + [merged]
        most = max(most, len(data))
    assert rewritten <= 1.7 * sum(f.file_size_in_bytes for f in data), rewritten
    assert most <= 3, most


class DayByDayStream(ClockStream):
    """A clock of 15 seconds a version: a commit of 1,200 changes spans about a fifth of a day, so
    commits write into the current day's buckets, as a stream partitioned by event day does, and
    the commit that crosses midnight writes a few rows into each."""

    def _row(self, key: tuple) -> dict:
        row = Stream._row(self, key)
        ts = START + datetime.timedelta(seconds=15 * self.version)
        return {**row, "ts": ts, "d": ts.date()}


def test_passes_keep_the_files_of_each_partition_few_while_days_fill_and_reads_stay_exact_and_pruned(tmp_path):
    """Thirty commits into the current day's four buckets (six days), a pass every three commits: no
    partition holds more than a few data files after a pass (the day's tiers; the commits' files,
    a day's last few rows among them, merged), DuckDB and pyiceberg read the table exactly, and a
    filter on one day plans only that day's files."""
    writer = open_writer(tmp_path, "day(ts),bucket(4,id)", maintenance_settings=maintenance.Settings(enabled=False))
    stream = DayByDayStream(EVENTS, seed=21)
    commit(writer, [stream.batch(stream.changes(3000, inserts=1.0))])
    settings = maintenance.Settings(deleted_percent=100)  # merging small files only
    most = []
    for number in range(1, 31):
        commit(writer, [stream.batch(stream.changes(1200))])
        if number % 3 == 0:
            maintenance.run_pass(writer._table, settings, ["id"], {})
            data, _ = live_files(writer)
            most.append(max(collections.Counter(files.partition_of(f) for f in data).values()))
    days = {f.partition[0] for f in live_files(writer)[0]}
    assert len(days) >= 4 and max(most) <= 4, (days, most)
    assert by_id(pyiceberg_rows(writer)) == by_id(duckdb_rows(writer._table.metadata_location)) == by_id(stream.expected())
    table = writer._table
    day = datetime.datetime.combine(sorted(r["d"] for r in stream.expected())[len(stream.expected()) // 2], datetime.time())
    one_day = And(GreaterThanOrEqual("ts", day.isoformat()), LessThan("ts", (day + datetime.timedelta(days=1)).isoformat()))
    planned = list(table.scan(row_filter=one_day).plan_files())
    assert planned and {t.file.partition[0] for t in planned} == {(day.date() - datetime.date(1970, 1, 1)).days}
    expected = [r for r in stream.expected() if day <= r["ts"] < day + datetime.timedelta(days=1)]
    assert by_id(table.scan(row_filter=one_day).to_arrow().to_pylist()) == by_id(expected)
    writer.close()


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, named",
    [
        ("day(nope)", "no column 'nope'"),
        ("hour(d)", "hour does not apply to column 'd'"),
        ("bucket(id)", "bucket needs a positive number first"),
        ("bucket(0,id)", "bucket needs a positive number first"),
        ("days(ts)", "unknown transform 'days'"),
        ("day(ts),,id", "empty term"),
        ("day(ts),month(ts)", "both partition column 'ts'"),
        ("year(1,ts)", "year takes only a column"),
        ("truncate(4,ts)", "truncate does not apply to column 'ts'"),
    ],
)
def test_a_bad_partition_spec_is_refused_at_start_naming_the_key_and_the_term(spec, named):
    props = {"source.schema": "id:BIGINT, qty:INT, note:STRING, ts:TIMESTAMP, d:DATE", "source.primary.key": "id",
             "iceberg.partition.spec": spec}
    with pytest.raises(ConfigError) as error:
        PixelsConfig.from_properties(props)
    assert "iceberg.partition.spec=" in str(error.value) and named in str(error.value), str(error.value)


def test_a_good_partition_spec_is_parsed_in_order():
    config = PixelsConfig.from_properties({"source.schema": "id:BIGINT, note:STRING, ts:TIMESTAMP",
                                           "iceberg.partition.spec": " day(ts) , bucket(16, id),truncate(2,note)"})
    assert [str(t) for t in config.iceberg_partition_spec] == ["day(ts)", "bucket(16,id)", "truncate(2,note)"]
    assert PixelsConfig.from_properties({}).iceberg_partition_spec == ()


# --- beam-pixels run, killed and restarted ------------------------------------------------------


def test_a_partitioned_run_killed_with_sigkill_and_restarted_ends_exact(tmp_path, serve, launch):  # noqa: F811
    history = cdc_history(3000, seed=12)  # updates change ts: rows move between months; NULL ts too
    server = serve(history[:300], batch_size=20)
    feeder = feed(server, history[300:], chunk=150, every_s=0.3)
    properties = write_properties(tmp_path, "iceberg", {
        "iceberg.partition.spec": "month(ts),bucket(4,id)", "checkpoint.interval.ms": "300",
        "source.stop.after.idle.ms": "4000"})
    config = load_config(properties, server.port)
    first = launch.cli(*run_args(properties, server.port))
    first.wait_for(r"committed batch \d+", timeout=180, count=2)
    first.kill()  # SIGKILL while the stream goes on
    assert first.proc.returncode == -9
    in_flight = server.unconfirmed_responses()  # responses the killed run may or may not have stored
    feeder.join(120)
    second = run_cli_to_end(launch.cli(*run_args(properties, server.port)), timeout=300)
    assert len(server.handed_out()) == 3000, second.describe()
    stored, kept = stored_in_flight(table_state(config), server.handed_out(), in_flight)
    assert sum(last_checkpoint(config).positions.values()) == len(kept), "each change committed once"
    writer = app.open_table_writer(config)
    try:  # the table is partitioned, every file in one partition, and DuckDB reads what pyiceberg reads
        assert describe(writer._table.spec(), writer._table.schema()) == "month(ts),bucket(4,id)"
        data, _ = live_files(writer)
        assert len({f.partition for f in data}) > 4
        assert_each_file_holds_one_partition(writer)
        duck = sorted(r["id"] for r in duckdb_rows(writer._table.metadata_location))
        assert duck == sorted(r["id"] for r in writer.read_table().to_pylist())
    finally:
        writer.close()


# --- Spark ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark():
    return spark_session(require())


@pytest.mark.timeout(600)
def test_spark_reads_a_partitioned_table_exactly_and_prunes_partitions(tmp_path, spark):
    catalog = {**sql_catalog(tmp_path), "uri": f"sqlite:///{tmp_path}/warehouse/catalog.db"}
    (tmp_path / "warehouse").mkdir()
    writer = IcebergTableWriter(EVENTS, "db.events", catalog, partition_spec=parse_spec("day(ts),bucket(4,id)"))
    writer.open()
    stream = ClockStream(EVENTS, seed=13)
    commit(writer, [stream.batch(stream.changes(600, inserts=1.0))])
    for _ in range(4):
        commit(writer, [stream.batch(stream.changes(150))])
    session = with_catalog(spark, catalog)
    spark_read = spark_rows(session, "SELECT * FROM pixels.db.events")
    assert by_id(spark_read) == by_id(stream.expected()) == by_id(duckdb_rows(writer._table.metadata_location))
    # Spark's own view of the partitions, and a filtered read that touches one day's files.
    day = START + datetime.timedelta(days=10)
    files_of_day = spark_rows(session, "SELECT count(*) AS n FROM pixels.db.events.files "
                                       f"WHERE partition.ts_day = DATE '{day.date()}' AND content = 0")[0]["n"]
    all_files = spark_rows(session, "SELECT count(*) AS n FROM pixels.db.events.files WHERE content = 0")[0]["n"]
    assert 0 < files_of_day < all_files
    query = f"SELECT * FROM pixels.db.events WHERE ts >= TIMESTAMP '{day}' AND ts < TIMESTAMP '{day + datetime.timedelta(days=1)}'"
    frame = session.sql(query)
    got = [r.asDict() for r in frame.collect()]
    expected = [r for r in stream.expected() if day <= r["ts"] < day + datetime.timedelta(days=1)]
    assert by_id(got) == by_id(expected) and expected
    scanned = _spark_data_files_scanned(frame)
    assert scanned is not None and scanned <= files_of_day, scanned
    writer.close()


def _spark_data_files_scanned(frame) -> int | None:
    """The ``resultDataFiles`` metric of the Iceberg batch scan of an executed query."""
    plan = frame._jdf.queryExecution().executedPlan()
    nodes = [plan]
    while nodes:
        node = nodes.pop()
        metrics = node.metrics()
        if metrics.contains("resultDataFiles"):
            return int(metrics.apply("resultDataFiles").value())
        children = node.children()
        nodes += [children.apply(i) for i in range(children.size())]
        if node.getClass().getSimpleName() == "AdaptiveSparkPlanExec":
            nodes.append(node.executedPlan())
    return None
