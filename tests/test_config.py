"""Configuration: properties syntax, defaults, overrides, every error path, pass-through, secrets."""

from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path

import pytest

from beam_pixels.config import KEYS, ConfigError, PixelsConfig, describe, load_properties
from beam_pixels.schema import SourceSchema

SHIPPED = Path(__file__).resolve().parent.parent / "pipelines" / "pixels-client.properties"


def write(tmp_path: Path, text: str | bytes, name: str = "c.properties") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", newline="")
    else:
        path.write_bytes(text)
    return path


# --- properties syntax ------------------------------------------------------

SYNTAX = [
    ("a=1", {"a": "1"}),
    ("a: 1", {"a": "1"}),
    ("a 1", {"a": "1"}),
    ("a\t1", {"a": "1"}),
    ("  a   =   1", {"a": "1"}),
    ("a=1  ", {"a": "1  "}),  # Java keeps trailing blanks; PixelsConfig strips them
    ("\fa\f=\f1", {"a": "1"}),
    ("a=b=c:d", {"a": "b=c:d"}),
    ("a:=1", {"a": "=1"}),
    ("a", {"a": ""}),
    ("a=", {"a": ""}),
    ("# comment\n! bang\n   # indented\na=1", {"a": "1"}),
    ("#:\n#:=x\n!:y\n#: k=v\na=1", {"a": "1"}),  # jproperties' metadata comments are plain comments
    ("# comment ends with \\\na=1", {"a": "1"}),  # comments never continue
    ("a=one \\\n    two \\\n  three", {"a": "one two three"}),
    ("a=x\\\n# not a comment", {"a": "x# not a comment"}),
    ("a=x\\\n\nb=2", {"a": "x", "b": "2"}),
    ("a=end\\", {"a": "end"}),
    ("a=x\\\\", {"a": "x\\"}),  # an even number of backslashes does not continue
    ("a=x\\\\\\\n  y", {"a": "x\\y"}),
    ("a=t\\tn\\nr\\r\\q", {"a": "t\tn\nr\rq"}),
    ("a=\\u0041\\u00fc\\uD83D\\uDE00", {"a": "A\u00fc\U0001f600"}),
    ("k\\ ey\\=\\:=v", {"k ey=:": "v"}),
    ("\\u0062=2", {"b": "2"}),
    ("a=1\nb=2\na=3", {"a": "3", "b": "2"}),
    ("a=1\r\nb=2\\\r\n  c\rd=4", {"a": "1", "b": "2c", "d": "4"}),
    ("a=\u00fc", {"a": "\u00fc"}),
    ("\n  \n\t\n", {}),
]


@pytest.mark.parametrize("text,expected", SYNTAX, ids=[repr(t) for t, _ in SYNTAX])
def test_properties_syntax(tmp_path, text, expected):
    assert load_properties(write(tmp_path, text)) == expected


@pytest.mark.parametrize(
    "data,expected",
    [
        (b"\xef\xbb\xbfa=\xc3\xbc", {"a": "\u00fc"}),  # UTF-8 with a byte-order mark
        (b"a=\xfc", {"a": "\u00fc"}),  # not UTF-8: ISO-8859-1, as Java reads it
    ],
)
def test_properties_encoding(tmp_path, data, expected):
    assert load_properties(write(tmp_path, data)) == expected


def test_properties_bad_unicode_escape_names_file_and_line(tmp_path):
    path = write(tmp_path, "a=1\nb=\\u00zz\n")
    with pytest.raises(ConfigError, match=r"c\.properties line 2: 'b=\\\\u00zz'.*accepted: Java properties"):
        load_properties(path)


def test_missing_properties_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.properties"):
        PixelsConfig.load(tmp_path / "nope.properties")


# --- defaults ---------------------------------------------------------------

