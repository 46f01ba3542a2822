#!/usr/bin/env python3
"""Where a Paimon table's bytes are, sampled while a writer runs (e.g. during a soak).

Every ``--every`` seconds it reads the table's latest snapshot and the snapshots it
retains and splits the bytes under the table location into: current data files (and the
share of their rows deleted), data files replaced but still referenced by a retained
snapshot, data files no retained snapshot references (orphans), current deletion-vector
index files, index files of retained snapshots only, orphan index files, and metadata
(snapshots, manifests, schemas). With ``--bytes-per-row`` (the fresh write's, e.g. 21.6
for pypaimon's write of the soak rows) each class is also shown as a share of the live
rows written fresh. One line per sample; read-only.

    python scripts/paimon-storage-breakdown.py WAREHOUSE pixels.soak --every 20 --bytes-per-row 21.6
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def sample(table, location: Path) -> dict:
    from beam_pixels.sinks.paimon import _pypaimon_private as private

    latest = private.latest_snapshot(table)
    earliest = private.earliest_snapshot_id(table)
    current = {e.file.file_name: e for e in private.live_entries(table, latest)}
    referenced = set(current)
    index_current = {Path(p).name for p in private.index_files(table, latest)[1]}
    index_retained = set(index_current)
    for snapshot_id in range(earliest, latest.id + 1):
        snapshot = private.snapshot_by_id(table, snapshot_id)
        if snapshot is None:
            continue
        index_retained |= {Path(p).name for p in private.index_files(table, snapshot)[1]}
        if snapshot_id > earliest:
            referenced |= {e.file.file_name for e in private.delta_entries(table, snapshot) if e.kind == 1}
    deleted_rows = 0
    for entries in private.deletion_vector_index(table, latest).values():
        for entry in entries:
            deleted_rows += sum(m.cardinality for m in (entry.index_file.dv_ranges or {}).values())
    stored_rows = sum(e.file.row_count for e in current.values())
    sizes = dict.fromkeys(("current", "replaced", "orphan", "index", "index_retained", "index_orphan", "meta"), 0)
    for root, _, names in os.walk(location):
        for name in names:
            try:
                size = os.path.getsize(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if name.startswith("data-"):
                key = "current" if name in current else "replaced" if name in referenced else "orphan"
            elif name.startswith("index-") and not name.startswith("index-manifest-"):
                key = "index" if name in index_current else "index_retained" if name in index_retained else "index_orphan"
            else:
                key = "meta"
            sizes[key] += size
    return {"snapshot": latest.id, "retained": latest.id - earliest + 1, "stored_rows": stored_rows,
            "live_rows": stored_rows - deleted_rows, "data_files": len(current), **sizes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("warehouse", type=Path)
    parser.add_argument("table", help="database.table")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between samples")
    parser.add_argument("--count", type=int, default=0, help="stop after this many samples (0: until interrupted)")
    parser.add_argument("--bytes-per-row", type=float, default=0.0, help="the fresh write's bytes per live row")
    args = parser.parse_args()
    from pypaimon import CatalogFactory

    database, name = args.table.split(".", 1)
    location = args.warehouse / f"{database}.db" / name
    started, taken = time.monotonic(), 0
    while not args.count or taken < args.count:
        try:
            table = CatalogFactory.create({"warehouse": f"file://{args.warehouse.resolve()}"}).get_table(args.table)
            s = sample(table, location)
        except Exception as error:  # a file expired while it was read: try again next time
            print(f"sample failed: {error}", file=sys.stderr, flush=True)
        else:
            total = sum(s[k] for k in ("current", "replaced", "orphan", "index", "index_retained", "index_orphan", "meta"))
            fresh = s["live_rows"] * args.bytes_per_row
            shares = "" if not fresh else " ratio " + " ".join(
                f"{k}={s[k] / fresh:.2f}" for k in ("current", "replaced", "orphan", "index", "index_retained",
                                                    "index_orphan", "meta")) + f" total={total / fresh:.2f}"
            print(f"t={time.monotonic() - started:.0f}s snapshot={s['snapshot']} retained={s['retained']} "
                  f"files={s['data_files']} live_rows={s['live_rows']} deleted_share="
                  f"{1 - s['live_rows'] / max(1, s['stored_rows']):.3f} MB: "
                  + " ".join(f"{k}={s[k] / 2**20:.2f}" for k in ("current", "replaced", "orphan", "index",
                                                                 "index_retained", "index_orphan", "meta"))
                  + f" total={total / 2**20:.2f}" + shares, flush=True)
        taken += 1
        time.sleep(args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
