"""The Paimon sink as a user sees it: exact table state read back with pypaimon, exactly once."""

import random
import string
from datetime import date, datetime, time, timezone
from decimal import Decimal

import apache_beam as beam
import boto3
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to
from pypaimon import CatalogFactory
from pypaimon.schema.data_types import AtomicType, DataField
from pypaimon.write.row_key_extractor import RowKeyExtractor, _bucket_from_hash

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.config import PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.paimon import writer as paimon_writer
from beam_pixels.sinks.committing import CommitConflict
from beam_pixels.sinks.paimon import PaimonTableWriter, WriteToPaimon, bucket_ids

I, U, D, S = Op.INSERT, Op.UPDATE, Op.DELETE, Op.SNAPSHOT

ALL_TYPES = SourceSchema.parse(
    "id:BIGINT, code:CHAR(4), flag:BOOLEAN, tiny:TINYINT, small:SMALLINT, num:INT, big:BIGINT, "
    "f32:FLOAT, f64:DOUBLE, price:DECIMAL(10,2), amount:DECIMAL(38,6), day:DATE, at:TIME, "
    "ts:TIMESTAMP, tstz:TIMESTAMPTZ, txt:STRING, label:VARCHAR(20), bin:BINARY, fx:FIXED(4)",
    primary_key=["id", "code"],
)
ORDERS = SourceSchema.parse("region:STRING, id:INT, qty:INT, note:STRING", primary_key=["region", "id"])


def full_row(i: int, code: str = "AB", **changes) -> dict:
    """An ALL_TYPES row whose values depend on ``i``, with ``changes`` applied."""
    row = {
        "id": i,
        "code": code,
        "flag": i % 2 == 0,
        "tiny": -128 + i,
        "small": -32768 + i,
        "num": -(2**31) + i,
        "big": 2**63 - 1 - i,
        "f32": 1.5 + i,
        "f64": -0.1 * i,
        "price": Decimal("12345678.90") - i,
        "amount": Decimal("12345678901234567890123456789012.123456") + i,
        "day": date(2024, 2, 29),
        "at": time(23, 59, 59, 999000),
        "ts": datetime(1969, 12, 31, 23, 59, 59, 999999),
        "tstz": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc),
        "txt": f"héllo 中文 {i}",
        "label": f"label-{i}",
        "bin": bytes([0, 255, i]),
        "fx": bytes([1, 2, 3, i]),
    }
    row.update(changes)
    return row


def nulls_row(i: int, code: str = "AB") -> dict:
    return {name: None for name in ALL_TYPES.names} | {"id": i, "code": code}


def final_state(schema: SourceSchema, *change_lists) -> list[dict]:
    """The table a change stream leaves behind, computed one change at a time."""
    state = {}
    for changes in change_lists:
        for _, before, after in changes:
            if before is not None:
                state.pop(tuple(before[k] for k in schema.primary_key), None)
            if after is not None:
                state[tuple(after[k] for k in schema.primary_key)] = after
    return [state[k] for k in sorted(state)]


def catalog_properties(tmp_path) -> dict[str, str]:
    return {"type": "paimon", "warehouse": str(tmp_path / "warehouse")}


def read_table(properties: dict[str, str], name: str) -> pa.Table:
    """The merged view of a table, read with pypaimon as any user would."""
    options = {k: v for k, v in properties.items() if k != "type"}
    table = CatalogFactory.create(options).get_table(name)
    read_builder = table.new_read_builder()
    return read_builder.new_read().to_arrow(read_builder.new_scan().plan().splits())


def read_rows(properties: dict[str, str], name: str, schema: SourceSchema) -> list[dict]:
    """Rows of a primary-key table sorted by key, after checking every live row is ``+I``."""
    table = read_table(properties, name)
    assert set(table.column("_rowkind").to_pylist()) <= {"+I"}
    rows = table.select(schema.names).to_pylist()
    return sorted(rows, key=lambda r: tuple(r[k] for k in schema.primary_key))


def snapshot_count(properties: dict[str, str], name: str) -> int:
    options = {k: v for k, v in properties.items() if k != "type"}
    latest = CatalogFactory.create(options).get_table(name).snapshot_manager().get_latest_snapshot()
    return latest.id if latest else 0


