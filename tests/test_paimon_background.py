"""The committer's maintenance passes in the background: one at a time per table, the last
request always followed by a pass, and commits that race them leave exact tables whose
checkpoint never goes back."""

import threading
import time

import pytest

from beam_pixels.changes import ChangeBatch, concat_records
from beam_pixels.sinks.paimon import PaimonTableWriter, background
from beam_pixels.sinks.paimon import _pypaimon_private as private
from test_paimon_deletion_vectors import assert_level_invariants
from test_paimon_maintenance import ORDERS, catalog_properties, expected, open_table, read_rows, step


def test_passes_run_one_at_a_time_and_requests_meanwhile_coalesce_into_one_more():
    running, ran = threading.Event(), []
    release = threading.Event()

    def slow(name):
        def work():
            running.set()
            release.wait(5)
            ran.append(name)
            return name
        return work

    background.start("t", slow("first"))
    assert running.wait(5)
    background.start("t", slow("second"))  # waits for the first
    background.start("t", slow("third"))  # replaces the second: only the latest request runs
    assert ran == []
    release.set()
    assert background.wait(5)
    assert ran == ["first", "third"]
    assert background.finished("t") == ["first", "third"]
    assert background.finished("t") == []


def test_a_failing_pass_is_logged_and_the_next_one_runs(caplog):
    def failing():
        raise RuntimeError("disk full")

    background.start("u", failing)
    assert background.wait(5)
    background.start("u", lambda: "ok")
    assert background.wait(5)
    assert background.finished("u") == ["ok"]
    assert "maintenance pass failed" in caplog.text and "disk full" in caplog.text


@pytest.mark.parametrize("deletion_vectors", ["true", "false"])
def test_commits_racing_background_passes_stay_exact_and_keep_their_checkpoint(tmp_path, deletion_vectors):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(ORDERS, "orders", properties, bucket=2, compaction_trigger=2, table_options={
        "snapshot.num-retained.min": "1000", "deletion-vectors.enabled": deletion_vectors,
        "compaction.delete-ratio-threshold": "0.1"})
    writer.open()
    state, history = {}, {}
    for batch in range(1, 31):
        checkpoint = writer.last_checkpoint()
        assert checkpoint.batch_id == batch - 1, "a compaction never hands the table an older checkpoint"
        records = concat_records([ChangeBatch.from_changes(ORDERS, step(state, batch), poll_group=0,
                                                           start_position=checkpoint.next_position(0))], ORDERS)
        snapshot_id = writer.commit_prepared([writer.prepare(records)], checkpoint.advance(records))
        history[snapshot_id] = expected(state)
        writer.after_commit()  # the next commit goes on while this pass runs
        time.sleep(0.01 * (batch % 3))
    writer.finish_maintenance()
    table = open_table(properties)
    kinds = [private.snapshot_by_id(table, s).commit_kind for s in range(1, private.latest_snapshot(table).id + 1)]
    assert "COMPACT" in kinds
    assert read_rows(table) == expected(state)
    assert writer.last_checkpoint().batch_id == 30
    for snapshot_id, rows in history.items():
        assert read_rows(table, snapshot_id) == rows, f"snapshot {snapshot_id}"
    if deletion_vectors == "true":
        assert_level_invariants(table)
