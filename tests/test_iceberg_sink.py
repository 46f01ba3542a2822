"""The Iceberg sink against real catalogs: SQLite (tmp_path) and Glue + S3 on a moto server.

Table contents are compared with a plain-Python model of the change stream (the
last image per key wins), read back by pyiceberg and by DuckDB.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to, is_empty
from pyiceberg.catalog import load_catalog
from pyiceberg.schema import Schema
from pyiceberg.types import IntegerType, LongType, NestedField, StringType

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.config import PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.committing import CommitConflict, WriteChanges
from beam_pixels.sinks.evolution import SchemaEvolutionRefused
from beam_pixels.sinks.iceberg import IcebergSchemaMismatch, IcebergTableWriter, WriteToIceberg
from iceberg_helpers import duckdb_rows

ALL_TYPES = SourceSchema.parse(
    "id:BIGINT, flag:BOOLEAN, tiny:TINYINT, small:SMALLINT, num:INT, real:FLOAT, dbl:DOUBLE, "
    "price:DECIMAL(10,2), big:DECIMAL(38,6), day:DATE, tod:TIME, ts:TIMESTAMP, tstz:TIMESTAMPTZ, "
    "name:STRING, code:VARCHAR(20), tag:CHAR(4), blob:BINARY, fix:FIXED(4)",
    primary_key=["id"],
)
REGIONAL = SourceSchema.parse("region:VARCHAR(8), id:INT, qty:SMALLINT, note:STRING", primary_key=["region", "id"])
TABLE = "db.orders"


def full_row(i: int, v: int = 0) -> dict:
    """A row of ALL_TYPES with every column set; ``v`` varies the non-key values."""
    return {
        "id": i,
        "flag": (i + v) % 2 == 0,
        "tiny": (i + v) % 100 - 50,
        "small": 100 * v - i,
        "num": i * 10 + v,
        "real": 0.25 + v,
        "dbl": i / 4 + v,
        "price": Decimal(f"{i}.{v % 100:02d}"),
        "big": Decimal(f"{10**30 + i}.{v:06d}"),
        "day": date(2024, 1, 1) + timedelta(days=i + v),
        "tod": time(12, i % 60, v % 60, 123000),
        "ts": datetime(2024, 5, 6, 7, 8, 9, i * 1000 + v),
        "tstz": datetime(2024, 5, 6, 7, 8, 9, v, tzinfo=timezone.utc) + timedelta(hours=i),
        "name": f"naïve-{i}-{v}",
        "code": f"c{i}",
        "tag": f"t{i % 1000:03d}",
        "blob": bytes([i % 256, v % 256, 0, 255, 7]),
        "fix": i.to_bytes(4, "big"),
    }


def null_row(i: int) -> dict:
    return {**dict.fromkeys(ALL_TYPES.names), "id": i}


def final_state(changes: list[tuple[Op, dict | None, dict | None]], key: tuple[str, ...]) -> list[dict]:
    """The table a change stream leaves behind: a before-image removes its key, an after-image sets it."""
    state: dict[tuple, dict] = {}
    for _, before, after in changes:
        if before is not None:
            state.pop(tuple(before[k] for k in key), None)
        if after is not None:
            state[tuple(after[k] for k in key)] = after
    return [state[k] for k in sorted(state)]


def sorted_rows(rows: list[dict], key: tuple[str, ...]) -> list[dict]:
    return sorted(rows, key=lambda r: tuple(r[k] for k in key))


def sql_catalog(tmp_path) -> dict[str, str]:
    return {"type": "sql", "warehouse": f"file://{tmp_path}/warehouse"}


def read_table(properties: dict[str, str], table: str = TABLE):
    """The table loaded by a fresh pyiceberg catalog (the sink's default SQLite file for sql)."""
    if properties["type"] == "sql":
        properties = {**properties, "uri": f"sqlite:///{properties['warehouse'][len('file://'):]}/catalog.db"}
    return load_catalog("pixels", **properties).load_table(table)


def commit(writer: IcebergTableWriter, batches: list[ChangeBatch]):
    """Commit batches the way WriteChanges does: read the checkpoint, drop what is committed, commit."""
    last = writer.last_checkpoint()
    records = last.uncommitted(concat_records(batches, writer.schema))
    return writer.commit(records, last.advance(records))


@pytest.fixture
def writer(tmp_path):
    w = IcebergTableWriter(ALL_TYPES, TABLE, sql_catalog(tmp_path))
    w.open()
    yield w
    w.close()


# A CDC story in three commits over two poll groups: snapshot records, inserts,
# updates, deletes, a re-insert, a key moved by UPDATE and one moved by
# DELETE+INSERT, NULLs in every non-key column, and a delete of a missing key.
STORY = [
    [
        (0, [(Op.SNAPSHOT, None, full_row(i)) for i in range(1, 6)]
            + [(Op.INSERT, None, null_row(6)), (Op.UPDATE, full_row(2), full_row(2, 1)),
               (Op.DELETE, full_row(3), None)]),
        (1, [(Op.INSERT, None, full_row(20)), (Op.INSERT, None, full_row(21))]),
    ],
    [
        (0, [(Op.INSERT, None, full_row(3, 2)),  # re-insert of the key deleted before
             (Op.UPDATE, full_row(1), full_row(10, 3)),  # key 1 moves to 10
             (Op.DELETE, full_row(4), None), (Op.INSERT, None, full_row(40, 4)),  # key 4 moves to 40
             (Op.UPDATE, null_row(6), full_row(6, 5))]),
        (1, [(Op.UPDATE, full_row(20), null_row(20)), (Op.DELETE, full_row(99), None)]),
    ],
    [
        (0, [(Op.INSERT, None, full_row(7)), (Op.UPDATE, full_row(7), full_row(7, 6)), (Op.DELETE, full_row(7), None),
             (Op.UPDATE, full_row(2, 1), full_row(2, 7))]),
    ],
]


def story_batches(schema: SourceSchema = ALL_TYPES) -> list[list[ChangeBatch]]:
    """STORY as ChangeBatches per commit, positions running on per poll group."""
    next_position: dict[int, int] = {}
    commits = []
    for groups in STORY:
        batches = []
        for group, changes in groups:
            start = next_position.get(group, 0)
            batches.append(ChangeBatch.from_changes(schema, changes, poll_group=group, start_position=start))
            next_position[group] = start + len(changes)
        commits.append(batches)
    return commits


def story_changes(upto: int) -> list:
    """The changes of the first ``upto`` commits of STORY in commit order."""
    return [change for groups in STORY[:upto] for _, changes in groups for change in changes]


def test_cdc_story_leaves_the_final_state_of_every_key(writer, tmp_path):
    outcomes = []
    for n, batches in enumerate(story_batches(), start=1):
        outcomes.append(commit(writer, batches))
        rows = read_table(sql_catalog(tmp_path)).scan().to_arrow().to_pylist()
        assert sorted_rows(rows, ("id",)) == final_state(story_changes(n), ("id",)), f"after commit {n}"

    assert [(o.inserts, o.updates, o.deletes) for o in outcomes] == [(8, 1, 1), (2, 3, 2), (1, 2, 1)]
    table = read_table(sql_catalog(tmp_path))
    assert table.current_snapshot().snapshot_id == outcomes[-1].snapshot_id
    assert writer.last_checkpoint() == Checkpoint(3, {0: 17, 1: 4})


def test_duckdb_reads_the_same_final_state(writer, tmp_path):
    for batches in story_batches():
        commit(writer, batches)
    table = read_table(sql_catalog(tmp_path))
    assert sorted_rows(duckdb_rows(table.metadata_location), ("id",)) == final_state(story_changes(3), ("id",))


def test_pruned_and_unpruned_deletes_with_a_composite_key(tmp_path):
    """Hundreds of touched keys (range-pruned) and a handful (IN-pruned), keys differing in one part only."""
    writer = IcebergTableWriter(REGIONAL, "sales.by_region", sql_catalog(tmp_path))
    writer.open()

    def row(region: str, i: int, v: int = 0) -> dict:
        return {"region": region, "id": i, "qty": v - i, "note": None if v % 3 == 0 else f"{region}{i}/{v}"}

    snapshot = [(Op.SNAPSHOT, None, row(r, i)) for r in ("eu", "us", "ap") for i in range(100)]
    bulk = (
        [(Op.UPDATE, row("eu", i), row("eu", i, 1)) for i in range(0, 100, 2)]
        + [(Op.DELETE, row("us", i), None) for i in range(0, 100, 3)]
        + [(Op.INSERT, None, row("sa", i, 2)) for i in range(150)]
        + [(Op.UPDATE, row("ap", i), row("eu", 1000 + i, 4)) for i in range(10)]  # region changes: key moves
    )
    few = [(Op.DELETE, row("eu", 1), None), (Op.UPDATE, row("us", 1), row("us", 1, 5)),
           (Op.INSERT, None, row("ap", 5, 6))]
    applied: list = []
    for n, changes in enumerate([snapshot, bulk, few], start=1):
        commit(writer, [ChangeBatch.from_changes(REGIONAL, changes, start_position=len(applied))])
        applied += changes
        rows = read_table(sql_catalog(tmp_path), "sales.by_region").scan().to_arrow().to_pylist()
        assert sorted_rows(rows, ("region", "id")) == final_state(applied, ("region", "id")), f"after commit {n}"
    writer.close()


@pytest.mark.parametrize("column", [c for c in ALL_TYPES.names if c not in ("id", "real", "dbl")])
def test_a_primary_key_of_any_type_replaces_rows(tmp_path, column):
    schema = ALL_TYPES.with_primary_key([column])
    writer = IcebergTableWriter(schema, TABLE, sql_catalog(tmp_path))
    writer.open()
    rows = [full_row(i) for i in range(2 if column == "flag" else 3)]
    changes = [(Op.INSERT, None, row) for row in rows] + [
        (Op.UPDATE, rows[0], {**full_row(0, 1), column: rows[0][column]}),
        (Op.DELETE, rows[1], None),
    ]
    commit(writer, [ChangeBatch.from_changes(schema, changes[: len(rows)])])
    commit(writer, [ChangeBatch.from_changes(schema, changes[len(rows) :], start_position=len(rows))])
    writer.close()
    got = read_table(sql_catalog(tmp_path)).scan().to_arrow().to_pylist()
    assert sorted_rows(got, (column,)) == final_state(changes, (column,))


def test_float_primary_key_is_refused():
    with pytest.raises(ValueError, match="real are FLOAT/DOUBLE, which Iceberg does not allow as identifier fields"):
        IcebergTableWriter(ALL_TYPES.with_primary_key(["real"]), TABLE, {"type": "sql", "warehouse": "/tmp/x"})


def test_key_less_table_gets_an_append_only_changelog(tmp_path):
    schema = SourceSchema.parse("id:INT, name:STRING")
    writer = IcebergTableWriter(schema, "log", sql_catalog(tmp_path), database="audit")
    writer.open()
    first = [(Op.INSERT, None, {"id": 1, "name": "a"}), (Op.UPDATE, {"id": 1, "name": "a"}, {"id": 1, "name": "b"})]
    second = [(Op.DELETE, {"id": 1, "name": "b"}, None), (Op.SNAPSHOT, None, {"id": 2, "name": None})]
    commit(writer, [ChangeBatch.from_changes(schema, first, poll_group=3)])
    outcome = commit(writer, [ChangeBatch.from_changes(schema, second, poll_group=3, start_position=2)])
    writer.close()

    table = read_table(sql_catalog(tmp_path), "audit.log")
    assert table.schema().identifier_field_names() == set()
    assert sorted_rows(table.scan().to_arrow().to_pylist(), ("_position",)) == [
        {"id": 1, "name": "a", "_op": "INSERT", "_poll_group": 3, "_position": 0},
        {"id": 1, "name": "b", "_op": "UPDATE", "_poll_group": 3, "_position": 1},
        {"id": 1, "name": "b", "_op": "DELETE", "_poll_group": 3, "_position": 2},
        {"id": 2, "name": None, "_op": "SNAPSHOT", "_poll_group": 3, "_position": 3},
    ]
    assert (outcome.inserts, outcome.updates, outcome.deletes) == (1, 0, 1)
    assert [s.summary.operation.value for s in table.snapshots()] == ["append", "append"]


def _run(pipeline_body) -> beam.runners.runner.PipelineResult:
    p = beam.Pipeline(runner=FnApiRunner())
    pipeline_body(p)
    result = p.run()
    result.wait_until_finish()
    return result


def _counts(results):
    return results | beam.Map(lambda r: (r.batch_id, r.rows, r.inserts, r.updates, r.deletes, r.skipped))


def test_beam_pipeline_commits_once_and_replays_apply_nothing(tmp_path):
    properties = sql_catalog(tmp_path)
    first, second, third = story_batches()

    def run(batches, expected):
        def body(p):
            results = p | beam.Create(batches) | WriteToIceberg(ALL_TYPES, "orders", properties, database="db")
            assert_that(_counts(results), expected)

        _run(body)

    run(first + second, equal_to([(1, 17, 10, 4, 3, 0)]))
    table = read_table(properties)
    snapshots, rows = len(table.snapshots()), table.scan().to_arrow().to_pylist()
    assert sorted_rows(rows, ("id",)) == final_state(story_changes(2), ("id",))

    run(first + second, is_empty())  # a replay of committed batches
    table = read_table(properties)
    assert len(table.snapshots()) == snapshots
    assert table.scan().to_arrow().to_pylist() == rows

    run(first + second + third, equal_to([(2, 4, 1, 2, 1, 17)]))  # a resumed run: only the new batch
    rows = read_table(properties).scan().to_arrow().to_pylist()
    assert sorted_rows(rows, ("id",)) == final_state(story_changes(3), ("id",))


def test_from_config_writes_where_the_properties_say(tmp_path):
    config = PixelsConfig.from_properties(
        {
            "source.schema": "id:BIGINT, name:STRING",
            "source.primary.key": "id",
            "iceberg.catalog.warehouse": str(tmp_path / "warehouse"),
            "iceberg.table.name": "shop.orders",
        }
    )
    batch = ChangeBatch.from_changes(config.source_schema, [(Op.INSERT, None, {"id": 1, "name": "a"})])
    _run(lambda p: p | beam.Create([batch]) | WriteToIceberg.from_config(config))
    table = read_table(sql_catalog(tmp_path), "shop.orders")
    assert table.scan().to_arrow().to_pylist() == [{"id": 1, "name": "a"}]
    assert table.schema().identifier_field_names() == {"id"}


def test_losing_writer_gets_commit_conflict_and_nothing_of_it_lands(tmp_path):
    a = IcebergTableWriter(ALL_TYPES, TABLE, sql_catalog(tmp_path))
    b = IcebergTableWriter(ALL_TYPES, TABLE, sql_catalog(tmp_path))
    a.open()
    b.open()
    a_batch = ChangeBatch.from_changes(ALL_TYPES, [(Op.INSERT, None, full_row(1))], poll_group=0)
    b_batch = ChangeBatch.from_changes(ALL_TYPES, [(Op.INSERT, None, full_row(2))], poll_group=1)

    a_last = a.last_checkpoint()
    commit(b, [b_batch])  # B commits after A read its checkpoint
    records = concat_records([a_batch], ALL_TYPES)
    with pytest.raises(CommitConflict, match="orders"):
        a.commit(records, a_last.advance(records))
    assert [r["id"] for r in read_table(sql_catalog(tmp_path)).scan().to_arrow().to_pylist()] == [2]

    commit(a, [a_batch])  # A's retry builds on B's commit
    assert sorted(r["id"] for r in read_table(sql_catalog(tmp_path)).scan().to_arrow().to_pylist()) == [1, 2]
    assert a.last_checkpoint() == Checkpoint(2, {0: 1, 1: 1})
    a.close()
    b.close()


class RacedWriter(IcebergTableWriter):
    """A writer that lets a rival commit poll group 7 between reading its checkpoint and its first commit."""

    raced = False

    def commit_prepared(self, parts, checkpoint):
        if not self.raced:
            self.raced = True
            rival = IcebergTableWriter(self.schema, self.table_name, self._properties)
            rival.open()
            commit(rival, [ChangeBatch.from_changes(self.schema, [(Op.INSERT, None, full_row(70))], poll_group=7)])
            rival.close()
        return super().commit_prepared(parts, checkpoint)


def test_write_changes_retries_a_conflict_and_applies_both_commits_once(tmp_path):
    batch = ChangeBatch.from_changes(ALL_TYPES, [(Op.INSERT, None, full_row(1)), (Op.INSERT, None, full_row(2))])
    writer = RacedWriter(ALL_TYPES, TABLE, sql_catalog(tmp_path))

    def body(p):
        results = p | beam.Create([batch]) | WriteChanges(writer, commit_retries=2)
        assert_that(_counts(results), equal_to([(2, 2, 2, 0, 0, 0)]))

    result = _run(body)
    conflicts = result.metrics().query(MetricsFilter().with_name("commit_conflicts"))["counters"]
    assert sum(c.committed for c in conflicts) == 1
    table = read_table(sql_catalog(tmp_path))
    assert sorted(r["id"] for r in table.scan().to_arrow().to_pylist()) == [1, 2, 70]
    assert Checkpoint.from_properties(table.current_snapshot().summary.additional_properties) == Checkpoint(
        2, {0: 2, 7: 1}
    )


def create_table_beforehand(tmp_path, *fields: NestedField, identifier_field_ids: list[int]) -> None:
    """Create db.orders the way a user might have, in the catalog the sink defaults to."""
    (tmp_path / "warehouse").mkdir()
    catalog = load_catalog("pixels", **sql_catalog(tmp_path), uri=f"sqlite:///{tmp_path}/warehouse/catalog.db")
    catalog.create_namespace("db")
    catalog.create_table(TABLE, Schema(*fields, identifier_field_ids=identifier_field_ids))


def test_existing_table_with_its_columns_in_another_order_is_used(tmp_path):
    create_table_beforehand(
        tmp_path,
        NestedField(2, "qty", IntegerType(), required=False),  # the source sends SMALLINT, an Iceberg int
        NestedField(3, "id", IntegerType(), required=True),
        identifier_field_ids=[3],
    )
    schema = SourceSchema.parse("id:INT, qty:SMALLINT", primary_key=["id"])
    writer = IcebergTableWriter(schema, TABLE, sql_catalog(tmp_path))
    writer.open()
    commit(writer, [ChangeBatch.from_changes(schema, [(Op.INSERT, None, {"id": 1, "qty": 5})])])
    writer.close()
    assert read_table(sql_catalog(tmp_path)).scan().to_arrow().to_pylist() == [{"qty": 5, "id": 1}]


def test_existing_table_that_does_not_fit_is_refused_naming_the_columns(tmp_path):
    create_table_beforehand(
        tmp_path,
        NestedField(1, "id", LongType(), required=True),
        NestedField(2, "price", StringType(), required=False),
        identifier_field_ids=[1],
    )
    schema = SourceSchema.parse("id:BIGINT, price:DOUBLE, qty:INT", primary_key=["id"])
    with pytest.raises(SchemaEvolutionRefused) as refused:
        IcebergTableWriter(schema, TABLE, sql_catalog(tmp_path)).open()
    assert str(refused.value).startswith(
        "Iceberg table db.orders cannot follow source.schema: column 'price' is string in the table and double in "
        "source.schema (only widening is followed). Nothing was written"
    )
    assert "qty" not in read_table(sql_catalog(tmp_path)).schema().column_names

    keyless = SourceSchema.parse("id:BIGINT, price:STRING")
    with pytest.raises(IcebergSchemaMismatch, match=r"identifier fields are \['id'\], the primary key is \[\]"):
        IcebergTableWriter(keyless.with_primary_key([]), TABLE, sql_catalog(tmp_path)).open()


@pytest.mark.parametrize(
    "properties, message",
    [
        ({"type": "hadoop", "warehouse": "s3://b/w"}, "pyiceberg has no Hadoop catalog. Use type sql"),
        ({"type": "nessie"}, "'nessie' is not a pyiceberg catalog type; accepted: bigquery, dynamodb, glue"),
        ({"type": "sql", "warehouse": "s3://b/w"}, "type=sql needs iceberg.catalog.uri"),
    ],
)
def test_unusable_catalog_properties_are_refused_with_what_to_do(properties, message):
    with pytest.raises(ValueError, match=message) as refused:
        IcebergTableWriter(ALL_TYPES, TABLE, {**properties, "s3.secret-access-key": "SECRET-42"})
    assert "SECRET-42" not in str(refused.value)


def test_open_logs_the_table_but_no_secret(tmp_path, caplog):
    properties = {**sql_catalog(tmp_path), "s3.secret-access-key": "SECRET-42"}
    with caplog.at_level(logging.INFO, logger="beam_pixels.sinks.iceberg"):
        IcebergTableWriter(ALL_TYPES, TABLE, properties).open()
        IcebergTableWriter(ALL_TYPES, TABLE, properties).open()
    assert "created table db.orders" in caplog.text
    assert "using existing table db.orders" in caplog.text
    assert "SECRET-42" not in caplog.text


def test_glue_catalog_on_s3(moto_endpoint, s3_bucket):
    properties = {
        "type": "glue",
        "glue.endpoint": moto_endpoint,
        "glue.region": "us-east-1",
        "s3.endpoint": moto_endpoint,
        "s3.region": "us-east-1",
        "s3.access-key-id": "testing",
        "s3.secret-access-key": "testing",
        "warehouse": f"s3://{s3_bucket}/iceberg",
    }
    batches = [b for commit_batches in story_batches() for b in commit_batches]

    def body(p):
        results = p | beam.Create(batches) | WriteToIceberg(ALL_TYPES, TABLE, properties)
        assert_that(_counts(results), equal_to([(1, 21, 11, 6, 4, 0)]))

    _run(body)
    table = read_table(properties)
    assert table.location().startswith(f"s3://{s3_bucket}/iceberg/")
    assert sorted_rows(table.scan().to_arrow().to_pylist(), ("id",)) == final_state(story_changes(3), ("id",))
