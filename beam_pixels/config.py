"""Configuration: the ``pixels-client.properties`` keys and the validated :class:`PixelsConfig`.

Every key is declared once, in :data:`KEYS`, with its default, what it accepts and
what it means. Parsing, validation, the unknown-key check and the reference
documentation (:func:`describe`) all read that table. Keys under
``iceberg.catalog.`` and ``paimon.catalog.`` also pass through to the catalogs
with that prefix removed (see :meth:`PixelsConfig.catalog_properties`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jproperties

from beam_pixels.schema import SchemaError, SourceSchema

_log = logging.getLogger(__name__)

SINK_TYPES = ("iceberg", "paimon")


class ConfigError(ValueError):
    """A configuration value is not valid; the message names the key, the value and what is accepted."""


class SinkConfigurationError(ConfigError):
    """A sink setting cannot work (an unusable catalog, a table that does not fit the
    schema); raised by the sinks, the message names the setting and what to do."""


def _invalid(key: str, value: str, accepted: str, problem: str = "") -> ConfigError:
    why = f" ({problem})" if problem else ""
    return ConfigError(f"{key}={value!r} is not valid{why}; accepted: {accepted}")


class _Rejected(Exception):
    """Raised by a value parser with what is wrong; the caller adds the key and the value."""


# ---------------------------------------------------------------------------
# Value parsers: each turns one stripped string into a typed value and says what it accepts.


class _Parser(Protocol):
    accepted: str

    def __call__(self, text: str) -> Any: ...


_INT_RE = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True)
class _Int:
    lo: int
    hi: int | None = None

    @property
    def accepted(self) -> str:
        return f"an integer in {self.lo}..{self.hi}" if self.hi is not None else f"an integer >= {self.lo}"

    def __call__(self, text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise _Rejected("not an integer")
        n = int(text)
        if n < self.lo or (self.hi is not None and n > self.hi):
            raise _Rejected("out of range")
        return n


@dataclass(frozen=True)
class _OptionalInt:
    lo: int

    @property
    def accepted(self) -> str:
        return f"empty or an integer >= {self.lo}"

    def __call__(self, text: str) -> int | None:
        return _Int(self.lo)(text) if text else None


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class _Bool:
    accepted: str = "true, false, yes, no, 1 or 0 (any case)"

    def __call__(self, text: str) -> bool:
        try:
            return _BOOLEANS[text.lower()]
        except KeyError:
            raise _Rejected("not a boolean") from None


@dataclass(frozen=True)
class _Choice:
    """One of ``choices`` (any case); ``aliases`` map to a choice, ``refused`` values get a reason."""

    choices: tuple[str, ...]
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def accepted(self) -> str:
        names = [*self.choices, *(f"{a} (= {c})" for a, c in self.aliases.items())]
        return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names) + ", any case"

    def __call__(self, text: str) -> str:
        word = text.lower()
        if word in self.refused:
            raise _Rejected(self.refused[word])
        word = self.aliases.get(word, word)
        if word not in self.choices:
            raise _Rejected("unknown choice")
        return word


@dataclass(frozen=True)
class _Text:
    accepted: str = "a non-empty string"

    def __call__(self, text: str) -> str:
        if not text:
            raise _Rejected("empty")
        return text


_PART = r"[A-Za-z0-9_-]+"


@dataclass(frozen=True)
class _Name:
    """A catalog identifier; ``qualified`` also allows one ``db.`` prefix."""

    qualified: bool

    @property
    def accepted(self) -> str:
        base = "letters, digits, '_' and '-'"
        return f"{base}, with at most one 'db.' prefix" if self.qualified else base

    def __call__(self, text: str) -> str:
        pattern = rf"(?:{_PART}\.)?{_PART}" if self.qualified else _PART
        if not re.fullmatch(pattern, text):
            raise _Rejected("not a valid name")
        return text


def _absolute(path: str) -> str:
    """``path`` made absolute against the current directory, so the value means the same on every worker."""
    return os.path.abspath(os.path.expanduser(path))


@dataclass(frozen=True)
class _ExistingFile:
    """An optional path of an existing file (empty = None), made absolute."""

    accepted: str = "the path of an existing file, or empty"

    def __call__(self, text: str) -> Path | None:
        if not text:
            return None
        path = Path(_absolute(text))
        if not path.is_file():
            raise _Rejected("no such file")
        return path


LOCATION_OFF = "off"

_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


@dataclass(frozen=True)
class _Warehouse:
    accepted: str = (
        "a URI such as s3://bucket/path or file:///abs/path, or a local path "
        "(a relative path is resolved against the current directory)"
    )

    def __call__(self, text: str) -> str:
        if not text:
            raise _Rejected("empty")
        if _URI_RE.match(text):
            return text
        return "file://" + _absolute(text)


@dataclass(frozen=True)
class _OptionalLocation:
    """Empty (automatic), ``off``, or a location like a warehouse."""

    accepted: str = "empty (automatic), off, or a directory path or URI such as s3://bucket/path"

    def __call__(self, text: str) -> str:
        if not text or text.lower() == LOCATION_OFF:
            return text.lower()
        return _Warehouse()(text)


@dataclass(frozen=True)
class _Buckets:
    """Bucket numbers as lists and ranges (``0-127``, ``0,3,5-9``); empty = every bucket (an empty tuple)."""

    accepted: str = "bucket numbers and ranges such as 0-127 or 0,3,5-9, each bucket once, or empty for all"

    def __call__(self, text: str) -> tuple[int, ...]:
        buckets: list[int] = []
        for item in filter(None, (part.strip() for part in text.split(","))):
            m = re.fullmatch(r"([0-9]+)(?:\s*-\s*([0-9]+))?", item)
            if not m:
                raise _Rejected(f"{item!r} is not a bucket number or range")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise _Rejected(f"range {item!r} runs backwards")
            buckets.extend(range(lo, hi + 1))
        duplicates = sorted({b for b in buckets if buckets.count(b) > 1})
        if duplicates:
            raise _Rejected(f"bucket {duplicates[0]} is listed twice")
        return tuple(buckets)


@dataclass(frozen=True)
class _Schema:
    accepted: str = "comma-separated name:TYPE columns, e.g. id:BIGINT,name:STRING,price:DECIMAL(10,2)"

    def __call__(self, text: str) -> SourceSchema:
        try:
            return SourceSchema.parse(text)
        except SchemaError as e:
            raise _Rejected(str(e)) from None


@dataclass(frozen=True)
class _Columns:
    accepted: str = "comma-separated column names of source.schema, or empty for no key"

    def __call__(self, text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",")) if text else ()
        if "" in names:
            raise _Rejected("empty column name")
        return names


# ---------------------------------------------------------------------------
# The keys.


@dataclass(frozen=True)
class Key:
    """One configuration key: its :class:`PixelsConfig` field, default, accepted values and meaning."""

    name: str
    field: str
    default: str
    parser: _Parser
    doc: str
    section: str

    @property
    def accepted(self) -> str:
        return self.parser.accepted


_SERVER, _SOURCE, _SINK, _ICEBERG, _PAIMON = "Pixels server", "Source", "Sink", "Iceberg", "Paimon"
_NO_HADOOP = "pyiceberg has no Hadoop catalog; use sql (local SQLite), glue or rest"

KEYS: tuple[Key, ...] = (
    Key("pixels.server.host", "server_host", "localhost", _Text(), "Host of the Pixels sink server.", _SERVER),
    Key("pixels.server.port", "server_port", "50051", _Int(1, 65535),
        "gRPC port of the Pixels sink server (a real pixels-sink listens on 9091).", _SERVER),
    Key("pixels.server.deadline.ms", "server_deadline_ms", "10000", _Int(1),
        "Deadline of one PollEvents call, in milliseconds.", _SERVER),
    Key("pixels.server.max.message.mb", "server_max_message_mb", "256", _Int(1, 2047),
        "Largest poll response accepted, in MiB.", _SERVER),
    Key("pixels.server.tls.enabled", "tls_enabled", "false", _Bool(),
        "Connect with TLS instead of plaintext.", _SERVER),
    Key("pixels.server.tls.root.cert", "tls_root_cert", "", _ExistingFile(),
        "PEM file of the CA certificates to trust (empty = the system's).", _SERVER),
    Key("pixels.server.tls.client.cert", "tls_client_cert", "", _ExistingFile(),
        "PEM client certificate for mutual TLS (needs pixels.server.tls.client.key).", _SERVER),
    Key("pixels.server.tls.client.key", "tls_client_key", "", _ExistingFile(),
        "PEM private key of the client certificate.", _SERVER),
    Key("schema.name", "schema_name", "public", _Text(), "Pixels schema of the source table.", _SOURCE),
    Key("table.name", "table_name", "orders", _Text(), "Pixels table to poll.", _SOURCE),
    Key("source.schema", "source_schema", "id:INT,data:STRING,price:DOUBLE", _Schema(),
        "Columns of the source table in the order the server sends them, as name:TYPE pairs.", _SOURCE),
    Key("source.primary.key", "primary_key", "", _Columns(),
        "Primary-key columns (empty = no key: the sinks append a changelog).", _SOURCE),
    Key("source.bucket.count", "bucket_count", "128", _Int(1),
        "Number of buckets the server hashes keys into.", _SOURCE),
    Key("source.buckets", "buckets", "", _Buckets(),
        "Buckets to poll, e.g. 0-127 or 0,3,5-9 (empty = all, 0..source.bucket.count-1).", _SOURCE),
    Key("source.parallelism", "parallelism", "1", _Int(1),
        "Poll groups: the buckets are split among this many pollers (at most one per bucket).", _SOURCE),
    Key("source.poll.interval.ms", "poll_interval_ms", "1000", _Int(0),
        "Back-off after an empty poll, in milliseconds.", _SOURCE),
    Key("source.stop.after.idle.ms", "stop_after_idle_ms", "0", _Int(0),
        "End a bounded run after this many milliseconds without records (0 = never).", _SOURCE),
    Key("source.max.records", "max_records", "0", _Int(0),
        "End a bounded run after this many records (0 = unlimited).", _SOURCE),
    Key("source.value.encoding", "value_encoding", "binary", _Choice(("binary", "text")),
        "Value encoding on the wire: binary (canonical) or text (the seed's mock server).", _SOURCE),
    Key("source.empty.as.null", "empty_as_null", "false", _Bool(),
        "Read empty STRING/BINARY values as NULL (for servers that predate is_null).", _SOURCE),
    Key("source.journal.dir", "journal_dir", "", _OptionalLocation(),
        "Durable poll journal (path or URI): every response is stored before it is emitted and replayed "
        "after a crash. Empty = inside a local warehouse for local runs; off = no journal.", _SOURCE),
    Key("source.dead.letter.dir", "dead_letter_dir", "", _OptionalLocation(),
        "Where undecodable records are written, one JSON file each (path or URI). Empty = inside a local "
        "warehouse for local runs; off = only logged and counted.", _SOURCE),
    Key("checkpoint.interval.ms", "checkpoint_interval_ms", "10000", _Int(1),
        "Commit interval: one commit per window of this many milliseconds.", _SINK),
    Key("checkpoint.max.records", "checkpoint_max_records", "500000", _Int(0),
        "Local runs: a round also commits after this many records, which bounds memory (0 = no limit).", _SINK),
    Key("sink.type", "sink_type", "iceberg", _Choice(SINK_TYPES), "Table format to write.", _SINK),
    Key("sink.catalog.retry.ms", "catalog_retry_ms", "600000", _Int(0),
        "How long commits, checkpoint reads and maintenance wait for a catalog that is briefly away (a locked "
        "SQLite file, a REST catalog restarting or answering 5xx, a refused connection), retrying with "
        "backoff; then the run stops, and a restart replays what was not committed (0 = stop at once).", _SINK),
    Key("iceberg.catalog.type", "iceberg_catalog_type", "sql",
        _Choice(("sql", "glue", "rest", "hive", "dynamodb"), refused={"hadoop": _NO_HADOOP}),
        "pyiceberg catalog type.", _ICEBERG),
    Key("iceberg.catalog.warehouse", "iceberg_warehouse", "./warehouse/iceberg", _Warehouse(),
        "Warehouse location of new tables.", _ICEBERG),
    Key("iceberg.table.name", "iceberg_table", "iceberg_orders", _Name(qualified=True),
        "Iceberg table to write, optionally as db.table.", _ICEBERG),
    Key("iceberg.database.name", "iceberg_database", "pixels", _Name(qualified=False),
        "Iceberg namespace of the table (a db. prefix of iceberg.table.name sets it).", _ICEBERG),
    Key("iceberg.commit.retries", "iceberg_commit_retries", "5", _Int(0),
        "Attempts after a failed Iceberg commit.", _ICEBERG),
    Key("iceberg.write.mode", "iceberg_write_mode", "merge-on-read", _Choice(("merge-on-read", "copy-on-write")),
        "How a commit replaces keys: merge-on-read adds position-delete files and rewrites no data file; "
        "copy-on-write rewrites the data files holding touched keys (for readers that cannot apply deletes).",
        _ICEBERG),
    Key("iceberg.maintenance.enabled", "iceberg_maintenance_enabled", "true", _Bool(),
        "Run table maintenance (expire snapshots, delete unreachable and orphan files, compact, merge "
        "manifests) in the committer, between commits.", _ICEBERG),
    Key("iceberg.maintenance.interval.ms", "iceberg_maintenance_interval_ms", "30000", _Int(1),
        "Least time between two maintenance passes, in milliseconds.", _ICEBERG),
    Key("iceberg.maintenance.budget.ms", "iceberg_maintenance_budget_ms", "30000", _Int(1),
        "Time budget of one pass: deleting files stops when it is spent, compaction is not started.", _ICEBERG),
    Key("iceberg.maintenance.orphan.age.ms", "iceberg_maintenance_orphan_age_ms", "86400000", _Int(3600000),
        "Files under the table location that nothing references are deleted once older than this "
        "(a safety window for other writers' files not yet committed).", _ICEBERG),
    Key("iceberg.maintenance.compaction.deleted.percent", "iceberg_maintenance_deleted_percent", "20", _Int(1, 100),
        "A data file with at least this share of its rows deleted is rewritten without them.", _ICEBERG),
    Key("iceberg.maintenance.compaction.small.file.mb", "iceberg_maintenance_small_file_mb", "8", _Int(0),
        "Data files smaller than this (MiB), and than a quarter of the files compaction writes, are merged "
        "together.", _ICEBERG),
    Key("iceberg.maintenance.compaction.target.file.mb", "iceberg_maintenance_target_file_mb", "128", _Int(1),
        "Largest size (MiB) of the data files compaction writes, sorted by the primary key; below it, files of "
        "about compaction.max.percent of the table.", _ICEBERG),
    Key("iceberg.maintenance.compaction.max.mb", "iceberg_maintenance_max_compact_mb", "256", _Int(1),
        "Data file bytes (MiB) one pass rewrites at most (bounds its time and memory).", _ICEBERG),
    Key("iceberg.maintenance.compaction.max.percent", "iceberg_maintenance_max_compact_percent", "10", _Int(1, 100),
        "Share of the table's data bytes that the files with deletes one pass rewrites add up to at most (at least "
        "one file, or 1 MiB); compaction and large "
        "commits write files of about this share of the table (at most target.file.mb), so rewrites are "
        "spread over passes and the copies that retained snapshots keep stay small.", _ICEBERG),
    Key("iceberg.maintenance.max.manifests", "iceberg_maintenance_max_manifests", "16", _Int(1),
        "Manifests of the current snapshot above which a pass merges them into one per content kind.", _ICEBERG),
    Key("paimon.catalog.type", "paimon_catalog_type", "paimon",
        _Choice(("filesystem",), aliases={"paimon": "filesystem"}),
        "Paimon catalog type (a filesystem catalog).", _PAIMON),
    Key("paimon.catalog.warehouse", "paimon_warehouse", "./warehouse/paimon", _Warehouse(),
        "Warehouse location of the Paimon catalog.", _PAIMON),
    Key("paimon.table.name", "paimon_table", "paimon_orders", _Name(qualified=True),
        "Paimon table to write, optionally as db.table.", _PAIMON),
    Key("paimon.database.name", "paimon_database", "pixels", _Name(qualified=False),
        "Paimon database of the table (a db. prefix of paimon.table.name sets it).", _PAIMON),
    Key("paimon.commit.retries", "paimon_commit_retries", "5", _Int(0),
        "Attempts after a failed Paimon commit.", _PAIMON),
    Key("paimon.bucket", "paimon_bucket", "4", _Int(1),
        "Fixed number of buckets of a new primary-key Paimon table; size it for at most about 256 MB "
        "of data files per bucket (a full compaction merges a whole bucket in memory in one pass).", _PAIMON),
    Key("paimon.compaction.trigger", "paimon_compaction_trigger", "", _OptionalInt(1),
        "Compact a bucket once it holds this many sorted runs (Paimon's "
        "num-sorted-run.compaction-trigger; empty = the table's option, else 5).", _PAIMON),
    Key("paimon.compaction.max-mb-per-pass", "paimon_compaction_max_mb", "256", _Int(1),
        "Input megabytes one maintenance pass compacts at most (at least one bucket; of an append table at "
        "least two files), so commits keep their interval; the rest waits for the next pass.", _PAIMON),
    Key("paimon.compaction.file-percent", "paimon_compaction_file_percent", "25", _Int(1, 100),
        "Deletion-vector tables: compaction writes files of at most this share of their bucket's live rows "
        "(a large commit: of its rows per bucket; at least 10,000 rows), so that deleted rows are reclaimed "
        "a file at a time.", _PAIMON),
    Key("paimon.write-only", "paimon_write_only", "false", _Bool(),
        "Neither compact nor expire snapshots (also when the table has write-only=true): leave both to "
        "Paimon's dedicated compaction job.", _PAIMON),
)

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
        "the connector creates get `deletion-vectors.enabled=true` and `num-levels=12` unless set otherwise or write-only; "
        "their compaction honours Paimon's `compaction.delete-ratio-threshold` (0.2)."
    )
    out.append("")
    out.append(
        "Every `iceberg.table.properties.<name>=<value>` key sets the Iceberg table property `<name>` on tables "
        "the sink creates (e.g. `iceberg.table.properties.history.expire.max-snapshot-age-ms=60000`); an existing "
        "table keeps its own properties. Tables the sink creates get, unless set otherwise: `format-version=2`, "
        "`write.metadata.delete-after-commit.enabled=true`, `write.metadata.previous-versions-max=10`, "
        "`history.expire.max-snapshot-age-ms=300000`, `history.expire.min-snapshots-to-keep=5`."
    )
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Secrets.

_SECRET_WORDS = re.compile(
    r"secret|password|passwd|token|credential|access-key|account-key|private-key|api-key|session|authorization"
)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^/@\s]*@")


def _is_secret(key: str) -> bool:
    """Whether ``key`` looks like it holds a secret (any unknown key ending in ``key`` counts)."""
    k = key.lower().replace("_", "-")
    return bool(_SECRET_WORDS.search(k)) or (key not in KEY_BY_NAME and k.endswith("key"))


# ---------------------------------------------------------------------------
# Reading properties.

_LINE_BREAK = re.compile(r"(\r\n|\r|\n)")


def _blank_comments(text: str) -> str:
    """Blank out comment lines.

    jproperties reads ``#:`` comments as metadata and rejects some (``#:`` alone),
    where Java ignores every comment; a comment carries nothing, so drop its text.
    """
    parts = _LINE_BREAK.split(text)
    continued = False
    for i in range(0, len(parts), 2):
        line = parts[i]
        comment = not continued and line.lstrip(" \t\f")[:1] in ("#", "!")
        if comment:
            parts[i] = ""
        continued = not comment and (len(line) - len(line.rstrip("\\"))) % 2 == 1
    return "".join(parts)


def load_properties(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a Java ``.properties`` file into a dict.

    The file is read as UTF-8 (a byte-order mark is dropped), or as ISO-8859-1
    when it is not valid UTF-8, as Java 9+ resource bundles do.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read properties file {os.fspath(path)!r}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("iso-8859-1")
    props = jproperties.Properties()
    try:
        props.load(_blank_comments(text))
    except jproperties.ParseError as e:
        line = _LINE_BREAK.split(text)[2 * (e.line_number - 1)] if e.line_number else ""
        raise ConfigError(
            f"{os.fspath(path)} line {e.line_number}: {line!r} is not valid ({e.message}); "
            "accepted: Java properties syntax, \\uXXXX escapes with four hex digits"
        ) from None
    return dict(props.properties)


def parse_override(text: str) -> tuple[str, str]:
    """Split a ``--set key=value`` argument."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise _invalid("--set", text, "key=value, e.g. --set pixels.server.port=9091", "no key=value")
    return key.strip(), value


