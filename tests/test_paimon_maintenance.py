"""Paimon tables under a stream that never ends: compaction and snapshot expiration by the
committer, checked with pypaimon's reader after every step, including a SIGKILL mid-pass."""

import os
import random
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pyarrow as pa
import pytest
from pypaimon import CatalogFactory

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.paimon import PaimonTableWriter
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.compaction import CompactionOptions, CompactUnit, compact_bucket, pick, sorted_runs
from beam_pixels.sinks.paimon import maintenance
from beam_pixels.sinks.paimon.maintenance import live_files

ORDERS = SourceSchema.parse("region:STRING, id:INT, qty:INT, note:STRING", primary_key=["region", "id"])
REPO = Path(__file__).resolve().parent.parent


def catalog_properties(warehouse) -> dict[str, str]:
    return {"type": "paimon", "warehouse": str(warehouse)}


def open_table(properties: dict[str, str], name: str = "pixels.orders"):
    options = {k: v for k, v in properties.items() if k != "type"}
    return CatalogFactory.create(options).get_table(name)


def read_rows(table, snapshot_id: int | None = None) -> list[dict]:
    """The merged rows pypaimon reads (of ``snapshot_id``, else the latest), sorted by key."""
    if snapshot_id is not None:
        table = table.copy({"scan.snapshot-id": str(snapshot_id)})
    builder = table.new_read_builder()
    rows = builder.new_read().to_arrow(builder.new_scan().plan().splits())
    assert set(rows.column("_rowkind").to_pylist()) <= {"+I"}
    return sorted(rows.select(ORDERS.names).to_pylist(), key=lambda r: (r["region"], r["id"]))


def step(state: dict, batch: int, size: int = 40, keys: int = 60) -> list:
    """A batch of inserts, updates, deletes and re-inserts of deleted keys over a small key
    space (so every key is deleted and re-inserted across compactions); updates ``state``."""
    rng = random.Random(batch)
    changes = []
    for _ in range(size):
        key = ("eu" if rng.random() < 0.5 else "us", rng.randrange(keys))
        row = state.get(key)
        if row is None:
            after = {"region": key[0], "id": key[1], "qty": batch, "note": f"in {batch}"}
            changes.append((Op.INSERT, None, after))
            state[key] = after
        elif rng.random() < 0.3:
            changes.append((Op.DELETE, row, None))
            del state[key]
        else:
            after = dict(row, qty=row["qty"] + 1, note=f"up {batch}")
            changes.append((Op.UPDATE, row, after))
            state[key] = after
    return changes


def expected(state: dict) -> list[dict]:
    return [state[k] for k in sorted(state)]


def commit_batches(writer: PaimonTableWriter, state: dict, first: int, count: int) -> None:
    """Commit batches ``first..first+count-1`` as the committer does (maintenance included)."""
    for batch in range(first, first + count):
        checkpoint = writer.last_checkpoint()
        records = concat_records(
            [ChangeBatch.from_changes(ORDERS, step(state, batch), poll_group=0,
                                      start_position=checkpoint.next_position(0))], ORDERS)
        writer.commit(records, checkpoint.advance(records))


def data_files_on_disk(table) -> set[str]:
    root = Path(table.table_path)
    return {p.name for p in root.glob("bucket-*/*.parquet")}


def reachable_data_files(table) -> set[str]:
    """Data files any snapshot still on disk reaches."""
    earliest = private.earliest_snapshot_id(table)
    latest = private.latest_snapshot(table)
    return {
        e.file.file_name
        for sid in range(earliest, latest.id + 1)
        for e in private.live_entries(table, private.snapshot_by_id(table, sid))
    }


