"""Deletion-vector commits into Paimon primary-key tables: exact rows at every snapshot,
read by pypaimon without merging, sorted runs Paimon's own tools accept, a key index
that survives a new process, and commits that race another writer redone."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.committing import CommitConflict
from beam_pixels.sinks.paimon import PaimonTableWriter, deletion_vectors
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.maintenance import live_files
from test_paimon_maintenance import ORDERS, catalog_properties, commit_batches, expected, open_table, read_rows, step

COUNTERS = SourceSchema.parse("id:BIGINT, qty:INT, note:STRING", primary_key=["id"])


def commit_counters(writer, op, rows: list[dict]) -> None:
    """Commit one change ``op`` of each of ``rows`` to a COUNTERS table."""
    from beam_pixels.changes import ChangeBatch, Op, concat_records

    checkpoint = writer.last_checkpoint()
    records = concat_records([ChangeBatch.from_changes(COUNTERS, [(op, None, r) for r in rows], poll_group=0,
                                                       start_position=checkpoint.next_position(0))], COUNTERS)
    writer.commit(records, checkpoint.advance(records))


def assert_level_invariants(table) -> None:
    """Every file above level 0, without -D rows; each level one sorted run of non-overlapping files."""
    for (_, bucket), entries in live_files(table, private.latest_snapshot(table)).items():
        by_level = {}
        for entry in entries:
            assert entry.file.level > 0, f"bucket {bucket}: a level-0 file would be invisible to readers"
            assert entry.file.delete_row_count == 0
            by_level.setdefault(entry.file.level, []).append(entry)
        for level, files in by_level.items():
            ranges = []
            for entry in files:
                keys = private.read_key_values(table, entry, ["_KEY_region", "_KEY_id"])
                pairs = list(zip(keys.column(0).to_pylist(), keys.column(1).to_pylist()))
                assert pairs == sorted(pairs) and len(set(pairs)) == len(pairs), "a file is sorted by key"
                ranges.append((pairs[0], pairs[-1]))
            ranges.sort()
            for (_, high), (low, _) in zip(ranges, ranges[1:]):
                assert high < low, f"bucket {bucket} level {level}: files overlap"


def test_every_snapshot_reads_exact_rows_without_merging(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=3,
                               table_options={"snapshot.num-retained.min": "100"})
    writer.open()
    state, history, vectors = {}, {}, 0
    for batch in range(1, 41):
        commit_batches(writer, state, batch, 1)
        table = open_table(properties)
        history[private.latest_snapshot(table).id] = expected(state)
        vectors += bool(private.deletion_vector_index(table, private.latest_snapshot(table)))
        assert read_rows(table) == expected(state), f"after batch {batch}"
        splits = table.new_read_builder().new_scan().plan().splits()
        assert all(split.raw_convertible for split in splits), "readers never merge sorted runs"
        assert_level_invariants(table)
    assert vectors >= 3, "updates and deletes of stored rows are deletion vectors"
    table = open_table(properties)
    snapshots = [private.snapshot_by_id(table, i) for i in range(1, private.latest_snapshot(table).id + 1)]
    assert {s.commit_kind for s in snapshots} == {"APPEND", "COMPACT"}
    for snapshot in snapshots:  # streaming readers take an APPEND snapshot's files as new rows
        if snapshot.commit_kind == "APPEND":
            assert {e.kind for e in private.delta_entries(table, snapshot)} == {0}, f"snapshot {snapshot.id}"
    for snapshot_id, rows in history.items():  # every commit's own snapshot, compactions included in between
        assert read_rows(table, snapshot_id) == rows, f"snapshot {snapshot_id}"
    assert writer.last_checkpoint().batch_id == 40


def test_integer_keys_and_a_key_index_rebuilt_by_a_new_process(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(COUNTERS, "counters", properties, bucket=3, compaction_trigger=3)
    writer.open()
    live = {}

    def commit(batch: int, changes: list) -> None:
        from beam_pixels.changes import ChangeBatch, concat_records

        checkpoint = writer.last_checkpoint()
        records = concat_records([ChangeBatch.from_changes(COUNTERS, changes, poll_group=0,
                                                           start_position=checkpoint.next_position(0))], COUNTERS)
        writer.commit(records, checkpoint.advance(records))

    from beam_pixels.changes import Op

    for batch in range(1, 21):
        changes = []
        for key in range(batch % 7, 300, 7):
            row = live.get(key)
            after = {"id": key, "qty": batch, "note": f"b{batch}"}
            if row is None:
                changes.append((Op.INSERT, None, after))
                live[key] = after
            elif key % 3 == 0:
                changes.append((Op.DELETE, row, None))
                del live[key]
            else:
                changes.append((Op.UPDATE, row, after))
                live[key] = after
        commit(batch, changes)
        if batch == 10:
            table = open_table(properties, "pixels.counters")
            deletion_vectors.forget(table)  # as a new process: the index is built from the table
            rebuilt = deletion_vectors.live_rows(table, ["id"], live_files)
            assert rebuilt.index.exact and len(rebuilt.index) == len(live)
    table = open_table(properties, "pixels.counters")
    builder = table.new_read_builder()
    rows = builder.new_read().to_arrow(builder.new_scan().plan().splits())
    assert sorted(rows.select(["id", "qty", "note"]).to_pylist(), key=lambda r: r["id"]) == [live[k] for k in sorted(live)]


def test_a_commit_racing_another_writer_is_refused_then_redone(tmp_path, monkeypatch):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, compaction_trigger=4)
    writer.open()
    state = {}
    commit_batches(writer, state, 1, 3)
    table = open_table(properties)
    real_write = private.write_deletion_vectors

    def another_writer_commits_first(*args, **kwargs):
        monkeypatch.setattr(private, "write_deletion_vectors", real_write)
        latest = private.latest_snapshot(table)
        private.commit_compact(table, "another-writer", 0, None, latest, [], [], rewrite_manifests=True)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(private, "write_deletion_vectors", another_writer_commits_first)
    before = private.latest_snapshot(table).id
    pending = dict(state)
    checkpoint = writer.last_checkpoint()
    from beam_pixels.changes import ChangeBatch, concat_records

    records = concat_records([ChangeBatch.from_changes(ORDERS, step(pending, 4), poll_group=0,
                                                       start_position=checkpoint.next_position(0))], ORDERS)
    prepared = writer.prepare(records)
    with pytest.raises(CommitConflict, match="was committed after snapshot"):
        writer.commit_prepared([prepared], checkpoint.advance(records))
    table = open_table(properties)
    assert private.latest_snapshot(table).id == before + 1, "only the other writer's snapshot landed"
    assert read_rows(table) == expected(state)
    index_files = {p.name for p in (tmp_path / "pixels.db" / "orders" / "index").iterdir()}
    listed = {path.rsplit("/", 1)[-1] for sid in range(1, private.latest_snapshot(table).id + 1)
              for path in private.index_files(table, private.snapshot_by_id(table, sid))[1]}
    assert index_files == listed, "the refused commit left no index file"

    writer.commit_prepared([prepared], checkpoint.advance(records))  # the committer's retry
    assert read_rows(open_table(properties)) == expected(pending)
    assert writer.last_checkpoint().batch_id == 4


def test_created_tables_get_deletion_vectors_unless_write_only_or_asked_otherwise(tmp_path):
    properties = catalog_properties(tmp_path)
    PaimonTableWriter(ORDERS, "plain", properties, write_only=True).open()
    PaimonTableWriter(ORDERS, "asked", properties, write_only=True,
                      table_options={"deletion-vectors.enabled": "true"}).open()
    PaimonTableWriter(ORDERS, "default", properties).open()
    PaimonTableWriter(ORDERS, "classic", properties, table_options={"deletion-vectors.enabled": "false"}).open()
    options = {name: open_table(properties, f"pixels.{name}").options.options.to_map()
               for name in ("plain", "asked", "default", "classic")}
    assert {n: o.get("deletion-vectors.enabled") for n, o in options.items()} == {
        "plain": None, "asked": "true", "default": "true", "classic": "false"}
    assert {n: o.get("num-levels") for n, o in options.items()} == {
        "plain": None, "asked": "16", "default": "16", "classic": None}, "more levels only with deletion vectors"
    assert {n: o.get("compaction.delete-ratio-threshold") for n, o in options.items()} == {
        "plain": None, "asked": "0.35", "default": "0.35", "classic": None}


def test_deleted_share_past_the_threshold_rewrites_the_file(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(COUNTERS, "counters", properties, bucket=1, compaction_trigger=10,
                               table_options={"compaction.delete-ratio-threshold": "0.5"})
    writer.open()
    from beam_pixels.changes import ChangeBatch, Op, concat_records

    def commit(changes):
        checkpoint = writer.last_checkpoint()
        records = concat_records([ChangeBatch.from_changes(COUNTERS, changes, poll_group=0,
                                                           start_position=checkpoint.next_position(0))], COUNTERS)
        writer.commit(records, checkpoint.advance(records))

    rows = {k: {"id": k, "qty": 0, "note": "x"} for k in range(100)}
    commit([(Op.INSERT, None, r) for r in rows.values()])
    table = open_table(properties, "pixels.counters")
    first = {e.file.file_name for e in live_files(table, private.latest_snapshot(table))[((), 0)]}
    # thresholds are spread per file over [0.5, 1.5) x the table's: here [25%, 75%)
    commit([(Op.DELETE, rows.pop(k), None) for k in range(20)])  # 20%: below the threshold
    table = open_table(properties, "pixels.counters")
    assert first <= {e.file.file_name for e in live_files(table, private.latest_snapshot(table))[((), 0)]}
    commit([(Op.DELETE, rows.pop(k), None) for k in range(20, 80)])  # 80%: rewritten without them
    table = open_table(properties, "pixels.counters")
    files = live_files(table, private.latest_snapshot(table))[((), 0)]
    assert not first & {e.file.file_name for e in files}
    assert sum(e.file.row_count for e in files) == 20
    assert not private.deletion_vector_index(table, private.latest_snapshot(table)), "no deletion vector left"
    builder = table.new_read_builder()
    read = builder.new_read().to_arrow(builder.new_scan().plan().splits())
    assert sorted(pc.cast(read.column("id"), pa.int64()).to_pylist()) == sorted(rows)


def test_a_table_written_write_only_with_deletion_vectors_is_not_maintained_until_compacted(tmp_path):
    """Its level-0 files hide from readers until compacted; the connector refuses, naming one."""
    properties = catalog_properties(tmp_path)
    options = {"deletion-vectors.enabled": "true"}
    write_only = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, write_only=True, table_options=options)
    write_only.open()
    state = {}
    commit_batches(write_only, state, 1, 2)
    assert read_rows(open_table(properties)) == [], "Paimon readers skip level-0 files in deletion-vector mode"
    managed = PaimonTableWriter(ORDERS, "orders", properties, bucket=1)
    managed.open()
    with pytest.raises(RuntimeError, match=r"holds \d+ level-0 files \(e\.g\. data-.*compaction job"):
        commit_batches(managed, state, 3, 1)


def test_the_table_line_is_logged_once_per_run_not_once_per_round(tmp_path, caplog):
    import logging

    properties = catalog_properties(tmp_path)
    state = {}
    with caplog.at_level(logging.INFO, logger="beam_pixels.sinks.paimon"):
        for batch in range(1, 5):  # one writer per round, as local runs build a new pipeline every round
            writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1)
            writer.open()
            commit_batches(writer, state, batch, 1)
    lines = [r.getMessage() for r in caplog.records if "table pixels.orders" in r.getMessage()]
    assert [line.split(": ")[1].split(" table")[0] for line in lines] == ["created", "using existing"]
    assert read_rows(open_table(properties)) == expected(state)


def test_deleted_positions_added_by_a_commit_merge_into_the_sorted_vector():
    import numpy as np

    from beam_pixels.sinks.paimon.deletion_vectors import merge_sorted

    rng = np.random.default_rng(7)
    for _ in range(500):
        old = np.unique(rng.integers(0, 300, rng.integers(0, 40))).astype(np.uint32)
        new = np.unique(rng.integers(0, 300, rng.integers(0, 40))).astype(np.uint32)
        merged = merge_sorted(old, new)
        assert merged.dtype == np.uint32
        assert merged.tolist() == sorted(set(old.tolist()) | set(new.tolist()))


def test_the_oldest_run_takes_in_newer_rows_of_its_key_range_file_by_file(tmp_path, monkeypatch):
    """A file of the oldest run rewritten for its deleted rows takes in the rows the newer
    runs hold from its first key to the next file's (composite keys: region, then id),
    marking them deleted there; the table stays exact at every snapshot, also for a new
    process that rebuilds its key index and goes on updating moved keys."""
    from beam_pixels.sinks.paimon import dv_compaction

    monkeypatch.setattr(dv_compaction, "MIN_FILE_ROWS", 6)  # several files per run on a small table
    moved = []
    merge = dv_compaction.merge_live_runs

    def counting(*args, **kwargs):
        result = merge(*args, **kwargs)
        moved.append(sum(len(positions) for _, positions in result.moved.values()))
        return result

    monkeypatch.setattr(dv_compaction, "merge_live_runs", counting)
    properties = catalog_properties(tmp_path)
    options = {"snapshot.num-retained.min": "1000", "compaction.delete-ratio-threshold": "0.15"}
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, table_options=options)
    writer.open()
    state, history = {}, {}
    for batch in range(1, 61):
        if batch == 40:  # a new process: the key index is rebuilt from the table
            deletion_vectors.forget(open_table(properties))
            writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, table_options=options)
            writer.open()
        commit_batches(writer, state, batch, 1)
        table = open_table(properties)
        history[private.latest_snapshot(table).id] = expected(state)
        assert read_rows(table) == expected(state), f"after batch {batch}"
        assert_level_invariants(table)
        index = deletion_vectors.live_rows(table, ["region", "id"], live_files).index
        assert len(index) == len(state), "the key index holds each live key once, moved ones included"
    assert sum(moved) > 20 and sum(1 for m in moved if m) >= 3, moved
    entries = live_files(table, private.latest_snapshot(table))[((), 0)]
    top = max(e.file.level for e in entries)
    assert sum(1 for e in entries if e.file.level == top) >= 3, "the oldest run is several files"
    compacted = [e.file for e in entries if e.file.file_source == private.FILE_SOURCE_COMPACT]
    assert compacted and all(f.min_sequence_number == f.max_sequence_number for f in compacted), \
        "a rewrite gives its rows one sequence number"
    for snapshot_id, rows in history.items():
        assert read_rows(table, snapshot_id) == rows, f"snapshot {snapshot_id}"


def test_a_bulk_load_becomes_files_of_the_share_compaction_writes(tmp_path, monkeypatch):
    """A commit of many rows per bucket is written as one sorted run of files of
    ``paimon.compaction.file-percent`` of them, so their first rewrites cost that share."""
    from beam_pixels.sinks.paimon import dv_compaction, writer as writer_module

    monkeypatch.setattr(dv_compaction, "MIN_FILE_ROWS", 5)
    monkeypatch.setattr(writer_module, "MIN_FILE_ROWS", 5)
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, compaction_file_percent=10)
    writer.open()
    from beam_pixels.changes import ChangeBatch, Op, concat_records

    state = {("eu", i): {"region": "eu", "id": i, "qty": 0, "note": "bulk"} for i in range(200)}
    checkpoint = writer.last_checkpoint()
    records = concat_records([ChangeBatch.from_changes(ORDERS, [(Op.INSERT, None, r) for r in state.values()],
                                                       poll_group=0, start_position=checkpoint.next_position(0))],
                             ORDERS)
    writer.commit(records, checkpoint.advance(records))
    table = open_table(properties)
    files = live_files(table, private.latest_snapshot(table))[((), 0)]
    assert len(files) == 10 and {e.file.row_count for e in files} == {20} and len({e.file.level for e in files}) == 1
    assert_level_invariants(table)
    commit_batches(writer, state, 2, 10)
    table = open_table(properties)
    assert read_rows(table) == expected(state)
    assert_level_invariants(table)


def test_a_bulk_load_is_written_in_files_of_whole_deletion_vector_containers(tmp_path):
    """A bulk load whose share per file (``paimon.compaction.file-percent`` of the commit's rows
    per bucket) is under 65,536 rows is written in files of about 65,536: a file of fewer rows
    costs a whole deletion-vector container (8 KB) once 1 in 16 of its rows are deleted, so
    files of 35,000 rows would cost twice the bits a row in every index copy. Exact after
    updates across the load."""
    from beam_pixels.changes import Op

    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(COUNTERS, "counters", properties, bucket=1, compaction_file_percent=25)
    writer.open()
    commit_counters(writer, Op.INSERT, [{"id": k, "qty": 0, "note": "bulk"} for k in range(140_000)])
    table = open_table(properties, "pixels.counters")
    files = live_files(table, private.latest_snapshot(table))[((), 0)]
    assert sorted(e.file.row_count for e in files) == [70_000, 70_000], "25% of 140,000 rows would be 35,000"
    assert len({e.file.level for e in files}) == 1, "one sorted run"
    commit_counters(writer, Op.UPDATE, [{"id": k, "qty": 1, "note": "updated"} for k in range(0, 140_000, 7)])
    table = open_table(properties, "pixels.counters")
    builder = table.new_read_builder()
    got = builder.new_read().to_arrow(builder.new_scan().plan().splits())
    assert got.num_rows == 140_000 and sorted(got.column("id").to_pylist()) == list(range(140_000))
    assert pc.sum(got.column("qty")).as_py() == 20_000


def test_the_run_above_the_oldest_sheds_its_deleted_rows_in_place():
    """Tiering never takes the run just above the oldest (it drains into the oldest run), so
    a file of it past its delete ratio is rewritten alone at its level, without its deleted
    rows; files of the other newer runs wait for tiering, which drops theirs."""
    from types import SimpleNamespace

    from beam_pixels.sinks.paimon import dv_compaction
    from beam_pixels.sinks.paimon.compaction import CompactionOptions

    def entry(name, level, rows, first, last):
        meta = SimpleNamespace(file_name=name, level=level, row_count=rows, file_size=rows * 10,
                               max_sequence_number=0, min_key=SimpleNamespace(values=[first]),
                               max_key=SimpleNamespace(values=[last]))
        return SimpleNamespace(file=meta)

    deleted = {"newer": 60, "above-oldest": 95}  # 60% and 95%: past any spread of a 20% threshold
    entries = [entry("newer", 9, 100, 0, 999), entry("above-oldest", 10, 100, 400, 499),
               entry("oldest-a", 11, 500, 0, 499), entry("oldest-b", 11, 500, 500, 999)]
    live = SimpleNamespace(live_count=lambda name: 100 - deleted[name] if name in deleted else 500)
    (rewrite,) = dv_compaction.pick(entries, live, CompactionOptions(trigger=11), ratio=0.2)
    assert [e.file.file_name for e in rewrite.inputs] == ["above-oldest"] and rewrite.level == 10
    assert rewrite.absorb_from == () and rewrite.lower is None and rewrite.upper is None


def test_tiering_leaves_the_run_above_the_oldest_to_drain_into_it(monkeypatch):
    """With every level taken, the newest runs merge among themselves while each next run is no
    bigger than what is merged so far (not "older", gathered by earlier merges), not into the big
    run above the oldest (that would rewrite most of the bucket at once, then again when
    it drains); a file of the oldest run past its delete ratio still takes in that run's
    rows in the same pass, and none of the files the tiered merge takes."""
    from types import SimpleNamespace

    from beam_pixels.sinks.paimon import dv_compaction
    from beam_pixels.sinks.paimon.compaction import CompactionOptions

    def entry(name, level, rows, first, last):
        meta = SimpleNamespace(file_name=name, level=level, row_count=rows, file_size=rows * 10,
                               max_sequence_number=0, min_key=SimpleNamespace(values=[first]),
                               max_key=SimpleNamespace(values=[last]))
        return SimpleNamespace(file=meta)

    monkeypatch.setattr(dv_compaction, "MIN_FILE_ROWS", 500)  # files of 500 rows: oldest-b does not join in
    deleted = {"oldest-a": 300}  # 60% of it: past any spread of a 20% threshold
    live = SimpleNamespace(live_count=lambda name: files[name].file.row_count - deleted.get(name, 0))
    entries = [entry("new-1", 1, 10, 0, 99), entry("new-2", 2, 10, 0, 99), entry("young", 3, 20, 0, 99),
               entry("older", 4, 50, 0, 99),
               entry("above-oldest", 5, 90, 0, 99), entry("oldest-a", 6, 500, 0, 49), entry("oldest-b", 6, 500, 50, 99)]
    files = {e.file.file_name: e for e in entries}
    rewrites = dv_compaction.pick(entries, live, CompactionOptions(trigger=6), ratio=0.2)
    tiered, drain = rewrites
    assert [e.file.file_name for e in tiered.inputs] == ["new-1", "new-2", "young"] and tiered.level == 3
    assert [e.file.file_name for e in drain.inputs] == ["oldest-a"]
    assert [e.file.file_name for e in drain.absorb_from] == ["older", "above-oldest"]


def test_a_bulk_load_in_key_order_over_several_commits_joins_the_oldest_run(tmp_path, monkeypatch):
    """A load that arrives in key order over several commits (a table read in key order):
    each commit's files that overlap no file of the levels above the oldest join the oldest
    run, so the load is one sorted run that compaction need not rewrite into itself; a file
    that overlaps one, and the random updates after, become newer runs. Exact at every step."""
    from beam_pixels.changes import ChangeBatch, Op, concat_records
    from beam_pixels.sinks.paimon import dv_compaction, writer as writer_module

    monkeypatch.setattr(dv_compaction, "MIN_FILE_ROWS", 5)
    monkeypatch.setattr(writer_module, "MIN_FILE_ROWS", 5)
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=1, compaction_file_percent=25)
    writer.open()
    state = {}

    def load(ids):
        rows = [{"region": "eu", "id": i, "qty": 0, "note": "bulk"} for i in ids]
        state.update({("eu", r["id"]): r for r in rows})
        checkpoint = writer.last_checkpoint()
        records = concat_records([ChangeBatch.from_changes(ORDERS, [(Op.INSERT, None, r) for r in rows], poll_group=0,
                                                           start_position=checkpoint.next_position(0))], ORDERS)
        writer.commit(records, checkpoint.advance(records))
        table = open_table(properties)
        assert read_rows(table) == expected(state)
        assert_level_invariants(table)
        return live_files(table, private.latest_snapshot(table))[((), 0)]

    first = load(range(0, 100))
    top = {e.file.level for e in first}
    assert len(top) == 1
    files = load(range(100, 200))
    assert {e.file.level for e in files} == top and len(files) == 8, "the second part joins the oldest run"
    files = load(range(150, 250, 2))  # half overlaps the oldest run's last file, half lies past it
    levels = sorted({e.file.level for e in files})
    assert levels[-1] == top.pop() and len(levels) == 2, "overlapping keys go to a newer run"
    commit_batches(writer, state, 4, 10)  # updates, deletes and inserts across the key range
    table = open_table(properties)
    assert read_rows(table) == expected(state)
    assert_level_invariants(table)


def test_compaction_files_hold_whole_deletion_vector_containers_and_are_not_halved(tmp_path):
    """Compaction outputs hold at least 65,536 rows (one container of a deletion vector, at most
    8 KB however many rows are deleted) and roll into the nearest count of even parts: 1.4
    times the limit stays one file, not two files of 0.7 that would cost a container each."""
    from types import SimpleNamespace

    from beam_pixels.changes import Op
    from beam_pixels.sinks.paimon import dv_compaction
    from beam_pixels.sinks.paimon.compaction import CompactionOptions

    meta = SimpleNamespace(file_name="oldest", level=5, row_count=100_000, file_size=10**6, max_sequence_number=0,
                           min_key=SimpleNamespace(values=[0]), max_key=SimpleNamespace(values=[99_999]))
    live = SimpleNamespace(live_count=lambda name: 40_000)  # 60% deleted: past any spread threshold
    (drain,) = dv_compaction.pick([SimpleNamespace(file=meta)], live, CompactionOptions(trigger=5), ratio=0.2)
    assert drain.file_rows == 65_536, "25% of 40,000 live rows would be files of 10,000"

    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(COUNTERS, "counters", properties, bucket=1)
    writer.open()
    commit_counters(writer, Op.INSERT, [{"id": k, "qty": 0, "note": "x"} for k in range(140)])
    table = open_table(properties, "pixels.counters")
    (entry,) = live_files(table, private.latest_snapshot(table))[((), 0)]
    raw = private.read_key_values(table, entry)
    for limit, sizes in ((100, [140]), (60, [70, 70]), (30, [28] * 5)):
        written = private.write_compacted(table, (), 0, raw, 3, limit)
        private.delete_written(table, (), 0, written)
        assert [m.row_count for m in written] == sizes, limit


def test_a_draining_file_takes_its_small_next_files_along(monkeypatch):
    """A file of the oldest run past its delete ratio is rewritten with the next files of the
    run while their live rows add up to at most a file's: a run that drains (an old partition
    whose rows updates move to today) keeps fewer, fuller files instead of ever smaller ones."""
    from types import SimpleNamespace

    from beam_pixels.sinks.paimon import dv_compaction
    from beam_pixels.sinks.paimon.compaction import CompactionOptions

    monkeypatch.setattr(dv_compaction, "MIN_FILE_ROWS", 1200)

    def entry(name, rows, first, last):
        meta = SimpleNamespace(file_name=name, level=5, row_count=rows, file_size=rows * 10, max_sequence_number=0,
                               min_key=SimpleNamespace(values=[first]), max_key=SimpleNamespace(values=[last]))
        return SimpleNamespace(file=meta)

    live = {"a": 400, "b": 450, "c": 300, "d": 900}  # a: 60% deleted, past any spread of 20%; b, c: 10%
    entries = [entry("a", 1000, 0, 9), entry("b", 500, 10, 19), entry("c", 330, 20, 29), entry("d", 1000, 30, 39)]
    (drain,) = dv_compaction.pick(entries, SimpleNamespace(live_count=live.get), CompactionOptions(trigger=5), 0.2)
    assert [e.file.file_name for e in drain.inputs] == ["a", "b", "c"] and drain.file_rows == 1200
    assert drain.lower is None and drain.upper == (30,), "its key range ends where the run's next file starts"
