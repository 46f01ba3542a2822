"""``ReadFromPixels``: poll a Pixels sink server without end and decode its change records.

Shape::

    Create(one PollGroup per group of buckets)
      -> ParDo(_PollPixelsFn)   splittable, unbounded per element; emits each poll
                                response as bytes, claiming its record positions
      -> ParDo(_DecodeFn)       bytes -> ChangeBatch (Arrow), bad records to the
                                ``dead_letters`` output

The restriction of a poll group is an offset range ``[next position, end)`` over
the group's record positions. After each response the DoFn claims the positions
of its records and checkpoints (``defer_remainder``), so a runner can persist
and resume it; an empty poll defers with the poll interval. Runner-initiated
splits of the open-ended range are declined; on drain the restriction truncates
to nothing. A poll group ends only in the bounded modes (idle time, record
count, or duration), used for local runs and tests.
"""

from __future__ import annotations

import collections
import logging
import struct
import threading
import time
import typing
import uuid
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import coders
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from google.protobuf import message

from beam_pixels.buckets import DEFAULT_BUCKET_COUNT, bucket_of, key_bytes, partition_buckets
from beam_pixels.changes import ChangeBatch, Op, records_schema
from beam_pixels.client import PixelsClient, PixelsStoppedError
from beam_pixels.codec import BINARY, DecodedImages, RowCodec, SerializedImages, varints
from beam_pixels.journal import PollJournal, Segment
from beam_pixels.protocol import sink_lazy_pb2, sink_pb2
from beam_pixels.schema import SourceSchema

_LOG = logging.getLogger(__name__)
METRICS_NAMESPACE = "beam_pixels.source"
DEAD_LETTERS = "dead_letters"
CHANGES = "changes"

# The end of an open-ended restriction: no poll group ever reaches it.
OPEN_END = 2**63 - 1

# Set by request_local_stop(): pollers running in this process end at their next call.
_LOCAL_STOP = threading.Event()


def request_local_stop() -> None:
    """Ask pollers running in this process (in-process runners) to stop after their current poll."""
    _LOCAL_STOP.set()


def clear_local_stop() -> None:
    _LOCAL_STOP.clear()


@dataclass(frozen=True)
class PollGroup:
    """The buckets one poller polls, and the position its next record gets."""

    group_id: int
    buckets: tuple[int, ...]
    start_position: int = 0


@dataclass(frozen=True)
class RawPoll:
    """One non-empty poll response, serialized, with the position of its first record."""

    poll_group: int
    start_position: int
    poll_time: float
    payload: bytes


@dataclass(frozen=True)
class DeadLetter:
    """A record that could not be decoded: its serialized ``RowRecord`` and why."""

    source_table: str
    poll_group: int
    position: int
    op: int
    record: bytes
    reason: str


@dataclass(frozen=True)
class ServerOptions:
    """How to reach the Pixels server (picklable; the client is built on the worker)."""

    host: str = "localhost"
    port: int = 50051
    deadline_s: float = 10.0
    max_receive_mb: int = 256
    tls: bool = False
    tls_root_cert: bytes | None = None
    tls_client_cert: bytes | None = None
    tls_client_key: bytes | None = None

    def connect(self, stop: threading.Event | None = None) -> PixelsClient:
        """A client for this server; setting ``stop`` abandons its retries."""

        return PixelsClient(
            self.host,
            self.port,
            deadline_s=self.deadline_s,
            max_receive_mb=self.max_receive_mb,
            retry_attempts=None,
            tls=self.tls,
            tls_root_cert=self.tls_root_cert,
            tls_client_cert=self.tls_client_cert,
            tls_client_key=self.tls_client_key,
            stop=stop,
        )


@dataclass(frozen=True)
class Bounds:
    """When a read stops by itself (0 = no such bound); unbounded when all are 0.

    ``stop_after_idle_ms`` and ``max_duration_ms`` apply to each poll group.
    ``max_records`` counts the records of all poll groups of one read together
    (in each worker process: exactly the run's total on in-process runners).
    """

    stop_after_idle_ms: int = 0
    max_records: int = 0
    max_duration_ms: int = 0
    read_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def unbounded(self) -> bool:
        return not (self.stop_after_idle_ms or self.max_records or self.max_duration_ms)


