"""Append tables (sources without a primary key) under a stream that never ends: the
committer's maintenance pass concatenates small files with Paimon's rules, and pypaimon
reads exactly the same changelog rows before and after, expiration included."""

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.paimon import PaimonTableWriter
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon import append_compaction
from beam_pixels.sinks.paimon.maintenance import live_files

LOG = SourceSchema.parse("id:INT, note:STRING")
CHANGELOG_COLUMNS = ["id", "note", "_op", "_poll_group", "_position"]
ROWS = 5  # changelog rows per batch of commit_batches: 3 inserts, 1 update, 1 delete


def catalog_properties(warehouse) -> dict[str, str]:
    return {"type": "paimon", "warehouse": str(warehouse)}


def writer_for(tmp_path, **kwargs) -> PaimonTableWriter:
    writer = PaimonTableWriter(LOG, "log", catalog_properties(tmp_path), **kwargs)
    writer.open()
    return writer


def commit_batches(writer: PaimonTableWriter, first: int, count: int, size: int = 3, poll_group: int = 0) -> None:
    """Commit batches of inserts, updates and deletes as the committer does (maintenance
    included unless the writer is write-only)."""
    for batch in range(first, first + count):
        checkpoint = writer.last_checkpoint()
        changes = []
        for i in range(size):
            key = batch * 100 + i
            changes.append((Op.INSERT, None, {"id": key, "note": f"in {batch}"}))
            if i % 2:
                changes.append((Op.UPDATE, {"id": key, "note": f"in {batch}"}, {"id": key, "note": f"up {batch}"}))
            if i % 3 == 2:
                changes.append((Op.DELETE, {"id": key, "note": f"up {batch}"}, None))
        records = concat_records([ChangeBatch.from_changes(
            LOG, changes, poll_group=poll_group, start_position=checkpoint.next_position(poll_group))], LOG)
        writer.commit(records, checkpoint.advance(records))


def read(table, snapshot_id: int | None = None) -> list[dict]:
    """The rows pypaimon reads, in its order."""
    if snapshot_id is not None:
        table = table.copy({"scan.snapshot-id": str(snapshot_id)})
    builder = table.new_read_builder()
    return builder.new_read().to_arrow(builder.new_scan().plan().splits()).select(CHANGELOG_COLUMNS).to_pylist()


def multiset(rows: list[dict]) -> Counter:
    return Counter(tuple(sorted(r.items())) for r in rows)


def files_of(table) -> list:
    return private.live_entries(table, private.latest_snapshot(table))


def fresh(tmp_path):
    """The table as a new reader opens it."""
    return writer_for(tmp_path, write_only=True)._table


def test_many_small_commits_become_one_file_and_read_the_same(tmp_path):
    commit_batches(writer_for(tmp_path, write_only=True), 1, 12)
    table = fresh(tmp_path)
    before, planned = read(table), private.latest_snapshot(table).id
    assert len(files_of(table)) == 12 and len(before) == 12 * ROWS
    assert {r["_op"] for r in before} == {"INSERT", "UPDATE", "DELETE"}

    report = writer_for(tmp_path).maintain()
    table = fresh(tmp_path)
    # unaware bucket: 12 small files (< 0.7 x 256 MB), too light for a full bin (2 x 256 MB),
    # but at least compaction.min.file-num (5): one unit, one output file
    assert (report.files_in, report.files_out, report.buckets) == (12, 1, 1), report.line()
    assert "12 files" in report.line() and "into 1 " in report.line()
    assert len(files_of(table)) == 1
    snapshot = private.latest_snapshot(table)
    assert snapshot.id == planned + 1 and snapshot.commit_kind == "COMPACT"
    after = read(table)
    assert multiset(after) == multiset(before)
    assert after == before, "the newest files of the bucket were compacted: same order too"
    assert [r["_position"] for r in after] == list(range(len(after)))
    assert read(table, planned) == before, "the snapshot before the compaction still reads"
    assert writer_for(tmp_path).last_checkpoint().batch_id == 12, "the checkpoint stays on the latest snapshot"


def test_a_stream_keeps_fewer_than_min_file_num_small_files(tmp_path):
    writer = writer_for(tmp_path, table_options={"compaction.min.file-num": "4"})
    for batch in range(1, 21):
        commit_batches(writer, batch, 1)
        table = fresh(tmp_path)
        rows = read(table)
        assert len(files_of(table)) <= 3, f"after batch {batch}"
        assert [r["_position"] for r in rows] == list(range(batch * ROWS)), f"after batch {batch}"
    kinds = Counter(private.snapshot_by_id(table, i).commit_kind for i in range(1, private.latest_snapshot(table).id + 1))
    assert kinds["APPEND"] == 20 and kinds["COMPACT"] == 6  # after commits 4, 7, 10, 13, 16, 19


