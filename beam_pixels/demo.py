"""``beam-pixels demo``: the embedded default, end to end on one machine.

Starts the mock Pixels server in-process with a CDC history per table, runs the pipeline
on the in-process runner into a local warehouse (SQLite catalog for Iceberg),
then prints the commits, a summary, a few rows of each table and whether
each table equals what the server's history implies. ``--tables 2`` or ``3`` adds a
``customers`` table and a ``page_views`` table without a primary key (its changelog is shown).
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
# The demo's tables: name -> (source.schema, source.primary.key).
DEMO_TABLES = {
    "orders": (DEMO_SCHEMA, "id"),
    "customers": ("customer_id:INT,name:STRING,email:STRING,since:DATE", "customer_id"),
    "page_views": ("customer_id:INT,url:STRING,seen_at:TIMESTAMP", ""),
}


def demo_config(sink: str, warehouse: str, port: int, tables: int = 1) -> PixelsConfig:
    """The demo's configuration: local mock server, local warehouse, a bounded run; with more
    than one table, the first ``tables`` of :data:`DEMO_TABLES`."""
    warehouse = os.path.abspath(warehouse)
    props = {
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
    if tables > 1:
        props["tables"] = ",".join(list(DEMO_TABLES)[:tables])
        for name, (schema, key) in list(DEMO_TABLES.items())[:tables]:
            props.update({f"table.{name}.source.schema": schema, f"table.{name}.source.primary.key": key})
    return PixelsConfig.from_properties(props)


def run_demo(sink: str, events: int, warehouse: str, tables: int = 1) -> int:
    (first, (spec, key)), *more = list(DEMO_TABLES.items())[:tables]
    server = MockPixelsServer(SourceSchema.parse(spec, [key]), table_name=first, batch_size=100)
    served = [server, *(server.serve_table(SourceSchema.parse(spec, [key] if key else []), table_name=name)
                        for name, (spec, key) in more)]
    for i, table in enumerate(served):
        schema = table.schema
        # A table without a key gets changes to rows told apart by their first column.
        keyed = schema if schema.primary_key else schema.with_primary_key([schema.names[0]])
        table.load_cdc(mock_data.generate_cdc(keyed, n_keys=max(1, events // 4), n_events=events, seed=42 + i))
    with server.start():
        config = demo_config(sink, warehouse, server.port, tables)
        summary = app.run_local(config)
    print(summary.describe())
    same = [_show(c, table) for c, table in zip(config.tables().values(), served)]
    return 0 if all(same) else 1


def _show(config: PixelsConfig, server: MockPixelsServer) -> bool:
    """Print a few rows of the table ``config`` writes; whether it is what ``server`` handed out."""
    schema = config.source_schema
    handed_out = [(h.op, h.before, h.after) for h in server.handed_out()]
    with contextlib.closing(app.open_table_writer(config)) as writer:
        table = writer.read_table()
    if schema.primary_key:
        key = schema.primary_key[0]
        print(f"\n{config.sink_type} table {writer.table_name}: {table.num_rows} rows; the first 5 by {key}:")
        print(table.sort_by(key).slice(0, 5).to_pandas().to_string(index=False))
        expected = mock_data.final_state(schema, handed_out)
        actual = {mock_data.key_of(schema, row): row for row in _rows(table, schema)}
        same = {k: mock_data.comparable(v) for k, v in actual.items()} == {
            k: mock_data.comparable(v) for k, v in expected.items()
        }
        print(f"table equals the final state of the {len(handed_out)} changes handed out: {'yes' if same else 'NO'}")
        return same
    print(f"\n{config.sink_type} table {writer.table_name} (no key: a changelog): {table.num_rows} rows; the first 5:")
    print(table.slice(0, 5).to_pandas().to_string(index=False))
    same = table.num_rows == len(handed_out)
    print(f"table holds one row per change handed out ({len(handed_out)}): {'yes' if same else 'NO'}")
    return same


def _rows(table, schema) -> list[tuple]:
    columns = table.select(schema.names).to_pydict()
    return list(zip(*(columns[name] for name in schema.names)))
