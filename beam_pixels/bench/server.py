"""A Pixels server for benchmarks: prebuilt responses, served from its own process.

The data is built once (:func:`build_chunks`) with :class:`MockPixelsServer`'s
own encoding and routing, then drained bucket by bucket into *chunks*: each
chunk is a serialized ``PollResponse`` holding up to ``batch_size`` records of
one bucket. A ``PollResponse`` is a single repeated field, so concatenated
chunks are themselves a valid ``PollResponse``: answering a poll costs a
``b"".join`` of one chunk per requested bucket, and the server drains like a
real one at almost no CPU. The client side is what a benchmark then measures.

:class:`ServerProcess` runs a server on 127.0.0.1 in a fresh (spawned) process (a
:class:`~beam_pixels.testing.server_process.SpawnedServer`) with its own copy of the
chunks, and reports when the first poll arrived and how many records it handed out.
"""

from __future__ import annotations

import collections
import logging
import pickle
import time
from collections.abc import Mapping
from pathlib import Path

from beam_pixels.client import PixelsClient
from beam_pixels.protocol import sink_pb2
from beam_pixels.schema import SourceSchema
from beam_pixels.testing import mock_data
from beam_pixels.testing.mock_server import MockPixelsServer
from beam_pixels.testing.server_process import CONTEXT, SpawnedServer, answer_commands, start_poll_server

_LOG = logging.getLogger(__name__)

Chunks = dict[int, list[tuple[bytes, int]]]
"""Per bucket, its chunks in drain order: a serialized ``PollResponse`` and its record count."""


def build_chunks(
    schema: SourceSchema,
    rows: int,
    *,
    seed: int = 0,
    batch_size: int = 200,
    schema_name: str = "public",
    table_name: str = "orders",
) -> Chunks:
    """``rows`` INSERTs of :func:`mock_data.generate_rows`, as a mock server would hand them out."""
    server = MockPixelsServer(schema, schema_name=schema_name, table_name=table_name, batch_size=batch_size)
    server.load_rows(mock_data.generate_rows(schema, rows, seed))
    chunks: Chunks = {}
    with server, PixelsClient(server.host, server.port) as client:
        for bucket in server.pending_buckets():
            chunks[bucket] = []
            while payload := client.poll_raw(schema_name, table_name, [bucket]):
                chunks[bucket].append((payload, len(sink_pb2.PollResponse.FromString(payload).records)))
    return chunks


def save_chunks(chunks: Chunks, path: Path) -> None:
    path.write_bytes(pickle.dumps(chunks, protocol=pickle.HIGHEST_PROTOCOL))


def load_chunks(path: Path) -> Chunks:
    return pickle.loads(path.read_bytes())


class _Stats:
    """Counters shared with the parent process (shared memory, no locking needed: one writer)."""

    def __init__(self, context):
        self.first_poll = context.Value("d", 0.0, lock=False)
        self.last_records = context.Value("d", 0.0, lock=False)
        self.records = context.Value("q", 0, lock=False)


class _PrebuiltPolls:
    """``PollEvents`` over prebuilt chunks of each table: up to one chunk per requested bucket, destructive."""

    def __init__(self, tables: dict[str, Chunks], schema_name: str, stats: _Stats):
        self._queues = {
            (schema_name, table): {b: collections.deque(c) for b, c in chunks.items()} for table, chunks in tables.items()
        }
        self._stats = stats

    def poll(self, request: sink_pb2.PollRequest, context) -> bytes:
        now = time.time()
        if not self._stats.first_poll.value:
            self._stats.first_poll.value = now
        queues = self._queues.get((request.schema_name, request.table_name), {})
        parts, records = [], 0
        for bucket in request.buckets:
            queue = queues.get(bucket)
            if queue:
                payload, count = queue.popleft()
                parts.append(payload)
                records += count
        if records:
            self._stats.records.value += records
            self._stats.last_records.value = time.time()
        return b"".join(parts)


def _serve(paths: dict[str, str], schema_name: str, stats: _Stats, ready, commands) -> None:
    """Process target: load the chunks, serve on 127.0.0.1 (a free port, sent back) until told to quit."""
    polls = _PrebuiltPolls({table: load_chunks(Path(path)) for table, path in paths.items()}, schema_name, stats)
    # One worker: polls of one reader are sequential anyway, and the queues need no lock.
    server, port = start_poll_server(polls.poll, workers=1)
    ready.send(port)
    answer_commands(commands, {})
    server.stop(None).wait()


class ServerProcess(SpawnedServer):
    """A prebuilt-response server in its own process; use as a context manager. ``chunks_path``: the
    chunks of ``table_name``, or a mapping of several tables' names to their chunks."""

    def __init__(
        self, chunks_path: Path | Mapping[str, Path], schema_name: str = "public", table_name: str = "orders"
    ):
        self.stats = _Stats(CONTEXT)
        paths = dict(chunks_path) if isinstance(chunks_path, Mapping) else {table_name: chunks_path}
        super().__init__(
            _serve, ({t: str(p) for t, p in paths.items()}, schema_name, self.stats), name="bench-pixels-server",
            start_timeout_s=300,
        )

    @property
    def first_poll(self) -> float:
        """Wall-clock time (``time.time()``) the first poll arrived, 0 before that."""
        return self.stats.first_poll.value

    @property
    def last_records(self) -> float:
        """Wall-clock time the last records were handed out, 0 before that."""
        return self.stats.last_records.value

    @property
    def records_handed_out(self) -> int:
        return self.stats.records.value
