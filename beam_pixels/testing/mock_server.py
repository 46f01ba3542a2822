"""An in-process Pixels sink server for tests and demos, behaving as PROTOCOL.md says a real one does.

It keeps one FIFO per bucket of one (schema, table), and serves more tables on the same
port through :meth:`MockPixelsServer.serve_table`; a record's bucket is
:func:`~beam_pixels.buckets.bucket_of` its routing key, the canonical binary
encodings of its primary-key columns (of the ``after`` image, or ``before`` for
a DELETE). A table without a primary key routes by all columns of that image,
NULLs as empty bytes, so equal rows share a bucket. ``PollEvents`` walks the
requested buckets in order and drains each queue, without blocking, up to
``batch_size`` records per bucket; reads are destructive. An empty bucket list,
or a schema or table it does not serve, gets an empty response.

Every record handed out is remembered (:meth:`MockPixelsServer.handed_out`) so
a test can compare what a pipeline wrote with exactly what the server gave it.
Queues live in the :class:`MockPixelsServer` object: ``stop()`` then ``start()``
models an outage on the same port without losing queued records.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Iterable, Sequence

import grpc

from beam_pixels.buckets import DEFAULT_BUCKET_COUNT, bucket_of, key_bytes
from beam_pixels.changes import Op
from beam_pixels.codec import BINARY, RowCodec
from beam_pixels.protocol import sink_pb2, sink_pb2_grpc
from beam_pixels.schema import SourceSchema
from beam_pixels.testing import mock_data
from beam_pixels.testing.encoding import encode_row, encode_value

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandedOut:
    """One record as the server delivered it: its bucket and its Python row images."""

    bucket: int
    op: Op
    before: tuple | None
    after: tuple | None


class MockPixelsServer:
    """A gRPC ``PixelsPollingService`` serving one table from in-memory bucket queues.

    Feed it with :meth:`enqueue`, :meth:`load_rows` or :meth:`load_cdc` (thread-safe,
    also while running). ``tls_cert`` / ``tls_key`` (PEM) turn on TLS;
    ``tls_client_ca`` (PEM) additionally requires clients to present a certificate
    signed by it. ``fail_next`` makes the next polls fail with a chosen status.
    """

    def __init__(
        self,
        schema: SourceSchema,
        *,
        schema_name: str = "public",
        table_name: str = "orders",
        host: str = "127.0.0.1",
        port: int = 0,
        bucket_count: int = DEFAULT_BUCKET_COUNT,
        batch_size: int = 200,
        encoding: str = BINARY,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls_client_ca: bytes | None = None,
    ):
        if bucket_count < 1:
            raise ValueError(f"bucket_count must be at least 1, got {bucket_count}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if tls_client_ca is not None and tls_cert is None:
            raise ValueError("tls_client_ca needs TLS: give tls_cert and tls_key too")
        self.schema = schema
        self.schema_name = schema_name
        self.table_name = table_name
        self.host = host
        self.port = port
        self.bucket_count = bucket_count
        self.batch_size = batch_size
        self.encoding = encoding
        self._codec = RowCodec(schema, encoding)
        self._tls = (tls_cert, tls_key, tls_client_ca)
        positions = {c.name: i for i, c in enumerate(schema.columns)}
        self._route_positions = [positions[n] for n in schema.primary_key] or list(range(len(schema.columns)))
        self._lock = threading.Lock()
        self._queues: dict[int, collections.deque[tuple[sink_pb2.RowRecord, HandedOut]]] = (
            collections.defaultdict(collections.deque)
        )
        self._handed_out: list[HandedOut] = []
        # every distinct set of buckets a poll asked for (which readers poll what)
        self._bucket_sets: set[tuple[int, ...]] = set()
        self._polls = 0
        # (client connection, buckets) -> indexes into _handed_out of its last non-empty response
        self._unconfirmed: dict[tuple[str, tuple[int, ...]], range] = {}
        self._sequence = 0
        self._failures: collections.deque[tuple[grpc.StatusCode, str]] = collections.deque()
        self._server: grpc.Server | None = None
        self._other_tables: dict[tuple[str, str], MockPixelsServer] = {}

    def serve_table(self, schema: SourceSchema, *, schema_name: str = "public", table_name: str) -> MockPixelsServer:
        """Serve another table on this server's port, with this server's buckets, batch size and
        encoding; returns that table's server object (never started) to feed and inspect it
        (:meth:`enqueue`, :meth:`handed_out`, ...). Polls naming it drain its queues."""
        if (schema_name, table_name) in self.tables():
            raise ValueError(f"{schema_name}.{table_name} is already served on {self.address}")
        table = MockPixelsServer(schema, schema_name=schema_name, table_name=table_name, bucket_count=self.bucket_count,
                                 batch_size=self.batch_size, encoding=self.encoding)
        with self._lock:
            self._other_tables[(schema_name, table_name)] = table
        return table

    def tables(self) -> list[tuple[str, str]]:
        """The (schema, table) pairs this server answers polls for."""
        with self._lock:
            return [(self.schema_name, self.table_name), *self._other_tables]

    # --- feeding -------------------------------------------------------------------

    def enqueue(self, op: Op, before: Sequence | None, after: Sequence | None) -> int:
        """Queue one change (images as Python values in column order); returns its bucket.

        INSERT and SNAPSHOT take ``after`` only, DELETE ``before`` only, UPDATE both
        with the same key (send a key change as DELETE then INSERT, as servers do).
        """
        op = Op(op)
        before = None if before is None else tuple(before)
        after = None if after is None else tuple(after)
        bucket = self._bucket(op, before, after)
        record = sink_pb2.RowRecord(
            op=op.value, source=sink_pb2.SourceInfo(db=self.schema_name, schema=self.schema_name, table=self.table_name)
        )
        if before is not None:
            record.before.values.extend(self._encode(before))
        if after is not None:
            record.after.values.extend(self._encode(after))
        with self._lock:
            self._sequence += 1
            record.transaction.id = f"mock-tx-{self._sequence}"
            record.transaction.total_order = self._sequence
            record.transaction.data_collection_order = self._sequence
            self._queues[bucket].append((record, HandedOut(bucket, op, before, after)))
        return bucket

    def load_rows(self, rows: Iterable[Sequence]) -> None:
        """Queue each row as an INSERT."""
        for row in rows:
            self.enqueue(Op.INSERT, None, row)

    def load_cdc(self, events: Iterable[tuple[Op, Sequence | None, Sequence | None]]) -> None:
        """Queue ``(op, before, after)`` events in order (see :func:`mock_data.generate_cdc`)."""
        for op, before, after in events:
            self.enqueue(op, before, after)

    def fail_next(self, code: grpc.StatusCode, times: int = 1, message: str = "injected failure") -> None:
        """Make the next ``times`` polls fail with ``code`` and ``message`` without draining anything."""
        with self._lock:
            self._failures.extend([(code, message)] * times)

    # --- bookkeeping ---------------------------------------------------------------

    def handed_out(self) -> list[HandedOut]:
        """Every record delivered so far, in delivery order."""
        with self._lock:
            return list(self._handed_out)

    def unconfirmed(self) -> list[HandedOut]:
        """Records of responses their client never came back after.

        A poller polls its buckets one response at a time, storing each before the
        next poll, so a later poll for the same buckets on the same connection
        confirms that the previous response arrived. What stays unconfirmed may have
        been lost in flight (a client killed mid-response), which no client of this
        protocol can prevent, or stored by a client killed before its next poll.
        """
        return [record for response in self.unconfirmed_responses() for record in response]

    def unconfirmed_responses(self) -> list[list[HandedOut]]:
        """:meth:`unconfirmed`, one list per response: a killed client stored each whole or not at all."""
        with self._lock:
            return [[self._handed_out[i] for i in indexes] for indexes in self._unconfirmed.values()]

    def polled_bucket_sets(self) -> set[tuple[int, ...]]:
        """Every distinct set of buckets a poll request named, so far."""
        with self._lock:
            return set(self._bucket_sets)

    def polls(self) -> int:
        """How many poll requests the server has answered."""
        with self._lock:
            return self._polls

    def pending(self) -> int:
        """Records queued and not yet delivered."""
        with self._lock:
            return sum(len(q) for q in self._queues.values())

    def pending_buckets(self) -> list[int]:
        """Buckets that hold records now, ascending."""
        with self._lock:
            return sorted(b for b, q in self._queues.items() if q)

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> "MockPixelsServer":
        """Bind ``host:port`` (the first start may pick a free port into ``port``) and serve."""
        if self._server is not None:
            raise RuntimeError(f"the mock server on {self.address} is already running")
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="mock-pixels"))
        sink_pb2_grpc.add_PixelsPollingServiceServicer_to_server(_Servicer(self), server)
        address = f"{self.host}:{self.port}"
        cert, key, client_ca = self._tls
        try:
            if cert is None:
                port = server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
                )
                port = server.add_secure_port(address, credentials)
        except RuntimeError as e:
            raise OSError(f"mock Pixels server cannot bind {address}: {e}") from e
        if not port:
            raise OSError(f"mock Pixels server cannot bind {address}; is the port in use?")
        self.port = port
        server.start()
        self._server = server
        for table in (self, *self._other_tables.values()):
            _LOG.info(
                "mock Pixels server on %s serves %s.%s (%s; %d buckets, batch %d, %s encoding%s)",
                self.address, table.schema_name, table.table_name, table.schema, self.bucket_count,
                self.batch_size, self.encoding, ", TLS" if cert is not None else "",
            )
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (in-flight polls get ``grace`` seconds); queued records stay queued."""
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
            _LOG.info("mock Pixels server on %s stopped", self.address)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> "MockPixelsServer":
        """Start unless already started, so both ``with server:`` and ``with server.start():`` work."""
        return self if self._server is not None else self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # --- serving -------------------------------------------------------------------

    def _drain(self, request: sink_pb2.PollRequest, peer: str = "") -> sink_pb2.PollResponse:
        """What ``PollEvents`` answers to ``request`` from client connection ``peer``;
        drains the queues it reads."""
        response = sink_pb2.PollResponse()
        if (request.schema_name, request.table_name) != (self.schema_name, self.table_name):
            other = self._other_tables.get((request.schema_name, request.table_name))
            return response if other is None else other._drain(request, peer)
        poller = (peer, tuple(request.buckets))
        with self._lock:
            self._bucket_sets.add(tuple(request.buckets))
            self._polls += 1
            self._unconfirmed.pop(poller, None)
            first = len(self._handed_out)
            for bucket in request.buckets:
                queue = self._queues.get(bucket)
                for _ in range(min(self.batch_size, len(queue) if queue else 0)):
                    record, handed = queue.popleft()
                    response.records.append(record)
                    self._handed_out.append(handed)
            if len(self._handed_out) > first:
                self._unconfirmed[poller] = range(first, len(self._handed_out))
        return response

    def _take_failure(self) -> tuple[grpc.StatusCode, str] | None:
        with self._lock:
            return self._failures.popleft() if self._failures else None

    def _encode(self, values: tuple) -> list[sink_pb2.ColumnValue]:
        return [sink_pb2.ColumnValue(value=v, is_null=n) for v, n in encode_row(self._codec, values)]

    def _routing_key(self, image: tuple) -> bytes:
        columns = self.schema.columns
        return key_bytes(
            [b"" if image[i] is None else encode_value(columns[i].type, image[i]) for i in self._route_positions]
        )

    def _bucket(self, op: Op, before: tuple | None, after: tuple | None) -> int:
        images = (before is not None, after is not None)
        if images != _IMAGES[op]:
            raise ValueError(f"{op.name} carries {_describe(*_IMAGES[op])}, got {_describe(*images)}")
        for image in (before, after):
            if image is not None and len(image) != len(self.schema.columns):
                raise ValueError(
                    f"a row image has {len(image)} values but the schema has {len(self.schema.columns)} columns"
                )
        route = self._routing_key(after if after is not None else before)
        if op is Op.UPDATE and self.schema.primary_key and self._routing_key(before) != route:
            raise ValueError("an UPDATE must keep its primary key; send a key change as DELETE then INSERT")
        return bucket_of(route, self.bucket_count)


