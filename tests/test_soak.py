"""The soak benchmark: its figures, its stream generator, and a smoke run per sink."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beam_pixels.bench import soak_server
from beam_pixels.changes import Op
from beam_pixels.protocol import sink_pb2
from beam_pixels.schema import SourceSchema
from beam_pixels.testing.mock_server import MockPixelsServer
from beam_pixels.bench.soak import (
    CLOCK_US,
    COMMIT_LINE,
    CommitFigures,
    check_rows,
    first_last,
    maintenance_seconds,
    result_line,
    set_storage_ratios,
    storage_ratio_max,
)
from beam_pixels.wire import scan_response

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "soak.py"
RESULT = re.compile(
    r"^RESULT sink=(\w+) preload=(\d+) commits=(\d+) commit_s_first=[0-9.]+ commit_s_last=[0-9.]+ "
    r"storage_ratio=[0-9.]+ read_ratio=[0-9.]+ correct=(yes|no) storage_ratio_max=([0-9.]+|nan) "
    r"cycle_s_first=([0-9.]+) cycle_s_last=([0-9.]+)$"
)


def test_first_and_last_are_medians_of_the_first_and_last_tenth():
    values = [float(v) for v in range(1, 101)]  # 10 values each: 1..10 and 91..100
    assert first_last(values) == (5.5, 95.5)
    assert first_last([3.0, 1.0, 2.0]) == (3.0, 2.0)  # at least one value each
    assert first_last([4.0, 2.0, 9.0] + [0.0] * 24 + [7.0, 1.0, 5.0]) == (4.0, 5.0)  # 30 values: 3 each


def _commit(n: int, elapsed_s: float, commit_s: float, table_bytes: int, live_rows: int, maint_s: float = 0.0):
    return CommitFigures(commit=n, batch_id=n, elapsed_s=elapsed_s, changes=10, commit_s=commit_s, bytes_written=0,
                         table_bytes=table_bytes, data_files=1, delete_files=0, snapshots=1, live_rows=live_rows,
                         maint_s=maint_s)


def test_commit_lines_give_the_changes_and_the_live_row_delta():
    line = ("06:44:22 INFO beam_pixels.sinks.committing: committed batch 2 to pixels.soak: 500084 changes "
            "(+499372 ~629 -83), snapshot 5074, 0 already committed, commit_s=0.177 (2,830,587 changes/s)")
    match = COMMIT_LINE.search(line)
    assert match and match.group("batch") == "2" and match.group("changes") == "500084"
    assert (match.group("inserts"), match.group("deletes"), match.group("commit_s")) == ("499372", "83", "0.177")


def test_maintenance_lines_of_both_sinks_give_their_seconds():
    iceberg = ("06:44:51 INFO beam_pixels.sinks.iceberg.maintenance: maintained pixels.soak: 3 snapshots expired, "
               "7 files deleted (1.5 MB reclaimed), 25 files compacted into 2, 2 manifests, 0.22s")
    assert maintenance_seconds(iceberg) == 0.22
    assert maintenance_seconds(iceberg + " (time budget spent before compacting)") == 0.22
    paimon = ("INFO:beam_pixels.sinks.paimon.writer:maintained pixels.orders: compacted 4 bucket(s), 20 files (3.9 MB) "
              "into 4 (3.4 MB) in snapshot 22; expired 2 snapshot(s), deleted 9 files, reclaimed 1.2 MB; 1.26s")
    assert maintenance_seconds(paimon) == 1.26
    assert maintenance_seconds(paimon + "; errors: compaction failed: disk full, 3.5 GB; retry") == 1.26
    assert maintenance_seconds("committed batch 3 to pixels.soak: 10 changes (+1 ~8 -1), commit_s=0.062") is None


def test_storage_ratio_per_commit_and_its_maximum_after_the_first_minute():
    commits = [
        _commit(1, 10.0, 0.1, table_bytes=3_000, live_rows=100),  # the preload: stream starts at 10 s
        _commit(2, 40.0, 0.1, table_bytes=2_500, live_rows=100),  # 2.5x, but within the first minute
        _commit(3, 75.0, 0.1, table_bytes=1_800, live_rows=120),
        _commit(4, 90.0, 0.1, table_bytes=2_100, live_rows=100),
        _commit(5, 95.0, 0.1, table_bytes=900, live_rows=0),  # an empty table: no ratio
    ]
    set_storage_ratios(commits, bytes_per_row=10.0)
    assert [c.storage_ratio for c in commits] == [3.0, 2.5, 1.5, 2.1, None]
    assert storage_ratio_max(commits, stream_started_s=10.0) == 2.1
    assert storage_ratio_max(commits, stream_started_s=10.0, settle_s=0.0) == 3.0
    assert math.isnan(storage_ratio_max(commits, stream_started_s=100.0))  # no commit a minute into the stream


def test_result_line_keeps_the_fields_and_appends_the_ratio_maximum_and_the_cycle_times():
    commits = [_commit(i, float(i), commit_s=0.1 * (i < 5) + 0.3 * (i >= 5), table_bytes=1, live_rows=1,
                       maint_s=2.0 if i == 9 else 0.5 * (i >= 5)) for i in range(10)]
    line = result_line("iceberg", 1000, commits, 1.234, 0.9, True, ratio_max=1.876)
    match = RESULT.match(line)
    assert match, line
    assert line.startswith("RESULT sink=iceberg preload=1000 commits=10 commit_s_first=0.100 commit_s_last=0.300 "
                           "storage_ratio=1.23 read_ratio=0.90 correct=yes ")
    assert match.group(5) == "1.88"
    assert (match.group(6), match.group(7)) == ("0.100", "2.300")  # the last commit's pass counts in its cycle


def _model(preload: int, rounds: list[list[tuple[int, int]]]) -> dict[int, int]:
    """A plain-Python table: key -> version, from the ops and keys the generator reports."""
    table = {k: 0 for k in range(preload)}
    for changes in rounds:
        for op, key in changes:
            if op == soak_server.INSERT:
                assert key not in table
                table[key] = 0
            elif op == soak_server.UPDATE:
                table[key] += 1
            else:
                del table[key]
    return table


def test_expected_state_matches_a_plain_python_model():
    stream = soak_server.ChangeStream(50, seed=3)
    assert stream.preload(30) is not None and stream.preload(30) is not None and stream.preload(1) is None
    model = {k: 0 for k in range(50)}
    for n in [1, 7, 40, 100, 3, 250]:
        batch = stream.changes(n)
        assert len(batch.keys) == n and len(set(batch.keys.tolist())) == n  # each key at most once a batch
        for op, key, before, after in zip(batch.ops, batch.keys, batch.before, batch.after):
            key = int(key)
            if op == soak_server.INSERT:
                assert key not in model and before == -1 and after == 0
                model[key] = 0
            elif op == soak_server.UPDATE:
                assert model[key] == before and after == before + 1
                model[key] += 1
            else:
                assert model[key] == before and after == -1
                del model[key]
    keys, versions = stream.expected()
    assert dict(zip(keys.tolist(), versions.tolist())) == model
    big = soak_server.ChangeStream(100_000, seed=4)
    big.preload(100_000)
    shares = np.bincount(big.changes(20_000).ops, minlength=3) / 20_000
    assert np.allclose(shares, soak_server.OP_SHARES, atol=0.02)


def test_records_are_encoded_and_routed_as_the_mock_server_does():
    schema = SourceSchema.parse(soak_server.SCHEMA, [soak_server.KEY])
    reference = MockPixelsServer(schema)
    keys = np.array([0, 5, 123_456_789, 2**40 + 7], dtype=np.int64)

    def row(key, version):
        ids, vs, amount, note = soak_server.row_values(np.array([key]), np.array([version]))
        return int(ids[0]), int(vs[0]), float(amount[0]), str(soak_server.notes_as_str(note)[0])

    source = soak_server._source("public", "orders")
    for op, before, after in [(Op.INSERT, None, 0), (Op.UPDATE, 3, 4), (Op.DELETE, 4, None)]:
        encoded = soak_server.encode_records(
            int(op), keys, None if before is None else np.full(len(keys), before),
            None if after is None else np.full(len(keys), after), source,
        )
        buckets = soak_server.buckets_of(keys, 128)
        for i, key in enumerate(keys.tolist()):
            b = None if before is None else row(key, before)
            a = None if after is None else row(key, after)
            bucket = reference.enqueue(op, b, a)
            record, _ = reference._queues[bucket][-1]
            record.ClearField("transaction")
            assert encoded[i].tobytes() == sink_pb2.PollResponse(records=[record]).SerializeToString()
            assert buckets[i] == bucket


def test_the_clocked_stream_versions_rows_by_a_clock_and_encodes_its_time():
    stream = soak_server.ChangeStream(40, seed=2, clocked=True)
    preload = stream.preload(40)
    assert preload.after.tolist() == list(range(40))  # one tick per change, from 0
    ticks = 40
    for n in [10, 60, 5]:
        batch = stream.changes(n)
        updates = batch.ops == soak_server.UPDATE
        assert (batch.after[updates] > batch.before[updates]).all()  # updates move forward in time
        assert batch.after.max() < stream.clock
        ticks += int((batch.ops != soak_server.DELETE).sum())
    assert stream.clock == ticks  # a tick per new version: the clock never goes back
    ts, day = soak_server.clock_values(np.array([0, 345_599, 345_600]), CLOCK_US)
    assert day.tolist() == [day[0], day[0], day[0] + 1] and ts[0] == soak_server.CLOCK_START_US

    schema = SourceSchema.parse(soak_server.CLOCKED_SCHEMA, [soak_server.KEY])
    reference = MockPixelsServer(schema)
    keys, versions = np.array([3, 2**33]), np.array([7, 1_000_000])
    encoded = soak_server.encode_records(int(Op.INSERT), keys, None, versions, soak_server._source("public", "orders"),
                                         CLOCK_US)
    for i, (key, version) in enumerate(zip(keys.tolist(), versions.tolist())):
        ids, vs, amount, note = soak_server.row_values(np.array([key]), np.array([version]))
        ts, day = soak_server.clock_values(np.array([version]), CLOCK_US)
        row = (key, version, float(amount[0]), str(soak_server.notes_as_str(note)[0]),
               datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=int(ts[0])),
               datetime.date(1970, 1, 1) + datetime.timedelta(days=int(day[0])))
        bucket = reference.enqueue(Op.INSERT, None, row)
        record, _ = reference._queues[bucket][-1]
        record.ClearField("transaction")
        assert encoded[i].tobytes() == sink_pb2.PollResponse(records=[record]).SerializeToString()


def test_queued_chunks_parse_and_keep_per_bucket_order():
    stream = soak_server.ChangeStream(500, seed=1)
    queues = soak_server._Queues("public", "orders", 8, 50)
    queues.add(stream.preload(500))
    for _ in range(5):
        queues.add(stream.changes(200))
    seen: dict[int, int] = {}
    while queues.pending:
        payload, count = queues.poll("public", "orders", range(8))
        assert scan_response(payload) is not None
        for record in sink_pb2.PollResponse.FromString(payload).records:
            image = record.after if record.HasField("after") else record.before
            key = int.from_bytes(image.values[0].value, "big", signed=True)
            version = int.from_bytes(image.values[1].value, "big", signed=True)
            if record.op == sink_pb2.DELETE:
                assert seen.pop(key) == version
            elif record.op == sink_pb2.UPDATE:
                assert seen[key] == version - 1
                seen[key] = version
            else:
                assert key not in seen
                seen[key] = version
    keys, versions = stream.expected()
    assert seen == dict(zip(keys.tolist(), versions.tolist()))


def test_check_rows_finds_a_wrong_version():
    import pyarrow as pa

    keys, versions = np.array([1, 2, 3]), np.array([0, 2, 1])
    ids, vs, amount, note = soak_server.row_values(keys, versions)
    rows = pa.table({"id": ids[::-1], "version": vs[::-1], "amount": amount[::-1],
                     "note": soak_server.notes_as_str(note)[::-1]})
    assert check_rows(rows, keys, versions) == (True, "")
    assert not check_rows(rows, keys, np.array([0, 2, 2]))[0]
    assert not check_rows(rows.slice(1), keys, versions)[0]


@pytest.mark.parametrize("sink, variant", [("iceberg", []), ("paimon", []), ("iceberg", ["--partitioned"])])
def test_soak_smoke_run_is_correct(tmp_path, sink, variant):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--sink", sink, "--preload", "3000", "--rate", "300", "--commits", "4",
         "--checkpoint-interval-ms", "1000", "--read-every", "2", "--workdir", str(tmp_path / "soak"), *variant],
        capture_output=True, text=True, timeout=180,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    match = RESULT.match(last)
    assert match, last
    assert match.group(1) == sink and match.group(2) == "3000" and int(match.group(3)) >= 4
    assert match.group(4) == "yes", done.stdout
    assert float(match.group(6)) > 0 and float(match.group(7)) > 0
    assert (tmp_path / "soak" / "soak.csv").exists() and (tmp_path / "soak" / "soak.json").exists()
    figures = json.loads((tmp_path / "soak" / "soak.json").read_text())
    summary, commits = figures["summary"], figures["commits"]
    assert commits[-1]["live_rows"] == summary["live_rows_expected"]  # the progress lines add up
    assert all(c["storage_ratio"] > 0 and c["maint_s"] >= 0 for c in commits)
    assert "storage_ratio_max" in summary and summary["cycle_s_first"] >= min(c["commit_s"] for c in commits)
    assert sum(c["files_written"] for c in commits) >= 4 and "data and delete files written per stream commit" in done.stdout
    if variant:  # the clocked rows (ts, day) were checked too, in a table partitioned by them
        assert summary["partitioned"] and "partitioned by day(ts),bucket(16,id)" in (tmp_path / "soak" / "app.err").read_text()


@pytest.mark.parametrize("command", [["soak"], ["bench", "--soak"]])
def test_soak_is_a_command(command):
    done = subprocess.run(
        [sys.executable, "-m", "beam_pixels", *command, "--help"], capture_output=True, text=True, timeout=120,
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    assert "--preload" in done.stdout and "--property" in done.stdout
