"""The validated configuration: :class:`PixelsConfig`, one typed field per key of :data:`~.keys.KEYS`."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


from beam_pixels.config.keys import _PASSTHROUGH, _TABLE_PROPERTIES, JOB_WIDE, KEY_BY_NAME, KEYS, SINK_TYPES, TABLE_PREFIX
from beam_pixels.config.properties import load_properties, parse_override
from beam_pixels.config.validators import LOCATION_OFF, invalid, Rejected
from beam_pixels.errors import ConfigError
from beam_pixels.schema import SchemaError, SourceSchema

_log = logging.getLogger(__name__)

# Secrets.

_SECRET_WORDS = re.compile(
    r"secret|password|passwd|token|credential|access-key|account-key|private-key|api-key|session|authorization"
)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*):[^/@\s]*@")


def _is_secret(key: str) -> bool:
    """Whether ``key`` looks like it holds a secret (any unknown key ending in ``key`` counts)."""
    k = key.lower().replace("_", "-")
    return bool(_SECRET_WORDS.search(k)) or (key not in KEY_BY_NAME and k.endswith("key"))


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
    schema_evolution: str
    iceberg_catalog_type: str
    iceberg_warehouse: str
    iceberg_table: str
    iceberg_database: str
    iceberg_commit_retries: int
    iceberg_write_mode: str
    iceberg_partition_spec: tuple
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
    iceberg_maintenance_max_delete_files: int
    paimon_catalog_type: str
    paimon_warehouse: str
    paimon_table: str
    paimon_database: str
    paimon_commit_retries: int
    paimon_bucket: int
    paimon_partition_keys: tuple[str, ...]
    paimon_compaction_trigger: int | None
    paimon_compaction_max_mb: int
    paimon_compaction_file_percent: int
    paimon_write_only: bool
    table_labels: tuple[str, ...]
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
        config = cls._validated(props, warnings)
        config.tables()  # a table's bad key fails the load, as a shared one does
        return config

    @classmethod
    def _validated(cls, props: dict[str, str], warnings: tuple[str, ...]) -> PixelsConfig:
        values: dict[str, Any] = {}
        for key in KEYS:
            raw = props.get(key.name, key.default)
            try:
                values[key.name] = key.parser(raw)
            except Rejected as e:
                raise invalid(key.name, raw, key.accepted, str(e)) from None
        _relate(values, props)
        fields = {KEY_BY_NAME[name].field: value for name, value in values.items()}
        return cls(**fields, properties=props, warnings=warnings)

    def tables(self) -> dict[str, PixelsConfig]:
        """One single-table configuration per table of the job, by name (``tables``); a file without
        ``tables`` is one table, named ``""``.

        A table's configuration is the shared keys with its own ``table.<name>.<key>`` keys over
        them; its ``table.name`` defaults to its name, its ``iceberg.table.name`` and
        ``paimon.table.name`` to its ``table.name``, and a shared ``source.journal.dir`` gets a
        folder per table. Raises :class:`ConfigError` naming the table and the key.
        """
        if not self.table_labels:
            return {"": self}
        own_keys = tuple(f"{TABLE_PREFIX}{label}." for label in self.table_labels)
        shared = {k: v for k, v in self.properties.items() if k != "tables" and not k.startswith(own_keys)}
        configs = {label: self._table(label, shared) for label in self.table_labels}
        _refuse_shared_tables(configs)
        return configs

    def _table(self, label: str, shared: Mapping[str, str]) -> PixelsConfig:
        prefix = f"{TABLE_PREFIX}{label}."
        own = {k[len(prefix):]: v for k, v in self.properties.items() if k.startswith(prefix)}
        refused = next((k for k in own if k in JOB_WIDE), None)
        if refused is not None:
            raise ConfigError(f"table {label}: {prefix}{refused} cannot be set per table; set {refused} "
                              "once for the whole job")
        props = {"table.name": label, **shared, **own}
        for sink in SINK_TYPES:
            props.setdefault(f"{sink}.table.name", props["table.name"])
        journal = props.get("source.journal.dir", "")
        if "source.journal.dir" not in own and journal not in ("", LOCATION_OFF):
            props["source.journal.dir"] = f"{journal.rstrip('/')}/{props.get('schema.name', KEY_BY_NAME['schema.name'].default)}.{props['table.name']}"
        try:
            return self._validated(props, ())
        except ConfigError as error:
            message = str(error)
            key = message.partition("=")[0]
            raise ConfigError(f"table {label}: {prefix if key in own else ''}{message}") from None

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


def _refuse_shared_tables(configs: Mapping[str, PixelsConfig]) -> None:
    """Two tables of one job may neither poll the same source table nor write the same table."""
    seen: dict[tuple, str] = {}
    for label, c in configs.items():
        target = getattr(c, f"{c.sink_type}_table")
        for key, what in (("table.name", (c.schema_name, c.table_name)),
                          (f"{c.sink_type}.table.name", (c.sink_type, getattr(c, f"{c.sink_type}_database"), target))):
            other = seen.setdefault((key, *what), label)
            if other != label:
                raise ConfigError(
                    f"table {label}: {key} names {'.'.join(what[-2:])}, as table {other} does; every table of a job "
                    f"needs its own (set table.{label}.{key})")


def _unknown_key_warnings(props: Mapping[str, str]) -> list[str]:
    """A warning per key that is neither known nor a catalog pass-through, with the closest known key;
    a table's own key (``table.<name>.<key>``) is checked without its prefix."""
    lowered = {name.lower(): name for name in KEY_BY_NAME}
    try:
        labels = KEY_BY_NAME["tables"].parser(props.get("tables", ""))
    except Rejected:
        labels = ()  # the key's own check says what is wrong
    out = []
    for key in props:
        prefix = next((p for p in (f"{TABLE_PREFIX}{label}." for label in labels) if key.startswith(p)), "")
        name = key[len(prefix):]
        if name in KEY_BY_NAME or name.startswith((*_PASSTHROUGH.values(), *_TABLE_PROPERTIES.values())):
            continue
        close = difflib.get_close_matches(name.lower(), lowered, n=1)
        out.append(f"unknown key {key!r}" + (f" (did you mean {prefix + lowered[close[0]]!r}?)" if close else ""))
    return out


def _relate(values: dict[str, Any], props: Mapping[str, str]) -> None:
    """Checks and derivations that involve more than one key; ``values`` is keyed by key name."""

    def fail(name: str, accepted: str, problem: str) -> ConfigError:
        return invalid(name, props.get(name, KEY_BY_NAME[name].default), accepted, problem)

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
    if values["iceberg.partition.spec"]:
        from beam_pixels.sinks.iceberg.partitioning import PartitionSpecError, check_terms

        try:
            check_terms(values["iceberg.partition.spec"], schema.to_iceberg())
        except PartitionSpecError as e:
            raise fail("iceberg.partition.spec", KEY_BY_NAME["iceberg.partition.spec"].accepted, str(e)) from None

    unknown = [c for c in values["paimon.partition.keys"] if c not in schema.names]
    if unknown:
        raise fail("paimon.partition.keys", f"comma-separated columns of source.schema ({', '.join(schema.names)})",
                   f"{unknown[0]!r} is not a column of source.schema")

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
