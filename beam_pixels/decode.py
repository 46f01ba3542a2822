"""The decode stage of ReadFromPixels: raw poll responses to ChangeBatches and dead letters.

Values are decoded by the configured schema, a whole response at a time
(:meth:`beam_pixels.codec.RowCodec.decode_serialized_images`); a journaled response
polled under an earlier schema by that one, then conformed to the configured one. A record that
cannot be decoded never stops the pipeline and never vanishes: it leaves
through the ``dead_letters`` output as a :class:`DeadLetter` and is counted.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import typing
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.utils.windowed_value import WindowedValue
from google.protobuf import message

from beam_pixels.buckets import bucket_of, key_bytes, keys_of_ranges, murmur3_32_of_ranges
from beam_pixels.changes import ChangeBatch, Op, records_schema
from beam_pixels.codec import BINARY, DecodedImages, RowCodec
from beam_pixels.metrics import SOURCE, table_namespace
from beam_pixels.protocol import sink_pb2
from beam_pixels.schema import SourceSchema
from beam_pixels.wire import RawPoll, ScannedResponse, scan_response, split_records

METRICS_NAMESPACE = SOURCE  # decoding is part of ReadFromPixels
DEAD_LETTERS = "dead_letters"
CHANGES = "changes"


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be decoded: its serialized ``RowRecord`` and why."""

    source_table: str
    poll_group: int
    position: int
    op: int
    record: bytes
    reason: str
    table_label: str = ""  # the table's name in ``tables`` ("": the job's only table)


@dataclass(frozen=True)
class _Decoded:
    """What one response decodes to."""

    batch: ChangeBatch
    dead_letters: list[DeadLetter]
    safe_path: bool


