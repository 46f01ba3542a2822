"""Copy-on-write commits (``iceberg.write.mode=copy-on-write``), for readers that cannot apply deletes.

One snapshot drops the touched keys: data files that may hold them, pruned by
their column bounds, are read and those holding any are rewritten without them
(matched with Arrow hash lookups), and the surviving after-images are added.
pyiceberg's own ``delete`` with an ``In`` filter of 10^5 keys is ~10x slower.
"""

from __future__ import annotations

import uuid

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, In, LessThanOrEqual
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation

from beam_pixels.sinks.iceberg import files
from beam_pixels.sinks.iceberg._pyiceberg_private import commit_file_changes, file_reader

# Up to this many touched keys, files are pruned with an IN filter per key column;
# beyond it pyiceberg's metrics evaluator gives up on IN anyway (IN_PREDICATE_LIMIT),
# so a min/max range prunes as well and costs no hashing.
_IN_FILTER_LIMIT = 200


def commit(table: Table, touched_keys: pa.Table | None, added: list[DataFile], properties: dict[str, str]) -> int:
    """One snapshot that rewrites the files holding ``touched_keys`` without them and adds
    ``added``; returns its id. Only additions make an append snapshot."""
    survivors, rewritten = _rows_outside(table, touched_keys) if touched_keys is not None else ([], [])
    rows = pa.concat_tables(survivors) if survivors else None
    new_files = [*files.write_data_files(table, rows, uuid.uuid4()).files, *added]
    operation = Operation.OVERWRITE if rewritten else Operation.APPEND
    return commit_file_changes(table, properties, added=new_files, removed=rewritten, operation=operation)


def _rows_outside(table: Table, touched_keys: pa.Table) -> tuple[list[pa.Table], list[DataFile]]:
    """The files holding any of ``touched_keys``, and their rows without those keys.

    A file the key filter cannot rule out by its statistics is first read by its key
    columns alone; only a file that does hold a touched key is read whole.
    """
    target = files.arrow_schema(table)
    keys = pa.table({k: touched_keys.column(k).cast(target.field(k).type) for k in touched_keys.column_names})
    survivors, rewritten = [], []
    if keys.num_rows:
        schema = table.schema()
        key_columns = file_reader(table, schema.select(*keys.column_names))
        whole_rows = file_reader(table, schema)
        for task in table.scan(row_filter=_key_filter(keys)).plan_files():
            if not _key_hits(key_columns.to_table([task]), keys).any():
                continue
            rows = files.conform(whole_rows.to_table([task]), target)
            rewritten.append(task.file)
            survivors.append(rows.filter(pa.array(~_key_hits(rows, keys))))
    return survivors, rewritten


def _key_hits(rows: pa.Table, keys: pa.Table) -> np.ndarray:
    """Which rows of ``rows`` have their key (the columns of ``keys``) in ``keys``.

    A hash lookup of the first key column settles single-column keys and narrows
    composite ones down to the few candidate rows that a semi-join then checks.
    """
    first, *rest = keys.column_names
    hit = pc.is_in(rows.column(first), value_set=keys.column(first)).to_numpy(zero_copy_only=False)
    if rest:
        candidates = np.flatnonzero(hit)
        probe = rows.select(keys.column_names).take(candidates).append_column("__row", pa.array(candidates))
        matched = probe.join(keys, keys=keys.column_names, join_type="left semi", use_threads=False)
        hit = np.zeros(rows.num_rows, dtype=bool)
        hit[matched.column("__row").to_numpy()] = True
    return hit


def _key_filter(keys: pa.Table) -> BooleanExpression:
    """A filter matching every row with one of ``keys`` (distinct key tuples, as
    collapsing leaves them) and maybe others, to prune data files."""
    terms: list[BooleanExpression] = []
    for name in keys.column_names:
        column = keys.column(name)
        if len(column) <= _IN_FILTER_LIMIT:
            terms.append(In(name, pc.unique(column).to_pylist()))
        else:  # a range: as good for pruning, and no hashing of every key
            bounds = pc.min_max(column)
            terms.append(
                And(GreaterThanOrEqual(name, bounds["min"].as_py()), LessThanOrEqual(name, bounds["max"].as_py()))
            )
    return And(*terms) if len(terms) > 1 else terms[0]