# ---------------------------------------------------------------------------
# The validated configuration.


@dataclass(frozen=True)
class PixelsConfig:
    """Typed, validated settings; one field per entry of :data:`KEYS`.

    ``properties`` holds the raw merged map (file, then ``--set`` overrides),
    ``warnings`` the unknown-key warnings. Neither shows in ``repr``.
    """

    server_host: str
    server_port: int
    server_deadline_ms: int
    server_max_message_mb: int
    tls_enabled: bool
    tls_root_cert: Path | None
    tls_client_cert: Path | None
    tls_client_key: Path | None
    schema_name: str
    table_name: str
    source_schema: SourceSchema
    primary_key: tuple[str, ...]
    bucket_count: int
    buckets: tuple[int, ...]
    parallelism: int
    poll_interval_ms: int
    stop_after_idle_ms: int
    max_records: int
    value_encoding: str
    empty_as_null: bool
    journal_dir: str
    dead_letter_dir: str
    checkpoint_interval_ms: int
    checkpoint_max_records: int
    sink_type: str
    catalog_retry_ms: int
    iceberg_catalog_type: str
    iceberg_warehouse: str
    iceberg_table: str
    iceberg_database: str
    iceberg_commit_retries: int
    iceberg_write_mode: str
    iceberg_maintenance_enabled: bool
    iceberg_maintenance_interval_ms: int
    iceberg_maintenance_budget_ms: int
    iceberg_maintenance_orphan_age_ms: int
    iceberg_maintenance_deleted_percent: int
    iceberg_maintenance_small_file_mb: int
    iceberg_maintenance_target_file_mb: int
    iceberg_maintenance_max_compact_mb: int
    iceberg_maintenance_max_compact_percent: int
    iceberg_maintenance_max_manifests: int
    paimon_catalog_type: str
    paimon_warehouse: str
    paimon_table: str
    paimon_database: str
    paimon_commit_retries: int
    paimon_bucket: int
    paimon_compaction_trigger: int | None
    paimon_compaction_max_mb: int
    paimon_compaction_file_percent: int
    paimon_write_only: bool
    properties: dict[str, str] = dataclasses.field(repr=False, hash=False)
    warnings: tuple[str, ...] = dataclasses.field(repr=False, compare=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> PixelsConfig:
        """Read ``path`` (None = defaults only), apply ``key=value`` overrides (later wins), validate."""
        props = load_properties(path) if path is not None else {}
        props.update(parse_override(o) for o in overrides)
        return cls.from_properties(props)

    @classmethod
    def from_properties(cls, props: Mapping[str, str]) -> PixelsConfig:
        """Validate a property map; keys and values are stripped of surrounding whitespace.

        Raises :class:`ConfigError` at the first bad value; logs a warning per unknown key.
        """
        props = {k.strip(): v.strip() for k, v in props.items()}
        warnings = tuple(_unknown_key_warnings(props))
        for w in warnings:
            _log.warning("%s", w)
        values: dict[str, Any] = {}
        for key in KEYS:
            raw = props.get(key.name, key.default)
            try:
                values[key.name] = key.parser(raw)
            except _Rejected as e:
                raise _invalid(key.name, raw, key.accepted, str(e)) from None
        _relate(values, props)
        fields = {KEY_BY_NAME[name].field: value for name, value in values.items()}
        return cls(**fields, properties=props, warnings=warnings)

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}
        shown.update(source_schema=str(self.source_schema), buckets=_bucket_spec(self.buckets))
        return f"PixelsConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    def catalog_properties(self, sink: str) -> dict[str, str]:
        """Every ``<sink>.catalog.<k>=v`` as ``{k: v}``, with the validated ``type`` and ``warehouse``."""
        if sink not in _PASSTHROUGH:
            raise ValueError(f"sink {sink!r} is not one of {', '.join(SINK_TYPES)}")
        prefix = _PASSTHROUGH[sink]
        out = {k[len(prefix):]: v for k, v in self.properties.items() if k.startswith(prefix)}
        for name in ("type", "warehouse"):
            out[name] = getattr(self, KEY_BY_NAME[prefix + name].field)
        return out

    def table_properties(self, sink: str) -> dict[str, str]:
        """Every ``iceberg.table.properties.<name>=v`` (or ``paimon.table.options.<name>=v``) as ``{name: v}``."""
        prefix = _TABLE_PROPERTIES[sink]
        return {k[len(prefix):]: v for k, v in self.properties.items() if k.startswith(prefix) and k[len(prefix):]}

    def tls_material(self) -> dict[str, bytes | None]:
        """Contents of the TLS files for the Pixels client; all None when TLS is off."""
        paths = {
            "tls_root_cert": self.tls_root_cert,
            "tls_client_cert": self.tls_client_cert,
            "tls_client_key": self.tls_client_key,
        }
        if not self.tls_enabled:
            return dict.fromkeys(paths)
        return {name: path.read_bytes() if path else None for name, path in paths.items()}

    def journal_location(self, local_run: bool) -> str | None:
        """Where the poll journal lives, or None for no journal (``source.journal.dir``)."""
        return self._beside_warehouse(self.journal_dir, "_pixels_journal", local_run)

    def dead_letter_location(self, local_run: bool) -> str | None:
        """Where dead letters are written, or None to only log them (``source.dead.letter.dir``)."""
        return self._beside_warehouse(self.dead_letter_dir, "_pixels_dead_letters", local_run)

    def _beside_warehouse(self, setting: str, folder: str, local_run: bool) -> str | None:
        """An explicit location wins; ``off`` means none; empty means a folder of the sink's
        warehouse when that is local and the run is local."""
        if setting == LOCATION_OFF:
            return None
        if setting:
            return setting
        warehouse = self.paimon_warehouse if self.sink_type == "paimon" else self.iceberg_warehouse
        if local_run and warehouse.startswith("file://"):
            return f"{warehouse.rstrip('/')}/{folder}/{self.schema_name}.{self.table_name}"
        return None

    def with_bounds(self, **bounds: int) -> PixelsConfig:
        """This configuration with other run bounds (``max_records``, ``stop_after_idle_ms``)."""
        return dataclasses.replace(self, **bounds)

    def redacted(self) -> dict[str, str]:
        """``properties`` with secret-looking values, and passwords inside URLs, replaced by ``***``."""
        return {
            k: "***" if _is_secret(k) else _URL_PASSWORD.sub(r"\1:***@", v) for k, v in self.properties.items()
        }