@pytest.mark.parametrize("deletion_vectors", ["true", "false"])
def test_compaction_keeps_exact_rows_and_bounds_sorted_runs(tmp_path, deletion_vectors):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=3,
                               table_options={"deletion-vectors.enabled": deletion_vectors, "num-levels": "4"})
    writer.open()
    state = {}
    for batch in range(1, 31):
        commit_batches(writer, state, batch, 1)
        table = open_table(properties)
        assert read_rows(table) == expected(state), f"after batch {batch}"
        for (_, bucket), entries in live_files(table, private.latest_snapshot(table)).items():
            assert len(sorted_runs(entries)) <= 3, f"bucket {bucket} after batch {batch}"
    kinds = [s.commit_kind for s in (private.snapshot_by_id(table, i) for i in range(1, 60)) if s]
    assert "COMPACT" in kinds
    assert writer.last_checkpoint().batch_id == 30
    assert writer.last_checkpoint().positions == {0: 30 * 40}


def written_rows(table, metas) -> pa.Table:
    """The raw key-value rows of files a compaction wrote (bucket 0, not committed)."""
    return pa.concat_tables([private.read_key_values(table, private.new_entry(table, 0, (), 0, 1, m)) for m in metas])


def test_compaction_keeps_sequence_numbers_and_drops_deletes_only_in_full_merges(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, write_only=True)
    writer.open()
    state = {}
    commit_batches(writer, state, 1, 6)
    table = open_table(properties)
    entries = live_files(table, private.latest_snapshot(table))[((), 0)]
    runs = sorted_runs(entries)

    partial = compact_bucket(table, (), 0, CompactUnit(tuple(runs[:2]), 4, False))
    inputs = pa.concat_tables([private.read_key_values(table, e) for e in partial.inputs])
    merged = written_rows(table, partial.outputs)
    assert set(merged.column("_SEQUENCE_NUMBER").to_pylist()) <= set(inputs.column("_SEQUENCE_NUMBER").to_pylist())
    assert max(m.max_sequence_number for m in partial.outputs) == max(e.file.max_sequence_number for e in partial.inputs)
    assert 3 in merged.column("_VALUE_KIND").to_pylist(), "a partial merge keeps -D rows: they hide older runs"
    assert {m.level for m in partial.outputs} == {4}

    full = compact_bucket(table, (), 0, pick(runs, CompactionOptions(trigger=3, max_size_amplification_percent=0)))
    assert full.unit.every_run and {m.level for m in full.outputs} == {5}
    rows = written_rows(table, full.outputs)
    assert set(rows.column("_VALUE_KIND").to_pylist()) == {0}, "a full merge into the top level drops -D rows"
    assert rows.num_rows == len(state)
    private.delete_written(table, (), 0, partial.outputs + full.outputs)


def test_expiration_deletes_only_what_no_retained_snapshot_reaches(tmp_path):
    properties = catalog_properties(tmp_path)
    options = {"snapshot.num-retained.min": "4", "snapshot.num-retained.max": "6", "manifest.merge-min-count": "5"}
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=3, table_options=options)
    writer.open()
    state = {}
    commit_batches(writer, state, 1, 25)
    table = open_table(properties)
    latest = private.latest_snapshot(table)
    earliest = private.earliest_snapshot_id(table)
    assert latest.id > 25 and 4 <= latest.id - earliest + 1 <= 6
    assert not (Path(table.table_path) / "snapshot" / f"snapshot-{earliest - 1}").exists()
    assert data_files_on_disk(table) == reachable_data_files(table)
    for sid in range(earliest, latest.id + 1):  # every retained snapshot still reads
        read_rows(table, sid)
    assert read_rows(table) == expected(state)
    assert len(private.manifest_list(table, latest)) <= 5 + 2, "manifest lists stay bounded"
    manifests = {p.name for p in (Path(table.table_path) / "manifest").iterdir()}
    referenced, index_files = set(), set()
    for sid in range(earliest, latest.id + 1):
        snapshot = private.snapshot_by_id(table, sid)
        lists, files = private.snapshot_metadata_files(table, snapshot)
        index_manifest, paths = private.index_files(table, snapshot)
        referenced |= set(lists) | set(files) | ({index_manifest} if index_manifest else set())
        index_files |= {str(Path(p.replace("file://", ""))) for p in paths}
    assert manifests == referenced
    assert index_files, "deletion vectors were written"
    on_disk = {str(p) for p in Path(table.table_path).rglob("index-*") if p.parent.name != "manifest"}
    assert on_disk == index_files, "deletion-vector index files no retained snapshot lists are deleted"