def commit(writer: PaimonTableWriter, *batches: ChangeBatch):
    """Commit ``batches`` the way ``WriteChanges`` does; returns (outcome, checkpoint)."""
    records = concat_records(batches, writer.schema)
    checkpoint = writer.last_checkpoint().advance(records)
    return writer.commit(records, checkpoint), checkpoint


def test_cdc_into_primary_key_table_reads_back_exactly(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ALL_TYPES, "shop.items", properties, bucket=3)
    writer.open()
    first = [
        (S, None, full_row(1)),
        (S, None, full_row(2)),
        (S, None, full_row(3)),
        (I, None, full_row(4)),
        (I, None, full_row(5)),
        (I, None, nulls_row(6)),
        (I, None, full_row(4, code="CD")),
        (U, full_row(2), full_row(2, price=Decimal("0.01"), txt=None, fx=None)),
        (D, full_row(3), None),
        (I, None, full_row(3, label="back again")),
        (U, full_row(5), full_row(50)),  # the key moves: 5 is gone, 50 is new
        (I, None, full_row(7)),
        (D, full_row(7), None),
    ]
    second = [
        (D, full_row(1), None),
        (D, full_row(50), None),
        (U, full_row(4), full_row(4, num=0, at=time(0, 0))),
        (I, None, full_row(5, label="reused key")),
        (U, nulls_row(6), full_row(6)),
        (D, full_row(3, label="back again"), None),
        (I, None, full_row(3, label="third life")),
    ]

    outcome, _ = commit(writer, ChangeBatch.from_changes(ALL_TYPES, first))
    assert (outcome.snapshot_id, outcome.inserts, outcome.updates, outcome.deletes) == (1, 9, 2, 2)
    assert read_rows(properties, "shop.items", ALL_TYPES) == final_state(ALL_TYPES, first)

    outcome, _ = commit(writer, ChangeBatch.from_changes(ALL_TYPES, second, start_position=len(first)))
    assert (outcome.snapshot_id, outcome.inserts, outcome.updates, outcome.deletes) == (2, 2, 2, 3)
    rows = read_rows(properties, "shop.items", ALL_TYPES)
    assert rows == final_state(ALL_TYPES, first, second)
    assert [(r["id"], r["code"]) for r in rows] == [(2, "AB"), (3, "AB"), (4, "AB"), (4, "CD"), (5, "AB"), (6, "AB")]


def test_key_types_routed_by_pypaimon(tmp_path):
    """Keys the vectorised bucket hash does not cover (here TIMESTAMP, DECIMAL) still land exactly."""
    properties = catalog_properties(tmp_path)
    schema = SourceSchema.parse("at:TIMESTAMP, amount:DECIMAL(10,2), qty:INT", ["at", "amount"])
    rows = [{"at": datetime(2024, 1, day), "amount": Decimal(f"{day}.50"), "qty": day} for day in range(1, 6)]
    changes = [(I, None, r) for r in rows] + [(D, rows[0], None), (U, rows[1], rows[1] | {"qty": 0})]
    writer = PaimonTableWriter(schema, "t", properties, bucket=3)
    writer.open()
    commit(writer, ChangeBatch.from_changes(schema, changes))
    assert read_rows(properties, "pixels.t", schema) == final_state(schema, changes)


