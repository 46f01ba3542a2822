"""``ReadFromPixels``: poll a Pixels sink server without end and decode its change records
(``ReadTablesFromPixels``: several tables' through the same steps).

Shape::

    Create(one PollGroup per group of buckets, of every table)
      -> ParDo(_PollPixelsFn)   splittable, unbounded per element; emits each poll
                                response as bytes (a wire.RawPoll), claiming its
                                record positions; a _TablePoller per table
      -> ParDo(DecodePollsFn)   bytes -> ChangeBatch (Arrow), bad records to the
                                ``dead_letters`` output (see beam_pixels.decode)

The restriction of a poll group is an offset range ``[next position, end)`` over
the group's record positions. The DoFn claims the positions of each response's
records as it emits it, and checkpoints (``defer_remainder``) after an empty poll
(with the poll interval), when a bounded group ends its call, or every
:data:`UNBOUNDED_MAX_CALL_MS` when unbounded, so a runner can persist and resume
it. Runner-initiated splits at a fraction of the open-ended range are declined
(a checkpoint split is accepted); on drain the restriction truncates to nothing. A poll group ends only in the bounded modes (idle time, record
count, or duration), used for local runs and tests.

While the server is unreachable a call retries for a poll interval at most (never
past its own end or the end of the bounded read), then moves the watermark to the
clock and checkpoints; the next call goes on retrying. So the windows of what was
polled before an outage close and commit during it. A failed poll was never
answered: nothing was handed out, nothing is claimed, and records polled after the
outage are stamped with a later poll time than that watermark.

A poll that finds nothing closes windows early. The group polls again a poll interval
later at the soonest, and with the commit step's windows (``window_ms``, streaming
runners) what it polls later is stamped no earlier than the end of the window the
clock is in: so an empty poll moves the watermark to the later of the two, and that
window fires at once instead of at its end (a burst's last window commits as soon as
the server is drained). A failed poll moves it as far as the end of the window holding
the group's latest records (at most a window past the clock's), so all that was polled
before an outage commits during it. A record is never stamped behind the watermark.
On Flink, whose runner keeps watermarks in whole seconds, windows of whole seconds
close early; others at their end.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import logging
import math
import threading
import time
import typing
import uuid
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider, WatermarkEstimatorProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_pixels.buckets import DEFAULT_BUCKET_COUNT, partition_buckets
from beam_pixels.client import Outage, PixelsClient, PixelsRetryDeadlineError, PixelsStoppedError
from beam_pixels.codec import BINARY
from beam_pixels.decode import CHANGES, DEAD_LETTERS, METRICS_NAMESPACE, DecodePollsFn, TableDecoder
from beam_pixels.flink import placement
from beam_pixels.journal import PollJournal, Segment
from beam_pixels.logs import worker_logging
from beam_pixels.metrics import table_namespace
from beam_pixels.schema import SourceSchema
from beam_pixels.wire import RawPoll, count_records

_LOG = logging.getLogger(__name__)

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
    """The buckets one poller polls of one table, and the position its next record gets
    (``round_key`` set: the position the current round of its read starts at, see :class:`LocalRounds`)."""

    group_id: int
    buckets: tuple[int, ...]
    start_position: int = 0
    round_key: str = ""
    table_label: str = ""  # the table's name in ``tables`` ("": the job's only table)
    placement: int = 0  # picks the Flink subtask that polls the group (beam_pixels.flink.placement)


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
        """A client for this server; setting ``stop`` abandons its retries. The clients of one
        server in a process share its :class:`~beam_pixels.client.Outage`, so retry numbers,
        back-off and the time unreachable go on across them (a local run has one per round)."""

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
            outage=_OUTAGES.of(f"{self.host}:{self.port}"),
        )


class _Outages:
    """The :class:`~beam_pixels.client.Outage` of each server address, in this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self._outages: dict[str, Outage] = {}

    def of(self, address: str) -> Outage:
        with self._lock:
            return self._outages.setdefault(address, Outage())


_OUTAGES = _Outages()


