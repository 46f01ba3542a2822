"""The key index (``beam_pixels.sinks.key_index``) both sinks' merge-on-read commits use:
key codes, lookups verified against stored keys, and the process's one cache of indexes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from beam_pixels.sinks.key_index import KeyIndex, SnapshotCache, key_codes, verify


def test_integer_keys_are_their_own_codes_and_other_keys_hash_alike_everywhere():
    assert key_codes(pa.table({"id": pa.array([3, -1, 2**40], pa.int64())})).tolist() == [3, -1, 2**40]
    keys = pa.table({"region": ["eu", "eu", "us", ""], "id": pa.array([1, 2, 1, 1], pa.int32())})
    codes = key_codes(keys)
    assert len(set(codes.tolist())) == 4
    assert key_codes(keys.slice(2)).tolist() == codes[2:].tolist()  # independent of the batch it is in


def test_colliding_key_codes_delete_only_the_row_of_the_touched_key():
    """Two stored keys given the same code: the index finds both, verification keeps the right one."""
    stored = {"a.parquet": pa.table({"region": ["eu", "us"], "id": [1, 1]})}
    index = KeyIndex(exact=False, snapshot_id=1)
    index.add_file("a.parquet", np.array([42, 42]))  # a collision, forced
    touched = pa.table({"region": ["us"], "id": [1]})
    hits = index.find(np.array([42]))
    assert len(hits.query) == 2
    keep = verify(hits, touched, lambda path, positions: stored[path].take(pa.array(positions)), index)
    assert hits.positions[keep].tolist() == [1]
    index.forget(hits, keep)
    assert index.find(np.array([42])).positions.tolist() == [0]


def test_the_index_agrees_with_a_dict_through_many_commits_merges_and_compactions():
    rng = np.random.default_rng(5)
    index = KeyIndex(exact=True, snapshot_id=None)
    model: dict[int, tuple[str, int]] = {}
    for n in range(60):
        keys = np.unique(rng.integers(0, 5000, 300))
        hits = index.find(keys)
        assert sorted(zip(keys[hits.query].tolist(), hits.positions.tolist())) == sorted(
            (k, model[k][1]) for k in keys.tolist() if k in model
        )
        index.forget(hits)
        for k in keys.tolist():
            model.pop(k, None)
        survivors = keys[rng.random(len(keys)) < 0.8]  # the rest were deletes
        index.add_file(f"f{n}", survivors)
        model.update({k: (f"f{n}", i) for i, k in enumerate(survivors.tolist())})
        if n % 20 == 19:  # a compaction rewrites the two oldest live files into one
            gone = sorted({path for path, _ in model.values()})[:2]
            moved = sorted(k for k, (path, _) in model.items() if path in gone)
            index.forget_files(gone)
            index.add_file(f"c{n}", np.array(moved, np.int64))
            model.update({k: (f"c{n}", i) for i, k in enumerate(moved)})
        assert len(index) == len(model)
    everything = np.arange(5000)
    hits = index.find(everything)
    found = {int(everything[q]): (index.path(int(f)), int(p)) for q, f, p in zip(hits.query, hits.files, hits.positions)}
    assert found == model


@dataclass
class _Built:
    snapshot_id: int | None
    serial: int


def test_the_cache_serves_an_index_only_while_it_describes_the_current_snapshot(caplog):
    cache = SnapshotCache()
    built = []

    def build(snapshot_id):
        def make():
            built.append(snapshot_id)
            return _Built(snapshot_id, len(built))
        return make

    first = cache.get(("iceberg", "t"), 1, build(1), "db.t")
    assert cache.get(("iceberg", "t"), 1, build(1), "db.t") is first and built == [1]
    assert cache.current(("iceberg", "t"), 1) is first and cache.current(("iceberg", "t"), 2) is None
    assert cache.get(("paimon", "t"), 1, build(1), "/t") is not first  # tables of each format apart
    with caplog.at_level("INFO", logger="beam_pixels.sinks.key_index"):
        moved = cache.get(("iceberg", "t"), 2, build(2), "db.t")
    assert moved.snapshot_id == 2 and "db.t: changed by another writer (snapshot 2, index at 1)" in caplog.text
    cache.forget(("iceberg", "t"))
    assert cache.peek(("iceberg", "t")) is None
    assert cache.get(("iceberg", "t"), 2, build(2), "db.t") is not moved and built == [1, 1, 2, 2]