def test_paimon_column_types(tmp_path):
    """What Paimon stores per Pixels type: FIXED(4) is BINARY(4), read back as variable-length
    bytes; CHAR(4) keeps the value unpadded; TIME has millisecond precision."""
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ALL_TYPES, "shop.items", properties)
    writer.open()
    commit(writer, ChangeBatch.from_changes(ALL_TYPES, [(I, None, full_row(1, code="X"))]))

    table = CatalogFactory.create({"warehouse": properties["warehouse"]}).get_table("shop.items")
    types = {f.name: str(f.type) for f in table.table_schema.fields}
    assert types == {
        "id": "BIGINT NOT NULL", "code": "CHAR(4) NOT NULL", "flag": "BOOLEAN", "tiny": "TINYINT",
        "small": "SMALLINT", "num": "INT", "big": "BIGINT", "f32": "FLOAT", "f64": "DOUBLE",
        "price": "DECIMAL(10, 2)", "amount": "DECIMAL(38, 6)", "day": "DATE", "at": "TIME(3)",
        "ts": "TIMESTAMP(6)", "tstz": "TIMESTAMP_LTZ(6)", "txt": "STRING", "label": "VARCHAR(20)",
        "bin": "BYTES", "fx": "BINARY(4)", "_rowkind": "STRING NOT NULL",
    }  # fmt: skip
    assert table.table_schema.primary_keys == ["id", "code"]
    assert table.options.options.to_map()["rowkind.field"] == "_rowkind"
    row = read_rows(properties, "shop.items", ALL_TYPES)[0]
    assert (row["code"], row["fx"], row["at"]) == ("X", b"\x01\x02\x03\x01", time(23, 59, 59, 999000))


def orders_batch(group: int, start: int, changes) -> ChangeBatch:
    return ChangeBatch.from_changes(ORDERS, changes, poll_group=group, start_position=start)


def order(region: str, i: int, qty: int, note: str | None = None) -> dict:
    return {"region": region, "id": i, "qty": qty, "note": note}


ROUND_ONE = [
    orders_batch(0, 0, [(I, None, order("eu", 1, 10)), (I, None, order("eu", 2, 20))]),
    orders_batch(1, 0, [(I, None, order("us", 1, 5)), (U, order("us", 1, 5), order("us", 1, 6, "more"))]),
    orders_batch(0, 2, [(D, order("eu", 2, 20), None), (I, None, order("eu", 3, 30))]),
    orders_batch(1, 2, [(S, None, order("us", 9, 90))]),
]
ROUND_TWO = [
    orders_batch(0, 4, [(U, order("eu", 1, 10), order("eu", 1, 11)), (D, order("eu", 3, 30), None)]),
    orders_batch(1, 3, [(I, None, order("us", 2, 7))]),
]


def summary(result) -> tuple:
    return (result.table, result.batch_id, result.rows, result.inserts, result.updates, result.deletes, result.skipped)


def run_pipeline(batches, expected_results: list[tuple], sink: WriteToPaimon) -> None:
    """Run ``Create(batches) | sink`` on FnApiRunner and check its CommitResults (see summary)."""
    with beam.Pipeline(runner="FnApiRunner") as p:
        results = p | beam.Create(batches) | sink
        assert_that(results | beam.Map(summary), equal_to(expected_results))


def final_state_of(*batches: ChangeBatch) -> list[dict]:
    return final_state(ORDERS, [(c.op, c.before, c.after) for b in batches for c in b.to_records()])


def test_beam_pipeline_commits_once_and_replays_nothing(tmp_path):
    properties = catalog_properties(tmp_path)
    sink = WriteToPaimon(ORDERS, "orders", properties, bucket=2)

    run_pipeline(ROUND_ONE, [("pixels.orders", 1, 7, 5, 1, 1, 0)], sink)
    assert read_rows(properties, "pixels.orders", ORDERS) == final_state_of(*ROUND_ONE)

    run_pipeline(ROUND_ONE, [], sink)  # a replay commits nothing
    assert snapshot_count(properties, "pixels.orders") == 1

    run_pipeline(ROUND_ONE[2:] + ROUND_TWO, [("pixels.orders", 2, 3, 1, 1, 1, 3)], sink)  # half replayed
    expected = final_state_of(*ROUND_ONE, *ROUND_TWO)
    assert read_rows(properties, "pixels.orders", ORDERS) == expected
    assert expected == [order("eu", 1, 11), order("us", 1, 6, "more"), order("us", 2, 7), order("us", 9, 90)]