@dataclass(frozen=True)
class Bounds:
    """When a read stops by itself (0 = no such bound); unbounded when all are 0.

    ``stop_after_idle_ms`` applies to each poll group (time unreachable is not idle);
    ``max_duration_ms`` counts from the read's first call in the worker, for all its groups.
    ``drain_after`` (``time.time()``): from then on a poll group ends once the server had nothing
    for it; the tables of one local round share it, so that a poll group the runner starts late (it
    runs one poll group after another) still drains what waits for it, and then ends.
    ``max_records`` counts the records of all poll groups of one read together
    (in each worker process: exactly the run's total on in-process runners).
    """

    stop_after_idle_ms: int = 0
    max_records: int = 0
    max_duration_ms: int = 0
    drain_after: float = 0.0
    read_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def unbounded(self) -> bool:
        return not (self.stop_after_idle_ms or self.max_records or self.max_duration_ms or self.drain_after)


class LocalRounds:
    """The bounds and start positions of each read of the current local round, by round key.

    A local run builds its pipeline once and runs it again each round (building and planning
    it again cost the in-process runner about as much as a table's commit, per table): what
    changes from round to round (where each poll group starts, the round's end, the records it
    may take) is planned here before each run, and a read built with a ``round_key`` looks it
    up when it starts. In this process only: a worker in another process finds no plan and fails.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._plans: dict[str, tuple[Bounds, dict[int, int]]] = {}

    def plan(self, round_key: str, bounds: Bounds, start_positions: typing.Mapping[int, int]) -> None:
        """What the read of ``round_key`` does in the next run (its ``bounds`` with a fresh ``read_id``)."""
        with self._lock:
            self._plans[round_key] = (bounds, dict(start_positions))

    def forget(self, round_key: str) -> None:
        with self._lock:
            self._plans.pop(round_key, None)

    def _plan(self, round_key: str) -> tuple[Bounds, dict[int, int]]:
        with self._lock:
            plan = self._plans.get(round_key)
        if plan is None:
            raise RuntimeError(
                f"no local round is planned for read {round_key!r} in this process: a local run's rounds need "
                "Beam's in-process runner in this process (--direct_running_mode in_memory, the default)")
        return plan

    def bounds(self, round_key: str) -> Bounds:
        return self._plan(round_key)[0]

    def start_position(self, group: PollGroup) -> int:
        return self._plan(group.round_key)[1].get(group.group_id, 0)


LOCAL_ROUNDS = LocalRounds()


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
        start = LOCAL_ROUNDS.start_position(group) if group.round_key else group.start_position
        return OffsetRange(start, OPEN_END)

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


# How long one call of the unbounded poller keeps polling before it checkpoints (unless a
# response comes back empty first). Several responses per call spare the runner a bundle
# each; one second keeps checkpoints frequent on streaming runners.
UNBOUNDED_MAX_CALL_MS = 1000

# The least time a call waits for an unreachable server before it checkpoints (a poll interval
# of 0 would otherwise end calls back to back while the retry back-off runs).
OUTAGE_CALL_MIN_MS = 100


@dataclass(frozen=True)
class _Response:
    """A poll response, from the server or the journal: records ``[start, start + count)`` of a poll group."""

    start: int
    count: int
    payload: bytes
    replayed: bool = False
    schema: str = ""  # the source.schema it was polled under, if not the pipeline's (see RawPoll)

    @property
    def end(self) -> int:
        return self.start + self.count


class _TablePoller:
    """Polls the poll groups of one table for :class:`_PollPixelsFn` and emits each non-empty response.

    One call polls until a response comes back empty, a bound ends the group, or
    ``max_call_ms`` (None: no limit) has passed; then it checkpoints. A poll the server
    does not answer is retried for a poll interval at most (never past the call's end or
    the bounded read's), then the call moves the watermark to now and checkpoints, as an
    empty poll does (both move it further, see the module); failed tries count in
    ``poll_failures``. While a response
    is emitted (and decoded downstream), the next poll is already on its way on a
    fetch thread, journaled there before it is handed back, so the network, the
    server and the journal's disk overlap the decoding. A call never ends with a
    poll in flight: every response drained from the server is emitted. Its metrics are in
    the table's namespace (:func:`~beam_pixels.metrics.table_namespace`).
    """

    def __init__(
        self,
        server: ServerOptions,
        schema_name: str,
        table_name: str,
        poll_interval_ms: int,
        bounds: Bounds,
        journal: PollJournal | None = None,
        max_call_ms: int | None = None,
        round_key: str = "",
        table_label: str = "",
        groups: typing.Sequence[PollGroup] = (),
        window_ms: int | None = None,
    ):
        self._server = server
        self._groups = tuple(groups)  # polled first at setup in a local round (see _prefetch)
        self._schema_name = schema_name
        self._table_name = table_name
        self._source_table = f"{schema_name}.{table_name}"  # names the table in log lines
        self._table_label = table_label
        self._poll_interval_s = poll_interval_ms / 1000.0
        self._bounds = bounds
        self._round_key = round_key  # set: the bounds are the current local round's (LocalRounds)
        self._journal = journal
        self._max_call_s = math.inf if max_call_ms is None else max_call_ms / 1000.0
        self._window_s = window_ms / 1000.0 if window_ms else None  # the commit step's windows
        namespace = table_namespace(METRICS_NAMESPACE, table_label)
        self._replayed = Metrics.counter(namespace, "records_replayed")
        self._polls = Metrics.counter(namespace, "polls")
        self._empty_polls = Metrics.counter(namespace, "empty_polls")
        self._records = Metrics.counter(namespace, "records")
        self._bytes = Metrics.counter(namespace, "bytes")
        self._stopped_idle = Metrics.counter(namespace, "groups_stopped_idle")
        self._stopped_at_limit = Metrics.counter(namespace, "groups_stopped_at_max_records")
        self._poll_failures = Metrics.counter(namespace, "poll_failures")

    def setup(self):
        if self._round_key:
            self._bounds = LOCAL_ROUNDS.bounds(self._round_key)
        self._client = self._server.connect(stop=_LOCAL_STOP)
        self._fetcher = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixels-poll")
        # When this worker first polled for the read (max_duration_ms counts from there).
        self._started: float | None = None
        # Per poll group: since when it has polled nothing (records, failed polls and polls given
        # up restart it: an unreachable server is not an idle one), when it last polled empty.
        self._idle_since: dict[int, float] = {}
        self._last_empty: dict[int, float] = {}
        # Per poll group: the event time its latest response was stamped with.
        self._latest_stamp: dict[int, float] = {}
        # The client's failed tries already counted in poll_failures.
        self._failures_counted = 0
        # Per poll group: journaled responses still to replay before polling the server.
        self._to_replay: dict[int, collections.deque[Segment]] = {}
        # Per poll group: a response polled while the runner checkpointed the restriction
        # (its positions could not be claimed); emitted first when the group resumes here.
        self._unclaimed: dict[int, _Response] = {}
        # Per poll group: the committed position the journal recorded when this worker started it.
        self._floors: dict[int, int] = {}
        # Per poll group: its first poll of a local round, sent at setup (position, the poll).
        self._prefetched: dict[int, tuple[int, concurrent.futures.Future]] = {}
        if self._round_key:
            self._prefetch()

    def _prefetch(self) -> None:
        """Send each poll group's first poll of a local round now, on this table's fetch thread.

        The in-process runner calls the poll groups of a round's tables one after another, and a
        call's first poll (and its journal append) has nothing to overlap with: 10 tables waited
        for ten of them in turn. Sent at setup, they are on their way while the runner works on
        the tables before. Only with a journal: a prefetched response is journaled like any other,
        so one its call does not take (the round ended by another bound first) is replayed by the
        next round or run; a stop request (Ctrl-C) still takes it, to commit it in this round. A
        group that has journaled responses to replay (or a committed floor ahead of it) is polled
        when its call comes, as before.
        """
        if self._journal is None or _LOCAL_STOP.is_set():
            return
        give_up_at = time.monotonic() + max(self._poll_interval_s, OUTAGE_CALL_MIN_MS / 1000.0)
        for group in self._groups:
            gid, start = group.group_id, LOCAL_ROUNDS.start_position(group)
            if self._committed_floor(gid) > start or self._replay_queue(gid, start):
                continue
            self._prefetched[gid] = (start, self._fetcher.submit(self._fetch, group, start, give_up_at))

    def teardown(self):
        self._fetcher.shutdown(wait=True)
        self._client.close()

    def poll(self, group: PollGroup, tracker, watermark):
        """One call for ``group`` (a poll group of this table): see the class."""
        gid = group.group_id
        now = time.time()
        self._started = self._started or now
        self._idle_since.setdefault(gid, now)
        position = tracker.current_restriction().start
        if self._bounded_stop(group, position):
            _finish(tracker)
            return
        floor = self._committed_floor(gid)
        if floor > position:  # restored from a runner checkpoint older than the table's last commit
            _LOG.info("%s poll group %d: positions %d..%d are already in the table (journal); resuming at %d",
                      self._source_table, gid, position, floor - 1, floor)
            if not tracker.try_claim(floor - 1):
                return
            position = floor
        call_ends = time.monotonic() + self._max_call_s
        give_up_at = self._give_up_at(call_ends)
        next_response = functools.partial(self._next_response, group, position, give_up_at)
        while True:
            try:
                response = next_response()
            except PixelsStoppedError:
                _LOG.info("%s poll group %d stops at position %d: stop requested while the server was unreachable",
                          self._source_table, gid, tracker.current_restriction().start)
                _finish(tracker)
                return
            except PixelsRetryDeadlineError:
                # Not answered, so nothing was handed out or claimed. What was polled before is
                # stamped before the new watermark, what is polled next at or after it: the watermark
                # moves at least to the clock (with windows, past the latest records' window).
                self._idle_since[gid] = time.time()
                _advance(watermark, self._watermark_after_failed_poll(gid))
                tracker.defer_remainder()
                return
            finally:
                self._count_failures(gid)
            if response.replayed:
                self._replayed.inc(response.count)
            else:
                self._polls.inc()
                self._bytes.inc(len(response.payload))
            if response.count == 0:
                self._empty_polls.inc()
                self._last_empty[gid] = time.monotonic()
                _advance(watermark, self._watermark_after_empty_poll())
                tracker.defer_remainder(Duration.of(self._poll_interval_s))
                return
            # Never behind the watermark (a record stamped behind it would be late, and dropped).
            self._idle_since[gid] = answered = time.time()
            poll_time = self._latest_stamp[gid] = max(answered, float(watermark.current_watermark() or 0))
            if not tracker.try_claim(response.end - 1):
                _LOG.warning("%s poll group %d: the runner checkpointed while positions %d..%d were being polled; "
                             "they are emitted when the group resumes", self._source_table, gid, response.start, response.end - 1)
                self._unclaimed[gid] = response
                return
            self._records.inc(response.count)
            _EMITTED.add(self._bounds.read_id, response.count)
            _advance(watermark, Timestamp.of(poll_time))
            goes_on = time.monotonic() < call_ends and self._polls_next(gid) and self._stop_reason(gid) is None
            if goes_on:  # poll on while this response is decoded downstream
                next_response = self._fetcher.submit(self._fetch, group, response.end, give_up_at).result
            raw = RawPoll(gid, response.start, poll_time, response.payload, response.schema, self._table_label)
            yield TimestampedValue(raw, poll_time)
            if not goes_on:
                tracker.defer_remainder()
                return

    def _polled_ahead(self, group_id: int, position: int) -> bool:
        """Whether a response for ``position`` was polled before this call: the round's first poll,
        sent at setup (:meth:`_prefetch`), or one stashed while the runner checkpointed."""
        stashed = self._unclaimed.get(group_id)
        prefetched = self._prefetched.get(group_id)
        return (stashed is not None and stashed.start == position) or (prefetched is not None and prefetched[0] == position)

    def _next_response(self, group: PollGroup, position: int, give_up_at: float) -> _Response:
        """The response for ``position``: a stashed or journaled one, else a new poll."""
        gid = group.group_id
        stashed = self._unclaimed.pop(gid, None)
        if stashed is not None:
            if stashed.start == position:
                return stashed
            _LOG.error("%s poll group %d resumed at position %d, not at %d: positions %d..%d polled during a "
                       "checkpoint are lost unless the journal holds them", self._source_table, gid, position, stashed.start,
                       stashed.start, stashed.end - 1)
        prefetched = self._prefetched.pop(gid, None)
        if prefetched is not None:
            prefetched_at, poll = prefetched
            response = poll.result()  # never two polls of a group at once
            if prefetched_at == position:
                return response
            _LOG.error("%s poll group %d resumed at position %d, not at %d where the round began: positions "
                       "%d..%d polled then are in the journal", self._source_table, gid, position, prefetched_at,
                       prefetched_at, prefetched_at + response.count - 1)
        replayed = self._next_replayed(gid, position)
        if replayed is not None:
            return replayed
        self._wait_after_empty_poll(gid)
        return self._fetch(group, position, give_up_at)

    def _watermark_after_empty_poll(self) -> Timestamp:
        """Where an empty poll moves the group's watermark: to its next poll (the runner resumes
        the group a poll interval later, and :meth:`_wait_after_empty_poll` waits for the rest),
        and with windows, to the end of the window the clock is in (see the module)."""
        now = time.time()
        after = now + self._poll_interval_s
        if self._window_s:
            after = max(after, _window_end(now, self._window_s))
        return Timestamp.of(after)

    def _watermark_after_failed_poll(self, group_id: int) -> Timestamp:
        """Where a call that gave up on an unreachable server moves the group's watermark: to the
        clock, and with windows, to the end of the window holding the group's latest records
        (which may be the window after the clock's, see the module), at most a window past the
        clock's window."""
        now = time.time()
        if not self._window_s:
            return Timestamp.of(now)
        clock_window_end = _window_end(now, self._window_s)
        latest_window_end = _window_end(self._latest_stamp.get(group_id, now), self._window_s)
        return Timestamp.of(max(clock_window_end, min(latest_window_end, clock_window_end + self._window_s)))

    def _give_up_at(self, call_ends: float) -> float:
        """When a poll the server does not answer stops retrying in this call (``time.monotonic()``):
        a poll interval from now (at least :data:`OUTAGE_CALL_MIN_MS`), so that an outage keeps the
        cadence of idle polling, and never after the end of the call or of the read."""
        now = time.monotonic()
        ends = min(call_ends, now + max(self._poll_interval_s, OUTAGE_CALL_MIN_MS / 1000.0))
        if self._bounds.max_duration_ms:
            read_ends = self._started + self._bounds.max_duration_ms / 1000.0
            ends = min(ends, now + read_ends - time.time())
        return ends

    def _count_failures(self, group_id: int) -> None:
        """Count the client's new failed tries in ``poll_failures`` (on the bundle's thread, where
        metrics are kept); a failure restarts the group's idle time."""
        failures = self._client.failed_polls - self._failures_counted
        if failures:
            self._poll_failures.inc(failures)
            self._failures_counted += failures
            self._idle_since[group_id] = time.time()

    def _committed_floor(self, group_id: int) -> int:
        """The journal's committed position for the group, read once per worker (0 without a journal)."""
        if self._journal is None:
            return 0
        if group_id not in self._floors:
            self._floors[group_id] = self._journal.committed_floor(group_id)
        return self._floors[group_id]

    def _polls_next(self, group_id: int) -> bool:
        """Whether this group's next response comes from the server (nothing left to replay)."""
        return not self._to_replay.get(group_id) and group_id not in self._unclaimed

    def _fetch(self, group: PollGroup, start: int, give_up_at: float) -> _Response:
        """Poll the server once; a non-empty response is journaled before it is returned.
        Runs on the fetch thread or the caller's (no metrics here: they belong to the bundle's thread)."""
        payload = self._client.poll_raw(self._schema_name, self._table_name, group.buckets, give_up_at=give_up_at)
        count = count_records(payload)
        if count and self._journal is not None:
            self._journal.append(group.group_id, start, count, payload)
        return _Response(start, count, payload)

    def _replay_queue(self, group_id: int, position: int) -> collections.deque:
        """The group's journaled segments at or after ``position`` still to replay: listed at
        this worker's first look (which logs them), then taken one by one."""
        pending = self._to_replay.get(group_id)
        if pending is None:
            pending = collections.deque(s for s in self._journal.segments(group_id) if s.end > position)
            self._to_replay[group_id] = pending
            if pending:
                _LOG.info(
                    "%s poll group %d: replaying %d journaled response(s), %d records, from position %d",
                    self._source_table,
                    group_id,
                    len(pending),
                    sum(s.count for s in pending),
                    position,
                )
        return pending

    def _next_replayed(self, group_id: int, position: int) -> _Response | None:
        """The next journaled response at or after ``position`` not yet emitted by this worker."""
        if self._journal is None:
            return None
        pending = self._replay_queue(group_id, position)
        if not pending:
            return None
        segment = pending.popleft()
        if segment.start > position:
            _LOG.error(
                "%s poll group %d: journal has no records for positions %d..%d (lost before this run); continuing",
                self._source_table,
                group_id,
                position,
                segment.start - 1,
            )
        schema = self._journal.schema_of(segment)
        return _Response(segment.start, segment.count, self._journal.read(segment), replayed=True, schema=schema)

    def _stop_reason(self, group_id: int) -> tuple[str, typing.Any] | None:
        """Why this poll group ends now (and the metric counting it), or None while it goes on."""
        b = self._bounds
        now = time.time()
        emitted = _EMITTED[b.read_id]
        if _LOCAL_STOP.is_set():
            return "stop requested", None
        if b.max_records and emitted >= b.max_records:
            return f"{emitted} records (source.max.records={b.max_records})", self._stopped_at_limit
        if b.stop_after_idle_ms and (now - self._idle_since[group_id]) * 1000 >= b.stop_after_idle_ms:
            return f"no records for {b.stop_after_idle_ms} ms (source.stop.after.idle.ms)", self._stopped_idle
        if b.max_duration_ms and (now - self._started) * 1000 >= b.max_duration_ms:
            return f"round of {b.max_duration_ms} ms ended", None
        if b.drain_after and now >= b.drain_after and group_id in self._last_empty:
            return "round ended and nothing left on the server", None
        return None

    def _bounded_stop(self, group: PollGroup, position: int) -> bool:
        """Whether this poll group ends now; logs and counts why. A stop request waits for the
        group's response already polled (:meth:`_polled_ahead`): the server has handed it out, and
        the round ends with a commit of what it polled."""
        stop = self._stop_reason(group.group_id)
        if stop is None or (_LOCAL_STOP.is_set() and self._polled_ahead(group.group_id, position)):
            return False
        reason, counter = stop
        _LOG.info("%s poll group %d stops at position %d: %s", self._source_table, group.group_id, position, reason)
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



@beam.typehints.with_output_types(RawPoll)  # moved by RawPollCoder, not pickled
class _PollPixelsFn(beam.DoFn):
    """Polls one poll group per element, of any table of the read (``PollGroup.table_label``
    picks its :class:`_TablePoller`), and emits each non-empty response, labelled by its table.

    Bounded polling: every group ends by itself, so the output is a bounded PCollection.
    """

    def __init__(self, tables: typing.Mapping[str, _TablePoller]):
        self._tables = dict(tables)

    def setup(self):
        worker_logging()
        for table in self._tables.values():
            table.setup()

    def teardown(self):
        for table in self._tables.values():
            table.teardown()

    def process(self, group: PollGroup, tracker=_RESTRICTION, watermark=_WATERMARK):
        yield from self._tables[group.table_label].poll(group, tracker, watermark)


class _UnboundedPollPixelsFn(_PollPixelsFn):
    """Polling without end: the output is an unbounded PCollection (streaming runners)."""

    @beam.DoFn.unbounded_per_element()
    def process(self, group: PollGroup, tracker=_RESTRICTION, watermark=_WATERMARK):
        yield from self._tables[group.table_label].poll(group, tracker, watermark)


def _finish(tracker) -> None:
    """End the poll group: claiming the end of the range marks the restriction done."""
    tracker.try_claim(tracker.current_restriction().stop)


def _window_end(seconds: float, window_s: float) -> float:
    """The end of the fixed window (of ``window_s``, aligned to the epoch, as Beam's
    ``FixedWindows``) that holds the time ``seconds``."""
    return (math.floor(seconds / window_s) + 1) * window_s


def _advance(watermark, timestamp: Timestamp) -> None:
    """Move the watermark forward (never back, even if the wall clock steps back)."""
    current = watermark.current_watermark()
    if current is None or timestamp > current:
        watermark.set_watermark(timestamp)


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
    ``round_key`` makes a read that a local run runs again each round: its bounds and start
    positions are the ones :data:`LOCAL_ROUNDS` holds for that key when a run starts.
    ``table_label`` names the table in a job of several (:class:`ReadTablesFromPixels`): its
    elements carry it, and its metrics' namespace ends with it. ``window_ms``: the length of the
    commit step's fixed windows, which a poll that finds nothing closes early (see the module).
    ``subtasks`` (a Flink job's): each poll group is polled by a subtask of its own while there are
    enough (:func:`~beam_pixels.flink.placement.spread`).
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
        round_key: str = "",
        table_label: str = "",
        window_ms: int | None = None,
        subtasks: placement.Subtasks | None = None,
    ):
        super().__init__()
        self._journal = PollJournal(journal, str(schema)) if journal else None
        self._schema = schema
        self._server = server
        self._schema_name = schema_name
        self._table_name = table_name
        self._groups = [
            PollGroup(i, tuple(b), (start_positions or {}).get(i, 0), round_key, table_label)
            for i, b in enumerate(partition_buckets(list(buckets), parallelism))
        ]
        self._poll_interval_ms = poll_interval_ms
        self._bounds = bounds
        self._encoding = encoding
        self._empty_as_null = empty_as_null
        self._bucket_count = bucket_count
        self._round_key = round_key
        self._table_label = table_label
        self._window_ms = window_ms
        self._subtasks = subtasks

    @classmethod
    def from_config(
        cls, config, *, start_positions=None, max_duration_ms: int = 0, drain_after: float = 0.0,
        journal: str | None = None, round_key: str = "", table_label: str = "", window_ms: int | None = None,
        subtasks: placement.Subtasks | None = None,
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
            bounds=Bounds(config.stop_after_idle_ms, config.max_records, max_duration_ms, drain_after),
            encoding=config.value_encoding,
            empty_as_null=config.empty_as_null,
            bucket_count=config.bucket_count,
            start_positions=start_positions,
            journal=journal,
            round_key=round_key,
            table_label=table_label,
            window_ms=window_ms,
            subtasks=subtasks,
        )

    @property
    def poll_groups(self) -> list[PollGroup]:
        return list(self._groups)

    @property
    def table_label(self) -> str:
        return self._table_label

    @property
    def polls_without_end(self) -> bool:
        """Whether this read never ends by itself (no bounds, no local round)."""
        return not self._round_key and self._bounds.unbounded

    def _poller(self, max_call_ms: int | None) -> _TablePoller:
        return _TablePoller(
            self._server, self._schema_name, self._table_name, self._poll_interval_ms, self._bounds, self._journal,
            max_call_ms, self._round_key, self._table_label, self._groups, self._window_ms,
        )

    def _decoder(self) -> TableDecoder:
        source_table = f"{self._schema_name}.{self._table_name}"
        return TableDecoder(self._schema, source_table, self._encoding, self._empty_as_null, self._bucket_count,
                            self._table_label)

    def expand(self, pbegin):
        return _read(pbegin, [self], self._subtasks)


class ReadTablesFromPixels(beam.PTransform):
    """Read the change streams of several tables (a :class:`ReadFromPixels` each, with its own
    ``table_label``) through one set of steps, as :class:`ReadFromPixels` reads one: one poller
    over every table's poll groups, one decoder. Each table keeps its own server, schema, poll
    groups, bounds and journal; every element carries its table's label (``PollGroup``,
    ``ChangeBatch`` and ``DeadLetter.table_label``), and each table's metrics are in a namespace of
    its own (``beam_pixels.source.<label>``). So the steps, and what a runner pays per step and
    bundle, do not grow with the tables. The output is bounded unless some table polls without end.
    ``subtasks`` (a Flink job's): every poll group is polled by a subtask of its own while there
    are enough (:func:`~beam_pixels.flink.placement.spread`).
    """

    def __init__(self, reads: typing.Sequence[ReadFromPixels], subtasks: placement.Subtasks | None = None):
        super().__init__()
        labels = [read.table_label for read in reads]
        if not labels or len(set(labels)) != len(labels):
            raise ValueError(f"ReadTablesFromPixels needs reads with distinct table labels, got {labels}")
        self._reads = list(reads)
        self._subtasks = subtasks

    def expand(self, pbegin):
        return _read(pbegin, self._reads, self._subtasks)


def _read(pbegin, reads: typing.Sequence[ReadFromPixels], subtasks: placement.Subtasks | None = None):
    """The steps of :class:`ReadFromPixels` and :class:`ReadTablesFromPixels`."""
    without_end = any(read.polls_without_end for read in reads)
    poller = _UnboundedPollPixelsFn if without_end else _PollPixelsFn
    max_call_ms = UNBOUNDED_MAX_CALL_MS if without_end else None
    groups = [group for read in reads for group in read.poll_groups]
    return (
        pbegin
        | "PollGroups" >> beam.Create(placement.spread(groups, subtasks) if subtasks else groups)
        | "Poll" >> beam.ParDo(poller({read.table_label: read._poller(max_call_ms) for read in reads}))
        | "Decode" >> beam.ParDo(
            DecodePollsFn({read.table_label: read._decoder() for read in reads})
        ).with_outputs(DEAD_LETTERS, main=CHANGES)
    )


class ExplodeChanges(beam.PTransform):
    """One :class:`beam_pixels.changes.ChangeRecord` per change, for per-row processing."""

    def expand(self, batches):
        return batches | "Explode" >> beam.FlatMap(lambda batch: batch.to_records())
