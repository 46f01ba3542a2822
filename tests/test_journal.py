"""The poll journal: durable segments, replay through ReadFromPixels, trimming."""

import logging
import os
import pickle

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.utils.timestamp import Timestamp

from beam_pixels import source
from beam_pixels.journal import BackgroundTrims, PollJournal, Segment
from beam_pixels.schema import SourceSchema
from beam_pixels.source import Bounds, ExplodeChanges, ReadFromPixels, ServerOptions
from beam_pixels.testing.mock_server import MockPixelsServer

SCHEMA = SourceSchema.parse("id:BIGINT,name:STRING", ["id"])


def test_segments_are_stored_listed_read_and_trimmed(tmp_path):
    journal = PollJournal(str(tmp_path / "journal"))
    journal.append(0, 0, 3, b"first")
    journal.append(0, 3, 2, b"second")
    journal.append(1, 0, 4, b"other group")

    assert [(s.start, s.count) for s in journal.segments(0)] == [(0, 3), (3, 2)]
    assert journal.read(journal.segments(0)[1]) == b"second"
    assert journal.segments(7) == []
    assert not [name for _, _, files in os.walk(tmp_path) for name in files if name.endswith(".tmp")]

    # Committed up to position 4 in group 0: only the segment wholly below goes.
    assert journal.trim({0: 4, 1: 0}) == 1
    assert [(s.start, s.end) for s in journal.segments(0)] == [(3, 5)]
    assert len(journal.segments(1)) == 1


def test_background_trims_merge_and_a_failed_one_is_done_by_the_next(tmp_path, caplog):
    journal = PollJournal(str(tmp_path / "journal"))
    for start in range(0, 10, 2):
        journal.append(0, start, 2, b"x")
    trims = BackgroundTrims()
    trims.submit(journal, {0: 4})
    trims.submit(journal, {0: 8})
    trims.wait()
    assert ([s.start for s in journal.segments(0)], journal.committed_floor(0)) == ([8], 8)

    # The marker at position 10 cannot be written (a directory stands in its place): nothing is
    # deleted before the marker is durable, the failure is logged, and the next trim does it all.
    blocker = tmp_path / "journal" / "group-0000" / f"{10:020d}-{0:010d}.pb"
    blocker.mkdir()
    with caplog.at_level(logging.WARNING, logger="beam_pixels.journal"):
        trims.submit(journal, {0: 10})
        trims.wait()
    assert [s.start for s in journal.segments(0)] == [8]
    assert "trimming to positions {0: 10} failed" in caplog.text and "its next trim retries" in caplog.text
    blocker.rmdir()
    trims.submit(journal, {0: 10})
    trims.wait()
    assert (journal.segments(0), journal.committed_floor(0)) == ([], 10)


def test_the_schema_is_written_once_per_group_not_once_per_run(tmp_path):
    # A local run's poller is a new journal each round; it lists the group's directory before it
    # appends, and a schema file listed there is not written again.
    PollJournal(str(tmp_path / "j"), str(SCHEMA)).append(0, 0, 1, b"x")
    schema_file = next((tmp_path / "j" / "group-0000").glob("*.schema"))
    written = schema_file.stat().st_ino  # each write renames a new file into place
    next_round = PollJournal(str(tmp_path / "j"), str(SCHEMA))
    assert next_round.committed_floor(0) == 0
    next_round.append(0, 1, 1, b"y")
    assert schema_file.stat().st_ino == written
    assert [s.schema_id for s in next_round.segments(0)] == [schema_file.stem] * 2


def test_a_journal_travels_to_workers_by_location_only(tmp_path):
    journal = PollJournal(f"file://{tmp_path}/j")
    journal.append(2, 10, 1, b"x")
    copy = pickle.loads(pickle.dumps(journal))
    assert copy.segments(2) == journal.segments(2)
    assert isinstance(copy.segments(2)[0], Segment)


def test_journal_on_an_s3_endpoint(moto_endpoint, s3_bucket):
    host = moto_endpoint.removeprefix("http://")
    journal = PollJournal(
        f"s3://{s3_bucket}/journal?endpoint_override={host}&scheme=http&region=us-east-1"
    )  # credentials from the AWS environment (dummy ones in conftest)
    journal.append(0, 0, 2, b"payload")
    assert journal.read(journal.segments(0)[0]) == b"payload"
    assert journal.trim({0: 2}) == 1
    assert journal.segments(0) == []


