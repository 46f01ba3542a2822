#!/usr/bin/env python3
"""A model of the buckets of a Paimon deletion-vector table under the soak's stream (one, or
``--buckets`` that take the same stream, so that their merges come together as in the soak),
compacted by the connector's own :func:`beam_pixels.sinks.paimon.dv_compaction.pick`.

Files are sorted key sets with a deleted mask: a commit marks the touched keys' rows deleted
and adds the new rows as the newest run (levels freed as :mod:`.merge_on_read` frees them),
then every rewrite the real ``pick`` chooses is carried out (a drain takes the newer runs'
live rows in its key range). Bytes are rows times a fixed bytes-per-row; each commit keeps a
copy of the bucket's deletion vectors (8 KB a container, 2 bytes a deleted row below 4,096).
It prints, over the commits after the first retention window, the storage as a share of the
live rows (current files with their deleted rows, plus the rewritten inputs of the last
``--retained-commits``, plus that many deletion-vector copies), and how much of the retained
rewriting was tiered merges, drains of the oldest run, merges of its small files and other
rewrites, and the files a bucket and its oldest run held. A policy change to ``pick`` shows here
in a minute against a soak's 15; the soak remains the measure.

Issue 22's two designs for the stream's rows: ``--insert-files`` writes a commit's new keys (past
every stored key, as the soak's ids) as their own file into the oldest run, whose small files
merge ``--small-fan-in`` at a time (tried in the sink and dropped: the soak was no better);
``--leveled N`` (model only, tried and dropped: it rewrote the leveled run, every row the oldest
run had not yet taken in, every N commits) has no tiered merges but a leveled run above the oldest that the newer runs
merge into a key range at a time, a round of its files every N commits.

    python scripts/paimon-dv-compaction-model.py --levels 16 --seed 3
    python scripts/paimon-dv-compaction-model.py --buckets 4 --keys 250000 --changes 1000 --retained-commits 40
"""

from __future__ import annotations

import argparse
import itertools
import sys
from types import SimpleNamespace

import numpy as np

from beam_pixels.sinks.paimon import dv_compaction
from beam_pixels.sinks.paimon.compaction import CompactionOptions, sorted_runs


