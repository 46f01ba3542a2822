"""The change stream: batches of decoded CDC records, and how a batch becomes table state.

A :class:`ChangeBatch` is what ``ReadFromPixels`` emits and what the sinks take:
one poll response (minus records that failed to decode), decoded to Arrow.
Moving whole batches keeps the per-element cost of Beam off the per-row path.
"""

from __future__ import annotations

import enum
import struct
import typing
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beam_pixels.schema import SourceSchema


class Op(enum.IntEnum):
    """Operation of a change record; values are the wire's ``OperationType``."""

    INSERT = 0
    UPDATE = 1
    DELETE = 2
    SNAPSHOT = 3


def records_schema(schema: SourceSchema) -> pa.Schema:
    """Arrow schema of :attr:`ChangeBatch.records` for a source schema.

    ``before`` / ``after`` are structs of the row image; a null struct means the
    record carried no such image (INSERT and SNAPSHOT have no ``before``, DELETE
    no ``after``). ``bucket`` is the server bucket the record's key hashes to
    (null when the table has no primary key: the wire does not say).
    """
    image = pa.struct(list(schema.to_arrow()))
    return pa.schema(
        [
            pa.field("op", pa.int8(), nullable=False),
            pa.field("poll_group", pa.int32(), nullable=False),
            pa.field("position", pa.int64(), nullable=False),
            pa.field("bucket", pa.int32()),
            pa.field("before", image),
            pa.field("after", image),
        ]
    )


class ChangeRecord(typing.NamedTuple):
    """One change, as plain Python values (see :meth:`ChangeBatch.to_records`)."""

    op: Op
    poll_group: int
    position: int
    bucket: int | None
    before: dict | None
    after: dict | None


@dataclass(frozen=True)
class ChangeBatch:
    """Decoded change records of one poll of one poll group, in arrival order.

    ``records`` follows :func:`records_schema`. ``position`` numbers records of a
    poll group consecutively across polls (and runs); it is what exactly-once
    commits remember. ``poll_time`` (seconds since the epoch) is the event time.
    ``table_label`` names the table in a job of several (``""``: the job's only table).
    """

    source_table: str
    poll_group: int
    poll_time: float
    records: pa.RecordBatch
    table_label: str = ""

    def __len__(self) -> int:
        return self.records.num_rows

    @classmethod
    def from_changes(
        cls,
        schema: SourceSchema,
        changes: typing.Sequence[tuple[Op, dict | None, dict | None]],
        *,
        source_table: str = "public.orders",
        poll_group: int = 0,
        start_position: int = 0,
        poll_time: float = 0.0,
    ) -> "ChangeBatch":
        """A batch from ``(op, before, after)`` triples of Python values (tests, tools)."""
        rs = records_schema(schema)
        n = len(changes)
        arrays = [
            pa.array([int(op) for op, _, _ in changes], pa.int8()),
            pa.array(np.full(n, poll_group, dtype=np.int32)),
            pa.array(np.arange(start_position, start_position + n, dtype=np.int64)),
            pa.nulls(n, pa.int32()),
            pa.array([before for _, before, _ in changes], rs.field("before").type),
            pa.array([after for _, _, after in changes], rs.field("after").type),
        ]
        return cls(source_table, poll_group, poll_time, pa.RecordBatch.from_arrays(arrays, schema=rs))

    def to_records(self) -> list[ChangeRecord]:
        """One :class:`ChangeRecord` per change, values as Python objects."""
        cols = self.records.to_pydict()
        return [
            ChangeRecord(Op(op), group, pos, bucket, before, after)
            for op, group, pos, bucket, before, after in zip(
                cols["op"], cols["poll_group"], cols["position"], cols["bucket"], cols["before"], cols["after"]
            )
        ]


def concat_records(batches: typing.Iterable[ChangeBatch], schema: SourceSchema) -> pa.Table:
    """All records of ``batches`` in one table, ordered by (poll_group, position)."""
    tables = [b.records for b in batches if len(b)]
    if not tables:
        return records_schema(schema).empty_table()
    table = pa.Table.from_batches(tables)
    if _in_order(table):  # the usual case: one poll group, batches in arrival order
        return table
    return table.sort_by([("poll_group", "ascending"), ("position", "ascending")])


def _in_order(table: pa.Table) -> bool:
    """Whether rows are strictly increasing by (poll_group, position): then a stable
    sort would not move any row (positions are unique within a poll group)."""
    groups = table.column("poll_group").to_numpy()
    positions = table.column("position").to_numpy()
    return bool(
        np.all((groups[1:] > groups[:-1]) | ((groups[1:] == groups[:-1]) & (positions[1:] > positions[:-1])))
    )


class OpCounts(typing.NamedTuple):
    """Changes of a records table by kind; SNAPSHOT records count as inserts."""

    inserts: int
    updates: int
    deletes: int


def op_counts(records: pa.Table) -> OpCounts:
    ops = records.column("op").to_numpy()
    return OpCounts(
        inserts=int(np.count_nonzero((ops == Op.INSERT) | (ops == Op.SNAPSHOT))),
        updates=int(np.count_nonzero(ops == Op.UPDATE)),
        deletes=int(np.count_nonzero(ops == Op.DELETE)),
    )


@dataclass(frozen=True)
class FinalState:
    """What a window of changes does to a primary-key table.

    ``touched_keys`` holds the key of every row the window touched (delete these),
    ``upserts`` the surviving after-images (append these), one per live key.
    """

    touched_keys: pa.Table
    upserts: pa.Table
    counts: OpCounts


