"""Mock server -> ReadFromPixels -> WriteToIceberg / WriteToPaimon on FnApiRunner, from properties.

Every destination a user can configure: Iceberg on a local SQLite catalog (also read
back by DuckDB, a reader that is not pyiceberg) and on Glue with an S3 warehouse;
Paimon on a local and on an S3 warehouse. S3 and Glue are a moto server on 127.0.0.1.
"""

import contextlib

import apache_beam as beam
import pytest
from iceberg_helpers import duckdb_rows
from pyiceberg.catalog import load_catalog

from beam_pixels import app
from beam_pixels.config import PixelsConfig
from beam_pixels.sinks import sink_for
from beam_pixels.source import ReadFromPixels
from beam_pixels.testing.mock_data import comparable, final_state, generate_cdc, key_of
from beam_pixels.testing.mock_server import MockPixelsServer

SCHEMA_SPEC = (
    "id:BIGINT, name:VARCHAR(40), price:DECIMAL(12,2), qty:INT, ratio:DOUBLE, day:DATE, "
    "at:TIMESTAMP, flag:BOOLEAN, blob:BINARY"
)


def _local_iceberg(tmp_path, moto_endpoint, bucket):
    return {"sink.type": "iceberg", "iceberg.catalog.warehouse": str(tmp_path / "iceberg")}


def _glue_iceberg(tmp_path, moto_endpoint, bucket):
    return {
        "sink.type": "iceberg",
        "iceberg.catalog.type": "glue",
        "iceberg.catalog.warehouse": f"s3://{bucket}/iceberg",
        "iceberg.catalog.glue.endpoint": moto_endpoint,
        "iceberg.catalog.glue.region": "us-east-1",
        "iceberg.catalog.s3.endpoint": moto_endpoint,
        "iceberg.catalog.s3.region": "us-east-1",
    }


def _local_paimon(tmp_path, moto_endpoint, bucket):
    return {"sink.type": "paimon", "paimon.catalog.warehouse": str(tmp_path / "paimon")}


def _s3_paimon(tmp_path, moto_endpoint, bucket):
    return {
        "sink.type": "paimon",
        "paimon.catalog.warehouse": f"s3://{bucket}/paimon",
        "paimon.catalog.s3.endpoint": moto_endpoint,
        "paimon.catalog.s3.region": "us-east-1",
        "paimon.catalog.s3.access-key": "testing",
        "paimon.catalog.s3.secret-key": "testing",
        "paimon.catalog.s3.path-style-access": "true",
    }


DESTINATIONS = {
    "iceberg-sqlite": _local_iceberg,
    "iceberg-glue-s3": _glue_iceberg,
    "paimon-local": _local_paimon,
    "paimon-s3": _s3_paimon,
}


@pytest.mark.parametrize("destination", DESTINATIONS)
def test_the_table_holds_exactly_the_final_state_of_what_the_server_handed_out(
    tmp_path, moto_endpoint, s3_bucket, destination
):
    properties = {
        "source.schema": SCHEMA_SPEC,
        "source.primary.key": "id",
        "source.parallelism": "2",
        "source.poll.interval.ms": "20",
        "source.stop.after.idle.ms": "500",
        **DESTINATIONS[destination](tmp_path, moto_endpoint, s3_bucket),
    }
    schema = PixelsConfig.from_properties(properties).source_schema
    with MockPixelsServer(schema, batch_size=20).start() as server:
        server.load_cdc(generate_cdc(schema, n_keys=150, n_events=900, seed=11))
        config = PixelsConfig.from_properties({**properties, "pixels.server.host": "127.0.0.1",
                                               "pixels.server.port": str(server.port)})
        with beam.Pipeline(runner="FnApiRunner") as p:
            read = p | ReadFromPixels.from_config(config)
            _ = read.changes | sink_for(config)
        handed_out = server.handed_out()

    expected = {k: comparable(v) for k, v in final_state(schema, [(h.op, h.before, h.after) for h in handed_out]).items()}
    with contextlib.closing(app.open_table_writer(config)) as writer:
        table = writer.read_table().select(schema.names)
        checkpoint = writer.last_checkpoint()
    rows = list(zip(*table.to_pydict().values()))
    assert len(rows) == len({key_of(schema, row) for row in rows}), "a key appears twice"
    assert {key_of(schema, row): comparable(row) for row in rows} == expected
    assert sum(checkpoint.positions.values()) == len(handed_out) == 900
    if destination == "iceberg-sqlite":
        warehouse = tmp_path / "iceberg"
        catalog = load_catalog("pixels", type="sql", uri=f"sqlite:///{warehouse}/catalog.db", warehouse=str(warehouse))
        by_duckdb = duckdb_rows(catalog.load_table("pixels.iceberg_orders").metadata_location)
        assert {row["id"]: comparable(tuple(row[c] for c in schema.names)) for row in by_duckdb} == {
            key[0]: row for key, row in expected.items()
        }
