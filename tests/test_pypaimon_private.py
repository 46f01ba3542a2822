"""pypaimon internals the connector relies on (``beam_pixels.sinks.paimon._pypaimon_private``).

Each test fails loudly when a pypaimon upgrade changes one of them: the
connector's overrides must compute what pypaimon computes, and the private
names and signatures it calls must still exist.
"""

import os

import pyarrow as pa
import pytest

from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.paimon import PaimonTableWriter
from beam_pixels.sinks.paimon import _pypaimon_private as private

ORDERS = SourceSchema.parse("region:STRING, id:INT, qty:INT, note:STRING", primary_key=["region", "id"])


def catalog_properties(tmp_path) -> dict[str, str]:
    return {"type": "paimon", "warehouse": str(tmp_path / "warehouse")}


def live_data_file_paths(table) -> list[str]:
    """The Parquet path of every data file of the table's latest snapshot."""
    from beam_pixels.sinks.paimon.maintenance import live_files

    return [private.data_file_paths(table, entry)[0]
            for entries in live_files(table, private.latest_snapshot(table)).values() for entry in entries]


def commit_inserts(writer: PaimonTableWriter, rows: list[dict]) -> None:
    """Commit ``rows`` as INSERTs, one batch, as ``WriteChanges`` does."""
    from beam_pixels.changes import ChangeBatch, Op
    from test_paimon_sink import commit

    commit(writer, ChangeBatch.from_changes(writer.schema, [(Op.INSERT, None, r) for r in rows],
                                            start_position=writer.last_checkpoint().next_position(0)))


def test_vectorised_row_kinds_equal_pypaimons():
    """StreamWrite / KeyValueWriter overrides compute what pypaimon computes row by row."""
    from types import SimpleNamespace

    from pypaimon.write.row_kind import row_kinds

    rowkind = SimpleNamespace(options=SimpleNamespace(to_map=lambda: {"rowkind.field": "_rowkind"}))
    plain = SimpleNamespace(options=SimpleNamespace(to_map=lambda: {}))
    data = pa.table({"id": [1, 2, 3, 4, 5], "_rowkind": ["+I", "-D", "+U", "-U", "+I"]})
    assert private.row_kinds(rowkind, data).tolist() == row_kinds(rowkind, data) == [0, 3, 2, 1, 0]
    assert private.row_kinds(plain, data).tolist() == row_kinds(plain, data)
    for bad in (["+I", "??"], ["+I", None]):
        table = pa.table({"_rowkind": pa.array(bad, pa.string())})
        with pytest.raises(ValueError) as theirs:
            row_kinds(rowkind, table)
        with pytest.raises(ValueError) as ours:
            private.row_kinds(rowkind, table)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="must be a string"):
        private.row_kinds(rowkind, pa.table({"_rowkind": [1]}))


def test_vectorised_system_fields_equal_pypaimons(tmp_path):
    from pypaimon.write.writer.key_value_data_writer import KeyValueDataWriter

    writer = PaimonTableWriter(ORDERS, "pixels.kinds", catalog_properties(tmp_path))
    writer.open()
    rows = pa.table({"region": ["EU", "US", "EU"], "id": pa.array([3, 1, 2], pa.int32()),
                     "_rowkind": ["+I", "-D", "+I"]})
    write = private.StreamWrite(writer._table, "test")
    try:
        ours = write.file_store_write._create_data_writer((), 0, writer._table.options)
        assert type(ours) is private.KeyValueWriter
        theirs = write.file_store_write._create_data_writer((), 0, writer._table.options)
        theirs.__class__ = KeyValueDataWriter
        full = pa.table({f.name: rows.column(f.name) if f.name in rows.column_names else pa.nulls(3, f.type)
                         for f in writer._write_schema}).cast(writer._write_schema)
        batch = full.to_batches()[0]
        for _ in range(2):  # sequence numbers continue across calls
            assert ours._add_system_fields(batch).equals(theirs._add_system_fields(batch))
        assert write._prepare_arrow_data(batch).equals(super(private.StreamWrite, write)._prepare_arrow_data(batch))
    finally:
        write.close()


