"""The keys: every ``pixels-client.properties`` key declared once, in :data:`KEYS`, with its
default, what it accepts and what it means; :func:`describe` is the reference made from it."""

from __future__ import annotations

from dataclasses import dataclass

from beam_pixels.config.validators import Bool, Buckets, Choice, Columns, ExistingFile, Int, Name, Names
from beam_pixels.config.validators import OptionalInt, OptionalLocation, Parser, PartitionSpec, Schema, Text
from beam_pixels.config.validators import Warehouse
from beam_pixels.schema import SCHEMA_EVOLUTION_MODES

SINK_TYPES = ("iceberg", "paimon")


@dataclass(frozen=True)
class Key:
    """One configuration key: its :class:`PixelsConfig` field, default, accepted values and meaning."""

    name: str
    field: str
    default: str
    parser: Parser
    doc: str
    section: str

    @property
    def accepted(self) -> str:
        return self.parser.accepted


_SERVER, _SOURCE, _SINK, _ICEBERG, _PAIMON = "Pixels server", "Source", "Sink", "Iceberg", "Paimon"
_TABLES = "Many tables"
_NO_HADOOP = "pyiceberg has no Hadoop catalog; use sql (local SQLite), glue or rest"

KEYS: tuple[Key, ...] = (
    Key("pixels.server.host", "server_host", "localhost", Text(), "Host of the Pixels sink server.", _SERVER),
    Key("pixels.server.port", "server_port", "50051", Int(1, 65535),
        "gRPC port of the Pixels sink server (a real pixels-sink listens on 9091).", _SERVER),
    Key("pixels.server.deadline.ms", "server_deadline_ms", "10000", Int(1),
        "Deadline of one PollEvents call, in milliseconds.", _SERVER),
    Key("pixels.server.max.message.mb", "server_max_message_mb", "256", Int(1, 2047),
        "Largest poll response accepted, in MiB.", _SERVER),
    Key("pixels.server.tls.enabled", "tls_enabled", "false", Bool(),
        "Connect with TLS instead of plaintext.", _SERVER),
    Key("pixels.server.tls.root.cert", "tls_root_cert", "", ExistingFile(),
        "PEM file of the CA certificates to trust (empty = the system's).", _SERVER),
    Key("pixels.server.tls.client.cert", "tls_client_cert", "", ExistingFile(),
        "PEM client certificate for mutual TLS (needs pixels.server.tls.client.key).", _SERVER),
    Key("pixels.server.tls.client.key", "tls_client_key", "", ExistingFile(),
        "PEM private key of the client certificate.", _SERVER),
    Key("schema.name", "schema_name", "public", Text(), "Pixels schema of the source table.", _SOURCE),
    Key("table.name", "table_name", "orders", Text(), "Pixels table to poll.", _SOURCE),
    Key("source.schema", "source_schema", "id:INT,data:STRING,price:DOUBLE", Schema(),
        "Columns of the source table in the order the server sends them, as name:TYPE pairs.", _SOURCE),
    Key("source.primary.key", "primary_key", "", Columns(),
        "Primary-key columns (empty = no key: the sinks append a changelog).", _SOURCE),
    Key("source.bucket.count", "bucket_count", "128", Int(1),
        "Number of buckets the server hashes keys into.", _SOURCE),
    Key("source.buckets", "buckets", "", Buckets(),
        "Buckets to poll, e.g. 0-127 or 0,3,5-9 (empty = all, 0..source.bucket.count-1).", _SOURCE),
    Key("source.parallelism", "parallelism", "1", Int(1),
        "Poll groups: the buckets are split among this many pollers (at most one per bucket).", _SOURCE),
    Key("source.poll.interval.ms", "poll_interval_ms", "1000", Int(0),
        "Back-off after an empty poll, in milliseconds.", _SOURCE),
    Key("source.stop.after.idle.ms", "stop_after_idle_ms", "0", Int(0),
        "End a bounded run after this many milliseconds without records (0 = never).", _SOURCE),
    Key("source.max.records", "max_records", "0", Int(0),
        "End a bounded run after this many records (0 = unlimited).", _SOURCE),
    Key("source.value.encoding", "value_encoding", "binary", Choice(("binary", "text")),
        "Value encoding on the wire: binary (canonical) or text (the seed's mock server).", _SOURCE),
    Key("source.empty.as.null", "empty_as_null", "false", Bool(),
        "Read empty STRING/BINARY values as NULL (for servers that predate is_null).", _SOURCE),
    Key("source.journal.dir", "journal_dir", "", OptionalLocation(),
        "Durable poll journal (path or URI): every response is stored before it is emitted and replayed "
        "after a crash. Empty = inside a local warehouse for local runs; off = no journal.", _SOURCE),
    Key("source.dead.letter.dir", "dead_letter_dir", "", OptionalLocation(),
        "Where undecodable records are written, one JSON file each (path or URI). Empty = inside a local "
        "warehouse for local runs; off = only logged and counted.", _SOURCE),
    Key("checkpoint.interval.ms", "checkpoint_interval_ms", "10000", Int(1),
        "Commit interval: one commit per window of this many milliseconds.", _SINK),
    Key("checkpoint.max.records", "checkpoint_max_records", "500000", Int(0),
        "Local runs: a round also commits after this many records, which bounds memory (0 = no limit).", _SINK),
    Key("sink.type", "sink_type", "iceberg", Choice(SINK_TYPES), "Table format to write.", _SINK),
    Key("sink.catalog.retry.ms", "catalog_retry_ms", "600000", Int(0),
        "How long commits, checkpoint reads and maintenance wait for a catalog that is briefly away (a locked "
        "SQLite file, a REST catalog restarting or answering 5xx, a refused connection), retrying with "
        "backoff; then the run stops, and a restart replays what was not committed (0 = stop at once).", _SINK),
    Key("sink.schema.evolution", "schema_evolution", "add-and-widen", Choice(SCHEMA_EVOLUTION_MODES),
        "How an existing table follows a changed source.schema: add-and-widen adds new columns (old rows read "
        "NULL) and widens types; none leaves the table alone and fails at start when it does not fit. "
        "See docs/schema-changes.md.", _SINK),
    Key("iceberg.catalog.type", "iceberg_catalog_type", "sql",
        Choice(("sql", "glue", "rest", "hive", "dynamodb"), refused={"hadoop": _NO_HADOOP}),
        "pyiceberg catalog type.", _ICEBERG),
    Key("iceberg.catalog.warehouse", "iceberg_warehouse", "./warehouse/iceberg", Warehouse(),
        "Warehouse location of new tables.", _ICEBERG),
    Key("iceberg.table.name", "iceberg_table", "iceberg_orders", Name(qualified=True),
        "Iceberg table to write, optionally as db.table.", _ICEBERG),
    Key("iceberg.database.name", "iceberg_database", "pixels", Name(qualified=False),
        "Iceberg namespace of the table (a db. prefix of iceberg.table.name sets it).", _ICEBERG),
    Key("iceberg.commit.retries", "iceberg_commit_retries", "5", Int(0),
        "Attempts after a failed Iceberg commit.", _ICEBERG),
    Key("iceberg.write.mode", "iceberg_write_mode", "merge-on-read", Choice(("merge-on-read", "copy-on-write")),
        "How a commit replaces keys: merge-on-read adds position-delete files and rewrites no data file; "
        "copy-on-write rewrites the data files holding touched keys (for readers that cannot apply deletes).",
        _ICEBERG),
    Key("iceberg.partition.spec", "iceberg_partition_spec", "", PartitionSpec(),
        "Partition spec of tables the sink creates, e.g. day(ts),bucket(16,id). An existing table keeps its own "
        "spec (also one another engine evolved); a different value here is logged as a warning and ignored. "
        "See docs/partitioned-tables.md.", _ICEBERG),
    Key("iceberg.maintenance.enabled", "iceberg_maintenance_enabled", "true", Bool(),
        "Run table maintenance (expire snapshots, delete unreachable and orphan files, compact, merge "
        "manifests) in the committer, between commits.", _ICEBERG),
    Key("iceberg.maintenance.interval.ms", "iceberg_maintenance_interval_ms", "30000", Int(1),
        "Least time between two maintenance passes, in milliseconds.", _ICEBERG),
    Key("iceberg.maintenance.budget.ms", "iceberg_maintenance_budget_ms", "30000", Int(1),
        "Time budget of one pass: deleting files stops when it is spent, compaction is not started.", _ICEBERG),
    Key("iceberg.maintenance.orphan.age.ms", "iceberg_maintenance_orphan_age_ms", "86400000", Int(3600000),
        "Files under the table location that nothing references are deleted once older than this "
        "(a safety window for other writers' files not yet committed).", _ICEBERG),
    Key("iceberg.maintenance.compaction.deleted.percent", "iceberg_maintenance_deleted_percent", "20", Int(1, 100),
        "A data file with at least this share of its rows deleted is rewritten without them.", _ICEBERG),
    Key("iceberg.maintenance.compaction.small.file.mb", "iceberg_maintenance_small_file_mb", "8", Int(0),
        "Data files smaller than this (MiB), and than a quarter of the files compaction writes, are merged "
        "together.", _ICEBERG),
    Key("iceberg.maintenance.compaction.target.file.mb", "iceberg_maintenance_target_file_mb", "128", Int(1),
        "Largest size (MiB) of the data files compaction writes, sorted by the primary key; below it, files of "
        "about compaction.max.percent of the table.", _ICEBERG),
    Key("iceberg.maintenance.compaction.max.mb", "iceberg_maintenance_max_compact_mb", "256", Int(1),
        "Data file bytes (MiB) one pass rewrites at most (bounds its time and memory).", _ICEBERG),
    Key("iceberg.maintenance.compaction.max.percent", "iceberg_maintenance_max_compact_percent", "10", Int(1, 100),
        "Share of the table's data bytes that the files with deletes one pass rewrites add up to at most (at least "
        "one file, or 1 MiB); compaction and large "
        "commits write files of about this share of the table (at most target.file.mb), so rewrites are "
        "spread over passes and the copies that retained snapshots keep stay small.", _ICEBERG),
    Key("iceberg.maintenance.max.manifests", "iceberg_maintenance_max_manifests", "16", Int(1),
        "Manifests of the current snapshot above which a pass merges them into one per content kind.", _ICEBERG),
    Key("iceberg.maintenance.max.delete.files", "iceberg_maintenance_max_delete_files", "2000", Int(1),
        "Position-delete files one pass folds at most (besides those naming files it rewrites): the partitions with "
        "most delete files first, each folded into one; the rest wait for the next pass. A merge-on-read commit "
        "writes a delete file per partition it deletes rows in, so keep this above a pass interval's worth.",
        _ICEBERG),
    Key("paimon.catalog.type", "paimon_catalog_type", "paimon",
        Choice(("filesystem",), aliases={"paimon": "filesystem"}),
        "Paimon catalog type (a filesystem catalog).", _PAIMON),
    Key("paimon.catalog.warehouse", "paimon_warehouse", "./warehouse/paimon", Warehouse(),
        "Warehouse location of the Paimon catalog.", _PAIMON),
    Key("paimon.table.name", "paimon_table", "paimon_orders", Name(qualified=True),
        "Paimon table to write, optionally as db.table.", _PAIMON),
    Key("paimon.database.name", "paimon_database", "pixels", Name(qualified=False),
        "Paimon database of the table (a db. prefix of paimon.table.name sets it).", _PAIMON),
    Key("paimon.commit.retries", "paimon_commit_retries", "5", Int(0),
        "Attempts after a failed Paimon commit.", _PAIMON),
    Key("paimon.bucket", "paimon_bucket", "4", Int(1),
        "Fixed number of buckets of a new primary-key Paimon table; size it for at most about 256 MB "
        "of data files per bucket (a full compaction merges a whole bucket in memory in one pass).", _PAIMON),
    Key("paimon.partition.keys", "paimon_partition_keys", "", Columns("comma-separated column names of "
                                                                       "source.schema, or empty for none"),
        "Partition columns of a new Paimon table (an existing table keeps its own). A keyed table's Paimon "
        "primary key gets them appended, as Paimon requires; an update that moves a row to another partition "
        "deletes it there through a deletion vector, so unless the source key holds them all they need "
        "deletion vectors (the default; not paimon.write-only). See docs/partitioned-tables.md.", _PAIMON),
    Key("paimon.compaction.trigger", "paimon_compaction_trigger", "", OptionalInt(1),
        "Compact a bucket once it holds this many sorted runs (Paimon's "
        "num-sorted-run.compaction-trigger; empty = the table's option, else 5).", _PAIMON),
    Key("paimon.compaction.max-mb-per-pass", "paimon_compaction_max_mb", "256", Int(1),
        "Input megabytes one maintenance pass compacts at most (at least one bucket; of an append table at "
        "least two files), so commits keep their interval; the rest waits for the next pass, where the "
        "buckets that waited go first.", _PAIMON),
    Key("paimon.compaction.file-percent", "paimon_compaction_file_percent", "25", Int(1, 100),
        "Deletion-vector tables: compaction writes files of about this share of their bucket's live rows "
        "(at least 65,536, a deletion vector's container; a large commit: of its rows per bucket, at least "
        "10,000), so that deleted rows are reclaimed a file at a time.", _PAIMON),
    Key("paimon.write-only", "paimon_write_only", "false", Bool(),
        "Neither compact nor expire snapshots (also when the table has write-only=true): leave both to "
        "Paimon's dedicated compaction job.", _PAIMON),
    Key("tables", "table_labels", "", Names(),
        "Several tables in one job: their names, e.g. orders,customers (empty = the one table the other keys "
        "describe). Each table takes every key above, set for it alone as table.<name>.<key>; see below and "
        "docs/many-tables.md.", _TABLES),
)