def test_sink_from_properties_file_keys(tmp_path):
    config = PixelsConfig.from_properties(
        {
            "sink.type": "paimon",
            "source.schema": str(ORDERS),
            "source.primary.key": "region,id",
            "paimon.catalog.type": "paimon",
            "paimon.catalog.warehouse": str(tmp_path / "warehouse"),
            "paimon.table.name": "lake.orders",
            "paimon.bucket": "3",
        }
    )
    run_pipeline(ROUND_ONE, [("lake.orders", 1, 7, 5, 1, 1, 0)], WriteToPaimon.from_config(config))
    properties = catalog_properties(tmp_path)
    assert read_rows(properties, "lake.orders", ORDERS) == final_state_of(*ROUND_ONE)
    table = CatalogFactory.create({"warehouse": properties["warehouse"]}).get_table("lake.orders")
    assert table.options.bucket() == 3


def test_restarted_writer_resumes_from_the_table(tmp_path):
    properties = catalog_properties(tmp_path)
    first = PaimonTableWriter(ORDERS, "pixels.orders", properties)
    first.open()
    _, checkpoint = commit(first, *ROUND_ONE)
    first.close()

    restarted = PaimonTableWriter(ORDERS, "orders", properties, database="pixels")
    restarted.open()
    assert restarted.last_checkpoint() == checkpoint == Checkpoint(1, {0: 4, 1: 3})
    with pytest.raises(CommitConflict, match="already holds batch 1"):
        restarted.commit(concat_records(ROUND_TWO, ORDERS), checkpoint)
    assert snapshot_count(properties, "pixels.orders") == 1

    outcome, checkpoint = commit(restarted, *ROUND_TWO)
    assert outcome.snapshot_id == 2 and restarted.last_checkpoint() == checkpoint == Checkpoint(2, {0: 6, 1: 4})

    stranger = PaimonTableWriter(ORDERS, "pixels.orders", properties, commit_user="another-job")
    stranger.open()
    assert stranger.last_checkpoint() == Checkpoint()


def test_keyless_table_gets_the_changelog(tmp_path):
    properties = catalog_properties(tmp_path)
    schema = SourceSchema.parse("name:STRING, qty:INT")
    changes = [
        (S, None, {"name": "a", "qty": 1}),
        (I, None, {"name": "b", "qty": None}),
        (U, {"name": "b", "qty": None}, {"name": "b", "qty": 2}),
        (D, {"name": "a", "qty": 1}, None),
    ]
    writer = PaimonTableWriter(schema, "logs.events", properties)
    writer.open()
    outcome, _ = commit(writer, ChangeBatch.from_changes(schema, changes, poll_group=3, start_position=100))
    assert (outcome.snapshot_id, outcome.inserts, outcome.updates, outcome.deletes) == (1, 2, 1, 1)

    table = read_table(properties, "logs.events")
    assert table.column_names == ["name", "qty", "_op", "_poll_group", "_position"]
    assert sorted(table.to_pylist(), key=lambda r: r["_position"]) == [
        {"name": "a", "qty": 1, "_op": "SNAPSHOT", "_poll_group": 3, "_position": 100},
        {"name": "b", "qty": None, "_op": "INSERT", "_poll_group": 3, "_position": 101},
        {"name": "b", "qty": 2, "_op": "UPDATE", "_poll_group": 3, "_position": 102},
        {"name": "a", "qty": 1, "_op": "DELETE", "_poll_group": 3, "_position": 103},
    ]


def test_existing_table_that_does_not_fit_is_refused(tmp_path):
    properties = catalog_properties(tmp_path)
    PaimonTableWriter(SourceSchema.parse("id:INT, price:DOUBLE, old:INT", ["id"]), "t", properties).open()

    writer = PaimonTableWriter(SourceSchema.parse("id:INT, price:DECIMAL(10,2), qty:INT", ["id"]), "t", properties)
    with pytest.raises(ValueError) as error:
        writer.open()
    assert str(error.value).startswith(
        "Paimon table pixels.t cannot follow source.schema: column 'price' is DOUBLE in the table and DECIMAL(10,2) "
        "in source.schema (only widening is followed); column 'old' is INT in the table and not in source.schema "
        "(a dropped or renamed column cannot be followed). Nothing was written"
    )

    with pytest.raises(ValueError, match=r"primary key is \(id\) in the table, \(\) expected"):
        PaimonTableWriter(SourceSchema.parse("id:INT, price:DOUBLE, old:INT"), "t", properties).open()