def test_write_path_hooks_keep_their_names():
    """Every method the write path overrides still exists in pypaimon (an override of a
    renamed method would silently stop being called), and the writer attributes
    ``_write_parquet_data`` passes on are still set."""
    import inspect

    from pypaimon.write.file_store_write import FileStoreWrite
    from pypaimon.write.table_write import StreamTableWrite
    from pypaimon.write.writer.data_writer import DataWriter
    from pypaimon.write.writer.key_value_data_writer import KeyValueDataWriter

    for ours, theirs in [(private.KeyValueWriter, KeyValueDataWriter), (private._FileStoreWrite, FileStoreWrite),
                         (private.StreamWrite, StreamTableWrite)]:
        for name, member in vars(ours).items():
            if inspect.isfunction(member) and name.startswith("_") and not name.startswith("__"):
                assert callable(getattr(theirs, name, None)), f"pypaimon's {theirs.__name__} has no {name}"
    source = inspect.getsource(DataWriter.__init__)
    assert all(f"self.{name} =" in source for name in ("compression", "zstd_level", "parquet_writer_options"))
    assert "zstd_level=self.zstd_level" in inspect.getsource(DataWriter._write_parquet_data)


def test_maintenance_internals_keep_their_shape():
    """The private names, fields and signatures compaction and expiration call."""
    import dataclasses
    import inspect

    from pypaimon.manifest.manifest_file_manager import ManifestFileManager
    from pypaimon.manifest.manifest_list_manager import ManifestListManager
    from pypaimon.manifest.schema.data_file_meta import DataFileMeta
    from pypaimon.manifest.schema.manifest_entry import ManifestEntry
    from pypaimon.snapshot.snapshot import Snapshot
    from pypaimon.snapshot.snapshot_manager import SnapshotManager
    from pypaimon.utils.file_store_path_factory import canonical_data_file_path
    from pypaimon.write.writer.key_value_data_writer import KeyValueDataWriter

    def params(function):
        return list(inspect.signature(function).parameters)

    assert params(KeyValueDataWriter._roll_write) == ["self", "data"]
    assert params(KeyValueDataWriter.__init__)[:6] == ["self", "table", "partition", "bucket", "max_seq_number", "options"]
    assert {"level", "file_source", "max_sequence_number", "file_size", "delete_row_count"} <= {
        f.name for f in dataclasses.fields(DataFileMeta)}
    assert {"kind", "partition", "bucket", "total_buckets", "file"} <= {f.name for f in dataclasses.fields(ManifestEntry)}
    assert {"base_manifest_list", "delta_manifest_list", "commit_kind", "properties", "uuid", "time_millis"} <= {
        f.name for f in dataclasses.fields(Snapshot)}
    for method in ("read_all", "read_delta", "read", "write"):
        assert callable(getattr(ManifestListManager, method))
    assert params(ManifestFileManager.rolling_write) == ["self", "entries", "suggested_file_size", "name_prefix"]
    assert "drop_stats" in params(ManifestFileManager.read_entries_parallel)
    assert params(SnapshotManager.get_snapshot_path) == ["self", "snapshot_id"]
    assert params(canonical_data_file_path) == ["table", "partition", "bucket", "file_name"]


def test_compacted_files_and_compact_snapshots_read_back_as_pypaimon_reads_its_own(tmp_path):
    """A bucket's raw key-value rows, rewritten as one top-level file and committed as a
    COMPACT snapshot, read back the same; the file is read raw (no merge), which is what
    makes compacted tables fast to read; the snapshot keeps its kind and repeats the
    checkpoint of the connector's newest snapshot (not the one given, which may be older)."""
    from beam_pixels.checkpoint import Checkpoint
    from beam_pixels.sinks.paimon.compaction import merge_runs

    writer = PaimonTableWriter(ORDERS, "pixels.raw", catalog_properties(tmp_path), bucket=1, write_only=True)
    writer.open()
    table = writer._table
    for i, kind in enumerate(["+I", "+I", "-D"]):
        rows = pa.table({"region": ["EU"], "id": pa.array([i % 2], pa.int32()), "qty": pa.array([i], pa.int32()),
                         "note": pa.array([None], pa.string()), "_rowkind": [kind]}).cast(writer._write_schema)
        write = private.StreamWrite(table, writer.commit_user)
        write.write_arrow(rows)
        writer.commit_prepared([write.prepare_commit(i + 1)], Checkpoint(i + 1, {0: i + 1}))
        write.close()
    before = writer.read_table().to_pylist()
    latest = private.latest_snapshot(table)
    entries = private.live_entries(table, latest)
    raw = [private.read_key_values(table, e) for e in sorted(entries, key=lambda e: e.file.max_sequence_number)]
    assert {"_KEY_region", "_KEY_id", "_SEQUENCE_NUMBER", "_VALUE_KIND", "qty"} <= set(raw[0].column_names)
    merged = merge_runs(raw, ["_KEY_region", "_KEY_id"], drop_retractions=True)
    files = private.write_compacted(table, (), 0, merged, 5)
    added = [private.new_entry(table, 0, (), 0, entries[0].total_buckets, m) for m in files]
    snapshot = private.commit_compact(table, writer.commit_user, 2, {"k": "v"}, latest, entries, added, True)
    committed = private.snapshot_by_id(table, snapshot.id)
    assert (committed.commit_kind, committed.properties, committed.commit_identifier) == (
        "COMPACT", latest.properties, 3)
    assert writer.last_checkpoint() == Checkpoint(3, {0: 3})
    assert writer.read_table().to_pylist() == before == [{"region": "EU", "id": 1, "qty": 1, "note": None}]
    splits = table.new_read_builder().new_scan().plan().splits()
    assert [s.raw_convertible for s in splits] == [True]