def _bucket_spec(buckets: Sequence[int]) -> str:
    """``0-3,7``: consecutive runs of ``buckets`` written as ranges."""
    runs: list[list[int]] = []
    for b in buckets:
        if runs and b == runs[-1][1] + 1:
            runs[-1][1] = b
        else:
            runs.append([b, b])
    return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in runs)


def _unknown_key_warnings(props: Mapping[str, str]) -> list[str]:
    """A warning per key that is neither known nor a catalog pass-through, with the closest known key."""
    lowered = {name.lower(): name for name in KEY_BY_NAME}
    out = []
    for key in props:
        if key in KEY_BY_NAME or key.startswith((*_PASSTHROUGH.values(), *_TABLE_PROPERTIES.values())):
            continue
        close = difflib.get_close_matches(key.lower(), lowered, n=1)
        out.append(f"unknown key {key!r}" + (f" (did you mean {lowered[close[0]]!r}?)" if close else ""))
    return out


def _relate(values: dict[str, Any], props: Mapping[str, str]) -> None:
    """Checks and derivations that involve more than one key; ``values`` is keyed by key name."""

    def fail(name: str, accepted: str, problem: str) -> ConfigError:
        return _invalid(name, props.get(name, KEY_BY_NAME[name].default), accepted, problem)

    count = values["source.bucket.count"]
    buckets = values["source.buckets"] = values["source.buckets"] or tuple(range(count))
    outside = [b for b in buckets if b >= count]
    if outside:
        raise fail("source.buckets", f"buckets in 0..{count - 1} (source.bucket.count={count})",
                   f"bucket {outside[0]} is out of range")
    if values["source.parallelism"] > len(buckets):
        raise fail("source.parallelism", f"an integer in 1..{len(buckets)}, the number of buckets polled",
                   "more poll groups than buckets")

    schema: SourceSchema = values["source.schema"]
    try:
        schema = values["source.schema"] = schema.with_primary_key(values["source.primary.key"])
    except SchemaError as e:
        raise fail("source.primary.key", f"comma-separated columns of source.schema ({', '.join(schema.names)})",
                   str(e)) from None
    values["source.primary.key"] = schema.primary_key

    for sink in SINK_TYPES:
        table_key, db_key = f"{sink}.table.name", f"{sink}.database.name"
        db, _, table = values[table_key].rpartition(".")
        if db and db_key in props and values[db_key] != db:
            raise fail(db_key, f"{db!r} (the database in {table_key}) or unset", f"{table_key} names database {db!r}")
        values[table_key] = table
        values[db_key] = db or values[db_key]

    cert, key = "pixels.server.tls.client.cert", "pixels.server.tls.client.key"
    if (values[cert] is None) != (values[key] is None):
        missing = cert if values[cert] is None else key
        raise fail(missing, f"a file whenever {key if missing == cert else cert} is set",
                   "mutual TLS needs both the client certificate and its key")
