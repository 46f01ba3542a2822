"""Table maintenance against real tables: compaction, snapshot expiry, file deletion, a
SIGKILL in the middle of a pass; pyiceberg and DuckDB must read the right rows after each."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from pyiceberg.catalog import load_catalog
from pyiceberg.manifest import DataFileContent
from pyiceberg.schema import Schema
from pyiceberg.types import IntegerType, LongType, NestedField, StringType

from beam_pixels import cli
from beam_pixels.sinks.committing import SinkConfigurationError
from beam_pixels.sinks.iceberg import IcebergTableWriter, WriteToIceberg, files, maintenance
from beam_pixels.sinks.iceberg.maintenance import Settings
from beam_pixels.sinks.iceberg.manifests import MANIFESTS, ManifestCache
from iceberg_stream import ORDERS, CountingFileIO, Stream, commit, duckdb_table_rows, pyiceberg_rows, sql_catalog

TABLE = "db.orders"
# Compact anything with deletes (the whole table in one pass), merge manifests early, delete orphans at once.
EAGER = Settings(interval_ms=1, deleted_percent=1, small_file_mb=1, orphan_age_ms=0, max_manifests=4, max_compact_percent=100)


def open_writer(tmp_path, settings: Settings = EAGER, **properties: str) -> IcebergTableWriter:
    w = IcebergTableWriter(ORDERS, TABLE, sql_catalog(tmp_path), table_properties=properties, maintenance_settings=settings)
    w.open()
    return w


def files_on_disk(tmp_path) -> set[str]:
    root = tmp_path / "warehouse" / "db" / "orders"
    return {f"file://{p}" for p in root.rglob("*") if p.is_file()}


def referenced(writer: IcebergTableWriter, *, current_only: bool = False) -> set[str]:
    """Every file a retained snapshot (or only the current one) or the metadata references."""
    writer.last_checkpoint()
    table = writer._table
    out = {table.metadata_location, *(log.metadata_file for log in table.metadata.metadata_log)}
    for snapshot in [table.current_snapshot()] if current_only else table.metadata.snapshots:
        out.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            out.add(manifest.manifest_path)
            out |= {e.data_file.file_path for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True)}
    return out


def current_files(writer: IcebergTableWriter) -> tuple[int, int]:
    """Data and delete files of the current snapshot."""
    writer.last_checkpoint()
    data = deletes = 0
    for manifest in writer._table.current_snapshot().manifests(writer._table.io):
        for entry in manifest.fetch_manifest_entry(writer._table.io, discard_deleted=True):
            if entry.data_file.content == DataFileContent.DATA:
                data += 1
            else:
                deletes += 1
    return data, deletes


def churn(writer: IcebergTableWriter, stream: Stream, commits: int, changes: int = 150) -> None:
    for _ in range(commits):
        commit(writer, [stream.batch(stream.changes(changes))])


def test_compaction_folds_deletes_and_keeps_the_rows_and_later_commits_right(tmp_path):
    writer = open_writer(tmp_path)
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(500, inserts=1.0))])
    churn(writer, stream, 6)
    data_before, deletes_before = current_files(writer)
    assert deletes_before > 0

    report = writer.maintain_now()
    data_after, deletes_after = current_files(writer)
    assert report.files_compacted > 0
    assert deletes_after == 0 and data_after < data_before
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    before = writer.last_checkpoint()

    churn(writer, stream, 3)  # the key index follows the compacted files
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    assert writer.last_checkpoint().batch_id == before.batch_id + 3
    writer.close()


def test_compaction_by_another_writer_rebuilds_the_index(tmp_path):
    writer = open_writer(tmp_path, Settings(enabled=False))
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(400, inserts=1.0))])
    churn(writer, stream, 4)
    other = open_writer(tmp_path)
    other.maintain_now()  # compacts: the positions this writer's index holds are gone
    other.close()
    churn(writer, stream, 3)
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    writer.close()


def test_expiry_keeps_retention_deletes_what_only_expired_snapshots_reached(tmp_path):
    writer = open_writer(
        tmp_path,
        **{"history.expire.max-snapshot-age-ms": "1", "history.expire.min-snapshots-to-keep": "3"},
    )
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(300, inserts=1.0))])
    churn(writer, stream, 7)
    time.sleep(0.01)
    checkpoint = writer.last_checkpoint()
    orphan_old = tmp_path / "warehouse" / "db" / "orders" / "data" / "stray.parquet"
    orphan_old.write_bytes(b"left by a crashed writer")
    os.utime(orphan_old, (time.time() - 3600, time.time() - 3600))

    report = writer.maintain_now()
    assert report.snapshots_expired == 8 - 3
    assert report.files_deleted > 0 and report.bytes_reclaimed > 0
    snapshots = writer._table.metadata.snapshots
    assert len(snapshots) <= 3 + 1  # the retained ones and the compaction's
    on_disk, needed = files_on_disk(tmp_path), referenced(writer)
    assert needed <= on_disk, "a retained snapshot lost a file"
    assert on_disk == needed, f"unreferenced files left: {sorted(on_disk - needed)[:3]}"
    assert writer.last_checkpoint() == checkpoint  # maintenance snapshots carry the checkpoint
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    for snapshot in snapshots:  # every retained snapshot is still readable
        assert writer._table.scan(snapshot_id=snapshot.snapshot_id).to_arrow() is not None
    writer.close()


def test_tables_the_sink_creates_get_the_defaults_and_the_configured_properties(tmp_path):
    writer = open_writer(tmp_path, **{"history.expire.max-snapshot-age-ms": "60000", "commit.retry.num-retries": "2"})
    table = load_catalog("pixels", type="sql", uri=f"sqlite:///{tmp_path}/warehouse/catalog.db").load_table(TABLE)
    props = table.metadata.properties
    assert props["history.expire.max-snapshot-age-ms"] == "60000"
    assert props["write.metadata.delete-after-commit.enabled"] == "true"
    assert props["history.expire.min-snapshots-to-keep"] == "5"
    assert props["commit.retry.num-retries"] == "2"
    assert table.metadata.format_version == 2
    writer.close()


def test_data_files_keep_a_dictionary_only_for_columns_that_repeat(tmp_path):
    """100,000 rows of unique keys, random notes and a three-value region: the connector's file
    (its tables get write.parquet.dict-size-bytes=16384) takes at least 15% fewer bytes than
    the same rows appended by pyiceberg to a table with pyiceberg's defaults (2 MiB
    dictionaries, which store unique values twice), and the region column keeps its dictionary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_pixels.changes import ChangeBatch, Op, concat_records
    from iceberg_stream import REGIONAL

    writer = IcebergTableWriter(REGIONAL, TABLE, sql_catalog(tmp_path), maintenance_settings=Settings(enabled=False))
    writer.open()
    rng = random.Random(3)
    rows = [{"region": ("eu", "us", "ap")[i % 3], "id": i, "qty": rng.randrange(10**9), "note": f"{rng.getrandbits(64):016x}"}
            for i in range(100_000)]
    batch = ChangeBatch.from_changes(REGIONAL, [(Op.INSERT, None, r) for r in rows], start_position=0)
    records = concat_records([batch], REGIONAL)
    writer.commit(records, writer.last_checkpoint().advance(records))
    table = writer._table
    assert table.metadata.properties["write.parquet.dict-size-bytes"] == "16384"
    catalog = load_catalog("pixels", type="sql", uri=f"sqlite:///{tmp_path}/warehouse/catalog.db",
                           warehouse=f"file://{tmp_path}/warehouse")
    plain = catalog.create_table("db.plain", schema=table.schema())
    plain.append(pa.Table.from_pylist(rows, schema=files.arrow_schema(table)))

    def data_files(t) -> list[str]:
        return [task.file.file_path for task in t.scan().plan_files()]

    ours, theirs = data_files(table), data_files(catalog.load_table("db.plain"))
    size = lambda paths: sum(os.path.getsize(p[len("file://"):]) for p in paths)  # noqa: E731
    assert size(ours) < 0.85 * size(theirs), (size(ours), size(theirs))
    metadata = pq.ParquetFile(ours[0][len("file://"):]).metadata
    region = [metadata.row_group(g).column(0) for g in range(metadata.num_row_groups)]
    assert all(c.path_in_schema == "region" and c.has_dictionary_page for c in region)
    writer.close()