def test_paimons_duration_syntax_for_retention_options():
    # snapshot.time-retained is read with pypaimon's parser, so it accepts what Paimon accepts
    assert [private.parse_duration(t) for t in ("1 min", "1h", "30 s", "500 ms", "2 d")] == [
        60_000, 3_600_000, 30_000, 500, 172_800_000
    ]
    with pytest.raises(ValueError):
        private.parse_duration("an hour")


def test_deletion_vectors_we_write_are_the_ones_pypaimon_reads_and_applies(tmp_path):
    """A deletion-vector index file written by ``write_deletion_vectors`` and committed with
    ``commit_compact``: pypaimon's own reader drops exactly its positions, reads the bucket
    raw, and ``read_deletion_vectors`` / ``deletion_vector_index`` / ``index_files`` see it."""
    import numpy as np

    from pypaimon.deletionvectors.bitmap_deletion_vector import BitmapDeletionVector

    writer = PaimonTableWriter(ORDERS, "pixels.dv", catalog_properties(tmp_path), bucket=1,
                               table_options={"deletion-vectors.enabled": "true"})
    writer.open()
    table = writer._table
    rows = pa.table({"region": ["EU"] * 6, "id": pa.array(range(6), pa.int32()), "qty": pa.array(range(6), pa.int32()),
                     "note": pa.array([None] * 6, pa.string()), "_rowkind": ["+I"] * 6}).cast(writer._write_schema)
    write = private.StreamWrite(table, writer.commit_user)
    write.write_arrow(rows)
    (message,) = write.prepare_commit(1)
    write.close()
    (meta,) = message.new_files
    meta.level = 5  # level 0 is not read in deletion-vector mode
    added = [private.new_entry(table, 0, (), 0, table.total_buckets, meta)]
    index = private.write_deletion_vectors(table, (), 0, {meta.file_name: np.array([1, 4], np.uint32)})
    snapshot = private.commit_compact(table, writer.commit_user, 1, None, None, [], added, False, commit_kind="APPEND",
                                      index_adds=[index], exclusive=True)
    assert snapshot.id == 1 and snapshot.commit_kind == "APPEND" and snapshot.index_manifest
    splits = table.new_read_builder().new_scan().plan().splits()
    assert [s.raw_convertible for s in splits] == [True]
    assert sorted(r["id"] for r in writer.read_table().to_pylist()) == [0, 2, 3, 5]
    (entry,) = private.deletion_vector_index(table, snapshot)[((), 0)]
    assert {k: v.tolist() for k, v in private.read_deletion_vectors(table, entry).items()} == {meta.file_name: [1, 4]}
    name, paths = private.index_files(table, snapshot)
    assert name == snapshot.index_manifest and len(paths) == 1
    with open(paths[0].replace("file://", ""), "rb") as f:
        data = f.read()
    assert data[0] == private.DV_INDEX_VERSION
    assert int.from_bytes(data[5:9], "big") == BitmapDeletionVector.MAGIC_NUMBER
    gone = private.deleting_index(entry)
    assert gone.kind == 1 and gone.index_file == entry.index_file
    with pytest.raises(private.CompactionConflict, match="was committed after snapshot"):
        private.commit_compact(table, writer.commit_user, 2, None, None, [], [], False, exclusive=True)