DEFAULTS = {
    "server_host": "localhost",
    "server_port": 50051,
    "server_deadline_ms": 10000,
    "server_max_message_mb": 256,
    "tls_enabled": False,
    "tls_root_cert": None,
    "tls_client_cert": None,
    "tls_client_key": None,
    "schema_name": "public",
    "table_name": "orders",
    "source_schema": SourceSchema.parse("id:INT,data:STRING,price:DOUBLE"),
    "primary_key": (),
    "bucket_count": 128,
    "buckets": tuple(range(128)),
    "parallelism": 1,
    "poll_interval_ms": 1000,
    "stop_after_idle_ms": 0,
    "max_records": 0,
    "value_encoding": "binary",
    "empty_as_null": False,
    "journal_dir": "",
    "dead_letter_dir": "",
    "checkpoint_interval_ms": 10000,
    "checkpoint_max_records": 500000,
    "sink_type": "iceberg",
    "iceberg_catalog_type": "sql",
    "iceberg_table": "iceberg_orders",
    "iceberg_database": "pixels",
    "iceberg_commit_retries": 5,
    "paimon_catalog_type": "filesystem",
    "paimon_table": "paimon_orders",
    "paimon_database": "pixels",
    "paimon_commit_retries": 5,
    "paimon_bucket": 4,
}


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = PixelsConfig.load(None)
    assert {name: getattr(config, name) for name in DEFAULTS} == DEFAULTS
    assert config.iceberg_warehouse == f"file://{tmp_path}/warehouse/iceberg"
    assert config.paimon_warehouse == f"file://{tmp_path}/warehouse/paimon"
    assert config.properties == {} and config.warnings == ()


def test_keys_table_matches_config_fields():
    fields = [f.name for f in dataclasses.fields(PixelsConfig)]
    assert fields == [k.field for k in KEYS] + ["properties", "warnings"]
    assert len({k.name for k in KEYS}) == len(KEYS)


def test_describe_lists_every_key_with_default_and_meaning():
    text = describe()
    for key in KEYS:
        assert f"| `{key.name}` |" in text and key.doc in text


def test_shipped_properties_loads_without_warnings_and_shows_every_key(caplog):
    with caplog.at_level(logging.WARNING, logger="beam_pixels.config"):
        config = PixelsConfig.load(SHIPPED)
    assert config.warnings == () and not caplog.records
    assert (config.server_host, config.server_port) == ("127.0.0.1", 50051)
    assert str(config.source_schema) == "id:BIGINT,name:STRING,price:DECIMAL(10,2),qty:INT,ts:TIMESTAMP,flag:BOOLEAN"
    assert config.primary_key == ("id",)
    assert (config.sink_type, config.iceberg_catalog_type) == ("iceberg", "sql")
    text = SHIPPED.read_text()
    for key in KEYS:
        assert key.name in text, key.name
    for example in ("iceberg.catalog.glue.region", "iceberg.catalog.s3.endpoint", "paimon.catalog.s3.endpoint",
                    "paimon.catalog.s3.access-key"):
        assert f"#{example}=" in text


def test_shipped_commented_lines_are_valid_and_show_defaults():
    """Every commented-out known key, uncommented, is valid; keys not set in the file show their default."""
    text = SHIPPED.read_text()
    commented = [line[1:] for line in text.splitlines() if line.startswith("#") and "=" in line]
    keys = {k.name: k for k in KEYS}
    set_in_file = load_properties(SHIPPED)
    for line in commented:
        name, _, value = line.partition("=")
        if name in keys:
            PixelsConfig.from_properties({name: value})
            if name not in set_in_file:
                assert value == keys[name].default, line


# --- values and overrides -------------------------------------------------


def test_values_are_parsed_and_stripped(tmp_path):
    path = write(tmp_path, "pixels.server.port = 9091  \nsource.buckets=0, 3 ,5-9\nsink.type=PAIMON\n"
                           "source.empty.as.null=Yes\nsource.value.encoding=Text\n")
    config = PixelsConfig.load(path)
    assert config.server_port == 9091
    assert config.buckets == (0, 3, 5, 6, 7, 8, 9)
    assert (config.sink_type, config.empty_as_null, config.value_encoding) == ("paimon", True, "text")


@pytest.mark.parametrize("word,value", [("true", True), ("FALSE", False), ("yes", True), ("No", False),
                                        ("1", True), ("0", False)])
def test_booleans(word, value):
    assert PixelsConfig.from_properties({"pixels.server.tls.enabled": word}).tls_enabled is value


def test_overrides_win_in_order(tmp_path):
    path = write(tmp_path, "pixels.server.port=1\ntable.name=t\n")
    config = PixelsConfig.load(path, ["pixels.server.port=2", "pixels.server.port=3", "schema.name=a=b"])
    assert (config.server_port, config.table_name, config.schema_name) == (3, "t", "a=b")
    assert config.properties["pixels.server.port"] == "3"