class _EmittedRecords:
    """Records emitted per read (``Bounds.read_id``) in this process, for ``max_records``."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, read_id: str, count: int) -> None:
        with self._lock:
            self._counts[read_id] += count

    def __getitem__(self, read_id: str) -> int:
        with self._lock:
            return self._counts[read_id]


_EMITTED = _EmittedRecords()


class _OffsetRangeCoder(coders.Coder):
    """Encodes an :class:`OffsetRange` as two varints."""

    _INT = coders.VarIntCoder()

    def encode(self, value: OffsetRange) -> bytes:
        return self._INT.encode(value.start) + self._INT.encode(value.stop)

    def decode(self, encoded: bytes) -> OffsetRange:
        stream = coders.coder_impl.create_InputStream(encoded)
        impl = self._INT.get_impl()
        return OffsetRange(impl.decode_from_stream(stream, True), impl.decode_from_stream(stream, True))

    def is_deterministic(self) -> bool:
        return True


class _PollTracker(OffsetRestrictionTracker):
    """Offset tracker that only accepts the self-checkpoint split (fraction 0).

    Splitting an open-ended range at a fraction would hand positions that do not
    exist yet to another poller; a poll group is one FIFO reader.
    """

    def try_split(self, fraction_of_remainder):
        if fraction_of_remainder != 0:
            return None
        return super().try_split(0)

    def is_bounded(self):
        return False


class _PollRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, group: PollGroup) -> OffsetRange:
        return OffsetRange(group.start_position, OPEN_END)

    def create_tracker(self, restriction: OffsetRange) -> _PollTracker:
        return _PollTracker(restriction)

    def split(self, group, restriction):
        yield restriction

    def restriction_size(self, group, restriction) -> int:
        return 1

    def restriction_coder(self) -> coders.Coder:
        return _OffsetRangeCoder()

    def truncate(self, group, restriction):
        """On drain, stop polling at once: records not polled stay on the server."""
        return None


class _NowWatermarkProvider(WatermarkEstimatorProvider):
    """Manual watermark seeded with the wall clock (a None state would pin it at MIN)."""

    def initial_estimator_state(self, element, restriction):
        return Timestamp.now()

    def create_watermark_estimator(self, estimator_state):
        return ManualWatermarkEstimator(estimator_state)

    def estimator_state_coder(self):
        return coders.TimestampCoder()


_RESTRICTION = beam.DoFn.RestrictionParam(_PollRestrictionProvider())
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(_NowWatermarkProvider())


class _PollPixelsFn(beam.DoFn):
    """Polls one poll group per element, one response per call, checkpointing after each."""

    def __init__(
        self,
        server: ServerOptions,
        schema_name: str,
        table_name: str,
        poll_interval_ms: int,
        bounds: Bounds,
        journal: PollJournal | None = None,
    ):
        self._server = server
        self._schema_name = schema_name
        self._table_name = table_name
        self._poll_interval_s = poll_interval_ms / 1000.0
        self._bounds = bounds
        self._journal = journal
        self._replayed = Metrics.counter(METRICS_NAMESPACE, "records_replayed")
        self._polls = Metrics.counter(METRICS_NAMESPACE, "polls")
        self._empty_polls = Metrics.counter(METRICS_NAMESPACE, "empty_polls")
        self._records = Metrics.counter(METRICS_NAMESPACE, "records")
        self._bytes = Metrics.counter(METRICS_NAMESPACE, "bytes")
        self._stopped_idle = Metrics.counter(METRICS_NAMESPACE, "groups_stopped_idle")
        self._stopped_at_limit = Metrics.counter(METRICS_NAMESPACE, "groups_stopped_at_max_records")

    def setup(self):
        self._client = self._server.connect(stop=_LOCAL_STOP)
        # Per poll group: when this worker first polled it, last saw records, last polled empty.
        self._started: dict[int, float] = {}
        self._last_records: dict[int, float] = {}
        self._last_empty: dict[int, float] = {}
        # Per poll group: journaled responses still to replay before polling the server.
        self._to_replay: dict[int, collections.deque[Segment]] = {}

    def teardown(self):
        self._client.close()

    def process(self, group: PollGroup, tracker=_RESTRICTION, watermark=_WATERMARK):
        """Bounded polling: the group ends by itself, so the output is a bounded PCollection."""
        yield from self._poll_once(group, tracker, watermark)

    def _poll_once(self, group: PollGroup, tracker, watermark):
        now = time.time()
        self._started.setdefault(group.group_id, now)
        self._last_records.setdefault(group.group_id, now)
        position = tracker.current_restriction().start
        if self._bounded_stop(group, position, now):
            _finish(tracker)
            return
        replayed = self._next_replayed(group.group_id, position)
        if replayed is not None:
            segment, payload = replayed
            start, count = segment.start, segment.count
            self._replayed.inc(count)
        else:
            self._wait_after_empty_poll(group.group_id)
            try:
                payload = self._client.poll_raw(self._schema_name, self._table_name, group.buckets)
            except PixelsStoppedError:
                _LOG.info("poll group %d stops at position %d: stop requested while the server was unreachable",
                          group.group_id, position)
                _finish(tracker)
                return
            self._polls.inc()
            self._bytes.inc(len(payload))
            start, count = position, _count_records(payload)
            if count == 0:
                self._empty_polls.inc()
                self._last_empty[group.group_id] = time.monotonic()
                _advance(watermark, Timestamp.now())
                tracker.defer_remainder(Duration.of(self._poll_interval_s))
                return
            if self._journal is not None:
                self._journal.append(group.group_id, start, count, payload)
        poll_time = time.time()
        self._last_records[group.group_id] = poll_time
        if not tracker.try_claim(start + count - 1):
            return
        self._records.inc(count)
        _EMITTED.add(self._bounds.read_id, count)
        _advance(watermark, Timestamp.of(poll_time))
        yield TimestampedValue(RawPoll(group.group_id, start, poll_time, payload), poll_time)
        tracker.defer_remainder()

    def _next_replayed(self, group_id: int, position: int) -> tuple[Segment, bytes] | None:
        """The next journaled response at or after ``position`` not yet emitted by this worker."""
        if self._journal is None:
            return None
        pending = self._to_replay.get(group_id)
        if pending is None:
            pending = collections.deque(s for s in self._journal.segments(group_id) if s.end > position)
            self._to_replay[group_id] = pending
            if pending:
                _LOG.info(
                    "poll group %d: replaying %d journaled response(s), %d records, from position %d",
                    group_id,
                    len(pending),
                    sum(s.count for s in pending),
                    position,
                )
        if not pending:
            return None
        segment = pending.popleft()
        if segment.start > position:
            _LOG.error(
                "poll group %d: journal has no records for positions %d..%d (lost before this run); continuing",
                group_id,
                position,
                segment.start - 1,
            )
        return segment, self._journal.read(segment)

    def _bounded_stop(self, group: PollGroup, position: int, now: float) -> bool:
        """Whether this poll group ends now; logs and counts why."""
        b = self._bounds
        gid = group.group_id
        emitted = _EMITTED[b.read_id]
        if _LOCAL_STOP.is_set():
            reason, counter = "stop requested", None
        elif b.max_records and emitted >= b.max_records:
            reason, counter = f"{emitted} records (source.max.records={b.max_records})", self._stopped_at_limit
        elif b.stop_after_idle_ms and (now - self._last_records[gid]) * 1000 >= b.stop_after_idle_ms:
            reason, counter = f"no records for {b.stop_after_idle_ms} ms (source.stop.after.idle.ms)", self._stopped_idle
        elif b.max_duration_ms and (now - self._started[gid]) * 1000 >= b.max_duration_ms:
            reason, counter = f"round of {b.max_duration_ms} ms ended", None
        else:
            return False
        _LOG.info("poll group %d stops at position %d: %s", gid, position, reason)
        if counter is not None:
            counter.inc()
        return True

    def _wait_after_empty_poll(self, group_id: int) -> None:
        """Honour the poll interval on runners that resume deferred work at once."""
        last = self._last_empty.pop(group_id, None)
        if last is not None:
            wait = self._poll_interval_s - (time.monotonic() - last)
            if wait > 0:
                time.sleep(wait)



class _UnboundedPollPixelsFn(_PollPixelsFn):
    """Polling without end: the output is an unbounded PCollection (streaming runners)."""

    @beam.DoFn.unbounded_per_element()
    def process(self, group: PollGroup, tracker=_RESTRICTION, watermark=_WATERMARK):
        yield from self._poll_once(group, tracker, watermark)


def _finish(tracker) -> None:
    """End the poll group: claiming the end of the range marks the restriction done."""
    tracker.try_claim(tracker.current_restriction().stop)


def _advance(watermark, timestamp: Timestamp) -> None:
    """Move the watermark forward (never back, even if the wall clock steps back)."""
    current = watermark.current_watermark()
    if current is None or timestamp > current:
        watermark.set_watermark(timestamp)


def _split_records(payload: bytes) -> list[bytes] | None:
    """The serialized records of a PollResponse (top level only), or None when the
    payload cannot even be split into records."""
    try:
        return list(sink_lazy_pb2.PollResponseRecords.FromString(payload).records)
    except message.DecodeError:
        return None


def _count_records(payload: bytes) -> int:
    """Positions a response takes: its record count, without parsing the records.

    A payload that cannot be split into records takes one position: the decoder
    turns it into one dead letter, so nothing the server sent is dropped unseen.
    """
    if not payload:
        return 0
    records = _split_records(payload)
    return 1 if records is None else len(records)


# The main output's type: Beam then moves it with _ChangeBatchCoder (registered below).
@beam.typehints.with_output_types(ChangeBatch)
class _DecodeFn(beam.DoFn):
    """Decodes a raw poll into a ChangeBatch; undecodable records become dead letters.

    The fast path reads the serialized response with numpy (:func:`_scan_response`,
    :meth:`RowCodec.decode_serialized_images`, :func:`_murmur3_32`) and makes no
    Python object per record. Any response it does not fully understand (a field it
    does not expect, an encoding protobuf's serializer would not write, a row of the
    wrong width, an unknown operation) takes the safe path, which parses it into
    protobuf messages; both give the same batches and dead letters.
    """

    def __init__(
        self, schema: SourceSchema, source_table: str, encoding: str, empty_as_null: bool, bucket_count: int
    ):
        self._schema = schema
        self._source_table = source_table
        self._bucket_count = bucket_count
        self._encoding = encoding
        self._empty_as_null = empty_as_null
        self._decode_failures = Metrics.counter(METRICS_NAMESPACE, "decode_failures")
        self._decoded = Metrics.counter(METRICS_NAMESPACE, "records_decoded")
        self._safe_path = Metrics.counter(METRICS_NAMESPACE, "responses_decoded_safe_path")

    def setup(self):
        self._codec = RowCodec(self._schema, self._encoding, self._empty_as_null)
        self._records_schema = records_schema(self._schema)
        self._key_indexes = [self._schema.names.index(k) for k in self._schema.primary_key]

    def process(self, raw: RawPoll, timestamp=beam.DoFn.TimestampParam):
        decoded = self._decode_fast(raw)
        if decoded is None:
            self._safe_path.inc()
            decoded = self._decode_safe(raw)
        ops, arrays, bad, record_bytes = decoded
        n = len(ops)
        positions = np.arange(raw.start_position, raw.start_position + n, dtype=np.int64)
        arrays = [pa.array(ops), pa.array(np.full(n, raw.poll_group, dtype=np.int32)), pa.array(positions), *arrays]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self._records_schema)
        if bad:
            keep = np.ones(n, dtype=bool)
            keep[list(bad)] = False
            batch = batch.filter(pa.array(keep))
            self._decode_failures.inc(len(bad))
            for row, reason in sorted(bad.items()):
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTERS,
                    DeadLetter(
                        self._source_table,
                        raw.poll_group,
                        int(positions[row]),
                        int(ops[row]),
                        record_bytes(row),
                        str(reason),
                    ),
                )
        self._decoded.inc(batch.num_rows)
        yield ChangeBatch(self._source_table, raw.poll_group, raw.poll_time, batch)

    def _decode_safe(self, raw: RawPoll):
        """``(ops, [bucket, before, after], bad rows, record bytes by row)`` via protobuf messages.

        Records are parsed one by one, so a corrupt record is a dead letter of its own;
        a payload that cannot be split into records is one dead letter (one position).
        """
        serialized = _split_records(raw.payload)
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
        response = _scan_response(raw.payload)
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

    def _fast_buckets(self, response: "_ScannedResponse", before: DecodedImages, after: DecodedImages) -> pa.Array:
        """:meth:`_buckets` of scanned images (every present image has the schema's width)."""
        has_after, has_before = response.after.present, response.before.present
        if not self._key_indexes:
            return pa.nulls(len(has_after), pa.int32())
        keys = self._key_indexes
        use_after = has_after[:, None]
        starts = np.where(use_after, after.value_starts[:, keys], before.value_starts[:, keys])
        lengths = np.where(use_after, after.value_lengths[:, keys], before.value_lengths[:, keys])
        hashes = _murmur3_32(response.data, starts, lengths)
        if hashes is None:  # keys too long for one matrix: hash them one by one
            keys = _keys(response.data, starts, lengths)
            buckets = np.fromiter((bucket_of(k, self._bucket_count) for k in keys), dtype=np.int64, count=len(keys))
        else:
            buckets = np.abs(hashes.astype(np.int64)) % self._bucket_count
        return pa.array(buckets.astype(np.int32), mask=~(has_after | has_before))


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


# -- reading a serialized PollResponse with numpy ------------------------------------------

# RowRecord fields before = 1, after = 2, source = 3, transaction = 4 (length-delimited)
# and op = 5 (varint), as tags; PollResponse.records = 1 (length-delimited).
_RECORD_TAG = 0x0A
_SUBMESSAGE_TAGS = (0x0A, 0x12, 0x1A, 0x22)
_OP_TAG = 0x28


@dataclass(frozen=True)
class _ScannedResponse:
    """A PollResponse located in its bytes: record ``i`` is ``data[record_starts[i]:record_ends[i]]``."""

    data: np.ndarray
    record_starts: np.ndarray
    record_ends: np.ndarray
    ops: np.ndarray
    before: SerializedImages
    after: SerializedImages


def _scan_response(payload: bytes) -> _ScannedResponse | None:
    """Where each record and its images lie in a serialized PollResponse, or None
    unless every record is written as protobuf's serializer writes it: fields in
    number order, each at most once, no unknown fields, ``op`` 1 to 3 or left out (0)."""
    records = _split_records(payload)
    if records is None:
        return None
    n = len(records)
    lengths = np.fromiter(map(len, records), dtype=np.int64, count=n)
    del records
    # A record on the wire: its tag, its length as a varint, its bytes.
    headers = 2 + sum((lengths >= 1 << (7 * k)).astype(np.int64) for k in range(1, 5))
    ends = np.cumsum(headers + lengths)
    starts = ends - lengths
    if n == 0 or ends[-1] != len(payload):  # other top-level fields or longer encodings
        return None
    data = np.frombuffer(payload, dtype=np.uint8)
    size, body, ok = varints(data, starts - headers + 1)
    ok &= (data[starts - headers] == _RECORD_TAG) & (body == starts) & (size == lengths)

    def at(positions: np.ndarray) -> np.ndarray:
        return data[np.minimum(positions, len(data) - 1)]

    position = starts.copy()
    fields = []
    for i, tag in enumerate(_SUBMESSAGE_TAGS):
        if i == 2:
            metadata_starts = position
        present = (position < ends) & (at(position) == tag)
        size, body, ok_size = varints(data, position + 1)
        ok &= ok_size | ~present
        fields.append((present, np.where(present, body, 0), np.where(present, size, 0)))
        position = np.where(present, body + size, position)
    has_op = (position < ends) & (at(position) == _OP_TAG)
    ops = np.where(has_op, at(position + 1), 0).astype(np.int8)
    ok &= ~has_op | ((ops >= 1) & (ops <= 3))
    ok &= position + 2 * has_op == ends
    if not ok.all() or not _metadata_parses(data, metadata_starts, position):
        return None
    (has_before, before_starts, before_lengths), (has_after, after_starts, after_lengths) = fields[:2]
    return _ScannedResponse(
        data,
        starts,
        ends,
        ops,
        SerializedImages(data, before_starts, before_lengths, has_before),
        SerializedImages(data, after_starts, after_lengths, has_after),
    )


def _metadata_parses(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether the records' ``source`` and ``transaction`` fields (``data[starts:ends]``
    of each record) parse, as the safe path would parse them. Fields of one message
    may repeat on the wire, so all of them parse at once as one RowRecord."""
    lengths = ends - starts
    if not lengths.any():
        return True
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    try:
        sink_pb2.RowRecord.FromString(data[np.repeat(starts, lengths) + within].tobytes())
    except message.DecodeError:
        return False
    return True


# -- bucket hashes, vectorised -------------------------------------------------------------

_MAX_VECTOR_KEY_BYTES = 256
_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _murmur3_32(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """``mmh3.hash(key, 0, signed=True)`` of each row's key: the concatenation of the
    byte ranges ``data[starts[i, c]:starts[i, c] + lengths[i, c]]`` over columns ``c``.
    None when a key is longer than ``_MAX_VECTOR_KEY_BYTES`` (hash those one by one)."""
    n, columns = starts.shape
    totals = lengths.sum(axis=1)
    width = int(totals.max(initial=0))
    if width > _MAX_VECTOR_KEY_BYTES:
        return None
    rows = np.zeros((n, max(4, (width + 3) // 4 * 4)), dtype=np.uint8)
    offsets = np.zeros(n, dtype=np.int64)
    for c in range(columns):
        column_starts, column_lengths = starts[:, c], lengths[:, c]
        if n and (column_lengths == column_lengths[0]).all() and (offsets == offsets[0]).all():
            at, size = int(offsets[0]), int(column_lengths[0])  # fixed width: one 2-D copy
            rows[:, at : at + size] = data[column_starts[:, None] + np.arange(size)]
        else:
            row_of_byte = np.repeat(np.arange(n), column_lengths)
            within = np.arange(int(column_lengths.sum())) - np.repeat(np.cumsum(column_lengths) - column_lengths, column_lengths)
            rows[row_of_byte, offsets[row_of_byte] + within] = data[np.repeat(column_starts, column_lengths) + within]
        offsets += column_lengths
    h = np.zeros(n, dtype=np.uint32)
    for j, word in enumerate(rows.view("<u4").T):
        k = _rotl(word * _C1, 15) * _C2
        whole = (j + 1) * 4 <= totals
        tail = ~whole & (j * 4 < totals)  # the last 1-3 bytes, zero-padded as murmur3 reads them
        h = np.where(whole, _rotl(h ^ k, 13) * np.uint32(5) + np.uint32(0xE6546B64), np.where(tail, h ^ k, h))
    h ^= totals.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h.view(np.int32)


def _keys(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    raw = data.tobytes()
    return [
        key_bytes([raw[s : s + k] for s, k in zip(row_starts, row_lengths)])
        for row_starts, row_lengths in zip(starts.tolist(), lengths.tolist())
    ]


class _ChangeBatchCoder(coders.Coder):
    """ChangeBatch as a small header and an Arrow IPC stream with LZ4-compressed buffers.

    Registered for :class:`ChangeBatch`, so a sink's ``GroupByKey`` holds a commit
    window in about a third of what pickled batches take (absent images are all
    zero bytes and compress to nearly nothing), and decoding copies no Python objects.
    """

    _HEADER = struct.Struct(">qdI")  # poll_group, poll_time, length of source_table
    _COMPRESSION = "lz4" if pa.Codec.is_available("lz4") else None

    def encode(self, batch: ChangeBatch) -> bytes:
        table = batch.source_table.encode("utf-8")
        sink = pa.BufferOutputStream()
        sink.write(self._HEADER.pack(batch.poll_group, batch.poll_time, len(table)) + table)
        options = pa.ipc.IpcWriteOptions(compression=self._COMPRESSION)
        with pa.ipc.new_stream(sink, batch.records.schema, options=options) as writer:
            writer.write_batch(batch.records)
        return sink.getvalue().to_pybytes()

    def decode(self, encoded: bytes) -> ChangeBatch:
        poll_group, poll_time, size = self._HEADER.unpack_from(encoded)
        start = self._HEADER.size + size
        source_table = encoded[self._HEADER.size : start].decode("utf-8")
        records = pa.ipc.open_stream(pa.py_buffer(encoded)[start:]).read_next_batch()
        return ChangeBatch(source_table, poll_group, poll_time, records)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, batch: ChangeBatch) -> int:
        """The uncompressed size, for Beam's size metrics: encoding just to measure costs as much as encoding."""
        return batch.records.nbytes

    def to_type_hint(self):
        return ChangeBatch


beam.coders.registry.register_coder(ChangeBatch, _ChangeBatchCoder)


class ReadFromPixels(beam.PTransform):
    """Read the change stream of one Pixels table.

    With ``bounds`` set the read ends by itself and its output is bounded (local
    runs, tests); without, it polls forever and its output is unbounded.
    Returns a tagged output: ``result.changes`` (``ChangeBatch`` elements, one per
    poll response, event time = poll time) and ``result.dead_letters``
    (``DeadLetter`` elements). ``start_positions`` (poll group -> position)
    resumes position numbering, e.g. from a sink's last checkpoint. ``journal``
    (a path or URI) makes every response durable before it is emitted and
    replays what lies at or after the start positions (see :mod:`beam_pixels.journal`).
    """

    def __init__(
        self,
        schema: SourceSchema,
        *,
        server: ServerOptions = ServerOptions(),
        schema_name: str = "public",
        table_name: str = "orders",
        buckets: typing.Sequence[int] = tuple(range(128)),
        parallelism: int = 1,
        poll_interval_ms: int = 1000,
        bounds: Bounds = Bounds(),
        encoding: str = BINARY,
        empty_as_null: bool = False,
        bucket_count: int = DEFAULT_BUCKET_COUNT,
        start_positions: typing.Mapping[int, int] | None = None,
        journal: str | None = None,
    ):
        super().__init__()
        self._journal = PollJournal(journal) if journal else None
        self._schema = schema
        self._server = server
        self._schema_name = schema_name
        self._table_name = table_name
        self._groups = [
            PollGroup(i, tuple(b), (start_positions or {}).get(i, 0))
            for i, b in enumerate(partition_buckets(list(buckets), parallelism))
        ]
        self._poll_interval_ms = poll_interval_ms
        self._bounds = bounds
        self._encoding = encoding
        self._empty_as_null = empty_as_null
        self._bucket_count = bucket_count

    @classmethod
    def from_config(
        cls, config, *, start_positions=None, max_duration_ms: int = 0, journal: str | None = None
    ) -> "ReadFromPixels":
        """Build from a :class:`beam_pixels.config.PixelsConfig`."""
        return cls(
            config.source_schema,
            server=ServerOptions(
                host=config.server_host,
                port=config.server_port,
                deadline_s=config.server_deadline_ms / 1000.0,
                max_receive_mb=config.server_max_message_mb,
                tls=config.tls_enabled,
                **config.tls_material(),
            ),
            schema_name=config.schema_name,
            table_name=config.table_name,
            buckets=config.buckets,
            parallelism=config.parallelism,
            poll_interval_ms=config.poll_interval_ms,
            bounds=Bounds(config.stop_after_idle_ms, config.max_records, max_duration_ms),
            encoding=config.value_encoding,
            empty_as_null=config.empty_as_null,
            bucket_count=config.bucket_count,
            start_positions=start_positions,
            journal=journal,
        )

    @property
    def poll_groups(self) -> list[PollGroup]:
        return list(self._groups)

    def expand(self, pbegin):
        source_table = f"{self._schema_name}.{self._table_name}"
        poller = _UnboundedPollPixelsFn if self._bounds.unbounded else _PollPixelsFn
        return (
            pbegin
            | "PollGroups" >> beam.Create(self._groups)
            | "Poll" >> beam.ParDo(
                poller(
                    self._server, self._schema_name, self._table_name, self._poll_interval_ms, self._bounds, self._journal
                )
            )
            | "Decode" >> beam.ParDo(
                _DecodeFn(self._schema, source_table, self._encoding, self._empty_as_null, self._bucket_count)
            ).with_outputs(DEAD_LETTERS, main=CHANGES)
        )


class ExplodeChanges(beam.PTransform):
    """One :class:`beam_pixels.changes.ChangeRecord` per change, for per-row processing."""

    def expand(self, batches):
        return batches | "Explode" >> beam.FlatMap(lambda batch: batch.to_records())