def _read_all(server, journal, start_positions=None):
    """Exploded change records of one bounded read of bucket 0, as (position, id) pairs."""

    def collect(items, path):
        with open(path, "wb") as f:
            pickle.dump(items, f)

    path = os.path.join(journal, "collected.pickle")
    read = ReadFromPixels(
        SCHEMA,
        server=ServerOptions("127.0.0.1", server.port),
        poll_interval_ms=20,
        bounds=Bounds(stop_after_idle_ms=300),
        journal=os.path.join(journal, "j"),
        start_positions=start_positions,
        buckets=[0],
    )
    with beam.Pipeline(runner="FnApiRunner") as p:
        _ = (
            (p | read).changes
            | ExplodeChanges()
            | beam.Map(lambda r: (r.position, r.after["id"]))
            | beam.combiners.ToList()
            | beam.Map(collect, path)
        )
    with open(path, "rb") as f:
        out = pickle.load(f)
    return sorted(out)


def test_what_a_crashed_run_polled_is_replayed_before_polling_anew(tmp_path):
    with MockPixelsServer(SCHEMA, batch_size=5, bucket_count=1).start() as server:
        server.load_rows([(i, f"n{i}") for i in range(40)])
        first = _read_all(server, str(tmp_path))  # a run whose output never reached a table
        assert [position for position, _ in first] == list(range(40))
        assert server.pending() == 0

        server.load_rows([(i, f"n{i}") for i in range(40, 60)])
        # Restart from what the table committed (nothing): the journal gives the 40 back.
        second = _read_all(server, str(tmp_path), start_positions={0: 0})

    assert second[:40] == first
    assert [position for position, _ in second] == list(range(60))
    assert sorted(i for _, i in second) == list(range(60))


def _round_poller(server, tmp_path, round_key: str):
    """The poller of a local round of bucket 0 from position 0, journaled under ``tmp_path/j``
    (the round is planned; forget it with ``source.LOCAL_ROUNDS.forget(round_key)``)."""
    source.LOCAL_ROUNDS.plan(round_key, Bounds(stop_after_idle_ms=300), {0: 0})
    read = ReadFromPixels(SCHEMA, server=ServerOptions("127.0.0.1", server.port), buckets=[0],
                          journal=str(tmp_path / "j"), round_key=round_key)
    return read._poller(None)


def test_a_local_rounds_first_poll_sent_at_setup_and_never_taken_is_replayed(tmp_path):
    # A local round polls each group once at setup; a round that stops before the group's call
    # leaves that response in the journal, and the next round (or run) replays it first.
    with MockPixelsServer(SCHEMA, batch_size=5, bucket_count=1).start() as server:
        server.load_rows([(i, f"n{i}") for i in range(12)])
        poller = _round_poller(server, tmp_path, "test-round")
        poller.setup()
        poller.teardown()  # the round ended before the group's call
        source.LOCAL_ROUNDS.forget("test-round")
        assert [(s.start, s.count) for s in PollJournal(str(tmp_path / "j")).segments(0)] == [(0, 5)]
        assert server.pending() == 7

        resumed = _read_all(server, str(tmp_path), start_positions={0: 0})
    assert resumed == [(i, i) for i in range(12)]


def test_a_stop_requested_after_a_rounds_first_poll_still_emits_that_poll(tmp_path):
    # Ctrl-C ends a local round with a commit of what it polled: the first poll, sent at setup,
    # was handed out by the server, so the group's call emits it before it stops.
    with MockPixelsServer(SCHEMA, batch_size=5, bucket_count=1).start() as server:
        server.load_rows([(i, f"n{i}") for i in range(12)])
        poller = _round_poller(server, tmp_path, "stop-round")
        group = source.PollGroup(0, (0,), round_key="stop-round")
        provider = source._PollRestrictionProvider()

        def call(restriction):
            """One call of the group as the runner makes it: what it emits, and the rest it defers."""
            tracker = ThreadsafeRestrictionTracker(provider.create_tracker(restriction))
            emitted = [v.value for v in poller.poll(group, RestrictionTrackerView(tracker),
                                                    ManualWatermarkEstimator(Timestamp.now()))]
            deferred = tracker.deferred_status()
            return emitted, deferred[0] if deferred else None

        try:
            poller.setup()  # the round's first poll goes out
            source.request_local_stop()
            emitted, rest = call(provider.initial_restriction(group))
            assert [(raw.poll_group, raw.start_position) for raw in emitted] == [(0, 0)]
            assert rest.start == 5, "the group resumes after what it emitted"
            assert call(rest) == ([], None), "then it stops"
        finally:
            source.clear_local_stop()
            poller.teardown()
            source.LOCAL_ROUNDS.forget("stop-round")
        assert server.pending() == 7, "nothing polled after the stop"


