"""Every use of pyiceberg's private API in the connector, and nothing else.

pyiceberg 0.12 cannot write position deletes, nor remove delete files, nor
rewrite manifests. :func:`commit_file_changes` does all three with a snapshot
producer derived from pyiceberg's private ``_SnapshotProducer`` (its constructor,
``_manifests``, ``_existing_manifests``, ``_deleted_entries``, ``_summary`` (replaced),
``_validate_concurrency``, ``new_manifest_output`` and the attributes
``_added_data_files``, ``_deleted_data_files``, ``_parent_snapshot_id``,
``_snapshot_id``, ``_compression``, ``_transaction._table``), a subclass of
``ManifestWriterV2`` that reports ``content=deletes`` (``content``, ``_meta``) and a
subclass of ``Transaction`` whose ``table_metadata`` is computed once per state of the
transaction (``_table``, ``_updates``).

pyiceberg internals without an underscore but not documented as API, used as
``append`` and ``scan`` use them: :func:`write_parquet_files` (``write_file`` over
``WriteTask``s with their ``partition_key``, ``pyarrow_to_schema``), :func:`file_reader` (``ArrowScan``) and
:func:`promotable` (``promote``).

``tests/test_pyiceberg_private.py`` fails loudly when an upgrade changes them.
"""

from __future__ import annotations

import typing
from collections import defaultdict

import pyarrow as pa
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, pyarrow_to_schema, write_file
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
    ManifestWriterV2,
)
from pyiceberg.partitioning import PartitionKey
from pyiceberg.schema import Schema, promote
from pyiceberg.table import Table, TableProperties, Transaction, WriteTask
from pyiceberg.table.snapshots import Operation, SnapshotSummaryCollector, Summary, update_snapshot_summaries
from pyiceberg.table.update.snapshot import _SnapshotProducer
from pyiceberg.typedef import EMPTY_DICT
from pyiceberg.types import IcebergType

from beam_pixels.sinks.iceberg.manifests import MANIFESTS


def write_parquet_files(
    table: Table,
    schema: pa.Schema,
    batches: list[list[pa.RecordBatch]],
    write_uuid,
    partitions: typing.Sequence[PartitionKey | None] | None = None,
) -> list[DataFile]:
    """Parquet data files of ``table``, one per list of record batches (rows of Arrow
    ``schema``), not committed; pyiceberg writes them in parallel, with the table's Parquet
    properties and column statistics, as ``Transaction.append`` does. ``partitions[i]`` is
    the partition (of the table's current spec) of every row of ``batches[i]``: it sets the
    file's partition tuple and its directory, as a partitioned ``append`` does."""
    metadata = table.metadata
    task_schema = pyarrow_to_schema(schema, name_mapping=metadata.schema().name_mapping, format_version=metadata.format_version)
    keys = partitions if partitions is not None else [None] * len(batches)
    tasks = [
        WriteTask(write_uuid=write_uuid, task_id=i, schema=task_schema, record_batches=records, partition_key=key)
        for i, (records, key) in enumerate(zip(batches, keys))
    ]
    written = list(write_file(table.io, metadata, iter(tasks)))
    for data_file in written:  # as a manifest reader sets it: the spec the file was written under
        data_file.spec_id = metadata.default_spec_id
    return written


def file_reader(table: Table, schema: Schema) -> ArrowScan:
    """A reader of planned scan tasks (``.to_table(tasks)``): their rows in ``schema``'s
    columns, deletes applied, as ``DataScan.to_arrow`` reads them."""
    return ArrowScan(table.metadata, table.io, schema, AlwaysTrue())


def promotable(source: IcebergType, target: IcebergType) -> bool:
    """Whether values of Iceberg type ``source`` can be written to a column of type ``target``
    (the same type, or one pyiceberg's schema evolution promotes to it)."""
    if source == target:
        return True
    try:
        promote(source, target)
    except Exception:  # pyiceberg raises ResolveError, or TypeError for unrelated types
        return False
    return True


