"""Serialized poll responses: what the poller hands the decoder, read without protobuf objects.

A :class:`RawPoll` carries a response exactly as the server sent it. The helpers
here find its records and their row images in the bytes with numpy
(:func:`scan_response`), count them cheaply (:func:`count_records`), or split
them for the record-by-record safe path (:func:`split_records`).
"""

from __future__ import annotations

import struct
import typing
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
from google.protobuf import message

from beam_pixels.protocol import sink_lazy_pb2


# Tags of the wire format (PROTOCOL.md): RowValue.values = 1 and ColumnValue.value = 1
# (length-delimited), ColumnValue.is_null = 2 (varint).
_LEN_FIELD_1 = 0x0A
_VARINT_FIELD_2 = 0x10


def varints(data: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, ends, ok)`` of the base-128 varints at ``positions`` of ``data`` (uint8),
    up to 5 bytes: lengths inside a message below 2 GiB. Reads past the end see the last byte."""
    values = np.zeros(len(positions), dtype=np.int64)
    ends = positions.copy()
    more = np.ones(len(positions), dtype=bool)
    for shift in range(0, 35, 7):
        byte = data[np.minimum(ends, len(data) - 1)].astype(np.int64)
        values |= np.where(more, (byte & 0x7F) << shift, 0)
        ends += more
        more &= byte >= 0x80
        if not more.any():
            break
    return values, ends, ~more


@dataclass(frozen=True)
class SerializedImages:
    """Row images lying serialized (as ``RowValue`` messages) in one buffer: image ``i``
    is ``data[starts[i]:starts[i] + lengths[i]]`` where ``present[i]``, else absent."""

    data: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    present: np.ndarray

    @classmethod
    def of_messages(cls, images: typing.Sequence) -> "SerializedImages":
        """Images given as protobuf messages (or None), serialized back to back."""
        present = np.array([image is not None for image in images], dtype=bool)
        blobs = [image.SerializeToString() for image in images if image is not None]
        lengths = np.zeros(len(images), dtype=np.int64)
        lengths[present] = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        starts = np.cumsum(lengths) - lengths
        return cls(np.frombuffer(b"".join(blobs), dtype=np.uint8), starts, lengths, present)


def scan_row_values(images: SerializedImages, width: int):
    """``(data, value starts, value lengths, nulls)`` of serialized ``RowValue`` images, each
    of shape (rows, ``width``), read with numpy instead of through a Python object per value.
    None unless every present image holds exactly ``width`` values, each encoded as
    protobuf's serializer writes it (value, then ``is_null`` only when true), and nothing else."""
    data, present = images.data, images.present
    if not len(data):
        data = np.zeros(1, dtype=np.uint8)  # reads past the end see a 0 byte
    position = images.starts[present]
    row_ends = position + images.lengths[present]

    def at(positions: np.ndarray) -> np.ndarray:
        return data[np.minimum(positions, len(data) - 1)]

    ok = np.ones(len(position), dtype=bool)
    rows = len(present)
    starts, sizes, nulls = (np.zeros((rows, width), dtype=t) for t in (np.int64, np.int64, bool))
    nulls[~present] = True
    for j in range(width):
        ok &= (position < row_ends) & (at(position) == _LEN_FIELD_1)
        size, position, ok_size = varints(data, position + 1)
        end = position + size
        has_value = (position < end) & (at(position) == _LEN_FIELD_1)
        value_size, value_start, ok_value = varints(data, position + 1)
        value_start = np.where(has_value, value_start, position)
        value_size = np.where(has_value, value_size, 0)
        after = value_start + value_size
        # protobuf writes is_null only when it is true: two bytes, the tag and 1.
        is_null = (after < end) & (at(after) == _VARINT_FIELD_2) & (at(after + 1) == 1)
        ok &= ok_size & (ok_value | ~has_value) & (after + 2 * is_null == end)
        starts[present, j], sizes[present, j], nulls[present, j] = value_start, value_size, is_null
        position = end
    if not (ok & (position == row_ends)).all():
        return None
    return data, starts, sizes, nulls


@dataclass(frozen=True)
class RawPoll:
    """One non-empty poll response, serialized, with the position of its first record.

    ``schema`` is empty for a response of the pipeline's ``source.schema``; a journaled
    response polled under another one (replayed after ``source.schema`` changed) carries
    the columns it was polled under, as ``str(SourceSchema)``, so that it is decoded by them.
    ``table_label`` names its table in a job of several (``""``: the job's only table).
    """

    poll_group: int
    start_position: int
    poll_time: float
    payload: bytes
    schema: str = ""
    table_label: str = ""


