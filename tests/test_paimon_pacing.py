"""Rewrites that reclaim deleted rows of a deletion-vector table go at the pace of its
deletions (beam_pixels.sinks.paimon.pacing): a cluster of files past their delete ratio is
spread over later passes instead of being rewritten at once, and the table stays exact."""

import pyarrow as pa
import pyarrow.compute as pc

from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.sinks.paimon import PaimonTableWriter, dv_compaction, pacing
from beam_pixels.sinks.paimon import writer as writer_module
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.maintenance import live_files
from test_paimon_deletion_vectors import COUNTERS
from test_paimon_maintenance import catalog_properties, open_table


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_credit_follows_the_deletions_is_capped_and_grows_slowly_when_idle():
    clock = Clock()
    pacer = pacing.ReclaimPacer(clock)
    assert pacer.allows(), "a new pacer starts with a full credit"
    pacer.spend(pacing.MAX_CREDIT_ROWS + 10_000)  # one rewrite may take it below zero
    assert not pacer.allows()

    earned = pacing.PACE * 1_000 / 0.5  # 1,000 rows deleted at a ratio of 0.5: PACE x 2,000 rows of rewrite
    pacer.earn(1_000, ratio=0.5)
    assert not pacer.allows(), f"{earned} rows earned do not repay 10,000"
    pacer.earn(1_000 + 4_000, ratio=0.5)  # the running count: 4,000 more
    assert pacer.allows()
    pacer.spend(5 * earned - 10_000)
    assert not pacer.allows(), "exactly the deletions' worth was earned, no more"

    pacer.earn(10**9, ratio=0.5)  # a burst of deletions earns at most the cap
    pacer.spend(pacing.MAX_CREDIT_ROWS)
    assert not pacer.allows()

    pacer.earn(3, ratio=0.5)  # a rebuilt table state counts from 0 again: 3 new rows, not a negative count
    assert pacer.allows()
    pacer.spend(1_000)
    clock.now += 1_000 / pacing.IDLE_ROWS_PER_S - 10  # no deletions: the credit grows with time only
    pacer.earn(3, ratio=0.5)
    assert not pacer.allows()
    clock.now += 20
    pacer.earn(3, ratio=0.5)
    assert pacer.allows()


def test_a_cluster_of_files_past_their_delete_ratio_is_rewritten_over_later_passes(tmp_path, monkeypatch):
    monkeypatch.setattr(dv_compaction, "MIN_FILE_ROWS", 50)  # a bulk load of 800 rows in files of 200
    monkeypatch.setattr(writer_module, "MIN_FILE_ROWS", 50)
    monkeypatch.setattr(pacing, "IDLE_ROWS_PER_S", 0)
    monkeypatch.setattr(pacing, "MAX_CREDIT_ROWS", 1)  # a credit of 1 row: one rewrite, then a debt to repay
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(COUNTERS, "counters", properties, bucket=1,
                               table_options={"compaction.delete-ratio-threshold": "0.2"})
    writer.open()
    table_rows = {k: {"id": k, "qty": 0, "note": f"n{k}"} for k in range(800)}

    def commit(changes):
        checkpoint = writer.last_checkpoint()
        records = concat_records([ChangeBatch.from_changes(COUNTERS, changes, poll_group=0,
                                                           start_position=checkpoint.next_position(0))], COUNTERS)
        writer.commit_prepared([writer.prepare(records)], checkpoint.advance(records))
        return writer.maintain()

    def files():
        table = open_table(properties, "pixels.counters")
        return {e.file.file_name: e.file.row_count
                for e in live_files(table, private.latest_snapshot(table))[((), 0)]}

    def read_ids():
        table = open_table(properties, "pixels.counters")
        builder = table.new_read_builder()
        read = builder.new_read().to_arrow(builder.new_scan().plan().splits())
        return sorted(pc.cast(read.column("id"), pa.int64()).to_pylist())

    commit([(Op.INSERT, None, r) for r in table_rows.values()])
    loaded = files()
    assert sorted(loaded.values()) == [200] * 4, loaded
    # 40% of every file deleted at once: each is past its threshold (0.2 x [0.5, 1.5) < 0.3)
    deleted = [k for k in range(800) if k % 5 < 2]
    report = commit([(Op.DELETE, table_rows.pop(k), None) for k in deleted])
    rewritten = set(loaded) - set(files())
    assert len(rewritten) == 1, "a credit of 1 row allows one rewrite (of 200 rows)"
    assert report.reclaims_deferred == 3 and "3 rewrite(s) for deleted rows paced to later passes" in report.line()
    assert read_ids() == sorted(table_rows)

    # a commit that deletes nothing earns nothing: the pass leaves the other three waiting
    table_rows[900] = {"id": 900, "qty": 0, "note": "new"}
    report = commit([(Op.INSERT, None, table_rows[900])])
    assert len(set(loaded) - set(files())) == 1 and report.reclaims_deferred == 3 and report.files_in == 0

    # deleted rows earn credit: 40 more at a ratio of 0.2 earn 1.2 x 40 / 0.2 = 240 rows, which repay the
    # debt of the first rewrite (199 rows) and allow one more
    more = [k for k in sorted(table_rows) if k < 800][:40]
    report = commit([(Op.DELETE, table_rows.pop(k), None) for k in more])
    assert pacing.PACE * 40 / 0.2 > 199
    # four due now (the load's three left and the first rewrite's file, keys 0-199, 40 of whose 120 rows
    # are deleted now): one rewritten, three wait
    assert report.files_in == 1 and report.reclaims_deferred == 3
    assert read_ids() == sorted(table_rows)

    # then time earns credit (a table that stopped changing is still reclaimed): one file a pass
    monkeypatch.setattr(pacing, "IDLE_ROWS_PER_S", 10**9)
    while set(loaded) & set(files()):
        before = set(loaded) & set(files())
        writer.maintain()
        assert len(before - set(files())) == 1, "at most one rewrite a pass with a credit of 1 row"
        assert read_ids() == sorted(table_rows)
    assert sum(files().values()) == len(table_rows), "no deleted row left stored"