class TableDecoder:
    """Decodes one table's raw polls (for :class:`DecodePollsFn`) by its schema.

    The fast path reads the serialized response with numpy (:func:`~beam_pixels.wire.scan_response`,
    :meth:`RowCodec.decode_serialized_images`, :func:`~beam_pixels.buckets.murmur3_32_of_ranges`) and makes no
    Python object per record. Any response it does not fully understand (a field it
    does not expect, an encoding protobuf's serializer would not write, a row of the
    wrong width, an unknown operation) takes the safe path, which parses it into
    protobuf messages; both give the same batches and dead letters.
    """

    def __init__(
        self, schema: SourceSchema, source_table: str, encoding: str, empty_as_null: bool, bucket_count: int,
        table_label: str = "",
    ):
        self._schema = schema
        self._source_table = source_table
        self._table_label = table_label
        self._bucket_count = bucket_count
        self._encoding = encoding
        self._empty_as_null = empty_as_null
        namespace = table_namespace(METRICS_NAMESPACE, table_label)
        self.decode_failures = Metrics.counter(namespace, "decode_failures")
        self.decoded = Metrics.counter(namespace, "records_decoded")
        self.safe_path = Metrics.counter(namespace, "responses_decoded_safe_path")

    def setup(self):
        self._codec = RowCodec(self._schema, self._encoding, self._empty_as_null)
        self._records_schema = records_schema(self._schema)
        self._key_indexes = [self._schema.names.index(k) for k in self._schema.primary_key]
        self._earlier: dict[str, TableDecoder] = {}  # decoders of the schemas journaled responses name

    def decode(self, raw: RawPoll) -> _Decoded:
        """One response to its ChangeBatch and dead letters (on a decoding thread)."""
        if raw.schema:
            return self._decode_earlier(raw)
        decoded = self._decode_fast(raw)
        safe_path = decoded is None
        if safe_path:
            decoded = self._decode_safe(raw)
        ops, arrays, bad, record_bytes = decoded
        n = len(ops)
        positions = np.arange(raw.start_position, raw.start_position + n, dtype=np.int64)
        arrays = [pa.array(ops), pa.array(np.full(n, raw.poll_group, dtype=np.int32)), pa.array(positions), *arrays]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self._records_schema)
        letters = []
        if bad:
            keep = np.ones(n, dtype=bool)
            keep[list(bad)] = False
            batch = batch.filter(pa.array(keep))
            letters = [
                DeadLetter(
                    self._source_table, raw.poll_group, int(positions[row]), int(ops[row]), record_bytes(row), str(reason),
                    self._table_label,
                )
                for row, reason in sorted(bad.items())
            ]
        batch = ChangeBatch(self._source_table, raw.poll_group, raw.poll_time, batch, self._table_label)
        return _Decoded(batch, letters, safe_path)

    def _decode_earlier(self, raw: RawPoll) -> _Decoded:
        """A response polled under an earlier ``source.schema`` (journaled before it changed):
        decoded by that schema, its images then conformed to this one (columns added since read
        NULL, widened ones are cast; the sink refused any other change at start)."""
        earlier = self._earlier.get(raw.schema)
        if earlier is None:
            schema = SourceSchema.parse(raw.schema, self._schema.primary_key)
            earlier = TableDecoder(schema, self._source_table, self._encoding, self._empty_as_null, self._bucket_count,
                                   self._table_label)
            earlier.setup()
            self._earlier[raw.schema] = earlier
        decoded = earlier.decode(dataclasses.replace(raw, schema=""))
        records = decoded.batch.records
        image = self._records_schema.field("after").type
        arrays = [*records.columns[:4], *(_conform_images(records.column(name), image) for name in ("before", "after"))]
        batch = dataclasses.replace(decoded.batch, records=pa.RecordBatch.from_arrays(arrays, schema=self._records_schema))
        return dataclasses.replace(decoded, batch=batch)

    def _decode_safe(self, raw: RawPoll):
        """``(ops, [bucket, before, after], bad rows, record bytes by row)`` via protobuf messages.

        Records are parsed one by one, so a corrupt record is a dead letter of its own;
        a payload that cannot be split into records is one dead letter (one position).
        """
        serialized = split_records(raw.payload)
        if serialized is None:
            serialized, records = [raw.payload], [sink_pb2.RowRecord()]
            unparseable = {0: "the poll response is not valid protobuf"}
        else:
            records, unparseable = [], {}
            for row, data in enumerate(serialized):
                try:
                    records.append(sink_pb2.RowRecord.FromString(data))
                except message.DecodeError as error:
                    records.append(sink_pb2.RowRecord())
                    unparseable[row] = f"the record is not valid protobuf ({error})"
        n = len(records)
        ops = np.fromiter((r.op for r in records), dtype=np.int8, count=n)
        befores = [r.before if r.HasField("before") else None for r in records]
        afters = [r.after if r.HasField("after") else None for r in records]
        before, bad_before = self._codec.decode_images(befores)
        after, bad_after = self._codec.decode_images(afters)
        has_before = np.fromiter((image is not None for image in befores), dtype=bool, count=n)
        has_after = np.fromiter((image is not None for image in afters), dtype=bool, count=n)
        bad = {**_image_mismatches(ops, has_before, has_after), **bad_after, **bad_before, **unparseable}
        arrays = [self._buckets(befores, afters), before, after]
        return ops, arrays, bad, lambda row: serialized[row]

    def _decode_fast(self, raw: RawPoll):
        """Like :meth:`_decode_safe`, reading the serialized response with numpy; None
        when the response holds anything the safe path must judge."""
        if self._encoding != BINARY:
            return None
        response = scan_response(raw.payload)
        if response is None:
            return None
        before = self._codec.decode_serialized_images(response.before)
        after = self._codec.decode_serialized_images(response.after) if before is not None else None
        if after is None:
            return None
        ops = response.ops
        bad = {**_image_mismatches(ops, response.before.present, response.after.present), **after.errors, **before.errors}
        arrays = [self._fast_buckets(response, before, after), before.images, after.images]

        def record_bytes(row: int) -> bytes:
            # The record as the server sent it, as the safe path stores it.
            return raw.payload[int(response.record_starts[row]) : int(response.record_ends[row])]

        return ops, arrays, bad, record_bytes

    def _buckets(self, befores: list, afters: list) -> pa.Array:
        """Each record's bucket: the hash of its key's canonical bytes (after image, else before)."""
        n = len(afters)
        if not self._key_indexes or self._encoding != BINARY:
            return pa.nulls(n, pa.int32())
        buckets = np.full(n, -1, dtype=np.int32)
        for row, image in enumerate(a if a is not None else b for a, b in zip(afters, befores)):
            values = image.values if image is not None else ()
            if len(values) == len(self._schema.columns):
                key = key_bytes([values[i].value for i in self._key_indexes])
                buckets[row] = bucket_of(key, self._bucket_count)
        return pa.array(buckets, mask=buckets < 0)

    def _fast_buckets(self, response: ScannedResponse, before: DecodedImages, after: DecodedImages) -> pa.Array:
        """:meth:`_buckets` of scanned images (every present image has the schema's width)."""
        has_after, has_before = response.after.present, response.before.present
        if not self._key_indexes:
            return pa.nulls(len(has_after), pa.int32())
        keys = self._key_indexes
        use_after = has_after[:, None]
        starts = np.where(use_after, after.value_starts[:, keys], before.value_starts[:, keys])
        lengths = np.where(use_after, after.value_lengths[:, keys], before.value_lengths[:, keys])
        hashes = murmur3_32_of_ranges(response.data, starts, lengths)
        if hashes is None:  # keys too long for one matrix: hash them one by one
            keys = keys_of_ranges(response.data, starts, lengths)
            buckets = np.fromiter((bucket_of(k, self._bucket_count) for k in keys), dtype=np.int64, count=len(keys))
        else:
            buckets = np.abs(hashes.astype(np.int64)) % self._bucket_count
        return pa.array(buckets.astype(np.int32), mask=~(has_after | has_before))


