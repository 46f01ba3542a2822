"""Local runs as bounded rounds: when a round ends, and when the run does."""

import collections
import contextlib
import logging
import threading
import time

from beam_pixels import app
from beam_pixels.buckets import bucket_of
from beam_pixels.config import PixelsConfig
from beam_pixels.journal import PollJournal
from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.iceberg.writer import IcebergTableWriter
from beam_pixels.testing.encoding import encode_value
from beam_pixels.testing.mock_server import MockPixelsServer

SCHEMA = SourceSchema.parse("id:BIGINT,name:STRING", ["id"])


def _config(tmp_path, port, **extra):
    properties = {
        "pixels.server.host": "127.0.0.1",
        "pixels.server.port": str(port),
        "source.schema": str(SCHEMA),
        "source.primary.key": "id",
        "source.poll.interval.ms": "20",
        "source.stop.after.idle.ms": "800",
        "checkpoint.interval.ms": "5000",
        "iceberg.catalog.warehouse": str(tmp_path / "warehouse"),
        **extra,
    }
    return PixelsConfig.from_properties(properties)


def _table_ids(config):
    with contextlib.closing(app.open_table_writer(config)) as writer:
        return sorted(writer.read_table().column("id").to_pylist())


def test_a_round_commits_after_checkpoint_max_records(tmp_path):
    with MockPixelsServer(SCHEMA, batch_size=2).start() as server:
        server.load_rows([(i, f"n{i}") for i in range(3000)])
        config = _config(tmp_path, server.port, **{"checkpoint.max.records": "1000"})
        summary = app.run_local(config)

    assert summary.records == 3000
    assert summary.checkpoint.batch_id >= 3  # at least one commit per 1000 records
    assert _table_ids(config) == list(range(3000))


def _ids_in_bucket(bucket, count, bucket_count=128):
    ids, i = [], 0
    while len(ids) < count:
        if bucket_of(encode_value(SCHEMA.columns[0].type, i), bucket_count) == bucket:
            ids.append(i)
        i += 1
    return ids


def test_one_idle_poll_group_does_not_end_the_run_while_another_receives_records(tmp_path):
    # Two poll groups: group 0 polls bucket 0, which stays empty; group 1 polls bucket 1,
    # which keeps receiving rows for longer than a round and than the idle bound.
    ids = _ids_in_bucket(1, 600)
    with MockPixelsServer(SCHEMA, batch_size=50).start() as server:
        config = _config(
            tmp_path,
            server.port,
            **{"source.buckets": "0,1", "source.parallelism": "2", "checkpoint.interval.ms": "2000"},
        )

        def feed():
            for start in range(0, len(ids), 50):  # over about 6 s: several rounds
                server.load_rows([(i, f"n{i}") for i in ids[start : start + 50]])
                time.sleep(0.5)

        feeder = threading.Thread(target=feed)
        feeder.start()
        summary = app.run_local(config)
        feeder.join()
        pending = server.pending()

    assert pending == 0
    assert summary.records == 600
    assert _table_ids(config) == sorted(ids)


def test_a_run_of_several_tables_builds_its_pipeline_once_and_each_round_resumes_where_the_last_committed(
    tmp_path, caplog, monkeypatch
):
    # Rows keep arriving for several rounds, each chunk once the last one is committed; every round
    # runs the same pipeline again, each table's read starting where its last commit ended.
    with MockPixelsServer(SCHEMA, table_name="a", batch_size=50).start() as server:
        tables = {"a": server, "b": server.serve_table(SCHEMA, table_name="b")}
        config = _config(tmp_path, server.port, **{
            "tables": "a,b",
            "checkpoint.interval.ms": "700",
            "source.stop.after.idle.ms": "3000",
        })

        def load(chunk):
            for offset, table in enumerate(tables.values()):
                table.load_rows([(i, f"n{i + offset}") for i in range(chunk * 100, chunk * 100 + 100)])

        def committed(table_config):
            with contextlib.closing(app.open_table_writer(table_config)) as writer:
                return writer.last_checkpoint().positions.get(0, 0)

        def feed():
            for chunk in range(1, 3):
                deadline = time.monotonic() + 120
                while server.pending() or tables["b"].pending():  # polled: the run has opened the tables
                    time.sleep(0.05)
                while min(committed(c) for c in config.tables().values()) < chunk * 100:
                    assert time.monotonic() < deadline, "no commit"
                    time.sleep(0.1)
                load(chunk)

        load(0)
        feeder = threading.Thread(target=feed)
        # Opens of each table's writers and reads of its checkpoint, but the checks of feed().
        opened_by_run, read_by_run = collections.Counter(), collections.Counter()
        open_table, read_checkpoint = IcebergTableWriter.open, IcebergTableWriter.last_checkpoint

        def counted_open(writer):
            if threading.current_thread() is not feeder:
                opened_by_run[writer.table_name] += 1
            return open_table(writer)

        def counted_read(writer):
            if threading.current_thread() is not feeder:
                read_by_run[writer.table_name] += 1
            return read_checkpoint(writer)

        monkeypatch.setattr(IcebergTableWriter, "open", counted_open)
        monkeypatch.setattr(IcebergTableWriter, "last_checkpoint", counted_read)
        feeder.start()
        with caplog.at_level(logging.INFO, logger="beam_pixels.app"):
            summary = app.run_local(config)
        feeder.join()

    built = [r for r in caplog.records if "the pipeline is built" in r.getMessage()]
    assert summary.rounds >= 3
    assert len(built) == 1, [r.getMessage() for r in built]
    # The rounds write and commit each table with the writer the run opened to resume from.
    assert opened_by_run == {"pixels.a": 1, "pixels.b": 1}, opened_by_run
    # Each table's checkpoint is read once when the run starts and once per commit (which builds on
    # it), not again after each round: the rounds resume from what the commits read or made.
    commits = {f"pixels.{name}": summary.checkpoints[name].batch_id for name in config.tables()}
    assert read_by_run == {table: 1 + n for table, n in commits.items()}, (read_by_run, commits)
    assert summary.records == 600
    for name, table_config in config.tables().items():
        assert summary.checkpoints[name].batch_id >= 3, f"{name}: {summary.checkpoints[name]}"
        with contextlib.closing(app.open_table_writer(table_config)) as writer:
            assert summary.checkpoints[name] == writer.last_checkpoint()
        assert _table_ids(table_config) == list(range(300))
        # Each commit's trim ran in the background; the run waited for the last ones.
        journal = PollJournal(table_config.journal_location(local_run=True))
        assert (journal.segments(0), journal.committed_floor(0)) == ([], 300), name