_IMAGES = {Op.INSERT: (False, True), Op.SNAPSHOT: (False, True), Op.UPDATE: (True, True), Op.DELETE: (True, False)}
"""Per operation: whether a record has a ``before`` and an ``after`` image."""


def _describe(before: bool, after: bool) -> str:
    return " and ".join(name for name, present in (("before", before), ("after", after)) if present) or "no image"


class _Servicer(sink_pb2_grpc.PixelsPollingServiceServicer):
    def __init__(self, server: MockPixelsServer):
        self._server = server

    def PollEvents(self, request, context):  # noqa: N802 (generated name)
        failure = self._server._take_failure()
        if failure is not None:
            context.abort(*failure)
        response = self._server._drain(request, context.peer())
        _LOG.debug("PollEvents(%s.%s, %d buckets) -> %d records",
                   request.schema_name, request.table_name, len(request.buckets), len(response.records))
        return response


def serve(
    schema: SourceSchema,
    host: str = "127.0.0.1",
    port: int = 50051,
    rows: int = 1000,
    cdc: bool = False,
    seed: int = 0,
    *,
    events: int | None = None,
    stop: threading.Event | None = None,
    report_every_s: float = 10.0,
    more_tables: Sequence[tuple[SourceSchema, str, str]] = (),
    **server_options,
) -> MockPixelsServer:
    """Serve generated data until SIGINT/SIGTERM (or ``stop`` is set); returns the stopped server.

    Without ``cdc`` it queues ``rows`` INSERTs from :func:`mock_data.generate_rows`;
    with ``cdc``, ``events`` (default ``3 * rows``) changes over ``rows`` keys from
    :func:`mock_data.generate_cdc`. ``server_options`` go to :class:`MockPixelsServer`;
    ``more_tables`` (schema, schema name, table name) are served on the same port, each with
    data of its own.
    """
    server = MockPixelsServer(schema, host=host, port=port, **server_options)
    tables = [server, *(server.serve_table(s, schema_name=n, table_name=t) for s, n, t in more_tables)]
    for i, table in enumerate(tables):
        if cdc:
            history = mock_data.generate_cdc(table.schema, rows, 3 * rows if events is None else events, seed + i)
            table.load_cdc(history)
            counts = collections.Counter(op.name for op, _, _ in history)
            breakdown = ", ".join(f"{n} {op}" for op, n in sorted(counts.items()))
            what = f"{len(history)} change events over {rows} keys ({breakdown})"
        else:
            table.load_rows(mock_data.generate_rows(table.schema, rows, seed + i))
            what = f"{rows} INSERTs"
        _LOG.info("%s.%s: %s with seed %d", table.schema_name, table.table_name, what, seed + i)
    stop = stop or threading.Event()
    restore = _stop_on_signals(stop)
    server.start()
    _LOG.info("serving on %s; stop with Ctrl-C", server.address)
    try:
        delivered = 0
        while not stop.wait(report_every_s):
            now = sum(len(t.handed_out()) for t in tables)
            if now != delivered:
                delivered = now
                _LOG.info("handed out %d records, %d pending", delivered, sum(t.pending() for t in tables))
    finally:
        server.stop(grace=1.0)
        restore()
        for table in tables:
            _LOG.info("%s.%s: handed out %d records, %d left undelivered", table.schema_name, table.table_name,
                      len(table.handed_out()), table.pending())
    return server


def _stop_on_signals(stop: threading.Event):
    """Set ``stop`` on SIGINT/SIGTERM (main thread only); returns a function restoring the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]