def test_replay_starts_at_the_committed_position(tmp_path):
    with MockPixelsServer(SCHEMA, batch_size=5, bucket_count=1).start() as server:
        server.load_rows([(i, f"n{i}") for i in range(30)])
        first = _read_all(server, str(tmp_path))
        first_segments = PollJournal(str(tmp_path / "j")).segments(0)
        committed = first_segments[2].start  # a commit covered the first two responses
        resumed = _read_all(server, str(tmp_path), start_positions={0: committed})

    assert [p for p, _ in resumed] == [p for p, _ in first if p >= committed]


def test_dead_letters_are_written_durably_once_per_position(tmp_path):
    from beam_pixels.dead_letters import WriteDeadLetters, read_dead_letters
    from beam_pixels.decode import DeadLetter

    letters = [
        DeadLetter("public.orders", 0, 7, 0, b"\x12\x03raw", "cannot decode column 'code'"),
        DeadLetter("public.orders", 1, 2, 2, b"", "DELETE record without a before image"),
    ]
    location = str(tmp_path / "dead")
    for _ in range(2):  # a replay writes the same files again, not new ones
        with beam.Pipeline(runner="FnApiRunner") as p:
            _ = p | beam.Create(letters) | WriteDeadLetters(location)

    found = read_dead_letters(location, "public.orders")
    assert [(d["poll_group"], d["position"], d["reason"]) for d in found] == [
        (0, 7, "cannot decode column 'code'"),
        (1, 2, "DELETE record without a before image"),
    ]
    import base64

    assert base64.b64decode(found[0]["record_base64"]) == b"\x12\x03raw"


def test_without_a_location_dead_letters_are_logged_with_their_reason(caplog):
    from beam_pixels.dead_letters import WriteDeadLetters
    from beam_pixels.decode import DeadLetter

    letter = DeadLetter("public.orders", 2, 41, 0, b"\x12", "cannot decode column 'code'")
    with caplog.at_level("ERROR", logger="beam_pixels.dead_letters"):
        with beam.Pipeline(runner="FnApiRunner") as p:
            _ = p | beam.Create([letter]) | WriteDeadLetters(None)
    assert any("poll group 2 position 41" in r.getMessage() and "'code'" in r.getMessage() for r in caplog.records)


def test_a_poller_restored_behind_the_table_resumes_numbering_at_the_committed_position(tmp_path):
    """A Flink restore hands the poller the position of an older checkpoint; commits since then
    trimmed the journal. New records must not get positions the table already holds (the
    committer would skip them as committed): the trim's marker moves the poller past them."""
    with MockPixelsServer(SCHEMA, batch_size=5, bucket_count=1).start() as server:
        server.load_rows([(i, f"n{i}") for i in range(20)])
        first = _read_all(server, str(tmp_path))
        assert PollJournal(str(tmp_path / "j")).trim({0: 20}) == 4  # a commit took all 20

        server.load_rows([(i, f"n{i}") for i in range(20, 30)])
        restored = _read_all(server, str(tmp_path), start_positions={0: 5})  # the older checkpoint

    assert [p for p, _ in first] == list(range(20))
    assert [p for p, _ in restored] == list(range(20, 30))
    assert sorted(i for _, i in restored) == list(range(20, 30))


def test_a_segment_names_the_schema_it_was_polled_under(tmp_path):
    old = PollJournal(str(tmp_path / "j"), "id:BIGINT,name:STRING")
    old.append(0, 0, 3, b"old")
    (tmp_path / "j" / "group-0000" / f"{3:020d}-{2:010d}.pb").write_bytes(b"from before schemas were recorded")
    new = PollJournal(str(tmp_path / "j"), "id:BIGINT,name:STRING,note:STRING")
    new.append(0, 5, 1, b"new")

    segments = new.segments(0)
    assert [(s.start, s.count) for s in segments] == [(0, 3), (3, 2), (5, 1)]
    # Polled under another schema: decoded by it. Unrecorded (older journals) or this one's: by this one.
    assert [new.schema_of(s) for s in segments] == ["id:BIGINT,name:STRING", "", ""]
    assert [old.schema_of(s) for s in old.segments(0)][2] == "id:BIGINT,name:STRING,note:STRING"
    assert new.trim({0: 6}) == 3 and new.segments(0) == []


def test_a_raw_poll_keeps_its_schema_through_the_coder():
    from beam_pixels.wire import RawPoll, RawPollCoder

    coder = RawPollCoder()
    for poll in (RawPoll(2, 7, 1.5, b"payload"), RawPoll(2, 7, 1.5, b"payload", "id:BIGINT,qty:INT")):
        assert coder.decode(coder.encode(poll)) == poll
        assert coder.estimate_size(poll) == len(coder.encode(poll))
