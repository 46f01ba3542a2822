"""``beam-pixels demo``: the embedded default, end to end on one machine.

Starts the mock Pixels server in-process with a CDC history, runs the pipeline
on the in-process runner into a local warehouse (SQLite catalog for Iceberg),
then prints the commits, a summary, a few rows of the final table and whether
the table equals the state the server's history implies.
"""

from __future__ import annotations

import contextlib
import os

from beam_pixels import app
from beam_pixels.config import PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.testing import mock_data
from beam_pixels.testing.mock_server import MockPixelsServer

DEMO_SCHEMA = "id:BIGINT,name:STRING,price:DECIMAL(10,2),qty:INT,ts:TIMESTAMP,flag:BOOLEAN"


def demo_config(sink: str, warehouse: str, port: int) -> PixelsConfig:
    """The demo's configuration: local mock server, local warehouse, a bounded run."""
    warehouse = os.path.abspath(warehouse)
    return PixelsConfig.from_properties(
        {
            "pixels.server.host": "127.0.0.1",
            "pixels.server.port": str(port),
            "source.schema": DEMO_SCHEMA,
            "source.primary.key": "id",
            "source.poll.interval.ms": "100",
            "source.stop.after.idle.ms": "1500",
            "checkpoint.interval.ms": "3000",
            "sink.type": sink,
            "iceberg.catalog.warehouse": os.path.join(warehouse, "iceberg"),
            "paimon.catalog.warehouse": os.path.join(warehouse, "paimon"),
        }
    )


def run_demo(sink: str, events: int, warehouse: str) -> int:
    schema = SourceSchema.parse(DEMO_SCHEMA, ["id"])
    keys = max(1, events // 4)
    history = mock_data.generate_cdc(schema, n_keys=keys, n_events=events, seed=42)
    with MockPixelsServer(schema, batch_size=100).start() as server:
        server.load_cdc(history)
        config = demo_config(sink, warehouse, server.port)
        summary = app.run_local(config)
        handed_out = server.handed_out()
    print(summary.describe())

    with contextlib.closing(app.open_table_writer(config)) as writer:
        table = writer.read_table()
    print(f"\n{sink} table {writer.table_name}: {table.num_rows} rows; the first 5 by id:")
    print(table.sort_by("id").slice(0, 5).to_pandas().to_string(index=False))

    expected = mock_data.final_state(schema, [(h.op, h.before, h.after) for h in handed_out])
    actual = {mock_data.key_of(schema, row): row for row in _rows(table, schema)}
    same = {k: mock_data.comparable(v) for k, v in actual.items()} == {
        k: mock_data.comparable(v) for k, v in expected.items()
    }
    print(f"\ntable equals the final state of the {len(handed_out)} changes handed out: {'yes' if same else 'NO'}")
    return 0 if same else 1


def _rows(table, schema: SourceSchema) -> list[tuple]:
    columns = table.select(schema.names).to_pydict()
    return list(zip(*(columns[name] for name in schema.names)))