class Bucket:
    def __init__(self, max_level: int, bytes_per_row: float, first_name: int = 0):
        self.max_level, self.bytes_per_row = max_level, bytes_per_row
        self.files: dict[str, dict] = {}  # name -> keys (sorted), deleted mask, level
        self.owner: dict[int, tuple[str, int]] = {}  # live key -> (file, position)
        self.names = itertools.count(first_name)  # distinct per bucket: delete-ratio spreads hash the name
        self.live_rows = SimpleNamespace(live_count=lambda name: int((~self.files[name]["deleted"]).sum()))

    def add(self, keys: np.ndarray, level: int) -> None:
        name = f"f{next(self.names)}"
        keys = np.sort(keys)
        self.files[name] = {"keys": keys, "deleted": np.zeros(len(keys), bool), "level": level}
        for position, key in enumerate(keys.tolist()):
            self.owner[key] = (name, position)

    def delete(self, key: int) -> None:
        name, position = self.owner.pop(key)
        self.files[name]["deleted"][position] = True

    def entries(self) -> list:
        return [SimpleNamespace(file=SimpleNamespace(
            file_name=name, level=f["level"], row_count=len(f["keys"]), file_size=len(f["keys"]) * self.bytes_per_row,
            max_sequence_number=int(name[1:]), min_key=SimpleNamespace(values=[int(f["keys"][0])]),
            max_key=SimpleNamespace(values=[int(f["keys"][-1])]))) for name, f in self.files.items()]

    def rewrite(self, rewrite) -> int:
        """Carry ``rewrite`` out; returns the rows of its inputs (kept by retained snapshots)."""
        parts = [self.files[e.file.file_name]["keys"][~self.files[e.file.file_name]["deleted"]] for e in rewrite.inputs]
        for entry in rewrite.absorb_from:
            f = self.files[entry.file.file_name]
            take = ~f["deleted"]
            if rewrite.lower is not None:
                take &= f["keys"] >= rewrite.lower[0]
            if rewrite.upper is not None:
                take &= f["keys"] < rewrite.upper[0]
            parts.append(f["keys"][take])
            f["deleted"][take] = True
        rows = sum(e.file.row_count for e in rewrite.inputs)
        for entry in rewrite.inputs:
            del self.files[entry.file.file_name]
        keys = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        if len(keys):
            count = max(1, round(len(keys) / rewrite.file_rows)) if rewrite.file_rows else 1
            for part in np.array_split(keys, count):
                self.add(part, rewrite.level)
        return rows

    def free_level_one(self) -> int:
        """As :func:`merge_on_read._free_level_one`: shift the runs up, or merge levels 1 and 2."""
        levels = {f["level"] for f in self.files.values()}
        if 1 not in levels:
            return 0
        if levels >= set(range(1, self.max_level + 1)):
            return self.rewrite(dv_compaction.Rewrite([e for e in self.entries() if e.file.level in (1, 2)], 2))
        top = 1
        while top + 1 in levels:
            top += 1
        shift = min(level for level in levels | {self.max_level + 1} if level > top) - top - 1
        for f in self.files.values():
            if f["level"] <= top:
                f["level"] += shift
        return 0

    def stored_rows(self) -> int:
        return sum(len(f["keys"]) for f in self.files.values())

    def vector_bytes(self) -> int:
        total = 0
        for f in self.files.values():
            positions = np.flatnonzero(f["deleted"])
            for count in np.bincount(positions // 65_536).tolist() if len(positions) else ():
                total += min(2 * count, 8192) if count else 0
        return total


def small_file_merges(bucket: Bucket, fan_in: int) -> list:
    """With ``--insert-files``: adjacent files of the oldest run under a ``fan_in``-th of a
    compaction file's rows, merged ``fan_in`` at a time once the biggest of them is at most the
    others together (so a row is merged about log(fan-in) of (a file's rows / a commit's)
    times); without it, the oldest run's file count would grow by one a commit."""
    entries = bucket.entries()
    live = sum(bucket.live_rows.live_count(e.file.file_name) for e in entries)
    file_rows = max(dv_compaction.MIN_FILE_ROWS, live * dv_compaction.DEFAULT_FILE_PERCENT // 100)
    oldest = sorted((e for e in entries if e.file.level == bucket.max_level), key=lambda e: e.file.min_key.values[0])
    merges, stretch = [], []
    for entry in [*oldest, None]:
        rows = bucket.live_rows.live_count(entry.file.file_name) if entry is not None else file_rows
        if rows < file_rows // fan_in:
            stretch.append((entry, rows))
            continue
        end = len(stretch)
        while end >= fan_in:
            window = stretch[end - fan_in:end]
            if max(r for _, r in window) * 2 <= sum(r for _, r in window):
                merges.append(dv_compaction.Rewrite([e for e, _ in window], bucket.max_level, file_rows))
                end -= fan_in
            else:
                end -= 1
        stretch = []
    return merges


def leveled(bucket: Bucket, cursors: list, number: int, args) -> list:
    """Design 2 of issue 22 (model only): a leveled run just above the oldest (level max - 1)
    that the newer runs merge into a key range at a time, ``--leveled`` commits for a round of
    its files (so no newer run outlives that many commits); made from the newer runs when
    there is none yet. The oldest run's drains take from it as from any newer run."""
    runs = sorted_runs(bucket.entries())
    live = sum(int((~f["deleted"]).sum()) for f in bucket.files.values())
    file_rows = max(1, live // args.leveled_files)
    level = bucket.max_level - 1
    if len(runs) < 2:
        return []
    if runs[-2].level != level:
        if len(runs) - 1 < args.leveled:
            return []
        return [dv_compaction.Rewrite([e for run in runs[:-1] for e in run.files], level, file_rows)]
    newer = tuple(e for run in runs[:-2] for e in run.files)
    if not newer:
        return []
    files = sorted(runs[-2].files, key=lambda e: e.file.min_key.values[0])
    count = -(-len(files) // args.leveled)
    rewrites = []
    for step in range(count):
        at = (cursors[number] + step) % len(files)
        lower = None if at == 0 else (files[at].file.min_key.values[0],)
        upper = None if at == len(files) - 1 else (files[at + 1].file.min_key.values[0],)
        if any(r.lower == lower for r in rewrites):
            break
        rewrites.append(dv_compaction.Rewrite([files[at]], level, file_rows, newer, lower, upper))
    cursors[number] = (cursors[number] + count) % len(files)
    return rewrites


def run(args) -> str:
    rng = np.random.default_rng(args.seed)
    buckets, alive, next_key = [], [], []
    for number in range(args.buckets):  # bucket b holds the keys k with k % buckets == b
        bucket = Bucket(args.levels - 1, args.bytes_per_row, number * 10_000_000)
        keys = np.arange(args.keys) * args.buckets + number
        for part in np.array_split(keys, max(1, round(args.keys / args.load_file_rows))):
            bucket.add(part, bucket.max_level)
        buckets.append(bucket)
        alive.append(keys)
        next_key.append(args.keys * args.buckets + number)
    options = CompactionOptions(trigger=args.levels - 1, num_levels=args.levels)
    # --leveled: no tiered merges (rule 1 never fires); the newer runs merge into the leveled run instead
    pick_options = CompactionOptions(trigger=args.levels - 1, num_levels=10**6) if args.leveled else options
    cursors = [0] * args.buckets
    rewritten, totals, counts = [], [], []
    vectors = [0] * args.buckets
    for commit in range(args.commits):
        kinds = {"tier": 0, "drain": 0, "small": 0, "level": 0, "other": 0}
        for number, bucket in enumerate(buckets):
            inserts, updates = int(args.changes * 0.3), int(args.changes * 0.6)
            touched = rng.choice(alive[number], args.changes - inserts, replace=False)
            for key in touched.tolist():
                bucket.delete(key)
            new_keys = np.arange(next_key[number], next_key[number] + inserts * args.buckets, args.buckets)
            next_key[number] += inserts * args.buckets
            alive[number] = np.concatenate([np.setdiff1d(alive[number], touched[updates:], assume_unique=True),
                                            new_keys])
            kinds["tier"] += bucket.free_level_one()
            levels = {f["level"] for f in bucket.files.values()}
            newest = min(levels) - 1 if levels else bucket.max_level
            if args.insert_files:  # the new keys lie past every stored key: their own file sinks into the oldest run
                bucket.add(touched[:updates], newest)
                bucket.add(new_keys, bucket.max_level)
            else:
                bucket.add(np.concatenate([touched[:updates], new_keys]), newest)
            for rewrite in dv_compaction.pick(bucket.entries(), bucket.live_rows, pick_options, args.ratio):
                oldest = rewrite.inputs[0].file.level == bucket.max_level
                kind = "drain" if oldest else "tier" if len(rewrite.inputs) > 1 else "other"
                kinds[kind] += bucket.rewrite(rewrite)
            if args.insert_files:
                for rewrite in small_file_merges(bucket, args.small_fan_in):
                    kinds["small"] += bucket.rewrite(rewrite)
            if args.leveled:
                for rewrite in leveled(bucket, cursors, number, args):
                    kinds["level"] += bucket.rewrite(rewrite)
            if commit % 5 == 0 or not vectors[number]:  # counting containers is the slow part
                vectors[number] = bucket.vector_bytes()
        rewritten.append(kinds)
        if commit >= args.retained_commits:
            window = sum(sum(k.values()) for k in rewritten[-args.retained_commits:])
            live = sum(len(keys) for keys in alive)
            stored = sum(bucket.stored_rows() for bucket in buckets)
            copies = sum(vectors) * args.retained_commits / (live * args.bytes_per_row)
            totals.append(((stored + window) / live + copies, stored / live, window / live, copies))
            counts += [(len(b.files), sum(f["level"] == b.max_level for f in b.files.values())) for b in buckets]
    t = np.array(totals)
    c = np.array(counts)
    files = (c[:, 0].min(), c[:, 0].max(), c[:, 0].mean(), c[:, 1].min(), c[:, 1].max())
    steady = rewritten[args.retained_commits:]
    live = sum(len(keys) for keys in alive)
    shares = {kind: sum(k[kind] for k in steady) * args.retained_commits / len(steady) / live
              for kind in ("tier", "drain", "small", "level", "other")}
    return (f"storage mean {t[:, 0].mean():.2f} p90 {np.percentile(t[:, 0], 90):.2f} max {t[:, 0].max():.2f} "
            f"(commit {int(t[:, 0].argmax()) + args.retained_commits}); "
            f"current {t[:, 1].mean():.2f} retained rewrites {t[:, 2].mean():.2f} deletion vectors {t[:, 3].mean():.2f}; "
            f"retained rewrites by kind: tiered {shares['tier']:.2f} drains {shares['drain']:.2f} "
            f"small {shares['small']:.2f} leveled {shares['level']:.2f} other {shares['other']:.2f}; "
            f"files a bucket {files[0]}-{files[1]} (mean {files[2]:.1f}), oldest run {files[3]}-{files[4]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--buckets", type=int, default=1,
                        help="buckets taking the same stream (their tiered merges come together)")
    parser.add_argument("--keys", type=int, default=300_000, help="keys preloaded into each bucket")
    parser.add_argument("--changes", type=int, default=1_100,
                        help="changes a commit per bucket (30%% inserts, 60%% updates, 10%% deletes)")
    parser.add_argument("--commits", type=int, default=300)
    parser.add_argument("--levels", type=int, default=16, help="the table's num-levels")
    parser.add_argument("--ratio", type=float, default=0.35, help="compaction.delete-ratio-threshold")
    parser.add_argument("--load-file-rows", type=int, default=dv_compaction.MIN_FILE_ROWS, help="rows a preload file")
    parser.add_argument("--retained-commits", type=int, default=30, help="commits the retained snapshots span")
    parser.add_argument("--bytes-per-row", type=float, default=22.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--insert-files", action="store_true",
                        help="a commit's new keys (past every stored key) as their own file, into the oldest run")
    parser.add_argument("--leveled", type=int, default=0,
                        help="design 2: a leveled run above the oldest, merged into over this many commits (0: none)")
    parser.add_argument("--leveled-files", type=int, default=64, help="its files hold the bucket's live rows over this")
    parser.add_argument("--small-fan-in", type=int, default=16,
                        help="with --insert-files: small files of the oldest run merged this many at a time")
    print(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