def test_append_file_writer_and_memory_sizes_keep_their_shape(tmp_path):
    """Append compaction's hooks: AppendOnlyDataWriter's constructor and ``_write_data_to_file``
    writing one file per call, the meta fields it sets, and Paimon's memory-size syntax."""
    import inspect

    from pypaimon.write.writer.append_only_data_writer import AppendOnlyDataWriter

    assert list(inspect.signature(AppendOnlyDataWriter.__init__).parameters)[:6] == [
        "self", "table", "partition", "bucket", "max_seq_number", "options"]
    assert [private.parse_memory_size(t) for t in ("256 mb", "4 kb", "1 b", "128MB")] == [
        256 * 2**20, 4096, 1, 128 * 2**20]
    writer = PaimonTableWriter(SourceSchema.parse("id:INT, note:STRING"), "pixels.log", catalog_properties(tmp_path))
    writer.open()
    table = writer._table
    files = private.AppendFiles(table, (), 0)
    rows = pa.table({"id": pa.array([1, 2], pa.int32()), "note": ["a", None], "_op": ["INSERT", "DELETE"],
                     "_poll_group": pa.array([0, 0], pa.int32()), "_position": pa.array([0, 1], pa.int64())})
    first = files.write(rows.slice(0, 1))
    second = files.write(rows.slice(1))
    metas = files.finish((3, 9))
    assert metas == [first, second] and [m.row_count for m in metas] == [1, 1]
    assert {(m.level, m.file_source, m.min_sequence_number, m.max_sequence_number) for m in metas} == {
        (0, private.FILE_SOURCE_COMPACT, 3, 9)}
    read = [private.read_data_file(table, private.new_entry(table, 0, (), 0, -1, m)) for m in metas]
    assert pa.concat_tables(read).equals(rows.cast(read[0].schema))
    files.abort()
    assert not any(os.path.exists(p) for m in metas for p in m.collect_files())


def test_written_files_pick_dictionaries_encodings_and_zstd_levels_by_column(tmp_path):
    """The writer override pypaimon calls per Parquet file (this fails if pypaimon stops calling
    ``_write_parquet_data`` or passing its zstd level on to pyarrow): a column of a few values
    dictionary-encoded, unique integers ``DELTA_BINARY_PACKED``, one-length strings
    ``DELTA_LENGTH_BYTE_ARRAY``, others plain; doubles of cents compressed at zstd level 2,
    smaller than at the table's level 1 (by a sixth at 20,000 rows, a third at 100,000)."""
    import numpy as np
    import pyarrow.parquet as pq

    from test_paimon_maintenance import open_table

    schema = SourceSchema.parse("region:STRING, id:INT, code:STRING, note:STRING, price:DOUBLE", primary_key=["id"])
    writer = PaimonTableWriter(schema, "orders", catalog_properties(tmp_path), bucket=1)
    writer.open()
    prices = np.random.default_rng(7).integers(0, 10**8, 20_000) / 100
    commit_inserts(writer, [{"region": "eu" if i % 3 else "us", "id": i, "code": f"{i * 7919 % 10**6:06d}",
                             "note": f"n{i}" * (i % 4), "price": float(prices[i])} for i in range(20_000)])
    (path,) = live_data_file_paths(open_table(catalog_properties(tmp_path), "pixels.orders"))
    metadata = pq.ParquetFile(path).metadata.row_group(0)
    columns = {metadata.column(i).path_in_schema: metadata.column(i) for i in range(metadata.num_columns)}
    dictionary = {name for name, c in columns.items() if any("DICTIONARY" in e for e in c.encodings)}
    assert {"region", "_VALUE_KIND"} <= dictionary and not dictionary & {"id", "_KEY_id", "_SEQUENCE_NUMBER", "note"}
    assert {name for name, c in columns.items() if "DELTA_BINARY_PACKED" in c.encodings} == {"id", "_KEY_id",
                                                                                            "_SEQUENCE_NUMBER"}
    assert {name for name, c in columns.items() if "DELTA_LENGTH_BYTE_ARRAY" in c.encodings} == {"code"}
    assert set(columns["price"].encodings) <= {"PLAIN", "RLE"}
    level_one = pq.ParquetFile(pa.BufferReader(_parquet_bytes(pa.table({"price": prices}), compression_level=1)))
    assert columns["price"].total_compressed_size < 0.9 * level_one.metadata.row_group(0).column(0).total_compressed_size
    assert private.zstd_levels(pa.schema([("id", pa.int64()), ("price", pa.float64())]), 1) == {"id": 1, "price": 2}
    assert private.zstd_levels(pa.schema([("id", pa.int64()), ("price", pa.float64())]), 3) == 3


def _parquet_bytes(table: pa.Table, **options) -> bytes:
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False, **options)
    return sink.getvalue().to_pybytes()


