"""What ``beam_pixels/sinks/iceberg/_pyiceberg_private.py`` relies on in pyiceberg's internals.

These tests fail loudly when a pyiceberg upgrade changes a private name, signature or
behaviour that the merge-on-read commits and compaction build on: read the failure,
then the module, before changing the pin.
"""

from __future__ import annotations

import inspect
import uuid

import numpy as np
import pyarrow as pa
import pyiceberg
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.manifest import DataFileContent, ManifestContent, ManifestWriterV2
from pyiceberg.schema import Schema
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _SnapshotProducer
from pyiceberg.transforms import BucketTransform, IdentityTransform
from pyiceberg.types import IntegerType, LongType, NestedField, StringType

from beam_pixels.sinks.iceberg import files
from beam_pixels.sinks.iceberg._pyiceberg_private import commit_file_changes, file_reader, promotable, write_parquet_files
from beam_pixels.sinks.iceberg.manifests import MANIFESTS
from beam_pixels.sinks.iceberg.partitioning import partition_rows
from iceberg_helpers import duckdb_rows


def ten_rows_table(tmp_path):
    """A SQLite catalog, an empty v2 table ``db.t`` (id key, s) and ten rows for it."""
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/c.db", warehouse=f"file://{tmp_path}")
    catalog.create_namespace("db")
    schema = Schema(NestedField(1, "id", LongType(), required=True), NestedField(2, "s", StringType()), identifier_field_ids=[1])
    table = catalog.create_table("db.t", schema=schema, properties={"format-version": "2"})
    rows = pa.table({"id": pa.array(range(10), pa.int64()), "s": [str(i) for i in range(10)]})
    rows = rows.cast(files.arrow_schema(table))
    return catalog, table, rows


def test_the_pinned_pyiceberg_minor_version():
    assert pyiceberg.__version__.startswith("0.12."), "re-check _pyiceberg_private.py against this pyiceberg"


def test_snapshot_producer_has_the_constructor_and_hooks_the_producer_overrides():
    params = list(inspect.signature(_SnapshotProducer.__init__).parameters)
    assert params[:6] == ["self", "operation", "transaction", "io", "commit_uuid", "snapshot_properties"]
    for name in ("_manifests", "_existing_manifests", "_deleted_entries", "_validate_concurrency", "_summary",
                 "new_manifest_output", "schema", "spec", "commit", "_commit"):
        assert callable(getattr(_SnapshotProducer, name, None)), name
    source = inspect.getsource(_SnapshotProducer.__init__)
    for attribute in ("_added_data_files", "_deleted_data_files", "_parent_snapshot_id", "_snapshot_id", "_compression"):
        assert f"self.{attribute}" in source, attribute
    assert "self._manifests()" in inspect.getsource(_SnapshotProducer._commit)
    assert "self._added_data_files" in inspect.getsource(_SnapshotProducer._summary)


def test_manifest_writer_v2_reports_its_content_through_the_methods_overridden():
    assert ManifestWriterV2.content.__qualname__ == "ManifestWriterV2.content"
    assert isinstance(inspect.getattr_static(ManifestWriterV2, "_meta"), property)
    assert list(inspect.signature(ManifestWriterV2.__init__).parameters) == [
        "self", "spec", "schema", "output_file", "snapshot_id", "avro_compression",
    ]


def test_the_undocumented_write_and_read_functions_keep_their_signatures():
    """``write_file``, ``WriteTask``, ``pyarrow_to_schema``, ``ArrowScan`` and ``promote``: no
    underscore, but not documented API either; called as pyiceberg's own append and scan call them."""
    from pyiceberg.io.pyarrow import ArrowScan, pyarrow_to_schema, write_file
    from pyiceberg.schema import promote
    from pyiceberg.table import WriteTask

    assert list(inspect.signature(write_file).parameters) == ["io", "table_metadata", "tasks"]
    assert list(inspect.signature(WriteTask).parameters)[:4] == ["write_uuid", "task_id", "schema", "record_batches"]
    params = inspect.signature(pyarrow_to_schema).parameters
    assert list(params)[0] == "schema" and {"name_mapping", "format_version"} <= set(params)
    assert list(inspect.signature(ArrowScan.__init__).parameters)[:5] == [
        "self", "table_metadata", "io", "projected_schema", "row_filter",
    ]
    assert list(inspect.signature(ArrowScan.to_table).parameters) == ["self", "tasks"]
    assert list(inspect.signature(promote).parameters) == ["file_type", "read_type"]