def collapse_to_final_state(records: pa.Table, schema: SourceSchema) -> FinalState:
    """Collapse ordered change records to the last operation per primary key.

    Every ``before`` image retracts its key and every ``after`` image asserts its
    key, the retraction first; the last event per key wins. So an UPDATE that
    moves a key retracts the old key and asserts the new one.
    """
    key = list(schema.primary_key)
    if not key:
        raise ValueError("collapse_to_final_state needs a primary key")
    n = records.num_rows
    seq = np.arange(n, dtype=np.int64) * 2
    before = records.column("before").combine_chunks()
    after = records.column("after").combine_chunks()
    retract = pa.table({**{k: before.field(k) for k in key}, "seq": seq}).filter(before.is_valid())
    assert_ = pa.table({**{k: after.field(k) for k in key}, "seq": seq + 1}).filter(after.is_valid())
    events = pa.concat_tables([retract, assert_])
    last = events.group_by(key, use_threads=False).aggregate([("seq", "max")])
    last_seq = last.column("seq_max").to_numpy()
    live = last_seq % 2 == 1
    rows = pa.array(last_seq[live] // 2)
    upserts = pa.Table.from_struct_array(after.take(rows)) if len(rows) else schema.to_arrow().empty_table()

    # Compact the keys: group_by's chunks are views of larger buffers, which pickling
    # (to hand prepared parts to the committer) would copy whole.
    touched_keys = last.select(key).combine_chunks()
    return FinalState(touched_keys=touched_keys, upserts=upserts.cast(schema.to_arrow()), counts=op_counts(records))


CHANGELOG_COLUMNS = ("_op", "_poll_group", "_position")


def changelog_rows(records: pa.Table, schema: SourceSchema) -> pa.Table:
    """An append-only changelog: one row per change, the after-image (the before-image
    for DELETE) plus ``_op`` (INSERT/UPDATE/DELETE/SNAPSHOT), ``_poll_group``, ``_position``."""
    if records.num_rows == 0:
        return changelog_schema(schema).empty_table()
    after = records.column("after").combine_chunks()
    before = records.column("before").combine_chunks()
    image = pa.Table.from_struct_array(pc.if_else(after.is_valid(), after, before))
    names = pa.array([op.name for op in Op])
    ops = names.take(records.column("op").combine_chunks())
    table = image.append_column("_op", ops)
    table = table.append_column("_poll_group", records.column("poll_group"))
    table = table.append_column("_position", records.column("position"))
    return table.cast(changelog_schema(schema))


def changelog_schema(schema: SourceSchema) -> pa.Schema:
    """Arrow schema of :func:`changelog_rows` output (no column is a key there)."""
    base = [pa.field(f.name, f.type, nullable=True) for f in schema.to_arrow()]
    return pa.schema(
        base
        + [
            pa.field("_op", pa.string(), nullable=False),
            pa.field("_poll_group", pa.int32(), nullable=False),
            pa.field("_position", pa.int64(), nullable=False),
        ]
    )


class ChangeBatchCoder(beam.coders.Coder):
    """ChangeBatch as a small header and an Arrow IPC stream, its buffers LZ4-compressed when the
    batch holds at least :data:`COMPRESS_FROM_BYTES`.

    Registered for :class:`ChangeBatch`, so a sink's ``GroupByKey`` holds a commit
    window in about a third of what pickled batches take (absent images are all
    zero bytes and compress to nearly nothing), and decoding copies no Python objects.
    LZ4 costs about 0.25 ms a batch to encode and as much to decode whatever its size (each
    buffer is a frame of its own): for the small batches of a table fed a few rows at a time
    that was most of their coding, and a local round decodes its tables' batches one after
    another before their commits. A stream says whether its buffers are compressed, so
    :meth:`decode` reads batches encoded either way.
    """

    _HEADER = struct.Struct(">qdII")  # poll_group, poll_time, lengths of source_table and table_label
    _COMPRESSION = "lz4" if pa.Codec.is_available("lz4") else None
    # Batches of fewer bytes (Arrow's ``nbytes``; 64 KiB is about 1,000 rows of three columns)
    # are not compressed: a window of them is small, and their coding is 5-10x faster.
    COMPRESS_FROM_BYTES = 64 * 1024

    def encode(self, batch: ChangeBatch) -> bytes:
        table, label = batch.source_table.encode("utf-8"), batch.table_label.encode("utf-8")
        sink = pa.BufferOutputStream()
        sink.write(self._HEADER.pack(batch.poll_group, batch.poll_time, len(table), len(label)) + table + label)
        compression = self._COMPRESSION if batch.records.nbytes >= self.COMPRESS_FROM_BYTES else None
        options = pa.ipc.IpcWriteOptions(compression=compression)
        with pa.ipc.new_stream(sink, batch.records.schema, options=options) as writer:
            writer.write_batch(batch.records)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> ChangeBatch:
        poll_group, poll_time, table_size, label_size = self._HEADER.unpack_from(encoded)
        label_start = self._HEADER.size + table_size
        start = label_start + label_size
        source_table = encoded[self._HEADER.size : label_start].decode("utf-8")
        label = encoded[label_start:start].decode("utf-8")
        records = pa.ipc.open_stream(pa.py_buffer(encoded)[start:]).read_next_batch()
        return ChangeBatch(source_table, poll_group, poll_time, records, label)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, batch: ChangeBatch) -> int:
        """The uncompressed size, for Beam's size metrics: encoding just to measure costs as much as encoding."""
        return batch.records.nbytes

    def to_type_hint(self):
        return ChangeBatch


beam.coders.registry.register_coder(ChangeBatch, ChangeBatchCoder)
