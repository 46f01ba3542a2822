"""Tables that follow ``source.schema`` changes (docs/schema-changes.md): added columns and widened
types between runs, journaled responses of the old schema replayed into the evolved table, the
changes that cannot be followed refused at start, and readers the project did not write."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from app_helpers import Run, load_config, run_cli_to_end, write_properties
import paimon_java_reader
from beam_pixels import app
from beam_pixels.changes import ChangeBatch, Op
from beam_pixels.journal import PollJournal
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.committing import SinkConfigurationError, concat_records
from beam_pixels.sinks.iceberg import IcebergTableWriter
from beam_pixels.sinks.paimon import PaimonTableWriter
from beam_pixels.testing import mock_data
from beam_pixels.testing.duckdb_reader import read_iceberg
from beam_pixels.testing.mock_server import MockPixelsServer

OLD_SPEC = "id:BIGINT,name:VARCHAR(16),price:DECIMAL(10,2),qty:INT,score:FLOAT"
NEW_SPEC = "id:BIGINT,name:VARCHAR(64),price:DECIMAL(14,2),qty:BIGINT,score:DOUBLE,note:STRING"
OLD = SourceSchema.parse(OLD_SPEC, ["id"])
NEW = SourceSchema.parse(NEW_SPEC, ["id"])
BUCKETS = 8


def _properties(tmp_path: Path, sink: str, spec: str, **settings: str) -> Path:
    return write_properties(tmp_path, sink, {
        "source.schema": spec, "source.bucket.count": str(BUCKETS),
        "source.journal.dir": str(tmp_path / "journal"), "source.dead.letter.dir": str(tmp_path / "dead"),
        **settings,
    })


def _run(tmp_path: Path, sink: str, spec: str, port: int, **settings: str) -> Run:
    properties = _properties(tmp_path, sink, spec, **settings)
    return Run.cli(tmp_path, "run", "--config", str(properties), "--set", f"pixels.server.port={port}")


def _config(tmp_path: Path, sink: str, spec: str, port: int):
    return load_config(_properties(tmp_path, sink, spec), port)


def _journaled(tmp_path: Path, since: int) -> int:
    return sum(s.count for s in PollJournal(str(tmp_path / "journal")).segments(0) if s.start >= since)


def _state(rows: list[dict]) -> dict:
    return {r["id"]: mock_data.comparable(tuple(r[n] for n in NEW.names)) for r in rows}


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_a_restart_with_a_changed_schema_evolves_the_table_and_replays_the_old_journal(tmp_path, sink):
    """Run 1 (old schema) commits; run 2 (old schema) polls more and is killed with SIGKILL before
    committing, so the journal holds responses of the old schema; run 3 (new schema: a column
    added, four types widened) evolves the table, replays those responses by the schema they
    were polled under, then polls rows of the new schema. Every reader sees the final state."""
    old_history = mock_data.generate_cdc(OLD, n_keys=120, n_events=500, seed=11)
    new_history = mock_data.generate_cdc(NEW, n_keys=160, n_events=400, seed=12)
    with MockPixelsServer(OLD, bucket_count=BUCKETS, batch_size=40).start() as old_server:
        old_server.load_cdc(old_history[:250])
        run_cli_to_end(_run(tmp_path, sink, OLD_SPEC, old_server.port))
        old_server.load_cdc(old_history[250:])
        crashed = _run(tmp_path, sink, OLD_SPEC, old_server.port,
                       **{"checkpoint.interval.ms": "600000", "source.stop.after.idle.ms": "0"})
        deadline = time.monotonic() + 60
        while _journaled(tmp_path, 250) < 250 and time.monotonic() < deadline:
            time.sleep(0.05)
        crashed.kill()  # SIGKILL: nothing of the 250 journaled records was committed
        assert _journaled(tmp_path, 250) == 250, crashed.describe()
        assert len(old_server.handed_out()) == 500
    config = _config(tmp_path, sink, OLD_SPEC, old_server.port)
    with contextlib.closing(app.open_table_writer(config)) as writer:
        assert writer.last_checkpoint().positions == {0: 250}
        before_change = _snapshot_id(writer)

    with MockPixelsServer(NEW, bucket_count=BUCKETS, batch_size=40).start() as new_server:
        new_server.load_cdc(new_history)
        evolved = run_cli_to_end(_run(tmp_path, sink, NEW_SPEC, new_server.port))
        assert len(new_server.handed_out()) == 400
    assert f"{sink.capitalize()} table pixels.{sink}_orders follows source.schema: added note" in evolved.stderr
    assert "replaying" in evolved.stderr and "250 records" in evolved.stderr, evolved.describe()
    assert not (tmp_path / "dead").exists() or not any((tmp_path / "dead").rglob("*.json")), "dead letters"

    widened = [(op, _widen(before), _widen(after)) for op, before, after in old_history]
    expected = {k[0]: mock_data.comparable(row) for k, row in mock_data.final_state(NEW, widened + new_history).items()}
    config = _config(tmp_path, sink, NEW_SPEC, new_server.port)
    with contextlib.closing(app.open_table_writer(config)) as writer:
        assert writer.last_checkpoint().positions == {0: 900}
        assert _state(writer.read_table().to_pylist()) == expected  # pyiceberg / pypaimon
        if sink == "iceberg":
            _check_iceberg_readers(writer, before_change, expected)
        else:
            _check_paimon_readers(config, writer, before_change, expected)


def _widen(row):
    return None if row is None else (*row, None)


def _snapshot_id(writer) -> int:
    if isinstance(writer, IcebergTableWriter):
        return writer._catalog.load_table(writer._identifier).current_snapshot().snapshot_id
    return writer._last_own_snapshot().id


def _check_iceberg_readers(writer, before_change: int, expected: dict) -> None:
    table = writer._catalog.load_table(writer._identifier)
    assert [s.schema_id for s in table.schemas().values()] == [0, 1]  # the table's own schema history
    assert str(table.schema().find_field("qty").field_type) == "long"
    # DuckDB reads the current snapshot with one schema: old files' qty widened, note NULL.
    duck = read_iceberg(table.metadata_location)
    assert [str(duck.schema.field(c).type) for c in ("qty", "price")] == ["int64", "decimal128(14, 2)"]
    assert _state(duck.to_pylist()) == expected
    # The snapshot before the change still reads with the schema it was written under.
    old = table.scan(snapshot_id=before_change).to_arrow()
    assert old.column_names == OLD.names and old.schema.field("qty").type == "int32"


def _check_paimon_readers(config, writer, before_change: int, expected: dict) -> None:
    table_path = Path(writer._table.table_path.removeprefix("file://"))
    assert sorted(p.name for p in (table_path / "schema").iterdir()) == ["schema-0", "schema-1"]
    paimon_java_reader.require()
    current, old = paimon_java_reader.read_many(config.paimon_warehouse.removeprefix("file://"), [
        (writer.table_name, {}), (writer.table_name, {"scan.snapshot-id": str(before_change)}),
    ])
    assert current.types["qty"].startswith("BIGINT") and current.types["note"].startswith("STRING")
    assert _state([{**r} for r in current.rows]) == expected
    # The snapshot before the change reads with the schema it was written under (Paimon's time travel).
    assert old.snapshot == before_change and "note" not in old.types and old.types["qty"].startswith("INT")


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_in_one_process_the_key_index_and_maintenance_carry_over_a_change(tmp_path, sink):
    """The process's key index of the table (built by commits under the old schema) keeps
    serving commits under the new one, and a maintenance pass over files of both schemas
    leaves the table exact."""
    old_history = mock_data.generate_cdc(OLD, n_keys=60, n_events=240, seed=5)
    new_history = mock_data.generate_cdc(NEW, n_keys=80, n_events=240, seed=6)
    old = _writer(sink, tmp_path, OLD)
    old.open()
    for start in range(0, 240, 60):
        _commit(old, OLD, old_history[start : start + 60])
    new = _writer(sink, tmp_path, NEW)
    new.open()
    _commit(new, NEW, new_history[:120])
    widened = [(op, _widen(before), _widen(after)) for op, before, after in old_history]

    def expected(events):
        return {k[0]: mock_data.comparable(row) for k, row in mock_data.final_state(NEW, events).items()}

    assert _state(new.read_table().to_pylist()) == expected(widened + new_history[:120])
    report = new.maintain_now() if sink == "iceberg" else new.maintain()
    assert report is not None
    _commit(new, NEW, new_history[120:])
    assert _state(new.read_table().to_pylist()) == expected(widened + new_history)


# --- what cannot be followed --------------------------------------------------------------


def _writer(sink: str, tmp_path: Path, schema: SourceSchema, evolution: str = "add-and-widen"):
    if sink == "iceberg":
        return IcebergTableWriter(schema, "db.orders", {"type": "sql", "warehouse": str(tmp_path / "wh")},
                                  schema_evolution=evolution)
    return PaimonTableWriter(schema, "db.orders", {"warehouse": str(tmp_path / "wh")}, schema_evolution=evolution)


def _table_state(writer) -> tuple:
    """What a refusal must leave alone: the schema and the snapshots."""
    if isinstance(writer, IcebergTableWriter):
        table = writer._catalog.load_table(writer._identifier)
        return len(table.schemas()), table.current_snapshot().snapshot_id
    return str(writer._table.schema().fields), writer._last_own_snapshot().id


# (new source.schema, primary key, what the one line must name: Iceberg, Paimon)
REFUSED = {
    "narrowed": ("id:BIGINT,name:VARCHAR(16),price:DECIMAL(8,2),qty:INT,score:FLOAT", "id",
                 ("column 'price' is decimal(10, 2) in the table and decimal(8, 2) in source.schema",
                  "column 'price' is DECIMAL(10,2) in the table and DECIMAL(8,2) in source.schema")),
    "across families": ("id:BIGINT,name:VARCHAR(16),price:DECIMAL(10,2),qty:STRING,score:FLOAT", "id",
                        ("column 'qty' is int in the table and string in source.schema",
                         "column 'qty' is INT in the table and STRING in source.schema")),
    "dropped from the middle": ("id:BIGINT,price:DECIMAL(10,2),qty:INT,score:FLOAT", "id",
                                ("column 'name' is string in the table and not in source.schema",
                                 "column 'name' is VARCHAR(16) in the table and not in source.schema")),
    "renamed": ("id:BIGINT,title:VARCHAR(16),price:DECIMAL(10,2),qty:INT,score:FLOAT", "id",
                ("column 'name' is string in the table and not in source.schema",
                 "column 'name' is VARCHAR(16) in the table and not in source.schema")),
    "key changed": (OLD_SPEC, "id,qty", ("identifier fields are ['id'], the primary key is ['id', 'qty']",
                                         "primary key is (id) in the table, (id, qty) expected")),
}


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
@pytest.mark.parametrize("change", list(REFUSED))
def test_a_change_that_cannot_be_followed_fails_at_start_in_one_line_and_writes_nothing(tmp_path, sink, change):
    spec, key, named = REFUSED[change]
    first = _writer(sink, tmp_path, OLD)
    first.open()
    _commit(first, OLD, [(Op.INSERT, None, (1, "a", 1, 2, 0.5))])
    untouched = _table_state(first)

    with pytest.raises(SinkConfigurationError) as refused:
        _writer(sink, tmp_path, SourceSchema.parse(spec, key.split(","))).open()
    message = str(refused.value)
    assert "\n" not in message
    assert f"{sink.capitalize()} table db.orders" in message
    assert named[sink == "paimon"] in message, message
    assert _table_state(first) == untouched


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_a_run_with_a_narrowed_schema_exits_2_with_one_line_and_writes_nothing(tmp_path, sink):
    with MockPixelsServer(OLD, bucket_count=BUCKETS).start() as server:
        server.load_cdc(mock_data.generate_cdc(OLD, n_keys=20, n_events=40, seed=3))
        run_cli_to_end(_run(tmp_path, sink, OLD_SPEC, server.port))
        server.load_cdc(mock_data.generate_cdc(OLD, n_keys=20, n_events=40, seed=4))
        narrowed = _run(tmp_path, sink, OLD_SPEC.replace("qty:INT", "qty:SMALLINT").replace("(10,2)", "(8,2)"),
                        server.port)
        assert narrowed.wait(60) == 2, narrowed.describe()
        assert server.pending() == 40  # not even polled
    lines = [line for line in narrowed.stderr.splitlines() if "cannot follow source.schema" in line]
    assert len(lines) == 1 and "Traceback" not in narrowed.output, narrowed.describe()
    assert f"table pixels.{sink}_orders cannot follow source.schema: column 'price' is " in lines[0]
    with contextlib.closing(app.open_table_writer(_config(tmp_path, sink, OLD_SPEC, server.port))) as writer:
        assert writer.last_checkpoint().positions == {0: 40}


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_with_evolution_none_a_changed_schema_fails_naming_the_key(tmp_path, sink):
    first = _writer(sink, tmp_path, OLD)
    first.open()
    _commit(first, OLD, [(Op.INSERT, None, (1, "a", 1, 2, 0.5))])
    untouched = _table_state(first)

    with pytest.raises(SinkConfigurationError) as refused:
        _writer(sink, tmp_path, NEW, evolution="none").open()
    message = str(refused.value)
    assert "sink.schema.evolution=none leaves it alone" in message and "added note" in message
    assert "sink.schema.evolution=add-and-widen" in message
    assert _table_state(first) == untouched
    _writer(sink, tmp_path, OLD, evolution="none").open()  # an unchanged schema is fine


def _commit(writer, schema: SourceSchema, changes) -> None:
    """Commit ``changes`` (rows as tuples) the way ``WriteChanges`` does."""
    rows = [(op, None if b is None else dict(zip(schema.names, b)), None if a is None else dict(zip(schema.names, a)))
            for op, b, a in changes]
    last = writer.last_checkpoint()
    records = concat_records([ChangeBatch.from_changes(schema, rows, start_position=last.next_position(0))], schema)
    writer.commit(records, last.advance(records))
