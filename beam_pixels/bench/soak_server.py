"""An endless CDC stream for the soak benchmark: a Pixels server in its own process.

The stream is a preload of ``P`` INSERTs (keys ``0 .. P-1``), then ``R`` changes a
second: about 30% INSERTs of new keys, 60% UPDATEs and 10% DELETEs of random
live keys. The clocked variant (for partitioned tables, ``clock_us``) versions
rows by a clock that advances one tick per new row version (insert or update), and its rows carry
the clock's time: ``ts`` (TIMESTAMP) and ``day`` (its DATE), so that a table
partitioned by them sees new days arrive and updates move rows into them. It scales to ``P = 10,000,000`` because no Python object exists per
key or per record: the state is two numpy arrays indexed by key id (the key's
current version, and whether it is live), a row's values are a pure function of
``(key, version)`` (:func:`row_values`), and changes are generated and encoded
(protobuf bytes, exactly as ``sink.proto``'s serializer writes them) in
vectorised batches. The preload is generated a slice at a time, only while the
server holds fewer than ``max_pending`` undelivered records, so memory stays
bounded whatever ``P`` is.

Records are routed to buckets as a real server routes them (MurmurHash3 of the
key's canonical encoding) and kept per bucket as ready-made chunks of at most
``batch_size`` records; a poll answers one chunk per requested bucket. Per-key
order holds because a key always hashes to the same bucket and chunks are
queued in generation order; within one generated batch every key appears at
most once.

:class:`SoakServerProcess` runs the server on 127.0.0.1 in a spawned process;
the parent reads its counters from shared memory and sends it commands over a
pipe: stop generating, and dump the expected final state (the live keys and
their versions) to a ``.npz`` file. Everything generated is handed out once the
queues are empty, so after "stop generating", an empty queue and a final commit
of the application, the table must equal that state.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from beam_pixels.buckets import DEFAULT_BUCKET_COUNT, murmur3_32_of_ranges
from beam_pixels.testing.server_process import CONTEXT, SpawnedServer, answer_commands, start_poll_server

_LOG = logging.getLogger(__name__)

SCHEMA = "id:BIGINT, version:BIGINT, amount:DOUBLE, note:STRING"
CLOCKED_SCHEMA = SCHEMA + ", ts:TIMESTAMP, day:DATE"
"""The clocked variant's columns: ``ts`` and ``day`` are :func:`clock_values` of the version."""
KEY = "id"
CLOCK_START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00
US_PER_DAY = 86_400_000_000
NOTE_CHARS = 16
INSERT, UPDATE, DELETE = 0, 1, 2
OP_SHARES = (0.3, 0.6, 0.1)
"""Shares of INSERT, UPDATE and DELETE in the change stream after the preload."""

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# --- values ------------------------------------------------------------------