def test_fewer_than_min_file_num_small_files_do_nothing(tmp_path):
    commit_batches(writer_for(tmp_path, write_only=True), 1, 4)
    writer = writer_for(tmp_path)
    latest = private.latest_snapshot(writer._table).id
    report = writer.maintain()
    assert report.idle and report.files_in == 0, report.line()
    assert private.latest_snapshot(fresh(tmp_path)).id == latest

    commit_batches(writer, 5, 1)  # the fifth small file: compacted by the commit's own pass
    table = fresh(tmp_path)
    assert len(files_of(table)) == 1 and private.latest_snapshot(table).commit_kind == "COMPACT"


def test_big_files_are_left_alone_and_outputs_roll_at_the_target_size(tmp_path):
    # a 16 kB target: the commits' files are small (< 0.7 x 16 kB); with no open-file cost a
    # bin is full at 2 x 16 kB; outputs roll at ~16 kB on storage (estimated from the inputs'
    # bytes per row, which a file's fixed overhead inflates, so they come out a little smaller)
    target = 16 * 2**10
    options = {"target-file-size": "16 kb", "source.split.open-file-cost": "1 b", "compaction.min.file-num": "3"}
    commit_batches(writer_for(tmp_path, write_only=True, table_options=options), 1, 30, size=120)
    table = fresh(tmp_path)
    before = read(table)
    sizes = [e.file.file_size for e in files_of(table)]
    assert all(s < 0.7 * target for s in sizes), sizes

    report = writer_for(tmp_path, table_options=options).maintain()
    table = fresh(tmp_path)
    assert report.files_in == 30 and 1 < report.files_out < 30, report.line()
    outputs = files_of(table)
    assert multiset(read(table)) == multiset(before)
    assert sum(e.file.row_count for e in outputs) == len(before)
    assert all(e.file.file_source == private.FILE_SOURCE_COMPACT for e in outputs)
    assert all(e.file.file_size < 1.5 * target for e in outputs), [e.file.file_size for e in outputs]

    # a second pass rewrites small files only (bins of 2 x 16 kB of small inputs compress
    # to about one target in this data, so some outputs are still small)
    commit_batches(writer_for(tmp_path, write_only=True, table_options=options), 31, 3, size=120)
    live = {e.file.file_name: e.file.file_size for e in files_of(fresh(tmp_path))}
    again = writer_for(tmp_path, table_options=options).maintain()
    removed = set(live) - {e.file.file_name for e in files_of(fresh(tmp_path))}
    assert removed and all(live[name] < 0.7 * target for name in removed), again.line()
    rows = read(fresh(tmp_path))
    assert sorted(r["_position"] for r in rows) == list(range(33 * 220)), "every row once (220 a batch)"
    assert multiset(before) <= multiset(rows)


def test_a_pass_compacts_at_most_its_byte_budget(tmp_path):
    commit_batches(writer_for(tmp_path, write_only=True), 1, 12)
    table = fresh(tmp_path)
    before = read(table)
    sizes = [e.file.file_size for e in files_of(table)]
    budget = sum(sorted(sizes)[:4])  # four files' worth
    writer = writer_for(tmp_path, compaction_max_bytes=budget)
    passes = []
    while len(passes) < 10:
        report = writer.maintain()
        if report.files_in == 0:
            break
        passes.append(report)
        assert report.bytes_in <= budget, report.line()
        assert multiset(read(fresh(tmp_path))) == multiset(before)
    assert passes[0].buckets_waiting == 1 and "more waiting" in passes[0].line()
    assert len(passes) > 1 and len(files_of(fresh(tmp_path))) < 5


def test_a_commit_between_planning_and_committing_keeps_every_row_once(tmp_path):
    commit_batches(writer_for(tmp_path, write_only=True), 1, 6)
    table = fresh(tmp_path)
    planned = private.latest_snapshot(table)
    options = append_compaction.AppendCompactionOptions()
    units, _ = append_compaction.plan(table, live_files(table, planned), options)
    assert len(units) == 1 and len(units[0].inputs) == 6
    append_compaction.compact_unit(table, units[0], options.target_file_size)

    racing = writer_for(tmp_path, write_only=True)
    commit_batches(racing, 7, 2)  # lands between plan and commit
    expected = read(fresh(tmp_path))
    own = private.latest_snapshot(table)
    added = [private.new_entry(table, 0, (), 0, -1, m) for m in units[0].outputs]
    snapshot = private.commit_compact(table, racing.commit_user, own.commit_identifier, own.properties, planned,
                                      units[0].inputs, added, rewrite_manifests=False)
    assert snapshot.id == own.id + 1 and snapshot.commit_kind == "COMPACT"
    table = fresh(tmp_path)
    after = read(table)
    assert multiset(after) == multiset(expected) and len(after) == 8 * ROWS
    assert sorted(r["_position"] for r in after) == list(range(8 * ROWS)), "every row exactly once"
    assert len(files_of(table)) == 3  # the two racing commits' files and one output

    # a second compactor with the same plan is refused: its inputs are gone
    refused = append_compaction.run(table, racing.commit_user, own, planned, live_files(table, planned), options, 30)
    assert refused.snapshot is None and "already removed" in refused.refused
    assert all(not any(Path(p).exists() for m in u.outputs for p in m.collect_files()) for u in refused.units)
    assert multiset(read(fresh(tmp_path))) == multiset(expected)


