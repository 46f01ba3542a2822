"""Partitioned Paimon tables (``paimon.partition.keys``): rows that move across partitions,
deletes, compaction and expiry per partition, the files a commit writes, pruned reads, tables
read exactly by pypaimon and by Paimon's Java reader, and a run killed with SIGKILL and restarted."""

import datetime
import random
import signal
import time
from pathlib import Path

import pyarrow as pa
import pytest
from pypaimon import CatalogFactory, Schema
from pypaimon.schema.data_types import AtomicType, DataField

import paimon_java_reader as java
from app_helpers import Run, run_cli_to_end, write_properties
from beam_pixels.changes import ChangeBatch, Op, concat_records
from beam_pixels.config import ConfigError, PixelsConfig
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.committing import SinkConfigurationError
from beam_pixels.sinks.paimon import PaimonTableWriter
from beam_pixels.sinks.paimon import _pypaimon_private as private
from beam_pixels.sinks.paimon.bucketing import bucket_ids
from beam_pixels.sinks.paimon.maintenance import live_files
from beam_pixels.testing import mock_data
from beam_pixels.testing.mock_server import MockPixelsServer
from test_paimon_maintenance import ORDERS, catalog_properties, commit_batches, reachable_data_files
from test_paimon_maintenance import expected as key_ordered
from test_paimon_maintenance import read_rows as read_key_ordered_rows

SPEC = "id:BIGINT, day:DATE, region:STRING, qty:INT, note:STRING"
EVENTS = SourceSchema.parse(SPEC, primary_key=["id"])
FIRST_DAY = datetime.date(2026, 12, 1)
REGIONS = ("eu", "us")


def open_table(properties: dict[str, str], name: str):
    return CatalogFactory.create({k: v for k, v in properties.items() if k != "type"}).get_table(name)


def read_rows(table, snapshot_id: int | None = None, predicate=None) -> tuple[list[dict], list]:
    """pypaimon's rows (of ``snapshot_id``, else the latest; only those ``predicate(builder)``
    selects) sorted by id, and the splits it read them from."""
    if snapshot_id is not None:
        table = table.copy({"scan.snapshot-id": str(snapshot_id)})
    builder = table.new_read_builder()
    if predicate is not None:
        builder = builder.with_filter(predicate(builder.new_predicate_builder()))
    splits = builder.new_scan().plan().splits()
    rows = builder.new_read().to_arrow(splits)
    return sorted(rows.select(EVENTS.names).to_pylist(), key=lambda r: r["id"]), splits