# Keys one job has once, for all its tables: not set per table (table.<name>.<key>).
JOB_WIDE = ("tables", "checkpoint.interval.ms")
# Where a table's own keys start: table.<name>.<key>.
TABLE_PREFIX = "table."

KEY_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}

# Keys under these prefixes pass through to the sink's catalog with the prefix removed.
_PASSTHROUGH = {sink: f"{sink}.catalog." for sink in SINK_TYPES}
# Keys under these prefixes set table properties (Iceberg) / table options (Paimon) of the tables
# the connector creates, with the prefix removed.
_TABLE_PROPERTIES = {"iceberg": "iceberg.table.properties.", "paimon": "paimon.table.options."}


def describe() -> str:
    """The configuration reference as Markdown, one table per section, generated from :data:`KEYS`."""
    out: list[str] = []
    for section in dict.fromkeys(k.section for k in KEYS):
        out += [f"### {section}", "", "| key | default | accepted | meaning |", "|---|---|---|---|"]
        out += [
            f"| `{k.name}` | {f'`{k.default}`' if k.default else '(empty)'} | {k.accepted} | {k.doc} |"
            for k in KEYS
            if k.section == section
        ]
        out.append("")
    out.append(
        "Every `iceberg.catalog.<k>` / `paimon.catalog.<k>` key is also passed to the catalog as `<k>` "
        "(e.g. `iceberg.catalog.glue.region`, `paimon.catalog.s3.endpoint`). "
        "Every `paimon.table.options.<name>=<value>` sets the Paimon table option `<name>` on tables the "
        "connector creates (e.g. `paimon.table.options.snapshot.time-retained=1 min`). Primary-key tables "
        "the connector creates get `deletion-vectors.enabled=true`, `num-levels=16` and "
        "`compaction.delete-ratio-threshold=0.35` (Paimon's default: 0.2, which their compaction honours on other "
        "tables) unless set otherwise or write-only."
    )
    out.append("")
    out.append(
        "Every `iceberg.table.properties.<name>=<value>` key sets the Iceberg table property `<name>` on tables "
        "the sink creates (e.g. `iceberg.table.properties.history.expire.max-snapshot-age-ms=60000`); an existing "
        "table keeps its own properties. Tables the sink creates get, unless set otherwise: `format-version=2`, "
        "`write.metadata.delete-after-commit.enabled=true`, `write.metadata.previous-versions-max=10`, "
        "`history.expire.max-snapshot-age-ms=300000`, `history.expire.min-snapshots-to-keep=5`."
    )
    out.append("")
    out.append(
        "With `tables` set, every `table.<name>.<key>=<value>` sets `<key>` for table `<name>` alone, over the "
        "shared `<key>` (any key above, the catalog, table property and table option keys too, except "
        f"{', '.join(f'`{k}`' for k in JOB_WIDE)}). A table's `table.name` defaults to its name, its "
        "`iceberg.table.name` and `paimon.table.name` to its `table.name`; a shared `source.journal.dir` gets "
        "a folder per table (`<dir>/<schema>.<table>`). See docs/many-tables.md."
    )
    return "\n".join(out) + "\n"