def test_table_metadata_hooks_read_what_the_table_holds(tmp_path):
    """Options map, schema id, Arrow/Paimon types and the file system, as the writer,
    compaction, the key index and expiration read them."""
    writer = PaimonTableWriter(ORDERS, "pixels.meta", catalog_properties(tmp_path), table_options={"snapshot.num-retained.min": "7"})
    writer.open()
    try:
        table = writer._table
        options = private.table_options(table)
        assert options["snapshot.num-retained.min"] == "7" and options["bucket"] == "4"
        assert private.schema_id(table) == 0
        schema = private.arrow_schema(table)
        assert schema.field("region").type == pa.string() and schema.field("id").type == pa.int32()
        field = next(f for f in table.schema().fields if f.name == "qty")
        assert private.arrow_type(field) == pa.int32()
        assert str(private.paimon_type(pa.int64())) == "BIGINT"
        assert str(private.paimon_type(pa.string())) == "STRING"
        io = private.file_io(table)
        options_file = os.path.join(table.table_path, "schema", "schema-0")
        assert io.get_file_size(options_file) > 0
        io.delete_quietly(options_file + ".missing")  # no error for a file that is not there
    finally:
        writer.close()


def test_key_columns_of_partitioned_data_files_are_where_pypaimon_writes_them(tmp_path):
    """A primary-key data file holds ``_KEY_<k>`` for the key less the partition keys, and a
    partition key only as its value column: what the key index reads for a key holding one."""
    from beam_pixels.changes import ChangeBatch, Op, concat_records

    writer = PaimonTableWriter(ORDERS, "pixels.parts", catalog_properties(tmp_path), partition_keys=("region",))
    writer.open()
    try:
        records = concat_records([ChangeBatch.from_changes(ORDERS, [
            (Op.INSERT, None, {"region": "EU", "id": 7, "qty": 1, "note": "a"})], poll_group=0, start_position=0)],
            ORDERS)
        writer.commit(records, writer.last_checkpoint().advance(records))
        table = writer._table
        assert table.trimmed_primary_keys == ["id"]
        stored = private.stored_key_columns(table, ["region", "id"])
        assert stored == ["region", "_KEY_id"]
        (entry,) = private.live_entries(table, private.latest_snapshot(table))
        assert private.entry_partition(entry) == ("EU",)
        assert private.read_key_values(table, entry, stored).to_pylist() == [{"region": "EU", "_KEY_id": 7}]
    finally:
        writer.close()


def test_written_keys_are_the_keys_of_the_files_as_stored(tmp_path):
    """The key columns a write keeps per file (for the key index, instead of reading every new
    file back) are the files' stored key columns, row for row, also for a partition key."""
    writer = PaimonTableWriter(ORDERS, "pixels.keys", catalog_properties(tmp_path), bucket=2,
                               partition_keys=("region",))
    writer.open()
    table = writer._table
    stored = private.stored_key_columns(table, ["region", "id"])
    rows = pa.table({"region": ["EU", "US", "EU", "US", "EU"], "id": pa.array([5, 1, 3, 2, 4], pa.int32()),
                     "qty": pa.array(range(5), pa.int32()), "note": pa.array([None] * 5, pa.string()),
                     "_rowkind": ["+I"] * 5}).cast(writer._write_schema)
    write = private.StreamWrite(table, writer.commit_user)
    write.keep_keys(stored)
    write.limit_file_rows(1)
    try:
        write.write_arrow(rows)
        messages = write.prepare_commit(1)
        kept = write.written_keys(messages)
    finally:
        write.close()
    metas = [(tuple(m.partition), m.bucket, meta) for m in messages for meta in m.new_files]
    assert len(metas) == 5 and set(kept) == {meta.file_name for _, _, meta in metas}
    for partition, bucket, meta in metas:
        entry = private.new_entry(table, 0, partition, bucket, table.total_buckets, meta)
        assert kept[meta.file_name].equals(private.read_key_values(table, entry, stored))