def _mix(keys: np.ndarray, versions: np.ndarray) -> np.ndarray:
    """A 64-bit hash of (key, version) (splitmix64's finaliser), vectorised."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + versions.astype(np.uint64) * np.uint64(
            0xD1B54A32D192ED03
        )
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def row_values(keys: np.ndarray, versions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The row of each (key, version): ``id``, ``version``, ``amount`` (float64) and
    ``note`` (``NOTE_CHARS`` lowercase hex digits, as an ``(n, NOTE_CHARS)`` uint8 array)."""
    h = _mix(keys, versions)
    amount = (h % np.uint64(100_000_000)).astype(np.float64) / 100.0
    shifts = np.arange(60, -1, -4, dtype=np.uint64)[:NOTE_CHARS]
    note = _HEX[((h[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]
    return keys.astype(np.int64), versions.astype(np.int64), amount, note


def clock_values(versions: np.ndarray, clock_us: int) -> tuple[np.ndarray, np.ndarray]:
    """The clocked variant's ``ts`` (microseconds since the epoch) and ``day`` (days since the
    epoch) of each version, a clock tick of ``clock_us`` microseconds."""
    ts = CLOCK_START_US + versions.astype(np.int64) * clock_us
    return ts, np.floor_divide(ts, US_PER_DAY).astype(np.int32)


def notes_as_str(note: np.ndarray) -> np.ndarray:
    """``note`` bytes of :func:`row_values` as a numpy array of str."""
    return np.ascontiguousarray(note).view(f"S{NOTE_CHARS}").ravel().astype(f"U{NOTE_CHARS}")


# --- encoding ----------------------------------------------------------------


def _column(tag_payload: np.ndarray) -> np.ndarray:
    """A non-NULL ColumnValue as a RowValue element: ``0a (2+L) 0a L <L bytes>``."""
    n, width = tag_payload.shape
    out = np.empty((n, width + 4), dtype=np.uint8)
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = 0x0A, width + 2, 0x0A, width
    out[:, 4:] = tag_payload
    return out


def _image(keys: np.ndarray, versions: np.ndarray, clock_us: int = 0) -> np.ndarray:
    """A serialized RowValue per row, all of one length (fixed-width columns); with
    ``clock_us``, also the clocked variant's ``ts`` and ``day``."""
    ids, vs, amount, note = row_values(keys, versions)
    parts = [
        _column(ids.astype(">i8").view(np.uint8).reshape(-1, 8)),
        _column(vs.astype(">i8").view(np.uint8).reshape(-1, 8)),
        _column(amount.astype(">f8").view(np.uint8).reshape(-1, 8)),
        _column(note),
    ]
    if clock_us:
        ts, day = clock_values(versions, clock_us)
        parts += [_column(ts.astype(">i8").view(np.uint8).reshape(-1, 8)),
                  _column(day.astype(">i4").view(np.uint8).reshape(-1, 4))]
    return np.concatenate(parts, axis=1)


def _source(schema_name: str, table_name: str) -> bytes:
    def field(tag: int, text: str) -> bytes:
        data = text.encode()
        return bytes([tag, len(data)]) + data

    body = field(0x0A, schema_name) + field(0x12, schema_name) + field(0x1A, table_name)
    return bytes([0x1A, len(body)]) + body


def _length_prefix(n: int) -> bytes:
    """A varint length (records here are well under 2**14 bytes)."""
    return bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7])


def encode_records(
    op: int, keys: np.ndarray, before_versions: np.ndarray | None, after_versions: np.ndarray | None, source: bytes,
    clock_us: int = 0,
) -> np.ndarray:
    """PollResponse elements (``0a <len> <RowRecord>``) of one operation, one row each,
    as protobuf's serializer writes them (fields in number order, ``op`` left out for INSERT)."""
    n = len(keys)
    parts = []
    for tag, versions in ((0x0A, before_versions), (0x12, after_versions)):
        if versions is not None:
            image = _image(keys, versions, clock_us)
            parts.append(np.broadcast_to(np.array([tag, image.shape[1]], dtype=np.uint8), (n, 2)))
            parts.append(image)
    tail = source + (bytes([0x28, op]) if op else b"")
    parts.append(np.broadcast_to(np.frombuffer(tail, dtype=np.uint8), (n, len(tail))))
    record_length = sum(p.shape[1] for p in parts)
    prefix = np.frombuffer(b"\x0a" + _length_prefix(record_length), dtype=np.uint8)
    return np.concatenate([np.broadcast_to(prefix, (n, len(prefix)))] + parts, axis=1)


def buckets_of(keys: np.ndarray, bucket_count: int) -> np.ndarray:
    """The server bucket of each BIGINT key (MurmurHash3 of its 8 big-endian bytes)."""
    n = len(keys)
    data = keys.astype(">i8").view(np.uint8)
    hashes = murmur3_32_of_ranges(data, (np.arange(n, dtype=np.int64) * 8)[:, None], np.full((n, 1), 8, np.int64))
    return (np.abs(hashes.astype(np.int64)) % bucket_count).astype(np.int32)


# --- the stream's state ------------------------------------------------------


@dataclass
class Batch:
    """Changes generated together: per record its op, key, and versions before / after (-1: none)."""

    ops: np.ndarray
    keys: np.ndarray
    before: np.ndarray
    after: np.ndarray


class ChangeStream:
    """The state of the stream (per key id: version and liveness) and its generator.

    :meth:`preload` and :meth:`changes` return :class:`Batch` es and update the
    state as if each batch were applied; :meth:`expected` is the table once every
    generated batch is applied.
    """

    def __init__(self, preload: int, seed: int = 0, shares: tuple[float, float, float] = OP_SHARES,
                 clocked: bool = False):
        self.clocked = clocked
        self.clock = 0  # clocked: the next tick; every insert and update takes one
        self.preload_total = preload
        self.preloaded = 0
        self.rng = np.random.default_rng(seed)
        self.shares = shares
        capacity = max(1024, int(preload * 1.25))
        self.version = np.full(capacity, -1, dtype=np.int64)  # -1: never inserted
        self.alive = np.zeros(capacity, dtype=bool)
        self.next_key = 0
        self.live = 0
        self.generated = collections.Counter()

    def _grow(self, needed: int) -> None:
        if needed <= len(self.version):
            return
        capacity = max(needed, 2 * len(self.version))
        self.version = np.concatenate([self.version, np.full(capacity - len(self.version), -1, np.int64)])
        self.alive = np.concatenate([self.alive, np.zeros(capacity - len(self.alive), bool)])

    def _versions(self, before: np.ndarray) -> np.ndarray:
        """The next version of rows at versions ``before`` (-1: new rows): one more, or clocked,
        the next ticks of the clock (later than any version so far)."""
        if not self.clocked:
            return before + 1
        ticks = self.clock + np.arange(len(before), dtype=np.int64)
        self.clock += len(before)
        return ticks

    def _insert(self, n: int) -> Batch:
        keys = np.arange(self.next_key, self.next_key + n, dtype=np.int64)
        self._grow(self.next_key + n)
        self.next_key += n
        none = np.full(n, -1, np.int64)
        versions = self._versions(none)
        self.version[keys] = versions
        self.alive[keys] = True
        self.live += n
        self.generated["insert"] += n
        return Batch(np.full(n, INSERT, np.int8), keys, none, versions)

    def preload(self, n: int) -> Batch | None:
        """The next ``n`` preload INSERTs (fewer at the end; None when the preload is done)."""
        n = min(n, self.preload_total - self.preloaded)
        if n <= 0:
            return None
        self.preloaded += n
        return self._insert(n)

    @property
    def preload_done(self) -> bool:
        return self.preloaded >= self.preload_total

    def _random_live(self, n: int) -> np.ndarray:
        """``n`` distinct live keys, uniformly at random (fewer if fewer are live)."""
        n = min(n, self.live)
        chosen = np.empty(0, np.int64)
        while len(chosen) < n:
            draw = self.rng.integers(0, self.next_key, size=2 * (n - len(chosen)) + 16)
            draw = draw[self.alive[draw]]
            chosen = np.unique(np.concatenate([chosen, draw]))
        return self.rng.permutation(chosen)[:n] if len(chosen) > n else self.rng.permutation(chosen)

    def changes(self, n: int) -> Batch:
        """``n`` changes after the preload: INSERTs of new keys, UPDATEs and DELETEs of
        distinct random live keys (INSERTs instead when too few keys are live), shuffled."""
        counts = self.rng.multinomial(n, self.shares)
        inserts, updates, deletes = (int(c) for c in counts)
        touched = self._random_live(updates + deletes)
        inserts += updates + deletes - len(touched)  # too few live keys: insert instead
        updates = min(updates, len(touched))
        upd_keys, del_keys = touched[:updates], touched[updates:]
        upd_before = self.version[upd_keys].copy()
        upd_after = self._versions(upd_before)
        self.version[upd_keys] = upd_after
        del_before = self.version[del_keys].copy()
        self.alive[del_keys] = False
        self.live -= len(del_keys)
        self.generated["update"] += len(upd_keys)
        self.generated["delete"] += len(del_keys)
        ins = self._insert(inserts) if inserts else None
        parts = [
            Batch(np.full(len(upd_keys), UPDATE, np.int8), upd_keys, upd_before, upd_after),
            Batch(np.full(len(del_keys), DELETE, np.int8), del_keys, del_before, np.full(len(del_keys), -1, np.int64)),
        ] + ([ins] if ins else [])
        order = self.rng.permutation(sum(len(p.keys) for p in parts))
        return Batch(*(np.concatenate([getattr(p, f) for p in parts])[order] for f in ("ops", "keys", "before", "after")))

    def expected(self) -> tuple[np.ndarray, np.ndarray]:
        """Live keys (ascending) and their versions once every generated change is applied."""
        keys = np.flatnonzero(self.alive[: self.next_key]).astype(np.int64)
        return keys, self.version[keys]


# --- serving -----------------------------------------------------------------


class _Queues:
    """Per bucket, ready-made chunks (bytes, record count) in generation order."""

    def __init__(self, schema_name: str, table_name: str, bucket_count: int, batch_size: int, clock_us: int = 0):
        self.source = _source(schema_name, table_name)
        self.clock_us = clock_us
        self.table = (schema_name, table_name)
        self.bucket_count = bucket_count
        self.batch_size = batch_size
        self.queues: dict[int, collections.deque] = collections.defaultdict(collections.deque)
        self.lock = threading.Lock()
        self.pending = 0

    def add(self, batch: Batch) -> None:
        """Encode ``batch`` and queue it per bucket, keeping its order within each bucket."""
        n = len(batch.keys)
        if not n:
            return
        buckets = buckets_of(batch.keys, self.bucket_count)
        order = np.argsort(buckets, kind="stable")  # per bucket, generation order
        buckets = buckets[order]
        ops, keys, before_v, after_v = batch.ops[order], batch.keys[order], batch.before[order], batch.after[order]
        encoded: list[tuple[np.ndarray, np.ndarray]] = []  # (indexes, one row of bytes per record)
        for op in (INSERT, UPDATE, DELETE):
            idx = np.flatnonzero(ops == op)
            if len(idx):
                before = before_v[idx] if op != INSERT else None
                after = after_v[idx] if op != DELETE else None
                encoded.append((idx, encode_records(op, keys[idx], before, after, self.source, self.clock_us)))
        lengths = np.empty(n, np.int64)
        for idx, rows in encoded:
            lengths[idx] = rows.shape[1]
        ends = np.cumsum(lengths)
        starts = ends - lengths
        buffer = np.empty(int(ends[-1]), np.uint8)
        for idx, rows in encoded:
            buffer[(starts[idx][:, None] + np.arange(rows.shape[1])).ravel()] = rows.ravel()
        # Chunks: runs of one bucket, cut every batch_size records (one Python object per chunk).
        group_starts = np.concatenate([[0], np.flatnonzero(np.diff(buckets)) + 1])
        group_ends = np.append(group_starts[1:], n)
        chunks = []
        for first, end in zip(group_starts.tolist(), group_ends.tolist()):
            bucket = int(buckets[first])
            for i in range(first, end, self.batch_size):
                j = min(i + self.batch_size, end)
                chunks.append((bucket, buffer[int(starts[i]) : int(ends[j - 1])].tobytes(), j - i))
        with self.lock:
            for bucket, pieces, count in chunks:
                self.queues[bucket].append((pieces, count))
            self.pending += n

    def poll(self, schema_name: str, table_name: str, buckets) -> tuple[bytes, int]:
        if (schema_name, table_name) != self.table:
            return b"", 0
        parts, records = [], 0
        with self.lock:
            for bucket in buckets:
                queue = self.queues.get(bucket)
                if queue:
                    payload, count = queue.popleft()
                    parts.append(payload)
                    records += count
            self.pending -= records
        return b"".join(parts), records


class _Stats:
    """Counters shared with the parent (shared memory; each has one writer)."""

    def __init__(self, context):
        self.first_poll = context.Value("d", 0.0, lock=False)
        self.preload_generated_at = context.Value("d", 0.0, lock=False)
        self.preload_handed_out_at = context.Value("d", 0.0, lock=False)
        self.handed_out = context.Value("q", 0, lock=False)
        self.generated = context.Value("q", 0, lock=False)
        self.changes = context.Value("q", 0, lock=False)
        self.pending = context.Value("q", 0, lock=False)
        self.skipped = context.Value("q", 0, lock=False)
        self.live = context.Value("q", 0, lock=False)
        self.generating = context.Value("b", 1, lock=False)


@dataclass(frozen=True)
class StreamOptions:
    """What the soak server serves (see :class:`ChangeStream`)."""

    preload: int
    rate: float
    seed: int = 0
    schema_name: str = "public"
    table_name: str = "orders"
    bucket_count: int = DEFAULT_BUCKET_COUNT
    batch_size: int = 200
    preload_slice: int = 100_000
    max_pending: int = 1_000_000
    tick_s: float = 0.1
    clock_us: int = 0
    """The clocked variant (:data:`CLOCKED_SCHEMA`) with a tick of this many microseconds; 0 = off."""


def _generate(stream: ChangeStream, queues: _Queues, options: StreamOptions, stats: _Stats, lock, done) -> None:
    """The generator thread: the preload while the queues have room, then ``rate`` changes/s
    once the preload is handed out, until ``stats.generating`` drops or ``done`` is set."""
    credit, last = 0.0, None
    while not done.is_set():
        stats.pending.value = queues.pending
        if not stats.generating.value:
            done.wait(options.tick_s)
            continue
        if not stream.preload_done:
            if queues.pending >= options.max_pending:
                done.wait(0.02)
                continue
            with lock:
                if not stats.generating.value:  # stopped meanwhile (see stop)
                    continue
                queues.add(stream.preload(options.preload_slice))
                stats.generated.value = stream.preloaded
                stats.live.value = stream.live
                stats.pending.value = queues.pending
            if stream.preload_done:
                stats.preload_generated_at.value = time.time()
            continue
        if not stats.preload_handed_out_at.value:
            if queues.pending:
                done.wait(0.02)
                continue
            stats.preload_handed_out_at.value = time.time()
            last = time.monotonic()
        done.wait(options.tick_s)
        now = time.monotonic()
        credit += options.rate * (now - last)
        last = now
        n = int(credit)
        if n <= 0:
            continue
        credit -= n
        if queues.pending >= options.max_pending:  # the application is far behind: do not pile up
            stats.skipped.value += n
            continue
        with lock:
            if not stats.generating.value:  # stopped during the tick: that batch is never made
                continue
            batch = stream.changes(n)
            queues.add(batch)
            stats.generated.value += len(batch.keys)
            stats.pending.value = queues.pending
            stats.changes.value += len(batch.keys)
            stats.live.value = stream.live
    stats.pending.value = queues.pending


def _serve(options: StreamOptions, stats: _Stats, ready, commands) -> None:
    """Process target: serve on 127.0.0.1 (a free port, sent back) and generate until told to quit."""
    logging.basicConfig(level=logging.WARNING)
    stream = ChangeStream(options.preload, options.seed, clocked=bool(options.clock_us))
    queues = _Queues(options.schema_name, options.table_name, options.bucket_count, options.batch_size, options.clock_us)
    lock, done = threading.Lock(), threading.Event()

    def poll(request, context) -> bytes:
        if not stats.first_poll.value:
            stats.first_poll.value = time.time()
        payload, records = queues.poll(request.schema_name, request.table_name, request.buckets)
        if records:
            stats.handed_out.value += records
            stats.pending.value = queues.pending
        return payload

    def stop() -> None:
        # Under the generator's lock: once this returns, no batch is added (it checks under the
        # lock), and the queues' count is current, so a drain that waits for it misses nothing.
        with lock:
            stats.generating.value = 0
            stats.pending.value = queues.pending

    def dump(path: str) -> None:
        with lock:
            keys, versions = stream.expected()
            np.savez(path, keys=keys, versions=versions, next_key=stream.next_key,
                     **{f"generated_{k}": v for k, v in stream.generated.items()})

    server, port = start_poll_server(poll, workers=2)
    generator = threading.Thread(target=_generate, args=(stream, queues, options, stats, lock, done), daemon=True)
    generator.start()
    ready.send(port)
    try:
        answer_commands(commands, {"stop": stop, "dump": dump})
    finally:
        done.set()
        generator.join(5)
        server.stop(None).wait()


class SoakServerProcess(SpawnedServer):
    """The soak server in its own (spawned) process; use as a context manager."""

    def __init__(self, options: StreamOptions):
        self.options = options
        self.stats = _Stats(CONTEXT)
        super().__init__(_serve, (options, self.stats), name="soak-pixels-server", start_timeout_s=120)

    def stop_generating(self) -> None:
        """No more changes (or preload) after the batch being generated now."""
        self.ask("stop")

    def dump_expected(self, path: Path) -> dict[str, np.ndarray]:
        """The expected table (live keys ascending, their versions) of everything generated."""
        self.ask("dump", str(path))
        with np.load(path) as data:
            return {name: data[name] for name in data.files}

    @property
    def pending(self) -> int:
        return self.stats.pending.value
