"""The shared commit path: data files written per poll group, one commit per window, and
what the committer does with parts another commit already covered."""

import pickle
import subprocess
import sys

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from pyiceberg.catalog import load_catalog

from beam_pixels.changes import ChangeBatch, Op, op_counts
from beam_pixels.checkpoint import Checkpoint
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.committing import WriteChanges, _KeyByTable, _PreparedPart, _TableCommitter
from beam_pixels.sinks.iceberg import IcebergTableWriter

SCHEMA = SourceSchema.parse("id:BIGINT,name:STRING", ["id"])


def _properties(tmp_path):
    return {"type": "sql", "warehouse": f"file://{tmp_path}/warehouse"}


def _batch(group, ids, start=0):
    return ChangeBatch.from_changes(
        SCHEMA, [(Op.INSERT, None, {"id": i, "name": f"n{i}"}) for i in ids], poll_group=group, start_position=start
    )


def test_each_poll_group_writes_its_own_data_files_and_one_commit_adds_them_all(tmp_path):
    batches = [_batch(0, range(0, 10)), _batch(1, range(10, 20)), _batch(2, range(20, 30)), _batch(1, range(30, 35), 10)]
    writer = IcebergTableWriter(SCHEMA, "db.orders", _properties(tmp_path))

    p = beam.Pipeline(runner="FnApiRunner")
    _ = p | beam.Create(batches) | WriteChanges(writer)
    result = p.run()
    result.wait_until_finish()

    writes = result.metrics().query(MetricsFilter().with_name("write_data_files_ms"))["distributions"]
    assert sum(d.committed.count for d in writes) == 3  # one data-file write per poll group
    catalog = load_catalog("pixels", type="sql", uri=f"sqlite:///{tmp_path}/warehouse/catalog.db")
    table = catalog.load_table("db.orders")
    assert len(table.snapshots()) == 1  # ... and one commit for the window
    assert len(list(table.scan().plan_files())) == 3
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == list(range(35))
    assert Checkpoint.from_properties(table.current_snapshot().summary.additional_properties) == Checkpoint(
        1, {0: 10, 1: 15, 2: 10}
    )


def _part(group, first, end):
    """A prepared part of ``end - first`` inserts at positions ``[first, end)``."""
    records = pa.Table.from_batches([_batch(group, range(first, end), first).records])
    return _PreparedPart(group, first, end, op_counts(records), skipped=0, handle=None)


def test_the_committer_drops_parts_the_table_holds_and_refuses_half_committed_ones(tmp_path):
    committer = _TableCommitter(IcebergTableWriter(SCHEMA, "db.orders", _properties(tmp_path)), retries=0)
    last = Checkpoint(4, {0: 10, 1: 5})
    fresh, covered = _part(0, 10, 20), _part(1, 0, 5)
    assert committer._not_yet_committed([fresh, covered], last) == [fresh]
    with pytest.raises(RuntimeError, match="poll group 1 positions 3..7"):
        committer._not_yet_committed([_part(1, 3, 8)], last)


class _AwayMidCommit(IcebergTableWriter):
    """Applies its first commit, then fails it as a catalog gone away would (the committer cannot
    tell whether it was applied); counts its reads of the table's checkpoint."""

    reads = 0
    gone_away = False

    def last_checkpoint(self):
        self.reads += 1
        return super().last_checkpoint()

    def commit_prepared(self, parts, checkpoint):
        snapshot_id = super().commit_prepared(parts, checkpoint)
        if not self.gone_away:
            self.gone_away = True
            raise ConnectionError("the catalog went away mid-commit")
        return snapshot_id


def test_a_commit_builds_on_the_checkpoint_read_before_preparing_and_its_retry_reads_the_table_again(tmp_path):
    writer = _AwayMidCommit(SCHEMA, "db.orders", _properties(tmp_path))
    writer.open()
    committer = _TableCommitter(writer, retries=0)
    last = writer.last_checkpoint()
    records = pa.Table.from_batches([_batch(0, range(10)).records])
    part = _PreparedPart(0, 0, 10, op_counts(records), skipped=0, handle=writer.prepare(records))

    results = list(committer.commit([part], last))

    # The first try committed on ``last`` without reading the table again; the retry after the
    # catalog came back read it and found the commit applied, so nothing was committed twice.
    assert writer.reads == 2
    assert results == []
    assert committer.checkpoint == Checkpoint(1, {0: 10})
    table = load_catalog("pixels", type="sql", uri=f"sqlite:///{tmp_path}/warehouse/catalog.db").load_table("db.orders")
    assert len(table.snapshots()) == 1
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == list(range(10))
    writer.close()


def test_the_keying_step_loads_the_sinks_module_when_set_up_with_the_poller():
    """On a fresh SDK worker (the cluster's worker pool) the steps before the grouping are set up
    as the job starts: setting up the keying step imports the sink's module (pyiceberg's
    writer), which the write step would otherwise import at the first window."""
    step = pickle.dumps(_KeyByTable([IcebergTableWriter.__module__]))
    probe = (
        "import pickle, sys; step = pickle.loads(sys.stdin.buffer.read()); "
        f"before = {IcebergTableWriter.__module__!r} in sys.modules; step.setup(); "
        f"print(before, {IcebergTableWriter.__module__!r} in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], input=step, capture_output=True, timeout=120, check=True)
    assert done.stdout.split() == [b"False", b"True"], done.stderr.decode()
    batch = _batch(0, [1, 2])
    assert list(_KeyByTable([]).process(batch)) == [("", batch)]