@pytest.mark.parametrize("override", ["no-equals", "=value", "  =x"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match=rf"--set={override!r}.*accepted: key=value"):
        PixelsConfig.load(None, [override])


def test_bucket_default_follows_bucket_count():
    config = PixelsConfig.from_properties({"source.bucket.count": "8", "source.parallelism": "8"})
    assert config.buckets == tuple(range(8)) and config.parallelism == 8


def test_primary_key_uses_schema_case():
    config = PixelsConfig.from_properties({"source.schema": "Id:INT,v:STRING", "source.primary.key": " id "})
    assert config.primary_key == ("Id",) == config.source_schema.primary_key


@pytest.mark.parametrize(
    "props,database,table",
    [
        ({"iceberg.table.name": "sales.orders"}, "sales", "orders"),
        ({"iceberg.table.name": "orders", "iceberg.database.name": "sales"}, "sales", "orders"),
        ({"iceberg.table.name": "sales.orders", "iceberg.database.name": "sales"}, "sales", "orders"),
    ],
)
def test_database_from_table_prefix(props, database, table):
    config = PixelsConfig.from_properties(props)
    assert (config.iceberg_database, config.iceberg_table) == (database, table)
    paimon = PixelsConfig.from_properties({k.replace("iceberg", "paimon"): v for k, v in props.items()})
    assert (paimon.paimon_database, paimon.paimon_table) == (database, table)


@pytest.mark.parametrize(
    "value,expected",
    [
        ("s3://bucket/wh/", "s3://bucket/wh/"),
        ("file:///data/wh", "file:///data/wh"),
        ("/data/wh", "file:///data/wh"),
        ("rel/wh", "file://{cwd}/rel/wh"),
        ("./a/../wh", "file://{cwd}/wh"),
    ],
)
def test_warehouse_paths_resolve_against_cwd(tmp_path, monkeypatch, value, expected):
    monkeypatch.chdir(tmp_path)
    config = PixelsConfig.from_properties({"iceberg.catalog.warehouse": value, "paimon.catalog.warehouse": value})
    assert config.iceberg_warehouse == config.paimon_warehouse == expected.format(cwd=tmp_path)


def test_relative_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "PEM", "ca.pem")
    config = PixelsConfig.from_properties({"pixels.server.tls.root.cert": "ca.pem", "source.journal.dir": "j"})
    assert (config.tls_root_cert, config.journal_dir) == (tmp_path / "ca.pem", f"file://{tmp_path / 'j'}")


def test_tls_files(tmp_path):
    names = ("root.cert", "client.cert", "client.key")
    for name in names:
        write(tmp_path, "PEM", name)
    config = PixelsConfig.from_properties(
        {"pixels.server.tls.enabled": "true", **{f"pixels.server.tls.{n}": str(tmp_path / n) for n in names}}
    )
    assert (config.tls_root_cert, config.tls_client_cert, config.tls_client_key) == tuple(tmp_path / n for n in names)


def test_config_pickles():
    config = PixelsConfig.from_properties({"iceberg.catalog.glue.region": "us-east-1"})
    assert pickle.loads(pickle.dumps(config)) == config
    hash(config)


# --- errors -----------------------------------------------------------------