def step(state: dict, batch: int, size: int = 60, keys: int = 150) -> list:
    """Changes under a moving clock (``day`` advances every 4 batches): new rows of today, updates
    that move a row to today or to the other region, updates in place, deletes; updates ``state``."""
    rng = random.Random(batch)
    today = FIRST_DAY + datetime.timedelta(days=batch // 4)
    changes = []
    for _ in range(size):
        key = rng.randrange(keys)
        row = state.get(key)
        roll = rng.random()
        if row is None:
            after = {"id": key, "day": today, "region": rng.choice(REGIONS), "qty": batch, "note": f"in {batch}"}
            changes.append((Op.INSERT, None, after))
            state[key] = after
            continue
        if roll < 0.15:
            changes.append((Op.DELETE, row, None))
            del state[key]
            continue
        if roll < 0.45:
            after = dict(row, day=today, qty=row["qty"] + 1, note=f"moved {batch}")
        elif roll < 0.65:
            after = dict(row, region=REGIONS[row["region"] == "eu"], note=f"region {batch}")
        else:
            after = dict(row, qty=row["qty"] + 1, note=f"up {batch}")
        changes.append((Op.UPDATE, row, after))
        state[key] = after
    return changes


def commit(writer: PaimonTableWriter, schema: SourceSchema, changes: list) -> None:
    """Commit ``changes`` as the committer does (maintenance included)."""
    checkpoint = writer.last_checkpoint()
    records = concat_records([ChangeBatch.from_changes(schema, changes, poll_group=0,
                                                       start_position=checkpoint.next_position(0))], schema)
    writer.commit(records, checkpoint.advance(records))


def expected(state: dict) -> list[dict]:
    return [state[k] for k in sorted(state)]


def partition_of(row: dict, keys: tuple) -> tuple:
    return tuple(row[k] for k in keys)


def files_by_partition(table) -> dict[tuple, list]:
    found = {}
    for (partition, _), entries in live_files(table, private.latest_snapshot(table)).items():
        found.setdefault(partition, []).extend(entries)
    return found


@pytest.mark.parametrize("keys", [("day",), ("day", "region")], ids=["day", "day-region"])
def test_updates_move_rows_across_partitions_exactly(tmp_path, keys):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(EVENTS, "events", properties, bucket=2, compaction_trigger=3, partition_keys=keys,
                               table_options={"snapshot.num-retained.min": "1000"})
    writer.open()
    state, history, moved, deleted_in = {}, {}, 0, set()
    for batch in range(1, 33):
        before = dict(state)
        commit(writer, EVENTS, step(state, batch))
        moved += sum(1 for k, row in state.items() if k in before and partition_of(before[k], keys)
                     != partition_of(row, keys))
        table = open_table(properties, "pixels.events")
        rows, splits = read_rows(table)
        assert rows == expected(state), f"after batch {batch}"
        assert all(split.raw_convertible for split in splits), "readers never merge sorted runs"
        history[private.latest_snapshot(table).id] = expected(state)
        deleted_in |= {p for p, _ in private.deletion_vector_index(table, private.latest_snapshot(table))}
    table = open_table(properties, "pixels.events")
    assert table.partition_keys == list(keys)
    assert table.table_schema.primary_keys == ["id", *keys], "Paimon's rule: the key holds the partition keys"
    assert moved > 200, "updates moved rows to other partitions"
    partitions = files_by_partition(table)
    assert len(partitions) >= 6 * len(keys), partitions.keys()
    for partition, entries in partitions.items():  # each row lives in the partition its columns name
        for entry in entries:
            assert private.entry_partition(entry) == partition
    for row in expected(state):
        assert partition_of(row, keys) in partitions
    assert len(deleted_in) >= 6, "moved and deleted rows marked in their old partitions' deletion vectors"
    snapshots = [private.snapshot_by_id(table, i) for i in range(1, private.latest_snapshot(table).id + 1)]
    assert any(s.commit_kind == "COMPACT" for s in snapshots), "compaction ran per partition"
    for snapshot_id, rows in history.items():
        assert read_rows(table, snapshot_id)[0] == rows, f"snapshot {snapshot_id}"

    java.require()
    reads = java.read_many(properties["warehouse"], [("pixels.events", {})] + [
        ("pixels.events", {"scan.snapshot-id": str(i)}) for i in sorted(history)[::8]])
    assert reads[0].sorted_rows(["id"], EVENTS.names) == expected(state)
    for read in reads[1:]:
        assert read.sorted_rows(["id"], EVENTS.names) == history[read.snapshot], f"snapshot {read.snapshot}"


def test_a_filtered_read_touches_only_its_partitions(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(EVENTS, "events", properties, bucket=2, partition_keys=("region", "day"))
    writer.open()
    state = {}
    for batch in range(1, 13):
        commit(writer, EVENTS, step(state, batch))
    table = open_table(properties, "pixels.events")
    everything, all_splits = read_rows(table)
    day = FIRST_DAY + datetime.timedelta(days=1)
    rows, splits = read_rows(table, predicate=lambda p: p.and_predicates([p.equal("region", "eu"), p.equal("day", day)]))
    assert rows == [r for r in expected(state) if (r["region"], r["day"]) == ("eu", day)] and rows
    assert {tuple(s.partition.values) for s in splits} == {("eu", day)}
    assert len(splits) < len(all_splits) / 4
    rows, splits = read_rows(table, predicate=lambda p: p.equal("region", "us"))
    assert rows == [r for r in expected(state) if r["region"] == "us"]
    assert {s.partition.values[0] for s in splits} == {"us"}

    java.require()
    whole, eu = java.read_many(properties["warehouse"], [("pixels.events", {}), ("pixels.events", {"where.region": "eu"})])
    assert whole.sorted_rows(["id"], EVENTS.names) == everything
    assert eu.sorted_rows(["id"], EVENTS.names) == [r for r in expected(state) if r["region"] == "eu"]
    assert eu.splits < whole.splits, "Java's scan pruned the other region's partitions"


def test_maintenance_compacts_and_expires_per_partition_within_its_budget(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(EVENTS, "events", properties, bucket=2, compaction_trigger=2, compaction_max_bytes=1,
                               partition_keys=("day",), table_options={
                                   "snapshot.num-retained.min": "2", "snapshot.num-retained.max": "3",
                                   "snapshot.time-retained": "1 ms", "num-levels": "4"})
    writer.open()
    state, reports, compacted = {}, [], set()
    for batch in range(1, 29):
        commit(writer, EVENTS, step(state, batch))
        report = writer.maintain()  # None: nothing to do since the last pass
        assert report is None or not report.errors, report
        reports += [report] if report else []
        table = open_table(properties, "pixels.events")
        if report and report.buckets:
            snapshot = private.snapshot_by_id(table, report.snapshot_id)
            compacted |= {private.entry_partition(e) for e in private.delta_entries(table, snapshot)}
        assert read_rows(table)[0] == expected(state), f"after batch {batch}"
    assert max(r.buckets for r in reports) == 1, "a pass over its byte budget compacts one bucket"
    assert any(r.buckets_waiting for r in reports), "the rest waits for later passes"
    assert len(compacted) >= 3, "passes compacted buckets of several partitions"
    assert sum(r.snapshots_expired for r in reports) > 20
    table = open_table(properties, "pixels.events")
    on_disk = {p.name for p in Path(table.table_path).glob("day=*/bucket-*/*.parquet")}
    assert on_disk == reachable_data_files(table), "expiry deleted the files of every partition it no longer needs"


@pytest.mark.parametrize("clock", ["updates-move-to-today", "updates-in-place"])
def test_files_per_commit_are_bounded_by_the_partitions_and_buckets_it_touches(tmp_path, clock):
    """A commit writes one data file per (partition, bucket) its after-images fall in, and one
    deletion-vector index file per (partition, bucket) whose stored rows it deletes. Under a
    moving clock whose updates move rows to today (the soak), that is today's buckets; updates
    that leave rows in their old days write in every day they touch."""
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(EVENTS, "events", properties, bucket=4, partition_keys=("day",))
    writer.open()
    state, figures = {}, []
    for batch in range(1, 41):
        changes = step(state, batch, size=400, keys=2000)
        if clock == "updates-move-to-today":
            today = FIRST_DAY + datetime.timedelta(days=batch // 4)
            changes = [(op, b, a if a is None else dict(a, day=today)) for op, b, a in changes]
            state.update({a["id"]: a for _, _, a in changes if a is not None and a["id"] in state})
        commit(writer, EVENTS, changes)
        table = open_table(properties, "pixels.events")
        snapshot = private.own_latest_snapshot(table, writer.commit_user)
        while snapshot.commit_kind != "APPEND":  # past the compactions that followed it
            snapshot = private.snapshot_by_id(table, snapshot.id - 1)
        data = [e for e in private.delta_entries(table, snapshot) if e.kind == 0]
        final = {a["id"]: a for _, _, a in changes if a is not None and state.get(a["id"]) == a}
        survivors = pa.Table.from_pylist(list(final.values())) if final else None
        buckets = bucket_ids(survivors.select(["id"]), ["BIGINT"], 4) if final else []
        touched = {(a["day"],) for a in final.values()}
        assert {(private.entry_partition(e), e.bucket) for e in data} == {
            ((a["day"],), int(b)) for a, b in zip(final.values(), buckets)}, "files only where after-images go"
        assert len(data) <= 4 * len(touched), "one data file per (partition, bucket)"
        before = private.snapshot_by_id(table, snapshot.id - 1)
        old = private.deletion_vector_index(table, before)
        new = private.deletion_vector_index(table, snapshot)
        index_files = sum(1 for k, e in new.items() if [x.index_file.file_name for x in e]
                          != [x.index_file.file_name for x in old.get(k, [])])
        figures.append((len(data), index_files, len(touched), len(files_by_partition(table))))
    assert read_rows(open_table(properties, "pixels.events"))[0] == expected(state)
    data_files, index_files, touched, partitions = (list(column) for column in zip(*figures))
    assert partitions[-1] >= 10
    assert max(index_files) <= 4 * partitions[-1]
    if clock == "updates-move-to-today":
        assert max(data_files) <= 8, "today's buckets, and yesterday's when the clock just moved"
    else:
        assert max(touched) >= 8, "updates reached many old days"
    print(f"{clock}: {partitions[-1]} partitions x 4 buckets; per commit (400 changes): data files max "
          f"{max(data_files)} mean {sum(data_files) / len(data_files):.1f} (days written max {max(touched)}), "
          f"deletion-vector index files max {max(index_files)} mean {sum(index_files) / len(index_files):.1f}")


def test_a_source_key_holding_the_partition_keys_needs_no_deletion_vectors(tmp_path):
    """Paimon's rule met by the source key itself: a table without deletion vectors writes
    ``-D`` rows into the right partition."""
    properties = catalog_properties(tmp_path)
    for name, options in (("merged", {"deletion-vectors.enabled": "false"}), ("vectors", {})):
        writer = PaimonTableWriter(ORDERS, name, properties, bucket=2, compaction_trigger=3,
                                   partition_keys=("region",), table_options=options)
        writer.open()
        state = {}
        commit_batches(writer, state, 1, 15)
        table = open_table(properties, f"pixels.{name}")
        assert table.table_schema.primary_keys == ["region", "id"] and table.partition_keys == ["region"]
        assert read_key_ordered_rows(table) == key_ordered(state), name
        assert set(files_by_partition(table)) == {("eu",), ("us",)}


def test_a_keyless_changelog_is_written_per_partition(tmp_path):
    log = SourceSchema.parse("id:BIGINT, day:DATE, qty:INT")
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(log, "log", properties, partition_keys=("day",),
                               table_options={"compaction.min.file-num": "3"})
    writer.open()
    written = []
    for batch in range(1, 13):
        day = FIRST_DAY + datetime.timedelta(days=batch % 3)
        rows = [{"id": batch * 100 + i, "day": day, "qty": i} for i in range(20)]
        changes = [(Op.INSERT, None, r) for r in rows[:15]] + [(Op.DELETE, r, None) for r in rows[15:]]
        commit(writer, log, changes)
        written += [(r["id"], r["day"], op.name) for op, b, a in changes for r in [a or b]]
    writer.finish_maintenance()
    table = open_table(properties, "pixels.log")
    builder = table.new_read_builder()
    rows = builder.new_read().to_arrow(builder.new_scan().plan().splits()).to_pylist()
    assert sorted((r["id"], r["day"], r["_op"]) for r in rows) == sorted(written)
    partitions = files_by_partition(table)
    assert set(partitions) == {(FIRST_DAY + datetime.timedelta(days=d),) for d in range(3)}
    assert all(len(entries) < 4 for entries in partitions.values()), "small files compacted per partition"
    day = FIRST_DAY + datetime.timedelta(days=1)
    builder = table.new_read_builder()
    builder = builder.with_filter(builder.new_predicate_builder().equal("day", day))
    splits = builder.new_scan().plan().splits()
    assert {tuple(s.partition.values) for s in splits} == {(day,)}
    assert sorted(r["id"] for r in builder.new_read().to_arrow(splits).to_pylist()) == sorted(
        i for i, d, _ in written if d == day)


@pytest.mark.parametrize("options, write_only", [({"deletion-vectors.enabled": "false"}, False), ({}, True)],
                         ids=["no-deletion-vectors", "write-only"])
def test_partition_keys_outside_the_key_need_deletion_vectors(tmp_path, options, write_only):
    writer = PaimonTableWriter(EVENTS, "events", catalog_properties(tmp_path), partition_keys=("day", "region"),
                               table_options=options, write_only=write_only)
    with pytest.raises(SinkConfigurationError) as refused:
        writer.open()
    message = str(refused.value)
    assert "day, region are not in the primary key (id)" in message
    assert ("write-only" if write_only else "deletion-vectors.enabled") in message
    assert "source.primary.key" in message
    with pytest.raises(Exception):
        open_table(catalog_properties(tmp_path), "pixels.events")  # nothing was created


def test_a_null_partition_value_of_a_keyed_table_is_refused_by_name(tmp_path):
    properties = catalog_properties(tmp_path)
    writer = PaimonTableWriter(EVENTS, "events", properties, partition_keys=("day",))
    writer.open()
    row = {"id": 1, "day": None, "region": "eu", "qty": 1, "note": "x"}
    with pytest.raises(ValueError, match=r"1 row\(s\) of this batch have a NULL day, a partition key"):
        commit(writer, EVENTS, [(Op.INSERT, None, row)])
    assert private.latest_snapshot(open_table(properties, "pixels.events")) is None, "nothing was committed"


def test_partition_keys_must_be_columns():
    with pytest.raises(ConfigError, match=r"paimon\.partition\.keys.*'days' is not a column of source\.schema"):
        PixelsConfig.from_properties({"source.schema": SPEC, "source.primary.key": "id",
                                      "paimon.partition.keys": "days"})
    config = PixelsConfig.from_properties({"source.schema": SPEC, "paimon.partition.keys": "day, region"})
    assert config.paimon_partition_keys == ("day", "region")


def _create(properties, name: str, partition_keys: list[str], primary_keys: list[str], options: dict) -> None:
    fields = [DataField(i, c.name, AtomicType(c.type.to_paimon(), c.name not in primary_keys))
              for i, c in enumerate(EVENTS.columns)]
    fields.append(DataField(len(fields), "_rowkind", AtomicType("STRING", False)))
    catalog = CatalogFactory.create({k: v for k, v in properties.items() if k != "type"})
    catalog.create_database("pixels", True)
    catalog.create_table(f"pixels.{name}", Schema(fields, partition_keys=partition_keys, primary_keys=primary_keys,
                                                  options={"rowkind.field": "_rowkind", **options}), False)


def test_an_existing_partitioned_table_is_written_as_it_is(tmp_path):
    properties = catalog_properties(tmp_path)
    _create(properties, "events", ["region"], ["id", "region"],
            {"bucket": "3", "deletion-vectors.enabled": "true", "num-levels": "5"})
    writer = PaimonTableWriter(EVENTS, "events", properties, partition_keys=("day",))  # the table's own win
    writer.open()
    state = {}
    for batch in range(1, 9):
        commit(writer, EVENTS, step(state, batch))
    table = open_table(properties, "pixels.events")
    assert table.partition_keys == ["region"]
    assert read_rows(table)[0] == expected(state)
    assert set(files_by_partition(table)) == {("eu",), ("us",)}

    _create(properties, "upserts", ["day"], ["id"], {"bucket": "-1"})  # Paimon's cross-partition update mode
    with pytest.raises(SinkConfigurationError, match=r"lacks its partition keys \(day\).*cross-partition update"):
        PaimonTableWriter(EVENTS, "upserts", properties).open()


# -- a run killed with SIGKILL and restarted --------------------------------------------------


def _history(batches: int) -> list:
    """:func:`step`'s changes as the server's events (rows as tuples in column order)."""
    state, events = {}, []
    for batch in range(1, batches + 1):
        events += [(op, b and tuple(b.values()), a and tuple(a.values())) for op, b, a in step(state, batch, 100, 300)]
    return events


def test_a_killed_run_restarts_and_ends_exact(tmp_path):
    history = _history(30)
    server = MockPixelsServer(EVENTS, batch_size=40)
    server.load_cdc(history[:1500])
    server.start()
    properties = write_properties(tmp_path, "paimon", {
        "source.schema": SPEC, "source.primary.key": "id", "paimon.partition.keys": "day",
        "paimon.bucket": "2", "checkpoint.interval.ms": "6000", "source.stop.after.idle.ms": "7000"})
    args = ["run", "--config", str(properties), "--set", f"pixels.server.port={server.port}"]
    runs = [Run.cli(tmp_path, *args)]
    try:
        runs[0].wait_for(r"committed batch 1 ", timeout=120)
        server.load_cdc(history[1500:])
        deadline = time.monotonic() + 60
        # Everything polled and confirmed by a later poll (so journaled, not in flight), not all committed.
        while (server.pending() or server.unconfirmed()
               or len(server.handed_out()) <= sum(c.changes for c in runs[0].commits())):
            assert time.monotonic() < deadline, runs[0].describe()
            time.sleep(0.02)
        runs[0].proc.send_signal(signal.SIGKILL)
        runs[0].proc.wait(30)
        committed = sum(c.changes for c in runs[0].commits())
        assert committed < 3000, "the kill came before the last commit"
        runs.append(Run.cli(tmp_path, *args))
        run_cli_to_end(runs[1], timeout=180)
        assert "replaying" in runs[1].output, "the restart replays what the killed run polled but never committed"
    finally:
        for run in runs:
            run.kill()
        server.stop()
    assert len(server.handed_out()) == 3000
    final = mock_data.final_state(EVENTS, history)
    wanted = sorted((dict(zip(EVENTS.names, row)) for row in final.values()), key=lambda r: r["id"])
    warehouse = tmp_path / "warehouse" / "paimon"
    table = open_table({"warehouse": str(warehouse)}, "pixels.paimon_orders")
    assert table.partition_keys == ["day"]
    assert read_rows(table)[0] == wanted
    assert len(files_by_partition(table)) >= 6
    java.require()
    assert java.read(warehouse, "pixels.paimon_orders").sorted_rows(["id"], EVENTS.names) == wanted