def test_deletes_are_refused_without_row_kind_support(tmp_path, monkeypatch):
    """Without deletion vectors a delete is a -D row, which needs pypaimon's row kinds."""
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, table_options={"deletion-vectors.enabled": "false"})
    writer.open()
    monkeypatch.setattr(paimon_writer, "ROW_KINDS_SUPPORTED", False)
    commit(writer, orders_batch(0, 0, [(I, None, order("eu", 1, 1))]))  # upserts still work
    with pytest.raises(RuntimeError, match="cannot write deletes.*upgrade pypaimon"):
        commit(writer, orders_batch(0, 1, [(D, order("eu", 1, 1), None)]))
    assert read_rows(properties, "pixels.orders", ORDERS) == [order("eu", 1, 1)]


@pytest.mark.parametrize(
    "properties, problem",
    [
        ({"type": "hive", "warehouse": "/tmp/w"}, "type='hive' is not supported; accepted: paimon or filesystem"),
        ({"type": "paimon"}, "'warehouse' is missing"),
    ],
)
def test_bad_catalog_properties_say_what_to_do(properties, problem):
    with pytest.raises(ValueError, match=problem):
        PaimonTableWriter(ORDERS, "orders", properties)


def test_bucket_routing_matches_pypaimon():
    """The vectorised bucket hash puts every key where pypaimon (and Java Paimon) would."""
    rng = random.Random(7)

    def text() -> str:
        return "".join(rng.choice(string.ascii_letters + "é中") for _ in range(rng.randint(0, 30)))

    n = 2000
    cases = {
        ("BIGINT",): [pa.array([rng.randint(-(2**63), 2**63 - 1) for _ in range(n)], pa.int64())],
        ("TINYINT", "SMALLINT", "DATE"): [
            pa.array([rng.randint(-128, 127) for _ in range(n)], pa.int8()),
            pa.array([rng.randint(-(2**15), 2**15 - 1) for _ in range(n)], pa.int16()),
            pa.array([rng.randint(-(10**5), 10**5) for _ in range(n)], pa.int32()).cast(pa.date32()),
        ],
        ("STRING", "INT", "BYTES"): [
            pa.array([text() for _ in range(n)]),
            pa.array([rng.randint(-(2**31), 2**31 - 1) for _ in range(n)], pa.int32()),
            pa.array([text().encode() for _ in range(n)], pa.binary()),
        ],
    }
    for type_names, columns in cases.items():
        keys = pa.table(columns, names=[f"k{i}" for i in range(len(columns))])
        fields = [DataField(i, f"k{i}", AtomicType(t, False)) for i, t in enumerate(type_names)]
        for buckets in (1, 4, 7):
            expected = [
                _bucket_from_hash(RowKeyExtractor._binary_row_hash_code(tuple(row.values()), fields), buckets)
                for row in keys.to_pylist()
            ]
            assert bucket_ids(keys, list(type_names), buckets).tolist() == expected, (type_names, buckets)
    assert bucket_ids(pa.table({"k": pa.array([1.5])}), ["DOUBLE"], 4) is None  # pypaimon routes these


def test_s3_warehouse_on_moto(moto_endpoint, s3_bucket):
    properties = {
        "type": "paimon",
        "warehouse": f"s3://{s3_bucket}/paimon",
        "s3.endpoint": moto_endpoint,
        "s3.access-key": "testing",
        "s3.secret-key": "testing",
        "s3.region": "us-east-1",
        "s3.path-style-access": "true",
    }
    batches = ROUND_ONE + ROUND_TWO
    run_pipeline(batches, [("lake.orders", 1, 10, 6, 2, 2, 0)], WriteToPaimon(ORDERS, "lake.orders", properties))
    assert read_rows(properties, "lake.orders", ORDERS) == final_state_of(*batches)

    listing = boto3.client("s3", endpoint_url=moto_endpoint).list_objects_v2(Bucket=s3_bucket, Prefix="paimon/")
    assert "paimon/lake.db/orders/snapshot/snapshot-1" in [o["Key"] for o in listing["Contents"]]