def test_time_retained_keeps_recent_snapshots(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1,
                               table_options={"snapshot.num-retained.min": "1", "snapshot.time-retained": "1 h"})
    writer.open()
    commit_batches(writer, {}, 1, 12)
    table = open_table(properties)
    assert private.earliest_snapshot_id(table) == 1, "nothing is an hour old"


def test_table_options_and_write_only(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, compaction_trigger=2,
                               table_options={"write-only": "true", "snapshot.num-retained.min": "1",
                                              "snapshot.time-retained": "1 ms"})
    writer.open()
    state = {}
    commit_batches(writer, state, 1, 8)
    table = open_table(properties)
    assert table.options.options.to_map()["snapshot.time-retained"] == "1 ms"
    kinds = {private.snapshot_by_id(table, i).commit_kind for i in range(1, 9)}
    assert kinds == {"APPEND"} and private.latest_snapshot(table).id == 8, "write-only: no compaction, no expiry"
    assert read_rows(table) == expected(state)

    keyed = PaimonTableWriter(ORDERS, "other", properties, bucket=1, compaction_trigger=2, write_only=True)
    keyed.open()
    commit_batches(keyed, {}, 1, 5)
    assert private.latest_snapshot(open_table(properties, "pixels.other")).id == 5


def test_compaction_racing_a_commit_is_redone_or_refused_never_corrupts(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, write_only=True)
    writer.open()
    state = {}
    commit_batches(writer, state, 1, 5)
    table = open_table(properties)
    planned = private.latest_snapshot(table)
    unit = pick(sorted_runs(live_files(table, planned)[((), 0)]), CompactionOptions(trigger=3))
    done = compact_bucket(table, (), 0, unit)

    commit_batches(writer, state, 6, 2)  # commits land between plan and commit: same keys, newer values
    added = [private.new_entry(table, 0, (), 0, e.total_buckets, m) for e, m in zip(done.inputs, done.outputs)]
    own = private.latest_snapshot(table)
    snapshot = private.commit_compact(table, writer.commit_user, own.commit_identifier, own.properties,
                                      planned, done.inputs, added, rewrite_manifests=False)
    assert snapshot.id == own.id + 1 and snapshot.commit_kind == "COMPACT"
    assert read_rows(open_table(properties)) == expected(state), "the newer commits still win"
    assert writer.last_checkpoint().batch_id == 7

    again = compact_bucket(table, (), 0, unit)  # a second compactor with the same plan is refused
    with pytest.raises(private.CompactionConflict, match="already removed"):
        private.commit_compact(table, writer.commit_user, 7, own.properties, planned, again.inputs,
                               [private.new_entry(table, 0, (), 0, 1, m) for m in again.outputs], False)
    private.delete_written(table, (), 0, again.outputs)
    assert read_rows(open_table(properties)) == expected(state)


_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_paimon_maintenance import ORDERS, catalog_properties, commit_batches
from beam_pixels.sinks.paimon import PaimonTableWriter, _pypaimon_private as private, dv_compaction, maintenance, merge_on_read

def slowly(function, marker):
    def wrapped(*args, **kwargs):
        print(marker, flush=True)
        time.sleep(0.05)
        return function(*args, **kwargs)
    return wrapped

# Markers (and a little time) between the steps of a pass, for the parent to kill in
# (deletion-vector tables commit their data through commit_compact too).
private.commit_compact = slowly(private.commit_compact, "committing-compaction")
maintenance.compact_bucket = slowly(maintenance.compact_bucket, "compacting")
dv_compaction.merge_live_runs = slowly(dv_compaction.merge_live_runs, "compacting")
merge_on_read.merge_live_runs = slowly(merge_on_read.merge_live_runs, "compacting")
private.snapshot_path = slowly(private.snapshot_path, "expiring")

