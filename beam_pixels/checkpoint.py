"""Exactly-once bookkeeping shared by the sinks: what a commit records and what it skips.

Every commit a sink makes carries a :class:`Checkpoint` in the table's own
metadata (Iceberg snapshot properties, Paimon commit identifier and properties):
a batch id that grows by one per commit and, per poll group, the position one
past the last record committed. Before committing, a sink reads the last
checkpoint back from the table and drops records it already holds; a restarted
run resumes its positions from it.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

BATCH_ID_PROPERTY = "beam-pixels.batch-id"
POSITIONS_PROPERTY = "beam-pixels.positions"


@dataclass(frozen=True)
class Checkpoint:
    """The last commit's batch id and, per poll group, the next uncommitted position."""

    batch_id: int = 0
    positions: dict[int, int] = field(default_factory=dict)

    def to_properties(self) -> dict[str, str]:
        return {
            BATCH_ID_PROPERTY: str(self.batch_id),
            POSITIONS_PROPERTY: json.dumps({str(g): p for g, p in sorted(self.positions.items())}),
        }

    @classmethod
    def from_properties(cls, properties: dict[str, str] | None) -> "Checkpoint | None":
        """The checkpoint stored in ``properties``, or None when they hold none."""
        if not properties or BATCH_ID_PROPERTY not in properties:
            return None
        positions = json.loads(properties.get(POSITIONS_PROPERTY) or "{}")
        return cls(int(properties[BATCH_ID_PROPERTY]), {int(g): int(p) for g, p in positions.items()})

    def next_position(self, poll_group: int) -> int:
        return self.positions.get(poll_group, 0)

    def uncommitted(self, records: pa.Table) -> pa.Table:
        """The rows of a records table (see ``changes.records_schema``) not yet committed."""
        if not self.positions or records.num_rows == 0:
            return records
        groups = records.column("poll_group").to_numpy()
        positions = records.column("position").to_numpy()
        max_group = int(max(groups.max(), max(self.positions))) + 1
        floor = np.zeros(max_group, dtype=np.int64)
        for g, p in self.positions.items():
            floor[g] = p
        return records.filter(pa.array(positions >= floor[groups]))

    def advance(self, records: pa.Table) -> "Checkpoint":
        """The checkpoint after committing ``records``: next batch id, positions moved past them."""
        ends = {}
        if records.num_rows:
            groups = records.column("poll_group").to_numpy()
            positions = records.column("position").to_numpy()
            ends = {int(g): int(positions[groups == g].max()) + 1 for g in np.unique(groups)}
        return self.advance_to(ends)

    def advance_to(self, ends: typing.Mapping[int, int]) -> "Checkpoint":
        """The next batch id, with each poll group in ``ends`` moved to its end position
        (never back)."""
        positions = dict(self.positions)
        for group, end in ends.items():
            positions[group] = max(positions.get(group, 0), end)
        return Checkpoint(self.batch_id + 1, positions)