# The main output's type: Beam then moves it with ChangeBatchCoder.
@beam.typehints.with_output_types(ChangeBatch)
class DecodePollsFn(beam.DoFn):
    """Decodes each raw poll into a ChangeBatch by its table's :class:`TableDecoder`
    (``RawPoll.table_label`` picks it); undecodable records become dead letters.

    Responses are decoded on a thread per core while the bundle goes on (numpy
    and Arrow release the GIL for much of the work) and leave in arrival order,
    each with its own timestamp and window, by the end of the bundle at the latest.
    """

    def __init__(self, tables: typing.Mapping[str, TableDecoder]):
        self._tables = dict(tables)

    def setup(self):
        for table in self._tables.values():
            table.setup()
        self._threads = os.cpu_count() or 1
        self._decoders = concurrent.futures.ThreadPoolExecutor(self._threads, thread_name_prefix="pixels-decode")

    def teardown(self):
        self._decoders.shutdown(wait=True)

    def start_bundle(self):
        # Responses being decoded, in arrival order: (table, future decode, timestamp, window).
        self._in_progress: collections.deque = collections.deque()

    def process(self, raw: RawPoll, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        """Start decoding ``raw``; emit, in order, the responses already decoded (up to one per
        decoding thread stays in progress, the rest wait for :meth:`finish_bundle`)."""
        table = self._tables[raw.table_label]
        self._in_progress.append((table, self._decoders.submit(table.decode, raw), timestamp, window))
        while self._in_progress and (len(self._in_progress) > self._threads or self._in_progress[0][1].done()):
            yield from self._emit(*self._in_progress.popleft())

    def finish_bundle(self):
        while self._in_progress:
            yield from self._emit(*self._in_progress.popleft())

    def _emit(self, table: TableDecoder, decoding: concurrent.futures.Future, timestamp, window):
        """The outputs of one decoded response, with its timestamp and window; counts them in its
        table's metrics (here, on the bundle's thread, where Beam metrics are recorded)."""
        decoded = decoding.result()
        if decoded.safe_path:
            table.safe_path.inc()
        table.decode_failures.inc(len(decoded.dead_letters))
        table.decoded.inc(len(decoded.batch))
        for letter in decoded.dead_letters:
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, WindowedValue(letter, timestamp, (window,)))
        yield WindowedValue(decoded.batch, timestamp, (window,))


def _conform_images(images: pa.StructArray, image_type: pa.StructType) -> pa.StructArray:
    """Row images of an earlier schema as ``image_type``'s: fields by name, cast; missing ones NULL."""
    names = {f.name for f in images.type}
    children = [
        images.field(f.name).cast(f.type) if f.name in names else pa.nulls(len(images), f.type) for f in image_type
    ]
    return pa.StructArray.from_arrays(children, fields=list(image_type), mask=images.is_null())


def _image_mismatches(ops: np.ndarray, has_before: np.ndarray, has_after: np.ndarray) -> dict[int, str]:
    """Rows whose images contradict their operation (e.g. a DELETE without ``before``)."""
    needs_after = (ops == Op.INSERT) | (ops == Op.SNAPSHOT) | (ops == Op.UPDATE)
    bad_op = (ops < 0) | (ops > max(Op))
    problems = {}
    for row in np.flatnonzero(bad_op):
        problems[int(row)] = f"unknown operation {int(ops[row])}"
    for row in np.flatnonzero(~bad_op & needs_after & ~has_after):
        problems.setdefault(int(row), f"{Op(ops[row]).name} record without an after image")
    for row in np.flatnonzero(~bad_op & (ops == Op.DELETE) & ~has_before):
        problems.setdefault(int(row), "DELETE record without a before image")
    return problems