def test_maintenance_runs_once_per_interval_between_commits(tmp_path):
    writer = open_writer(tmp_path, Settings(interval_ms=1500, deleted_percent=1))
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(200, inserts=1.0))])
    assert writer.maintain() is None  # the first call starts the clock
    churn(writer, stream, 2)  # well within the interval, even on a loaded machine
    assert writer.maintain() is None  # not due yet
    time.sleep(1.6)
    assert writer.maintain() is not None
    assert writer.maintain() is None
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    writer.close()


def test_between_passes_snapshots_past_the_retention_expire_and_their_files_go(tmp_path):
    """A pass every hour, snapshots kept 2 s: once a snapshot has been past the retention for a
    sixth of it, the committer's maintain() expires it and deletes the files only expired snapshots
    reached (here the delete files commits replaced), without compacting; retained snapshots keep
    every file and read exactly."""
    writer = open_writer(tmp_path, Settings(interval_ms=3_600_000, deleted_percent=1),
                         **{"history.expire.max-snapshot-age-ms": "2000", "history.expire.min-snapshots-to-keep": "2"})
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(300, inserts=1.0))])
    assert writer.maintain() is None  # the first call starts the pass clock; nothing is past the retention
    churn(writer, stream, 6)
    before = len(writer._table.metadata.snapshots)
    replaced = files_on_disk(tmp_path) - referenced(writer, current_only=True)
    time.sleep(2000 * (1 + maintenance.EXPIRY_LAG) / 1000 + 0.1)
    report = writer.maintain()
    assert report is not None and report.snapshots_expired == before - 2 and report.files_compacted == 0, report
    assert report.files_deleted > 0 and "compaction" not in report.phases, report
    on_disk, needed = files_on_disk(tmp_path), referenced(writer)
    assert needed <= on_disk, "a retained snapshot lost a file"
    assert not (replaced & on_disk) - needed, "replaced files outlived the snapshots reaching them"
    assert writer.maintain() is None  # nothing past the retention any more
    for snapshot in writer._table.metadata.snapshots:  # every retained snapshot is still readable
        assert writer._table.scan(snapshot_id=snapshot.snapshot_id).to_arrow() is not None
    assert stream.sort(pyiceberg_rows(writer)) == stream.sort(duckdb_table_rows(writer)) == stream.expected()
    writer.close()