ERRORS = [
    ("pixels.server.port", "0", "an integer in 1..65535"),
    ("pixels.server.port", "65536", "an integer in 1..65535"),
    ("pixels.server.port", "abc", "an integer in 1..65535"),
    ("pixels.server.port", "", "an integer in 1..65535"),
    ("pixels.server.port", "5e3", "an integer in 1..65535"),
    ("pixels.server.host", "", "non-empty"),
    ("pixels.server.deadline.ms", "0", ">= 1"),
    ("pixels.server.max.message.mb", "4096", "1..2047"),
    ("checkpoint.interval.ms", "0", ">= 1"),
    ("checkpoint.interval.ms", "10s", ">= 1"),
    ("source.poll.interval.ms", "-1", ">= 0"),
    ("source.bucket.count", "0", ">= 1"),
    ("paimon.bucket", "0", ">= 1"),
    ("iceberg.commit.retries", "-1", ">= 0"),
    ("sink.type", "delta", "iceberg or paimon"),
    ("iceberg.catalog.type", "hadoop", "sql, glue, rest"),
    ("iceberg.catalog.type", "nessie", "sql, glue, rest"),
    ("paimon.catalog.type", "hive", "filesystem or paimon"),
    ("source.value.encoding", "json", "binary or text"),
    ("source.empty.as.null", "maybe", "true, false"),
    ("pixels.server.tls.enabled", "on", "true, false"),
    ("source.schema", "id:FOO", "name:TYPE"),
    ("source.schema", "", "name:TYPE"),
    ("source.primary.key", "nope", "columns of source.schema (id, data, price)"),
    ("source.primary.key", "id,,data", "column names"),
    ("source.buckets", "5-2", "0-127 or 0,3,5-9"),
    ("source.buckets", "x", "0-127 or 0,3,5-9"),
    ("source.buckets", "-1", "0-127 or 0,3,5-9"),
    ("source.buckets", "200", "0..127"),
    ("source.buckets", "1,2,1-3", "each bucket once"),
    ("source.parallelism", "0", ">= 1"),
    ("source.parallelism", "129", "1..128"),
    ("pixels.server.tls.root.cert", "/no/such/ca.pem", "existing file"),
    ("iceberg.table.name", "bad name", "letters, digits"),
    ("iceberg.table.name", "a.b.c", "at most one 'db.' prefix"),
    ("iceberg.table.name", ".t", "at most one 'db.' prefix"),
    ("iceberg.database.name", "a.b", "letters, digits"),
    ("paimon.table.name", "t/x", "letters, digits"),
    ("paimon.database.name", "", "letters, digits"),
    ("iceberg.catalog.warehouse", "", "a URI"),
]


@pytest.mark.parametrize("key,value,accepted", ERRORS, ids=[f"{k}={v}" for k, v, _ in ERRORS])
def test_error_names_key_value_and_accepted(key, value, accepted):
    with pytest.raises(ConfigError) as info:
        PixelsConfig.from_properties({key: value})
    message = str(info.value)
    assert message.startswith(f"{key}={value!r} is not valid")
    assert "accepted: " in message and accepted in message.split("accepted: ", 1)[1]


@pytest.mark.parametrize(
    "props,key,fragment",
    [
        ({"iceberg.catalog.type": "HADOOP"}, "iceberg.catalog.type", "pyiceberg has no Hadoop catalog; use sql"),
        ({"source.buckets": "0-3", "source.parallelism": "5"}, "source.parallelism", "an integer in 1..4"),
        ({"source.bucket.count": "16", "source.buckets": "3,16"}, "source.buckets", "bucket 16 is out of range"),
        ({"iceberg.table.name": "a.t", "iceberg.database.name": "b"}, "iceberg.database.name", "'a'"),
        ({"paimon.table.name": "a.t", "paimon.database.name": "b"}, "paimon.database.name", "'a'"),
        ({"source.schema": "id:INT,id:INT"}, "source.schema", "twice"),
        ({"source.primary.key": "id,ID"}, "source.primary.key", "twice"),
    ],
)
def test_cross_key_errors(props, key, fragment):
    with pytest.raises(ConfigError, match=rf"^{key}=") as info:
        PixelsConfig.from_properties(props)
    assert fragment in str(info.value)


@pytest.mark.parametrize("given,missing", [("cert", "key"), ("key", "cert")])
def test_client_cert_and_key_go_together(tmp_path, given, missing):
    path = write(tmp_path, "PEM", "pem")
    with pytest.raises(ConfigError, match=rf"^pixels\.server\.tls\.client\.{missing}='' .*tls\.client\.{given}"):
        PixelsConfig.from_properties({f"pixels.server.tls.client.{given}": str(path)})


def test_error_in_file_value_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"^pixels\.server\.port='http' is not valid"):
        PixelsConfig.load(write(tmp_path, "pixels.server.port : http\n"))


# --- unknown keys -----------------------------------------------------------


@pytest.mark.parametrize(
    "key,warning",
    [
        ("source.shema", "unknown key 'source.shema' (did you mean 'source.schema'?)"),
        ("Pixels.Server.Port", "unknown key 'Pixels.Server.Port' (did you mean 'pixels.server.port'?)"),
        ("iceberg.catalg.type", "unknown key 'iceberg.catalg.type' (did you mean 'iceberg.catalog.type'?)"),
        ("zzz", "unknown key 'zzz'"),
    ],
)
def test_unknown_key_warns_with_suggestion(caplog, key, warning):
    with caplog.at_level(logging.WARNING, logger="beam_pixels.config"):
        config = PixelsConfig.from_properties({key: "secret-value"})
    assert config.warnings == (warning,)
    assert [r.getMessage() for r in caplog.records] == [warning]
    assert "secret-value" not in caplog.text