class RawPollCoder(beam.coders.Coder):
    """A RawPoll as a fixed header, the schema and the table label (UTF-8, usually empty) and the
    payload. Registered for :class:`RawPoll`; its size is known without encoding (Beam samples
    element sizes for its metrics)."""

    # poll_group, start_position, poll_time, bytes of the schema, bytes of the table label
    _HEADER = struct.Struct(">qqdII")

    def encode(self, poll: RawPoll) -> bytes:
        schema, label = poll.schema.encode(), poll.table_label.encode()
        header = self._HEADER.pack(poll.poll_group, poll.start_position, poll.poll_time, len(schema), len(label))
        return header + schema + label + poll.payload

    def decode(self, encoded: bytes) -> RawPoll:
        poll_group, start_position, poll_time, schema_size, label_size = self._HEADER.unpack_from(encoded)
        label_start = self._HEADER.size + schema_size
        payload_start = label_start + label_size
        schema = encoded[self._HEADER.size : label_start].decode()
        label = encoded[label_start:payload_start].decode()
        return RawPoll(poll_group, start_position, poll_time, encoded[payload_start:], schema, label)

    def is_deterministic(self) -> bool:
        return True

    def estimate_size(self, poll: RawPoll) -> int:
        return self._HEADER.size + len(poll.schema) + len(poll.table_label) + len(poll.payload)

    def to_type_hint(self):
        return RawPoll


beam.coders.registry.register_coder(RawPoll, RawPollCoder)


def split_records(payload: bytes) -> list[bytes] | None:
    """The serialized records of a PollResponse (top level only), or None when the
    payload cannot even be split into records."""
    try:
        return list(sink_lazy_pb2.PollResponseRecords.FromString(payload).records)
    except message.DecodeError:
        return None


def count_records(payload: bytes) -> int:
    """Positions a response takes: its record count, without parsing the records.

    A payload that cannot be split into records takes one position: the decoder
    turns it into one dead letter, so nothing the server sent is dropped unseen.
    """
    if not payload:
        return 0
    records = split_records(payload)
    return 1 if records is None else len(records)


# RowRecord fields before = 1, after = 2, source = 3, transaction = 4 (length-delimited)
# and op = 5 (varint), as tags; PollResponse.records = 1 (length-delimited).
_RECORD_TAG = 0x0A
_SUBMESSAGE_TAGS = (0x0A, 0x12, 0x1A, 0x22)
_OP_TAG = 0x28


@dataclass(frozen=True)
class ScannedResponse:
    """A PollResponse located in its bytes: record ``i`` is ``data[record_starts[i]:record_ends[i]]``."""

    data: np.ndarray
    record_starts: np.ndarray
    record_ends: np.ndarray
    ops: np.ndarray
    before: SerializedImages
    after: SerializedImages


def scan_response(payload: bytes) -> ScannedResponse | None:
    """Where each record and its images lie in a serialized PollResponse, or None
    unless every record is written as protobuf's serializer writes it: fields in
    number order, each at most once, no unknown fields, ``op`` 1 to 3 or left out (0)."""
    records = split_records(payload)
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
    for tag in _SUBMESSAGE_TAGS:
        present = (position < ends) & (at(position) == tag)
        size, body, ok_size = varints(data, position + 1)
        ok &= ok_size | ~present
        fields.append((present, np.where(present, body, 0), np.where(present, size, 0)))
        position = np.where(present, body + size, position)
    has_op = (position < ends) & (at(position) == _OP_TAG)
    ops = np.where(has_op, at(position + 1), 0).astype(np.int8)
    ok &= ~has_op | ((ops >= 1) & (ops <= 3))
    ok &= position + 2 * has_op == ends
    if not ok.all() or not _metadata_parses(payload):
        return None
    (has_before, before_starts, before_lengths), (has_after, after_starts, after_lengths) = fields[:2]
    return ScannedResponse(
        data,
        starts,
        ends,
        ops,
        SerializedImages(data, before_starts, before_lengths, has_before),
        SerializedImages(data, after_starts, after_lengths, has_after),
    )


def _metadata_parses(payload: bytes) -> bool:
    """Whether every record's ``source``, ``transaction`` and ``op`` parse as the safe
    path would parse them: one pass of protobuf's parser, the images left unparsed."""
    try:
        sink_lazy_pb2.PollResponseImagesUnparsed.FromString(payload)
    except message.DecodeError:
        return False
    return True