def test_a_pass_reads_only_the_manifests_written_since_the_pass_before(tmp_path):
    """A table that keeps every snapshot: the manifest lists and manifests a pass opens (counted
    by the table's file IO) stay as many as the commits since the pass before bring, however
    many snapshots pile up; they used to grow with every kept snapshot."""
    catalog = {**sql_catalog(tmp_path), "py-io-impl": "iceberg_stream.CountingFileIO"}
    settings = Settings(interval_ms=1, deleted_percent=1, orphan_age_ms=0)
    writer = IcebergTableWriter(ORDERS, TABLE, catalog, maintenance_settings=settings,
                                table_properties={"history.expire.max-snapshot-age-ms": str(24 * 3600 * 1000)})
    writer.open()
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(300, inserts=1.0))])
    reads = []
    for _ in range(10):
        churn(writer, stream, 3, changes=50)
        writer.last_checkpoint()
        before = CountingFileIO.avro_reads
        writer.maintain_now()
        reads.append(CountingFileIO.avro_reads - before)
    assert len(writer._table.metadata.snapshots) >= 1 + 10 * 3  # and a compaction's per pass
    assert max(reads[1:]) <= reads[1] + 3, f"manifest reads per pass: {reads}"
    snapshots = writer._table.metadata.snapshots
    reachable = MANIFESTS.reachable(writer._table.io, snapshots)
    small = ManifestCache(capacity=40)  # less than the table's manifests need: it reads again, and stays bounded
    assert small.reachable(writer._table.io, snapshots) == reachable
    assert 0 < len(small) <= 40
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    writer.close()


MAINTAIN_FOREVER = textwrap.dedent(
    """
    import sys
    from beam_pixels.sinks.iceberg import IcebergTableWriter
    from beam_pixels.sinks.iceberg.maintenance import Settings
    from iceberg_stream import ORDERS

    w = IcebergTableWriter(ORDERS, "db.orders", {"type": "sql", "warehouse": sys.argv[1]},
                           maintenance_settings=Settings(deleted_percent=1, small_file_mb=64, max_manifests=1))
    w.open()
    print("ready", flush=True)
    while True:
        w.maintain_now()
    """
)


