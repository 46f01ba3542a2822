"""ReadFromPixels against the in-process mock server over loopback gRPC."""

import math
import os
import pickle
import tempfile
import time

import apache_beam as beam
import pytest
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Duration, Timestamp

from beam_pixels.changes import Op
from beam_pixels.schema import SourceSchema
from beam_pixels.testing.mock_data import generate_cdc, generate_rows
from beam_pixels.testing.mock_server import MockPixelsServer
from beam_pixels.source import (
    Bounds,
    ExplodeChanges,
    PollGroup,
    ReadFromPixels,
    ServerOptions,
    _PollPixelsFn,
    _PollRestrictionProvider,
    _TablePoller,
)

EVERY_TYPE = SourceSchema.parse(
    "id:BIGINT, b:BOOLEAN, t:TINYINT, s:SMALLINT, i:INT, f:FLOAT, d:DOUBLE, m:DECIMAL(10,2), "
    "w:DECIMAL(38,6), dt:DATE, tm:TIME, ts:TIMESTAMP, tz:TIMESTAMPTZ, st:STRING, vc:VARCHAR(20), "
    "ch:CHAR(4), bi:BINARY, fx:FIXED(4)",
    ["id"],
)
SMALL = SourceSchema.parse("id:BIGINT, name:STRING, qty:INT", ["id"])
BOUNDED = Bounds(stop_after_idle_ms=400)