writer = PaimonTableWriter(ORDERS, "orders", catalog_properties({warehouse!r}), bucket=2, compaction_trigger=2,
                           table_options={{"snapshot.num-retained.min": "2", "snapshot.time-retained": "1 ms",
                                           "manifest.merge-min-count": "3", "deletion-vectors.enabled": {dv!r}}})
writer.open()
state = {{}}
for batch in range(1, writer.last_checkpoint().batch_id + 1):  # the state the table holds
    from test_paimon_maintenance import step
    step(state, batch)
first = writer.last_checkpoint().batch_id + 1
print("ready", flush=True)
commit_batches(writer, state, first, 1000)
"""


@pytest.mark.parametrize("deletion_vectors", ["true", "false"])
def test_sigkill_during_compaction_or_expiration_leaves_a_readable_table_and_loses_nothing(tmp_path, deletion_vectors):
    properties = catalog_properties(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = _CHILD.format(tests=str(REPO / "tests"), warehouse=str(tmp_path), dv=deletion_vectors)
    rng = random.Random(7)
    kills = {"compacting": 0, "committing-compaction": 0, "expiring": 0}
    for attempt in range(9):
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 env=env, text=True)
        wanted = list(kills)[attempt % 3]
        skip = rng.randrange(1, 6)
        deadline = time.monotonic() + 60
        for line in child.stdout:
            if line.strip() == wanted:
                skip -= 1
                if skip == 0:
                    time.sleep(rng.uniform(0, 0.06))
                    child.send_signal(signal.SIGKILL)
                    kills[wanted] += 1
                    break
            assert time.monotonic() < deadline, "the child never reached " + wanted
        child.wait()
        assert child.returncode == -signal.SIGKILL

        writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=2,
                                   table_options={"deletion-vectors.enabled": deletion_vectors})
        writer.open()
        committed = writer.last_checkpoint()
        state = {}
        for batch in range(1, committed.batch_id + 1):
            step(state, batch)
        assert committed.positions == {0: committed.batch_id * 40}
        table = open_table(properties)
        assert read_rows(table) == expected(state), f"after kill {attempt} at {wanted}"
        earliest, latest = private.earliest_snapshot_id(table), private.latest_snapshot(table).id
        for sid in range(earliest, latest + 1):
            read_rows(table, sid)
    assert all(kills.values()), kills

    writer.maintain()  # a pass after the kills finishes what they left half done
    table = open_table(properties)
    assert read_rows(table) == expected(state)


def test_full_compaction_every_n_commits_leaves_one_raw_read_run_per_bucket(tmp_path):
    """Without deletion vectors (which read every bucket raw anyway)."""
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2,
                               table_options={"full-compaction.delta-commits": "3", "deletion-vectors.enabled": "false"})
    writer.open()
    state = {}
    for batch in range(1, 10):
        commit_batches(writer, state, batch, 1)
        table = open_table(properties)
        assert read_rows(table) == expected(state)
        splits = table.new_read_builder().new_scan().plan().splits()
        if batch % 3 == 0:
            assert all(s.raw_convertible for s in splits), f"one top-level run per bucket after batch {batch}"
            for entries in live_files(table, private.latest_snapshot(table)).values():
                assert [r.level for r in sorted_runs(entries)] == [5]
        else:
            assert not all(s.raw_convertible for s in splits)


def test_a_pass_compacts_at_most_its_budget_and_the_rest_waits(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=2, write_only=True)
    writer.open()
    state = {}
    commit_batches(writer, state, 1, 4)
    budgeted = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=2, compaction_max_bytes=1)
    budgeted.open()
    first = budgeted.maintain()
    assert (first.buckets, first.buckets_waiting) == (1, 1), first.line()
    second = budgeted.maintain()
    assert (second.buckets, second.buckets_waiting) == (1, 0), second.line()
    assert "compacted 1 bucket(s)" in second.line()
    assert read_rows(open_table(properties)) == expected(state)


def test_a_bucket_left_waiting_goes_before_busier_ones_on_the_next_pass():
    table = types.SimpleNamespace(table_path="memory://waiting-turns")
    runs = {"busy": 5, "quiet": 3}
    first = maintenance.longest_waiting_first(table, list(runs), lambda b: b, lambda b: -runs[b])
    assert first == ["busy", "quiet"], "the most runs first among buckets that waited alike"
    maintenance.note_waiting(table, set(runs), {"busy"})
    runs["busy"] = 9  # it kept receiving commits
    assert maintenance.longest_waiting_first(table, list(runs), lambda b: b, lambda b: -runs[b]) == ["quiet", "busy"]
    maintenance.note_waiting(table, set(runs), {"quiet"})
    assert maintenance.longest_waiting_first(table, list(runs), lambda b: b, lambda b: -runs[b]) == ["busy", "quiet"]


def test_append_tables_get_snapshot_expiration(tmp_path):
    changelog = SourceSchema.parse("id:INT, note:STRING")
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(changelog, "log", properties,
                               table_options={"snapshot.num-retained.min": "2", "snapshot.time-retained": "1 ms"})
    writer.open()
    for batch in range(1, 8):
        checkpoint = writer.last_checkpoint()
        records = concat_records([ChangeBatch.from_changes(
            changelog, [(Op.INSERT, None, {"id": batch, "note": "x"})], poll_group=0,
            start_position=checkpoint.next_position(0))], changelog)
        writer.commit(records, checkpoint.advance(records))
    table = open_table(properties, "pixels.log")
    assert private.latest_snapshot(table).id - private.earliest_snapshot_id(table) + 1 == 2
    builder = table.new_read_builder()
    assert sorted(builder.new_read().to_arrow(builder.new_scan().plan().splits()).column("id").to_pylist()) == list(range(1, 8))
    assert writer.last_checkpoint().batch_id == 7


def runs_of(*spec):
    """Sorted runs from (level, size) pairs, newest first."""
    from types import SimpleNamespace

    entries = [SimpleNamespace(file=SimpleNamespace(level=level, file_size=size, max_sequence_number=100 - i,
                                                    delete_row_count=0))
               for i, (level, size) in enumerate(spec)]
    return sorted_runs(entries)


@pytest.mark.parametrize(
    "spec, picked, level",
    [
        ([(0, 10), (0, 10), (0, 10), (5, 1000)], None, None),  # fewer runs than the trigger (5)
        ([(0, 10), (0, 11), (0, 12), (0, 13), (5, 1000)], None, None),  # no size ratio, not more than 5
        ([(0, 10), (0, 10), (0, 10), (0, 10), (5, 1000)], 4, 4),  # size ratio: equal small runs merge
        ([(0, 10), (0, 11), (0, 12), (0, 13), (0, 14), (5, 1000)], 5, 4),  # more than 5: newest two, then by size ratio
        ([(0, 10), (0, 30), (0, 90), (0, 270), (0, 810), (5, 9000)], 6, 5),  # never into level 0: up to a level run
        ([(0, 300), (0, 300), (0, 300), (4, 300), (5, 400)], 5, 5),  # newer runs over 200% of the oldest: all
        ([(0, 10), (0, 10), (2, 30), (3, 100), (5, 1000)], 2, 1),  # into the level below the next older run
    ],
)
def test_universal_compaction_picks_as_paimon_does(spec, picked, level):
    unit = pick(runs_of(*spec), CompactionOptions())
    assert (None if unit is None else len(unit.runs)) == picked
    assert (None if unit is None else unit.output_level) == level
    if unit is not None:
        assert unit.every_run == (picked == len(spec))