@pytest.mark.parametrize("delay", [0.05, 0.3, 0.8])
def test_sigkill_during_maintenance_leaves_a_readable_table_and_loses_nothing(tmp_path, delay):
    writer = open_writer(tmp_path, Settings(enabled=False))
    stream = Stream(ORDERS, seed=int(delay * 100))
    commit(writer, [stream.batch(stream.changes(3000, inserts=1.0))])
    churn(writer, stream, 5, changes=600)
    for _ in range(2):
        process = subprocess.Popen(
            [sys.executable, "-c", MAINTAIN_FOREVER, sql_catalog(tmp_path)["warehouse"]],
            stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent,  # the helper modules' directory
        )
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
        assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
        churn(writer, stream, 2, changes=300)  # the job goes on
    cleaner = open_writer(tmp_path)
    cleaner.maintain_now()
    assert files_on_disk(tmp_path) == referenced(cleaner)  # what the kills left behind is gone
    assert stream.sort(duckdb_table_rows(cleaner)) == stream.expected()
    cleaner.close()
    writer.close()


def test_the_maintain_command_runs_one_pass_on_the_configured_table(tmp_path, capsys):
    writer = open_writer(tmp_path, Settings(enabled=False))
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(300, inserts=1.0))])
    churn(writer, stream, 3)
    properties = tmp_path / "pixels-client.properties"
    properties.write_text(
        f"source.schema=id:BIGINT,qty:INT,note:STRING\nsource.primary.key=id\n"
        f"iceberg.catalog.warehouse=file://{tmp_path}/warehouse\niceberg.table.name=db.orders\n"
        f"iceberg.maintenance.compaction.deleted.percent=1\n"
    )
    assert cli.main(["maintain", "--config", str(properties)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("maintained db.orders:") and "0 files compacted" not in line, line
    assert current_files(writer)[1] == 0
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    assert cli.main(["maintain", "--config", str(properties), "--set", "sink.type=paimon"]) == 2
    writer.close()


def delete_targets(writer: IcebergTableWriter) -> tuple[set[str], set[str]]:
    """The data files of the current snapshot, and the data files its position deletes name."""
    writer.last_checkpoint()
    table = writer._table
    data, deletes = set(), []
    for manifest in table.current_snapshot().manifests(table.io):
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            (data.add(entry.data_file.file_path) if entry.data_file.content == DataFileContent.DATA
             else deletes.append(entry.data_file))
    named = set(files.read_position_deletes(table, deletes).column("file_path").to_pylist())
    return data, named


def test_switching_to_copy_on_write_then_maintaining_leaves_no_delete_naming_a_gone_file(tmp_path):
    writer = open_writer(tmp_path, Settings(enabled=False))
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(300, inserts=1.0))])
    churn(writer, stream, 3)
    writer.close()
    cow = IcebergTableWriter(ORDERS, TABLE, sql_catalog(tmp_path), mode="copy-on-write",
                             maintenance_settings=Settings(deleted_percent=100, small_file_mb=0))
    cow.open()
    churn(cow, stream, 2)
    assert stream.sort(pyiceberg_rows(cow)) == stream.expected()
    data, named = delete_targets(cow)
    assert named - data, "copy-on-write rewrote files that position deletes name"
    cow.maintain_now()
    data, named = delete_targets(cow)
    assert named <= data
    assert stream.sort(pyiceberg_rows(cow)) == stream.expected()
    assert stream.sort(duckdb_table_rows(cow)) == stream.expected()
    cow.close()


def create_beforehand(tmp_path, **properties: str):
    catalog = load_catalog("pixels", type="sql", uri=f"sqlite:///{tmp_path}/warehouse/catalog.db",
                           warehouse=f"file://{tmp_path}/warehouse")
    catalog.create_namespace_if_not_exists("db")
    schema = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "qty", IntegerType()),
                    NestedField(3, "note", StringType()), identifier_field_ids=[1])
    return catalog.create_table("db.orders", schema=schema, properties=properties)


