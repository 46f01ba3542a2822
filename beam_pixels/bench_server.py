"""A Pixels server for benchmarks: prebuilt responses, served from its own process.

The data is built once (:func:`build_chunks`) with :class:`MockPixelsServer`'s
own encoding and routing, then drained bucket by bucket into *chunks*: each
chunk is a serialized ``PollResponse`` holding up to ``batch_size`` records of
one bucket. A ``PollResponse`` is a single repeated field, so concatenated
chunks are themselves a valid ``PollResponse``: answering a poll costs a
``b"".join`` of one chunk per requested bucket, and the server drains like a
real one at almost no CPU. The client side is what a benchmark then measures.

:class:`ServerProcess` runs a server on 127.0.0.1 in a fresh (spawned) process
with its own copy of the chunks, and reports when the first poll arrived and
how many records it handed out.
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import pickle
import time
from concurrent import futures
from pathlib import Path

import grpc

from beam_pixels import mock_data
from beam_pixels.client import PixelsClient
from beam_pixels.mock_server import MockPixelsServer
from beam_pixels.protocol import sink_pb2
from beam_pixels.schema import SourceSchema

_LOG = logging.getLogger(__name__)

SERVICE = "sink.proto.PixelsPollingService"
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
    """``PollEvents`` over prebuilt chunks: up to one chunk per requested bucket, destructive."""

    def __init__(self, chunks: Chunks, schema_name: str, table_name: str, stats: _Stats):
        self._queues = {b: collections.deque(c) for b, c in chunks.items()}
        self._table = (schema_name, table_name)
        self._stats = stats

    def poll(self, request: sink_pb2.PollRequest, context) -> bytes:
        now = time.time()
        if not self._stats.first_poll.value:
            self._stats.first_poll.value = now
        if (request.schema_name, request.table_name) != self._table:
            return b""
        parts, records = [], 0
        for bucket in request.buckets:
            queue = self._queues.get(bucket)
            if queue:
                payload, count = queue.popleft()
                parts.append(payload)
                records += count
        if records:
            self._stats.records.value += records
            self._stats.last_records.value = time.time()
        return b"".join(parts)


def _serve(path: str, schema_name: str, table_name: str, stats: _Stats, ready, stop) -> None:
    """Process target: load the chunks, bind 127.0.0.1 on a free port, send the port, serve until ``stop``."""
    polls = _PrebuiltPolls(load_chunks(Path(path)), schema_name, table_name, stats)
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "PollEvents": grpc.unary_unary_rpc_method_handler(
                polls.poll, request_deserializer=sink_pb2.PollRequest.FromString, response_serializer=None
            )
        },
    )
    # One worker: polls of one reader are sequential anyway, and the queues need no lock.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    ready.send(port)
    stop.wait()
    server.stop(None).wait()


class ServerProcess:
    """A prebuilt-response server in its own process; use as a context manager."""

    def __init__(self, chunks_path: Path, schema_name: str = "public", table_name: str = "orders"):
        context = multiprocessing.get_context("spawn")
        self.stats = _Stats(context)
        self._stop = context.Event()
        self._ready, child_end = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_serve,
            args=(str(chunks_path), schema_name, table_name, self.stats, child_end, self._stop),
            name="bench-pixels-server",
            daemon=True,
        )
        self.port = 0

    def __enter__(self) -> ServerProcess:
        self._process.start()
        if not self._ready.poll(300):
            self._process.kill()
            raise RuntimeError("the benchmark server did not start within 300 s")
        self.port = self._ready.recv()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    @property
    def first_poll(self) -> float:
        """Wall-clock time (``time.time()``) the first poll arrived, 0 before that."""
        return self.stats.first_poll.value

    @property
    def records_handed_out(self) -> int:
        return self.stats.records.value