class _DeleteManifestWriter(ManifestWriterV2):
    """A v2 manifest writer for delete files: pyiceberg's only writes ``content=data``."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


def _manifest_content(data_file: DataFile) -> ManifestContent:
    return ManifestContent.DATA if data_file.content == DataFileContent.DATA else ManifestContent.DELETES


class _FileChanges(_SnapshotProducer["_FileChanges"]):
    """One snapshot that adds data and delete files and removes any files.

    An added file goes into a manifest of its own ``spec_id`` (which ``DataFile.from_args``
    leaves unset: set it): a position-delete file for rows of a data file written under an
    older partition spec has that spec and partition.

    Without removals the parent's manifests are kept as they are (one new manifest
    per content kind). With removals, the manifests holding removed files are rewritten,
    with the added files, every live entry into one manifest per content kind and spec,
    and the others kept (their live files read once per process, from
    :data:`~beam_pixels.sinks.iceberg.manifests.MANIFESTS`): a commit that replaces the
    delete files the commit before it added rewrites that commit's delete manifest only.
    With ``rewrite_manifests`` every manifest is rewritten, which also bounds their number.
    """

    def __init__(
        self,
        transaction: Transaction,
        operation: Operation,
        properties: dict[str, str],
        added: typing.Sequence[DataFile],
        removed: typing.Sequence[DataFile],
        rewrite_manifests: bool,
    ):
        # pyiceberg's summary code knows no REPLACE: build it as an OVERWRITE, relabel it in _summary.
        super().__init__(
            Operation.OVERWRITE if operation == Operation.REPLACE else operation,
            transaction,
            transaction._table.io,
            snapshot_properties=properties,
        )
        self._final_operation = operation
        self._added_data_files = list(added)  # data and delete files: the summary counts both kinds
        self._deleted_data_files = set(removed)
        self._removed_paths = {f.file_path for f in removed}
        self._rewrite_all = rewrite_manifests
        self._rewrite = {_manifest_content(f) for f in removed}

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        """pyiceberg's summary, with every added file counted under its own spec (pyiceberg
        counts them under the current one, which fails for a file of an older spec)."""
        metadata = self._transaction.table_metadata
        schema, specs = metadata.schema(), metadata.specs()
        limit = int(metadata.properties.get(TableProperties.WRITE_PARTITION_SUMMARY_LIMIT,
                                            TableProperties.WRITE_PARTITION_SUMMARY_LIMIT_DEFAULT))
        collector = SnapshotSummaryCollector(partition_summary_limit=limit)
        for data_file in self._added_data_files:
            collector.add_file(data_file=data_file, partition_spec=specs[data_file.spec_id], schema=schema)
        for data_file in self._deleted_data_files:
            collector.remove_file(data_file=data_file, partition_spec=specs[data_file.spec_id], schema=schema)
        parent = metadata.snapshot_by_id(self._parent_snapshot_id) if self._parent_snapshot_id is not None else None
        summary = update_snapshot_summaries(  # which knows no REPLACE: relabelled after
            summary=Summary(operation=self._operation, **collector.build(), **snapshot_properties),
            previous_summary=parent.summary if parent is not None else None,
        )
        return Summary(self._final_operation, **summary.additional_properties)

    def _validate_concurrency(self) -> None:
        """Nothing to validate: the commit requires the branch head it was built on."""

    def _deleted_entries(self) -> list[ManifestEntry]:
        return []

    def _existing_manifests(self) -> list[ManifestFile]:
        parent = self._transaction.table_metadata.snapshot_by_id(self._parent_snapshot_id) if self._parent_snapshot_id else None
        return parent.manifests(io=self._io) if parent is not None else []

    def _writer(self, content: ManifestContent, spec_id: int) -> ManifestWriterV2:
        kind = _DeleteManifestWriter if content == ManifestContent.DELETES else ManifestWriterV2
        return kind(self.spec(spec_id), self.schema(), self.new_manifest_output(), self._snapshot_id, self._compression)

    def _write(self, entries: list[tuple[int, ManifestEntry]]) -> list[ManifestFile]:
        """Manifests holding ``(spec id, entry)`` pairs, one per content kind and spec."""
        groups: dict[tuple[ManifestContent, int], list[ManifestEntry]] = defaultdict(list)
        for spec_id, entry in entries:
            groups[(_manifest_content(entry.data_file), spec_id)].append(entry)
        written = []
        for (content, spec_id), group in groups.items():
            with self._writer(content, spec_id) as writer:
                for entry in group:
                    writer.add_entry(entry)
            written.append(writer.to_manifest_file())
        return written

    def _holds_removed(self, entries: typing.Iterable[ManifestEntry]) -> bool:
        return any(e.data_file.file_path in self._removed_paths for e in entries)

    def _manifests(self) -> list[ManifestFile]:
        entries = [
            (
                data_file.spec_id,
                ManifestEntry.from_args(
                    status=ManifestEntryStatus.ADDED,
                    snapshot_id=self._snapshot_id,
                    sequence_number=None,
                    file_sequence_number=None,
                    data_file=data_file,
                ),
            )
            for data_file in self._added_data_files
        ]
        kept, rewritten = [], []
        for manifest in self._existing_manifests():
            if self._rewrite_all:
                rewritten.append((manifest, manifest.fetch_manifest_entry(io=self._io, discard_deleted=True)))
            elif manifest.content in self._rewrite and self._holds_removed(live := MANIFESTS.entries(self._io, manifest)):
                rewritten.append((manifest, live))
            elif manifest.has_added_files() or manifest.has_existing_files():
                kept.append(manifest)
        for manifest, live in rewritten:
            for entry in live:
                gone = entry.data_file.file_path in self._removed_paths
                entries.append(
                    (
                        manifest.partition_spec_id,
                        ManifestEntry.from_args(
                            status=ManifestEntryStatus.DELETED if gone else ManifestEntryStatus.EXISTING,
                            snapshot_id=self._snapshot_id if gone else entry.snapshot_id,
                            sequence_number=entry.sequence_number,
                            file_sequence_number=entry.file_sequence_number,
                            data_file=entry.data_file,
                        ),
                    )
                )
        found = {e.data_file.file_path for _, e in entries if e.status == ManifestEntryStatus.DELETED}
        if missing := self._removed_paths - found:
            raise ValueError(f"files to remove are not in the table: {sorted(missing)[:3]}")
        return self._write(entries) + kept


class _Transaction(Transaction):
    """pyiceberg's transaction, with ``table_metadata`` computed once per state (base metadata,
    staged updates) instead of on every access: pyiceberg applies the staged updates and
    deep-copies the whole metadata (every snapshot, the snapshot log) each time, and a snapshot
    producer reads it about twenty times per commit, so each commit cost more the more snapshots
    the table kept (0.03 s -> 0.15 s of CPU from 2 to 160 snapshots). The metadata models are frozen."""

    _computed: tuple | None = None  # ((base metadata, updates), metadata)

    @property
    def table_metadata(self):
        state = (self._table.metadata, self._updates)
        if self._computed is None or any(a is not b for a, b in zip(self._computed[0], state)):
            self._computed = (state, super().table_metadata)
        return self._computed[1]


def commit_file_changes(
    table: Table,
    properties: dict[str, str],
    *,
    added: typing.Sequence[DataFile] = (),
    removed: typing.Sequence[DataFile] = (),
    operation: Operation = Operation.OVERWRITE,
    rewrite_manifests: bool = False,
) -> int:
    """Commit one snapshot on ``table``'s current state that adds ``added`` (data and
    position-delete files) and removes ``removed``; returns its id. Raises pyiceberg's
    ``CommitFailedException`` when another writer committed first (given no retries)."""
    transaction = _Transaction(table)
    producer = _FileChanges(transaction, operation, properties, added, removed, rewrite_manifests)
    producer.commit()
    transaction.commit_transaction()
    return producer.snapshot_id

