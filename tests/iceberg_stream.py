"""A random CDC stream against an Iceberg table and the table it must leave, for the
merge-on-read and maintenance tests (pyiceberg and DuckDB read the result)."""

from __future__ import annotations

import random
import threading

from pyiceberg.io.pyarrow import PyArrowFileIO

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.iceberg import IcebergTableWriter
from iceberg_helpers import duckdb_rows

ORDERS = SourceSchema.parse("id:BIGINT, qty:INT, note:STRING", primary_key=["id"])
REGIONAL = SourceSchema.parse("region:VARCHAR(8), id:INT, qty:INT, note:STRING", primary_key=["region", "id"])


def sql_catalog(tmp_path) -> dict[str, str]:
    return {"type": "sql", "warehouse": f"file://{tmp_path}/warehouse"}


class CountingFileIO(PyArrowFileIO):
    """pyiceberg's file IO, counting the Avro files (manifest lists and manifests) every
    instance opens: a catalog given ``py-io-impl=iceberg_stream.CountingFileIO`` uses it."""

    avro_reads = 0
    _lock = threading.Lock()

    def new_input(self, location: str):
        if location.endswith(".avro"):
            with CountingFileIO._lock:
                CountingFileIO.avro_reads += 1
        return super().new_input(location)


class Stream:
    """Changes of random keys (inserts, updates, deletes, re-inserts of deleted keys) and
    the model of the table they leave: the last after-image per key."""

    def __init__(self, schema: SourceSchema, seed: int = 7):
        self.schema = schema
        self.random = random.Random(seed)
        self.state: dict[tuple, dict] = {}
        self.deleted: list[tuple] = []
        self.position = 0
        self.version = 0

    def _row(self, key: tuple) -> dict:
        self.version += 1
        values = {"qty": self.version, "note": None if self.version % 5 == 0 else f"v{self.version}"}
        return {**dict(zip(self.schema.primary_key, key)), **values}

    def _new_key(self) -> tuple:
        n = len(self.state) + len(self.deleted) + self.random.randrange(10**6)
        if self.schema.primary_key == ("id",):
            return (n,)
        return (self.random.choice(["eu", "us", "ap"]), n)

    def changes(self, n: int, inserts: float = 0.3, deletes: float = 0.1) -> list:
        out = []
        for _ in range(n):
            roll = self.random.random()
            if not self.state or roll < inserts:
                key = self.deleted.pop() if self.deleted and self.random.random() < 0.3 else self._new_key()
                if key in self.state:
                    continue
                after = self._row(key)
                out.append((Op.INSERT, None, after))
                self.state[key] = after
            elif roll < inserts + deletes:
                key = self.random.choice(list(self.state))
                out.append((Op.DELETE, self.state.pop(key), None))
                self.deleted.append(key)
            else:
                key = self.random.choice(list(self.state))
                after = self._row(key)
                out.append((Op.UPDATE, self.state[key], after))
                self.state[key] = after
        return out

    def batch(self, changes: list) -> ChangeBatch:
        batch = ChangeBatch.from_changes(self.schema, changes, start_position=self.position)
        self.position += len(changes)
        return batch

    def expected(self) -> list[dict]:
        return [self.state[k] for k in sorted(self.state)]

    def sort(self, rows: list[dict]) -> list[dict]:
        return sorted(rows, key=lambda r: tuple(r[k] for k in self.schema.primary_key))


def commit(writer: IcebergTableWriter, batches: list[ChangeBatch]):
    """Commit batches the way WriteChanges does: read the checkpoint, drop what is committed, commit."""
    last = writer.last_checkpoint()
    records = last.uncommitted(concat_records(batches, writer.schema))
    return writer.commit(records, last.advance(records))


def pyiceberg_rows(writer: IcebergTableWriter) -> list[dict]:
    return writer.read_table().to_pylist()


def duckdb_table_rows(writer: IcebergTableWriter) -> list[dict]:
    writer.last_checkpoint()
    return duckdb_rows(writer._table.metadata_location)