def test_catalog_keys_are_not_unknown():
    config = PixelsConfig.from_properties({"iceberg.catalog.glue.region": "x", "paimon.catalog.s3.endpoint": "y"})
    assert config.warnings == ()


# --- catalog pass-through ---------------------------------------------------


def test_catalog_properties(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = PixelsConfig.from_properties({
        "iceberg.catalog.type": "GLUE",
        "iceberg.catalog.warehouse": "s3://b/ice/",
        "iceberg.catalog.glue.region": "us-east-1",
        "iceberg.catalog.s3.endpoint": "http://127.0.0.1:9000",
        "paimon.catalog.s3.access-key": "AK",
        "paimon.catalog.type": "Paimon",
        "iceberg.table.name": "db.t",
    })
    assert config.catalog_properties("iceberg") == {
        "type": "glue",
        "warehouse": "s3://b/ice/",
        "glue.region": "us-east-1",
        "s3.endpoint": "http://127.0.0.1:9000",
    }
    assert config.catalog_properties("paimon") == {
        "type": "filesystem",
        "warehouse": f"file://{tmp_path}/warehouse/paimon",
        "s3.access-key": "AK",
    }
    with pytest.raises(ValueError, match="iceberg, paimon"):
        config.catalog_properties("delta")


# --- secrets ----------------------------------------------------------------

SECRET_KEYS = [
    "paimon.catalog.s3.access-key",
    "paimon.catalog.s3.secret-key",
    "iceberg.catalog.s3.access-key-id",
    "iceberg.catalog.s3.secret-access-key",
    "iceberg.catalog.s3.session-token",
    "iceberg.catalog.glue.aws-secret-access-key",
    "iceberg.catalog.client.secret",
    "iceberg.catalog.credential",
    "iceberg.catalog.token",
    "iceberg.catalog.password",
    "iceberg.catalog.header.Authorization",
    "iceberg.catalog.adls.account-key",
    "iceberg.catalog.s3.sse.key",
    "iceberg.catalog.AWS_SECRET_ACCESS_KEY",
]


def test_secrets_never_shown():
    props = {key: f"hunter{i}" for i, key in enumerate(SECRET_KEYS)}
    props["iceberg.catalog.uri"] = "postgresql://user:hunter-pw@host/db"
    props.update({"iceberg.catalog.glue.region": "us-east-1", "source.primary.key": "id"})
    config = PixelsConfig.from_properties(props)
    redacted = config.redacted()
    assert {k: redacted[k] for k in SECRET_KEYS} == dict.fromkeys(SECRET_KEYS, "***")
    assert redacted["iceberg.catalog.uri"] == "postgresql://user:***@host/db"
    assert redacted["iceberg.catalog.glue.region"] == "us-east-1" and redacted["source.primary.key"] == "id"
    for text in (repr(config), str(config), str(redacted)):
        assert "hunter" not in text
    assert config.catalog_properties("iceberg")["s3.secret-access-key"].startswith("hunter")


@pytest.mark.parametrize(
    "setting, local_run, expected",
    [
        ("", True, "{warehouse}/_pixels_journal/public.orders"),
        ("", False, None),
        ("off", True, None),
        ("OFF", False, None),
        ("s3://bucket/journal", False, "s3://bucket/journal"),
    ],
)
def test_journal_location(tmp_path, monkeypatch, setting, local_run, expected):
    monkeypatch.chdir(tmp_path)
    config = PixelsConfig.from_properties({"source.journal.dir": setting})
    warehouse = f"file://{tmp_path}/warehouse/iceberg"
    assert config.journal_location(local_run) == (expected.format(warehouse=warehouse) if expected else None)


def test_journal_beside_a_remote_warehouse_needs_an_explicit_location():
    config = PixelsConfig.from_properties({"iceberg.catalog.warehouse": "s3://bucket/wh"})
    assert config.journal_location(local_run=True) is None