def test_an_existing_table_keeps_its_properties_and_its_retention_is_honoured(tmp_path):
    (tmp_path / "warehouse").mkdir()
    create_beforehand(tmp_path, **{"history.expire.max-snapshot-age-ms": "1",
                                   "history.expire.min-snapshots-to-keep": "2", "owner": "them"})
    writer = open_writer(tmp_path, Settings(deleted_percent=100, small_file_mb=0),
                         **{"history.expire.min-snapshots-to-keep": "9"})  # for tables it creates only
    stream = Stream(ORDERS)
    churn(writer, stream, 5, changes=50)
    time.sleep(0.01)
    assert writer.maintain_now().snapshots_expired == 3
    props = writer._table.metadata.properties
    assert (props["owner"], props["history.expire.min-snapshots-to-keep"]) == ("them", "2")
    assert "write.metadata.delete-after-commit.enabled" not in props
    assert len(writer._table.metadata.snapshots) <= 2 + 1  # and a compaction's
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    writer.close()


def test_merge_on_read_refuses_a_format_v1_table_naming_the_way_out(tmp_path):
    (tmp_path / "warehouse").mkdir()
    create_beforehand(tmp_path, **{"format-version": "1"})
    writer = IcebergTableWriter(ORDERS, TABLE, sql_catalog(tmp_path))
    with pytest.raises(SinkConfigurationError, match="iceberg.write.mode=copy-on-write"):
        writer.open()
    cow = IcebergTableWriter(ORDERS, TABLE, sql_catalog(tmp_path), mode="copy-on-write")
    cow.open()
    stream = Stream(ORDERS)
    churn(cow, stream, 2, changes=50)
    assert stream.sort(pyiceberg_rows(cow)) == stream.expected()
    cow.close()


def test_the_committer_of_a_running_job_runs_passes_and_reports_beam_metrics(tmp_path):
    stream = Stream(ORDERS)
    results = []
    for n in range(3):  # rounds: a new pipeline (and new writers) each, as local runs do
        batch = stream.batch(stream.changes(300 if n == 0 else 100, inserts=1.0 if n == 0 else 0.3))
        p = beam.Pipeline(runner=FnApiRunner())
        _ = p | beam.Create([batch]) | WriteToIceberg(
            ORDERS, TABLE, sql_catalog(tmp_path), maintenance_settings=Settings(interval_ms=1, deleted_percent=1)
        )
        result = p.run()
        result.wait_until_finish()
        results.append(result)
        time.sleep(0.01)
    passes = [
        sum(d.committed.count for d in r.metrics().query(MetricsFilter().with_name("pass_ms"))["distributions"])
        for r in results
    ]
    assert passes == [0, 1, 1]  # the first commit of the process starts the clock
    compacted = results[-1].metrics().query(MetricsFilter().with_name("files_compacted"))["counters"]
    assert sum(c.committed for c in compacted) > 0
    reader = open_writer(tmp_path, Settings(enabled=False))
    assert stream.sort(duckdb_table_rows(reader)) == stream.expected()
    reader.close()


def data_files_by_path(writer: IcebergTableWriter) -> dict:
    """The current snapshot's data files by path."""
    writer.last_checkpoint()
    table = writer._table
    return {
        entry.data_file.file_path: entry.data_file
        for manifest in table.current_snapshot().manifests(table.io)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        if entry.data_file.content == DataFileContent.DATA
    }


def deleted_shares(writer: IcebergTableWriter) -> dict[str, float]:
    """The share of each current data file's rows that position deletes delete."""
    writer.last_checkpoint()
    table = writer._table
    delete_files = [
        entry.data_file
        for manifest in table.current_snapshot().manifests(table.io)
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
        if entry.data_file.content != DataFileContent.DATA
    ]
    deleted = files.positions_by_path(files.read_position_deletes(table, delete_files))
    return {path: len(deleted.get(path, ())) / f.record_count for path, f in data_files_by_path(writer).items()}