def _canonical(value):
    """Values comparable with ==: NaN equals NaN, dicts become sorted tuples."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return tuple(sorted((k, _canonical(v)) for k, v in value.items()))
    return value


def _change_key(op, before, after):
    return (int(op), _canonical(before), _canonical(after))


def _handed_out_changes(server, schema):
    return [
        _change_key(h.op, _row_dict(schema, h.before), _row_dict(schema, h.after)) for h in server.handed_out()
    ]


def _row_dict(schema, row):
    return None if row is None else dict(zip(schema.names, row))


@pytest.fixture
def server_for():
    servers = []

    def start(schema, **kwargs):
        server = MockPixelsServer(schema, batch_size=kwargs.pop("batch_size", 50), **kwargs).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _read(server, schema, **kwargs):
    kwargs.setdefault("bounds", BOUNDED)
    kwargs.setdefault("poll_interval_ms", 50)
    return ReadFromPixels(schema, server=ServerOptions("127.0.0.1", server.port), **kwargs)


def _collect_to(path):
    """A transform that writes all elements of a PCollection into ``path`` (pickled list)."""

    def dump(items):
        with open(path, "wb") as f:
            pickle.dump(items, f)

    return beam.combiners.ToList() | beam.Map(dump)


def _run_and_collect(read, runner="FnApiRunner"):
    """Run a pipeline reading ``read``; return (changes, dead letters) as Python lists."""
    out = tempfile.mkdtemp()
    changes_path, dead_path = os.path.join(out, "changes"), os.path.join(out, "dead")
    with beam.Pipeline(runner=runner) as p:
        result = p | read
        _ = result.changes | ExplodeChanges() | "CollectChanges" >> _collect_to(changes_path)
        _ = result.dead_letters | "CollectDead" >> _collect_to(dead_path)
    with open(changes_path, "rb") as c, open(dead_path, "rb") as d:
        return pickle.load(c), pickle.load(d)


def test_every_type_round_trips_through_the_pipeline(server_for):
    server = server_for(EVERY_TYPE)
    rows = generate_rows(EVERY_TYPE, 300, seed=7)
    server.load_rows(rows)

    with TestPipeline(runner="FnApiRunner") as p:
        changes = p | _read(server, EVERY_TYPE)
        keys = changes.changes | ExplodeChanges() | beam.Map(lambda r: _change_key(r.op, r.before, r.after))
        expected = [_change_key(Op.INSERT, None, _row_dict(EVERY_TYPE, row)) for row in rows]
        assert_that(keys, equal_to(expected))
    assert server.pending() == 0


def test_cdc_operations_arrive_with_their_images(server_for):
    server = server_for(SMALL)
    events = generate_cdc(SMALL, n_keys=40, n_events=400, seed=3)
    server.load_cdc(events)

    changes, dead = _run_and_collect(_read(server, SMALL))

    assert dead == []
    received = [_change_key(c.op, c.before, c.after) for c in changes]
    assert sorted(received, key=repr) == sorted(_handed_out_changes(server, SMALL), key=repr)
    assert {c.op for c in changes} >= {Op.INSERT, Op.UPDATE, Op.DELETE}
    # Positions number the records of the poll group consecutively, in arrival order.
    assert sorted(c.position for c in changes) == list(range(len(events)))
    by_position = sorted(changes, key=lambda c: c.position)
    assert [_change_key(c.op, c.before, c.after) for c in by_position] == _handed_out_changes(server, SMALL)


def test_undecodable_records_go_to_dead_letters_with_raw_bytes(server_for):
    # The server sends ``code`` as STRING; the reader expects FIXED(3): only 3-byte values decode.
    sent = SourceSchema.parse("id:BIGINT, code:STRING", ["id"])
    read_as = SourceSchema.parse("id:BIGINT, code:FIXED(3)", ["id"])
    server = server_for(sent)
    server.load_rows([(1, "abc"), (2, "toolong"), (3, "xyz"), (4, "")])

    changes, dead = _run_and_collect(_read(server, read_as))

    # id 4's empty string is an empty (hence NULL) FIXED value, not an error.
    assert sorted(c.after["id"] for c in changes) == [1, 3, 4]
    assert len(dead) == 1
    letter = dead[0]
    position_of_id_2 = [h.after[0] for h in server.handed_out()].index(2)
    assert letter.position == position_of_id_2
    assert "code" in letter.reason and "FIXED(3)" in letter.reason and "7" in letter.reason
    from beam_pixels.protocol import sink_pb2

    record = sink_pb2.RowRecord.FromString(letter.record)
    assert record.after.values[1].value == b"toolong"
    assert letter.source_table == "public.orders"


def test_poll_groups_cover_every_bucket_exactly_once(server_for):
    server = server_for(SMALL)
    server.load_rows([(i, f"n{i}", i) for i in range(500)])
    read = _read(server, SMALL, parallelism=4)

    groups = read.poll_groups
    buckets = sorted(b for g in groups for b in g.buckets)
    assert buckets == list(range(128))

    changes, _ = _run_and_collect(read)

    assert sorted(c.after["id"] for c in changes) == list(range(500))
    bucket_of_id = {h.after[0]: h.bucket for h in server.handed_out()}
    assert all(c.bucket == bucket_of_id[c.after["id"]] for c in changes)  # the server's own bucket
    group_buckets = {g.group_id: set(g.buckets) for g in groups}
    assert all(c.bucket in group_buckets[c.poll_group] for c in changes)
    assert len({c.poll_group for c in changes}) == 4


def test_max_records_counts_all_poll_groups_together(server_for):
    # 150 records over 4 poll groups: no group alone reaches 100, the read as a whole does.
    server = server_for(SMALL, batch_size=5)
    server.load_rows([(i, f"n{i}", i) for i in range(150)])

    changes, _ = _run_and_collect(_read(server, SMALL, parallelism=4, bounds=Bounds(max_records=100)))

    assert 100 <= len(changes) == len(server.handed_out())


def test_max_records_bounds_a_run(server_for):
    server = server_for(SMALL, batch_size=10)
    server.load_rows([(i, f"n{i}", i) for i in range(1000)])

    changes, _ = _run_and_collect(_read(server, SMALL, buckets=[*range(128)], bounds=Bounds(max_records=100)))

    # The run stops after the response that reaches the limit; nothing polled is dropped.
    assert 100 <= len(changes) < 1000
    assert len(changes) + server.pending() == 1000
    assert len(changes) == len(server.handed_out())


def _drive(fn, group, restriction, watermark=None):
    """One process() call as the SDK harness makes it (with ``watermark``, a ManualWatermarkEstimator,
    or a fresh one); returns outputs and the residual."""
    provider = _PollRestrictionProvider()
    tracker = ThreadsafeRestrictionTracker(provider.create_tracker(restriction))
    watermark = watermark or ManualWatermarkEstimator(Timestamp.now())
    outputs = list(fn.process(group, RestrictionTrackerView(tracker), watermark))
    status = tracker.deferred_status()
    if status is None:
        tracker.check_done()
        return outputs, None
    tracker.check_done()  # the primary part is fully claimed
    residual, _delay = status
    return outputs, residual


def test_checkpoint_at_position_k_and_resume_loses_and_repeats_nothing(server_for):
    server = server_for(SMALL, batch_size=7)
    server.load_rows([(i, f"n{i}", i) for i in range(100)])
    group = PollGroup(0, tuple(range(128)), start_position=0)
    provider = _PollRestrictionProvider()
    coder = provider.restriction_coder()

    def new_fn():
        return _poller(server, Bounds(stop_after_idle_ms=200), max_call_ms=0)  # one response per call: stops part way

    fn = new_fn()
    restriction = provider.initial_restriction(group)
    polls = []
    for _ in range(3):
        outputs, residual = _drive(fn, group, restriction)
        polls.extend(outputs)
        restriction = coder.decode(coder.encode(residual))  # persisted by the runner
    fn.teardown()
    k = restriction.start
    assert k == sum(_count(p.value.payload) for p in polls) > 0

    # A new worker resumes from the persisted residual.
    fn = new_fn()
    while restriction is not None:
        outputs, residual = _drive(fn, group, restriction)
        polls.extend(outputs)
        restriction = residual
    fn.teardown()

    _assert_contiguous(polls, 100)
    assert server.pending() == 0


def test_one_call_emits_many_responses_and_leaves_none_in_flight(server_for):
    server = server_for(SMALL, batch_size=1)  # up to 128 records per response
    server.load_rows([(i, f"n{i}", i) for i in range(1000)])
    fn = _poller(server, Bounds(max_records=300))
    group = PollGroup(0, tuple(range(128)))
    outputs, residual = _drive(fn, group, _PollRestrictionProvider().initial_restriction(group))
    fn.teardown()
    emitted = sum(_count(p.value.payload) for p in outputs)
    assert len(outputs) > 1 and residual.start == emitted
    assert 300 <= emitted < 1000 and emitted + server.pending() == 1000  # nothing polled and held back


def test_response_polled_during_a_runner_checkpoint_is_emitted_on_resume(server_for):
    server = server_for(SMALL, batch_size=1)  # up to 128 records per response
    server.load_rows([(i, f"n{i}", i) for i in range(1000)])
    fn = _poller(server, Bounds(stop_after_idle_ms=200))
    group = PollGroup(0, tuple(range(128)))
    tracker = ThreadsafeRestrictionTracker(_PollRestrictionProvider().create_tracker(
        _PollRestrictionProvider().initial_restriction(group)))
    calls = fn.process(group, RestrictionTrackerView(tracker), ManualWatermarkEstimator(Timestamp.now()))
    polls = [next(calls)]  # the next poll is now in flight
    _primary, residual = tracker.try_split(0)  # the runner checkpoints meanwhile
    assert list(calls) == []  # the in-flight response cannot be claimed here...
    assert server.pending() < 1000 - _count(polls[0].value.payload)
    restriction = residual
    while restriction is not None:  # ...and is emitted first when the group resumes
        outputs, restriction = _drive(fn, group, restriction)
        polls.extend(outputs)
    fn.teardown()
    _assert_contiguous(polls, 1000)
    assert server.pending() == 0


def test_during_an_outage_each_call_ends_on_time_with_the_watermark_at_the_clock_and_nothing_claimed(server_for):
    server = server_for(SMALL, batch_size=5)
    server.load_rows([(i, f"n{i}", i) for i in range(40)])
    fn = _poller(server, Bounds(), max_call_ms=500)  # unbounded, as on Flink
    group = PollGroup(0, tuple(range(128)))
    watermark = ManualWatermarkEstimator(Timestamp.now())
    polls, restriction = [], _PollRestrictionProvider().initial_restriction(group)
    while server.pending():
        outputs, restriction = _drive(fn, group, restriction, watermark)
        polls.extend(outputs)

    server.stop()
    server.load_rows([(i, f"n{i}", i) for i in range(40, 80)])  # queued while the server is down
    for _ in range(3):  # each call gives up at its end instead of blocking in the retries
        before = Timestamp.now()
        started = time.monotonic()
        outputs, residual = _drive(fn, group, restriction, watermark)
        assert time.monotonic() - started < 1.5
        assert outputs == [] and residual.start == restriction.start == 40  # a failed poll claims nothing
        assert watermark.current_watermark() >= before  # so windows up to now can fire
        restriction = residual
    assert fn._tables[""]._client.failed_polls >= 1

    outage_watermark = watermark.current_watermark()
    server.start()  # same port, queues kept
    while server.pending() or restriction.start < 80:
        outputs, restriction = _drive(fn, group, restriction, watermark)
        polls.extend(outputs)
    fn.teardown()
    _assert_contiguous(polls, 80)  # nothing lost or repeated across the outage
    assert all(p.timestamp >= outage_watermark for p in polls if p.value.start_position >= 40)  # none late


def test_an_empty_poll_moves_the_watermark_to_the_next_poll_and_no_record_is_stamped_behind_it(server_for):
    server = server_for(SMALL, batch_size=5)
    interval_s = 0.4
    fn = _PollPixelsFn({"": _TablePoller(ServerOptions("127.0.0.1", server.port), "public", "orders",
                                         int(interval_s * 1000), Bounds(), max_call_ms=500)})  # unbounded
    fn.setup()
    group = PollGroup(0, tuple(range(128)))
    watermark = ManualWatermarkEstimator(Timestamp.now())
    before = Timestamp.now()
    outputs, restriction = _drive(fn, group, _PollRestrictionProvider().initial_restriction(group), watermark)
    assert outputs == []
    # Windows ending before the next poll can fire now: nothing is polled before it.
    assert watermark.current_watermark() >= before + Duration.of(interval_s)
    after_empty = watermark.current_watermark()

    server.load_rows([(i, f"n{i}", i) for i in range(20)])
    polls, restriction = _drive(fn, group, restriction, watermark)
    assert Timestamp.now() >= after_empty  # the next poll waited for the interval
    while restriction.start < 20:
        outputs, restriction = _drive(fn, group, restriction, watermark)
        polls.extend(outputs)
    fn.teardown()
    _assert_contiguous(polls, 20)
    assert all(p.timestamp >= after_empty for p in polls)  # none late


def test_with_windows_an_empty_poll_closes_the_clocks_window_and_an_outage_the_one_of_the_latest_records(server_for):
    server = server_for(SMALL, batch_size=5)
    window = beam.window.FixedWindows(2)  # the commit step's windows, as on Flink
    fn = _PollPixelsFn({"": _TablePoller(ServerOptions("127.0.0.1", server.port), "public", "orders", 50, Bounds(),
                                         max_call_ms=500, window_ms=2000)})
    fn.setup()
    group = PollGroup(0, tuple(range(128)))
    watermark = ManualWatermarkEstimator(Timestamp.now())

    def window_end(timestamp):
        return window.assign(beam.window.WindowFn.AssignContext(timestamp))[0].end

    before = Timestamp.now()
    outputs, restriction = _drive(fn, group, _PollRestrictionProvider().initial_restriction(group), watermark)
    assert outputs == []
    # Nothing polled from now on goes into the window the clock is in: it can fire now, not at its end.
    assert window_end(before) <= watermark.current_watermark() <= window_end(Timestamp.now())
    after_empty = watermark.current_watermark()

    server.load_rows([(i, f"n{i}", i) for i in range(20)])
    polls = []
    while restriction.start < 20:
        outputs, restriction = _drive(fn, group, restriction, watermark)
        polls.extend(outputs)
    _assert_contiguous(polls, 20)
    assert all(p.timestamp >= after_empty for p in polls)  # in a later window than the closed one: none late

    server.stop()  # an outage: what was polled before it can commit during it
    latest = max(p.timestamp for p in polls)
    outputs, residual = _drive(fn, group, restriction, watermark)
    assert outputs == [] and residual.start == 20
    assert watermark.current_watermark() >= window_end(latest)
    assert watermark.current_watermark() <= window_end(Timestamp.now()) + Duration.of(2)  # at most a window ahead
    fn.teardown()


def test_a_bounded_read_ends_at_its_max_duration_while_the_server_is_down(server_for):
    server = server_for(SMALL)
    server.stop()
    fn = _poller(server, Bounds(max_duration_ms=800))  # a local round
    group = PollGroup(0, tuple(range(128)))
    started = time.monotonic()
    restriction = _PollRestrictionProvider().initial_restriction(group)
    while restriction is not None:  # calls of a poll interval each (at least OUTAGE_CALL_MIN_MS)...
        outputs, restriction = _drive(fn, group, restriction)
        assert outputs == [] and (restriction is None or restriction.start == 0)
    assert 0.7 < time.monotonic() - started < 2.0  # ...until the round's end
    fn.teardown()


def _poller(server, bounds, **kwargs):
    fn = _PollPixelsFn({"": _TablePoller(ServerOptions("127.0.0.1", server.port), "public", "orders", 10, bounds, **kwargs)})
    fn.setup()
    return fn


def _assert_contiguous(polls, records):
    """The emitted responses hold ``records`` records at consecutive positions: no gap, no overlap."""
    starts = [p.value.start_position for p in polls]
    counts = [_count(p.value.payload) for p in polls]
    assert starts == [sum(counts[:i]) for i in range(len(counts))]
    assert sum(counts) == records


def _count(payload):
    from beam_pixels.protocol import sink_pb2

    return len(sink_pb2.PollResponse.FromString(payload).records)


def test_restriction_declines_runner_splits_and_truncates_on_drain():
    provider = _PollRestrictionProvider()
    restriction = provider.initial_restriction(PollGroup(0, (0,), start_position=5))
    tracker = provider.create_tracker(restriction)
    assert tracker.try_claim(5)
    assert tracker.try_split(0.5) is None
    primary, residual = tracker.try_split(0)
    assert (primary.start, primary.stop, residual.start) == (5, 6, 6)
    assert provider.truncate(None, residual) is None


def test_pipeline_runs_through_the_portable_job_service(server_for, tmp_path, job_service):
    server = server_for(SMALL)
    server.load_rows([(i, f"n{i}", i) for i in range(200)])
    options = PipelineOptions(runner="PortableRunner", job_endpoint=job_service, environment_type="LOOPBACK")
    out = tmp_path / "ids"
    with beam.Pipeline(options=options) as p:
        result = p | _read(server, SMALL)
        _ = (
            result.changes
            | beam.FlatMap(lambda batch: [str(row["id"]) for row in batch.records.column("after").to_pylist()])
            | beam.io.WriteToText(str(out))
        )
    written = sorted(int(line) for f in tmp_path.glob("ids*") for line in f.read_text().split())
    assert written == list(range(200))


def test_mutual_tls_read_configured_from_properties(tmp_path):
    from tls_helpers import TestPki

    from beam_pixels.config import PixelsConfig

    pki = TestPki()
    files = {
        "ca.pem": pki.pem(pki.ca_cert),
        "client.pem": pki.pem(pki.client_cert),
        "client.key": pki.pem(pki.client_key),
    }
    for name, pem in files.items():
        (tmp_path / name).write_bytes(pem)
    with MockPixelsServer(
        SMALL,
        tls_cert=pki.pem(pki.server_cert),
        tls_key=pki.pem(pki.server_key),
        tls_client_ca=pki.pem(pki.ca_cert),
    ).start() as server:
        server.load_rows([(i, f"n{i}", i) for i in range(50)])
        config = PixelsConfig.from_properties(
            {
                "pixels.server.host": "localhost",
                "pixels.server.port": str(server.port),
                "source.schema": str(SMALL),
                "source.primary.key": "id",
                "source.poll.interval.ms": "50",
                "source.stop.after.idle.ms": "400",
                "pixels.server.tls.enabled": "true",
                "pixels.server.tls.root.cert": str(tmp_path / "ca.pem"),
                "pixels.server.tls.client.cert": str(tmp_path / "client.pem"),
                "pixels.server.tls.client.key": str(tmp_path / "client.key"),
            }
        )
        changes, _ = _run_and_collect(ReadFromPixels.from_config(config))
    assert sorted(c.after["id"] for c in changes) == list(range(50))