def test_data_files_are_written_and_read_back_through_the_hooks(tmp_path):
    catalog, table, rows = ten_rows_table(tmp_path)
    written = write_parquet_files(table, rows.schema, [rows.slice(0, 4).to_batches(), rows.slice(4).to_batches()], uuid.uuid4())
    assert [f.record_count for f in written] == [4, 6]
    assert [f.content for f in written] == [DataFileContent.DATA] * 2
    commit_file_changes(table, {}, added=written, operation=Operation.APPEND)

    table = catalog.load_table("db.t")
    tasks = list(table.scan().plan_files())
    keys = file_reader(table, table.schema().select("id")).to_table(tasks)
    assert keys.column_names == ["id"]
    assert sorted(keys.column("id").to_pylist()) == list(range(10))
    assert file_reader(table, table.schema()).to_table(tasks).num_rows == 10


def test_promotable_follows_pyicebergs_promotions():
    assert promotable(LongType(), LongType())
    assert promotable(IntegerType(), LongType())
    assert not promotable(LongType(), IntegerType())
    assert not promotable(StringType(), LongType())


def test_a_position_delete_commit_and_a_file_removal_round_trip(tmp_path):
    """The whole private path end to end: a delete manifest is read back as one, pyiceberg and
    DuckDB apply its deletes, a removal rewrites manifests with the file gone."""
    catalog, table, rows = ten_rows_table(tmp_path)
    (data,) = files.write_data_files(table, rows, uuid.uuid4()).files
    commit_file_changes(table, {"k": "1"}, added=[data], operation=Operation.APPEND)
    (deletes,) = files.write_partitioned_deletes(table, pa.array([data.file_path] * 2), np.array([7, 3]),
                                                 {data.file_path: files.partition_of(data)})
    commit_file_changes(table, {"k": "2"}, added=[deletes], operation=Operation.OVERWRITE)

    table = catalog.load_table("db.t")
    contents = sorted(m.content for m in table.current_snapshot().manifests(table.io))
    assert contents == [ManifestContent.DATA, ManifestContent.DELETES]
    expected = [i for i in range(10) if i not in (3, 7)]
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == expected
    assert sorted(r["id"] for r in duckdb_rows(table.metadata_location)) == expected
    assert table.current_snapshot().summary.additional_properties["k"] == "2"

    (stored,) = [  # as maintenance finds it: read from the manifests
        e.data_file
        for m in table.current_snapshot().manifests(table.io)
        for e in m.fetch_manifest_entry(table.io)
        if e.data_file.file_path == deletes.file_path
    ]
    commit_file_changes(table, {}, removed=[stored], operation=Operation.REPLACE, rewrite_manifests=True)
    table = catalog.load_table("db.t")
    assert table.current_snapshot().summary.operation == Operation.REPLACE
    live = [
        e.data_file.content
        for m in table.current_snapshot().manifests(table.io)
        for e in m.fetch_manifest_entry(table.io, discard_deleted=True)
    ]
    assert live == [DataFileContent.DATA]
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == list(range(10))


def test_partitioned_files_and_a_delete_file_of_an_older_spec_round_trip(tmp_path):
    """``write_parquet_files`` with partition keys writes one partition per file (its tuple and
    directory); after the spec evolved, a delete file of the old spec's partition is committed
    in a manifest of that spec and counted in the summary, and readers apply it."""
    catalog, table, rows = ten_rows_table(tmp_path)
    with table.update_spec() as update:
        update.add_field("id", BucketTransform(2), "id_bucket")
    table = catalog.load_table("db.t")
    groups = partition_rows(table.spec(), table.schema(), rows)
    assert len(groups) == 2
    written = write_parquet_files(table, rows.schema, [rows.take(pa.array(g.rows)).to_batches() for g in groups],
                                  uuid.uuid4(), [g.key for g in groups])
    assert [f.partition for f in written] == [g.key.partition for g in groups]
    assert all("/id_bucket=" in f.file_path and f.spec_id == 1 for f in written)
    commit_file_changes(table, {}, added=written, operation=Operation.APPEND)
    table = catalog.load_table("db.t")
    with table.update_spec() as update:  # spec 2: the data files stay in spec 1
        update.add_field("s", IdentityTransform(), "s")
    table = catalog.load_table("db.t")
    first = written[0]
    (deletes,) = files.write_partitioned_deletes(table, pa.array([first.file_path]), np.array([0]),
                                                 {first.file_path: files.partition_of(first)})
    commit_file_changes(table, {}, added=[deletes], operation=Operation.OVERWRITE)
    table = catalog.load_table("db.t")
    manifests = table.current_snapshot().manifests(table.io)
    assert {(m.content, m.partition_spec_id) for m in manifests} == {(ManifestContent.DATA, 1), (ManifestContent.DELETES, 1)}
    assert table.current_snapshot().summary["total-position-deletes"] == "1"
    gone = rows.take(pa.array(groups[0].rows)).column("id")[0].as_py()
    expected = [i for i in range(10) if i != gone]
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == expected
    assert sorted(r["id"] for r in duckdb_rows(table.metadata_location)) == expected