def test_writes_in_one_process_take_ever_higher_sequence_numbers(tmp_path, monkeypatch):
    """A window written while the previous one's commit is pending (a streaming runner) gets
    higher sequence numbers than it, even if the clock stands still, so the key changed in both
    keeps the later value; and a process's first write starts above what the table holds."""
    writer = PaimonTableWriter(ORDERS, "pixels.seq", catalog_properties(tmp_path), bucket=1, write_only=True)
    writer.open()
    table = writer._table
    monkeypatch.setattr(private.time, "time_ns", lambda: 1_000)

    def prepare(qty: int) -> list:
        rows = pa.table({"region": ["EU"], "id": pa.array([1], pa.int32()), "qty": pa.array([qty], pa.int32()),
                         "note": pa.array([None], pa.string()), "_rowkind": ["+I"]}).cast(writer._write_schema)
        write = private.StreamWrite(table, writer.commit_user)
        try:
            write.write_arrow(rows)
            return write.prepare_commit(1)
        finally:
            write.close()

    from beam_pixels.checkpoint import Checkpoint

    first, second = prepare(1), prepare(2)
    assert second[0].new_files[0].min_sequence_number > first[0].new_files[0].max_sequence_number
    writer.commit_prepared([first], Checkpoint(1, {0: 1}))
    writer.commit_prepared([second], Checkpoint(2, {0: 2}))
    assert [r["qty"] for r in writer.read_table().to_pylist()] == [2]
    highest = private.max_sequence_number(table)
    assert highest > 1_000
    monkeypatch.setattr(private, "SEQUENCE_FLOORS", private._SequenceFloors())  # a new process
    (message,) = prepare(3)
    assert message.new_files[0].min_sequence_number > highest


def test_strictly_increasing_orders_rows_as_arrows_sort_does():
    """The writer skips pypaimon's sort of a bucket's rows only when this holds; a wrong True
    would write an unsorted file (and lose the newer of two rows of one key)."""
    ints, names = pa.array([1, 2, 2, 3]), pa.array(["b", "a", "c", "a"])
    assert private.strictly_increasing([pa.array([1, 5, 9])]) and private.strictly_increasing([pa.array([7])])
    assert not private.strictly_increasing([pa.array([1, 5, 5])])
    assert not private.strictly_increasing([pa.array([1, 5, 4])])
    assert not private.strictly_increasing([pa.array([1, None, 4])])
    assert private.strictly_increasing([ints, names])  # (2, "a") < (2, "c")
    assert not private.strictly_increasing([ints, pa.array(["b", "c", "a", "a"])])  # (2, "c") > (2, "a")
    assert not private.strictly_increasing([pa.array([1, 1]), pa.array(["x", "x"])])
    assert private.strictly_increasing([pa.array(["a", "ab", "b"])])


def test_unique_integer_order_sorts_only_keys_it_can_sort_alone():
    import numpy as np

    order = private.unique_integer_order([pa.array([30, -5, 7, 12])])
    assert order is not None and order.tolist() == [1, 2, 3, 0]
    assert private.unique_integer_order([pa.array([3, 1, 3])]) is None  # duplicates keep pypaimon's stable sort
    assert private.unique_integer_order([pa.array([3, None, 1])]) is None
    assert private.unique_integer_order([pa.array(["b", "a"])]) is None
    assert private.unique_integer_order([pa.array([2, 1]), pa.array([1, 2])]) is None
    chunked = pa.chunked_array([np.arange(5, 0, -1), np.arange(10, 5, -1)])
    assert private.unique_integer_order([chunked]).tolist() == [4, 3, 2, 1, 0, 9, 8, 7, 6, 5]


def test_a_buckets_rows_in_any_key_order_are_written_sorted(tmp_path):
    """Shuffled keys (numpy's sort), keys already in order (no sort) and a two-column key
    (pypaimon's sort): each data file holds its rows in key order, and the table reads back exact."""
    import numpy as np
    import pyarrow.parquet as pq

    from test_paimon_maintenance import open_table

    ids = np.random.default_rng(3).permutation(5_000)
    cases = [(SourceSchema.parse("id:BIGINT, v:STRING", primary_key=["id"]), ids, "shuffled"),
             (SourceSchema.parse("id:BIGINT, v:STRING", primary_key=["id"]), np.arange(5_000), "in_order"),
             (SourceSchema.parse("id:BIGINT, v:STRING", primary_key=["v", "id"]), ids, "two_columns")]
    for schema, keys, name in cases:
        properties = catalog_properties(tmp_path / name)
        writer = PaimonTableWriter(schema, name, properties, bucket=2)
        writer.open()
        commit_inserts(writer, [{"id": int(k), "v": f"v{int(k) % 7}"} for k in keys])
        for path in live_data_file_paths(open_table(properties, f"pixels.{name}")):
            stored = pq.read_table(path)
            key = [(c, "ascending") for c in stored.column_names if c.startswith("_KEY_")]
            assert stored.equals(stored.sort_by(key)), f"{name}: {path} is not in key order"
        assert sorted(r["id"] for r in writer.read_table().to_pylist()) == list(range(5_000)), name