def test_a_large_commit_is_split_into_files_of_a_tenth_of_the_table(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MIN_ROWS_PER_FILE", 100)  # a test-sized "large" commit
    writer = open_writer(tmp_path, Settings(enabled=False, max_compact_percent=10))
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(2000, inserts=1.0))])
    data = data_files_by_path(writer)
    rows = len(stream.expected())  # about 2000 (a random key may repeat)
    most = rows * 10 // 100
    assert len(data) == -(-rows // most) and all(f.record_count <= most for f in data.values())
    assert sum(f.record_count for f in data.values()) == rows
    assert stream.sort(pyiceberg_rows(writer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    commit(writer, [stream.batch(stream.changes(50))])  # a small commit stays one file
    assert len(data_files_by_path(writer)) == len(data) + 1
    assert stream.sort(duckdb_table_rows(writer)) == stream.expected()
    writer.close()


def test_a_pass_rewrites_at_most_its_share_of_the_table_most_deleted_files_first(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MIN_ROWS_PER_FILE", 1000)
    monkeypatch.setattr(maintenance, "MIN_FILE_BYTES", 1)  # no floor: the share applies to this small table
    settings = Settings(interval_ms=1, deleted_percent=5, small_file_mb=0, max_compact_percent=25, orphan_age_ms=0)
    writer = open_writer(tmp_path, Settings(enabled=False, max_compact_percent=10))
    stream = Stream(ORDERS)
    commit(writer, [stream.batch(stream.changes(20_000, inserts=1.0))])
    churn(writer, stream, 8, changes=300)
    maintainer = open_writer(tmp_path, settings)
    passes = 0
    while True:
        before, shares = data_files_by_path(maintainer), deleted_shares(maintainer)
        heavy = {path for path, share in shares.items() if share * 100 >= settings.deleted_percent}
        if not heavy:
            break
        assert passes < 12, "the deleted rows were never folded away"
        report = maintainer.maintain_now()
        passes += 1
        after = data_files_by_path(maintainer)
        rewritten = set(before) - set(after)
        assert rewritten and rewritten <= heavy  # only files with enough deletes (small.file.mb=0)
        table_bytes = sum(f.file_size_in_bytes for f in before.values())
        rewritten_bytes = sum(before[p].file_size_in_bytes for p in rewritten)
        assert len(rewritten) == 1 or rewritten_bytes <= table_bytes * settings.max_compact_percent / 100
        assert min(shares[p] for p in rewritten) >= max((shares[p] for p in heavy - rewritten), default=0)
        assert report.files_compacted >= len(rewritten)
        new = [after[p] for p in set(after) - set(before)]
        assert all(f.file_size_in_bytes <= 2 * table_bytes * settings.max_compact_percent / 100 for f in new)
        assert stream.sort(pyiceberg_rows(maintainer)) == stream.expected()
        assert stream.sort(duckdb_table_rows(maintainer)) == stream.expected()
    assert passes >= 3  # 10 heavy files of a tenth of the table each, a quarter of it per pass
    churn(maintainer, stream, 2, changes=300)  # later commits find the rewritten rows
    assert stream.sort(duckdb_table_rows(maintainer)) == stream.expected()
    maintainer.close()
    writer.close()


def test_small_files_are_merged_at_most_a_share_of_the_table_per_pass(tmp_path, monkeypatch):
    monkeypatch.setattr(maintenance, "MIN_FILE_BYTES", 1)  # no floor: the share applies to this small table
    writer = open_writer(tmp_path, Settings(enabled=False))
    stream = Stream(ORDERS)
    for _ in range(12):  # twelve small files, no deletes
        commit(writer, [stream.batch(stream.changes(200, inserts=1.0))])
    settings = Settings(interval_ms=1, deleted_percent=100, small_file_mb=64, max_compact_percent=40, orphan_age_ms=0)
    maintainer = open_writer(tmp_path, settings)
    before = data_files_by_path(maintainer)
    maintainer.maintain_now()
    after = data_files_by_path(maintainer)
    merged = set(before) - set(after)
    table_bytes = sum(f.file_size_in_bytes for f in before.values())
    assert len(merged) >= 2 and len(set(after) - set(before)) == 1
    assert len(merged) == 2 or sum(before[p].file_size_in_bytes for p in merged) <= table_bytes * 40 / 100
    assert len(merged) < len(before)  # not the whole table at once
    assert stream.sort(pyiceberg_rows(maintainer)) == stream.expected()
    assert stream.sort(duckdb_table_rows(maintainer)) == stream.expected()
    maintainer.close()
    writer.close()