def test_a_commit_computes_the_table_metadata_a_fixed_number_of_times_however_long_the_history(tmp_path, monkeypatch):
    """pyiceberg's ``Transaction.table_metadata`` applies the staged updates to a deep copy of the
    whole metadata, every snapshot included, on each access; a commit must not pay that per access
    (about twenty), or its cost grows with every snapshot the table keeps."""
    import pyiceberg.table

    catalog, table, rows = ten_rows_table(tmp_path)
    computed = []
    real = pyiceberg.table.update_table_metadata
    monkeypatch.setattr(pyiceberg.table, "update_table_metadata",
                        lambda *a, **k: computed.append(1) or real(*a, **k))

    def computations_of_one_commit(batch: int) -> int:
        (data,) = files.write_data_files(catalog.load_table("db.t"), rows, uuid.uuid4()).files
        computed.clear()
        commit_file_changes(catalog.load_table("db.t"), {"batch": str(batch)}, added=[data], operation=Operation.APPEND)
        return len(computed)

    early = computations_of_one_commit(1)
    for batch in range(2, 40):
        late = computations_of_one_commit(batch)
    assert len(catalog.load_table("db.t").metadata.snapshots) == 39
    assert late == early <= 3, f"{early} metadata computations in the 1st commit, {late} in the 39th"


def test_replacing_a_delete_file_rewrites_the_delete_manifests_and_keeps_the_data_manifests(tmp_path):
    """A commit that removes only delete files (a merge-on-read commit replacing a partition's
    delete file) rewrites the delete manifest holding them, with its added delete file, into one,
    and keeps the data manifests as they were written: its cost does not grow with the data files."""
    catalog, table, rows = ten_rows_table(tmp_path)
    for _ in range(3):
        table = catalog.load_table("db.t")
        (data,) = files.write_data_files(table, rows, uuid.uuid4()).files
        commit_file_changes(table, {}, added=[data], operation=Operation.APPEND)
    table = catalog.load_table("db.t")
    (first,) = files.write_partitioned_deletes(table, pa.array([data.file_path]), np.array([3]),
                                               {data.file_path: files.partition_of(data)})
    commit_file_changes(table, {}, added=[first], operation=Operation.OVERWRITE)
    table = catalog.load_table("db.t")
    data_manifests = {m.manifest_path for m in table.current_snapshot().manifests(table.io)
                      if m.content == ManifestContent.DATA}
    (stored,) = MANIFESTS.delete_files(table.io, table.current_snapshot())
    (second,) = files.write_partitioned_deletes(table, pa.array([data.file_path] * 2), np.array([3, 5]),
                                                {data.file_path: files.partition_of(data)})
    commit_file_changes(table, {}, added=[second], removed=[stored], operation=Operation.OVERWRITE)

    table = catalog.load_table("db.t")
    manifests = table.current_snapshot().manifests(table.io)
    assert {m.manifest_path for m in manifests if m.content == ManifestContent.DATA} == data_manifests
    (delete_manifest,) = [m for m in manifests if m.content == ManifestContent.DELETES]
    assert [e.data_file.file_path for e in delete_manifest.fetch_manifest_entry(table.io, discard_deleted=True)] == [
        second.file_path]
    assert [f.file_path for f in MANIFESTS.delete_files(table.io, table.current_snapshot())] == [second.file_path]
    expected = sorted([*range(10), *range(10), *(i for i in range(10) if i not in (3, 5))])
    assert sorted(table.scan().to_arrow().column("id").to_pylist()) == expected
    assert sorted(r["id"] for r in duckdb_rows(table.metadata_location)) == expected