def test_the_table_reads_after_expiration_deletes_the_compacted_inputs(tmp_path):
    options = {"snapshot.num-retained.min": "2", "snapshot.time-retained": "1 ms"}
    writer = writer_for(tmp_path, table_options=options)
    commit_batches(writer, 1, 17)
    table = fresh(tmp_path)
    rows = read(table)
    assert [r["_position"] for r in rows] == list(range(17 * ROWS))
    earliest, latest = private.earliest_snapshot_id(table), private.latest_snapshot(table).id
    assert latest - earliest + 1 == 2
    on_disk = {p.name for p in Path(table.table_path).glob("bucket-*/*.parquet")}
    reachable = {e.file.file_name for sid in range(earliest, latest + 1)
                 for e in private.live_entries(table, private.snapshot_by_id(table, sid))}
    assert on_disk == reachable, "compacted inputs no retained snapshot reaches are deleted"
    assert len(on_disk) < 17
    for sid in range(earliest, latest + 1):
        read(table, sid)
    assert writer.last_checkpoint().batch_id == 17


def test_fixed_bucket_append_tables_compact_per_bucket_in_order(tmp_path):
    options = {"bucket": "2", "bucket-key": "id"}
    commit_batches(writer_for(tmp_path, write_only=True, table_options=options), 1, 8)
    table = fresh(tmp_path)
    before = read(table)
    assert {e.bucket for e in files_of(table)} == {0, 1}
    report = writer_for(tmp_path, table_options=options).maintain()
    table = fresh(tmp_path)
    assert report.buckets == 2, report.line()
    assert multiset(read(table)) == multiset(before)
    for (_, bucket), entries in live_files(table, private.latest_snapshot(table)).items():
        assert len(entries) <= 4, bucket
        positions = [r["_position"] for e in entries for r in private.read_data_file(table, e).to_pylist()]
        assert positions == sorted(positions), f"bucket {bucket} keeps its order"


def test_options_are_paimons_and_checked():
    defaults = append_compaction.AppendCompactionOptions.of({})
    assert (defaults.min_file_num, defaults.target_file_size, defaults.small_file_size, defaults.open_file_cost) == (
        5, 256 * 2**20, int(0.7 * 256 * 2**20), 4 * 2**20)
    given = append_compaction.AppendCompactionOptions.of(
        {"compaction.min.file-num": "8", "target-file-size": "64 mb", "compaction.small-file-ratio": "0.5"}, 7)
    assert (given.min_file_num, given.target_file_size, given.small_file_size, given.max_bytes_per_pass) == (
        8, 64 * 2**20, 32 * 2**20, 7)
    assert append_compaction.AppendCompactionOptions.of({"deletion-vectors.enabled": "true"}).disabled_by
    for bad in ({"compaction.min.file-num": "0"}, {"target-file-size": "lots"}, {"compaction.small-file-ratio": "2"}):
        with pytest.raises(ValueError, match="not valid"):
            append_compaction.AppendCompactionOptions.of(bad)


def test_written_outputs_hold_the_inputs_rows_in_order(tmp_path):
    commit_batches(writer_for(tmp_path, write_only=True), 1, 5)
    table = fresh(tmp_path)
    entries = append_compaction.in_order(files_of(table))
    rows = pa.concat_tables([private.read_data_file(table, e) for e in entries])
    unit = append_compaction.AppendUnit((), 0, entries, [])
    append_compaction.compact_unit(table, unit, target_file_size=2 * 2**10)
    assert len(unit.outputs) > 1, "rolled at ~2 kB"
    written = pa.concat_tables([private.read_data_file(table, private.new_entry(table, 0, (), 0, -1, m))
                                for m in unit.outputs])
    assert written.equals(rows)
    private.delete_written(table, (), 0, unit.outputs)
