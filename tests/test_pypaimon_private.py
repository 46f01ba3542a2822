"""pypaimon internals the connector relies on (``beam_pixels.sinks.paimon._pypaimon_private``).

Each test fails loudly when a pypaimon upgrade changes one of them: the
connector's overrides must compute what pypaimon computes, and the private
names and signatures it calls must still exist.
"""

import pyarrow as pa
import pytest

from beam_pixels.schema import SourceSchema
from beam_pixels.sinks.paimon import PaimonTableWriter
from beam_pixels.sinks.paimon import _pypaimon_private as private

ORDERS = SourceSchema.parse("region:STRING, id:INT, qty:INT, note:STRING", primary_key=["region", "id"])


def catalog_properties(tmp_path) -> dict[str, str]:
    return {"type": "paimon", "warehouse": str(tmp_path / "warehouse")}


def test_vectorised_row_kinds_equal_pypaimons():
    """StreamWrite / KeyValueWriter overrides compute what pypaimon computes row by row."""
    from types import SimpleNamespace

    from pypaimon.write.row_kind import row_kinds

    rowkind = SimpleNamespace(options=SimpleNamespace(to_map=lambda: {"rowkind.field": "_rowkind"}))
    plain = SimpleNamespace(options=SimpleNamespace(to_map=lambda: {}))
    data = pa.table({"id": [1, 2, 3, 4, 5], "_rowkind": ["+I", "-D", "+U", "-U", "+I"]})
    assert private.row_kinds(rowkind, data).tolist() == row_kinds(rowkind, data) == [0, 3, 2, 1, 0]
    assert private.row_kinds(plain, data).tolist() == row_kinds(plain, data)
    for bad in (["+I", "??"], ["+I", None]):
        table = pa.table({"_rowkind": pa.array(bad, pa.string())})
        with pytest.raises(ValueError) as theirs:
            row_kinds(rowkind, table)
        with pytest.raises(ValueError) as ours:
            private.row_kinds(rowkind, table)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(ValueError, match="must be a string"):
        private.row_kinds(rowkind, pa.table({"_rowkind": [1]}))


def test_vectorised_system_fields_equal_pypaimons(tmp_path):
    from pypaimon.write.writer.key_value_data_writer import KeyValueDataWriter

    writer = PaimonTableWriter(ORDERS, "pixels.kinds", catalog_properties(tmp_path))
    writer.open()
    rows = pa.table({"region": ["EU", "US", "EU"], "id": pa.array([3, 1, 2], pa.int32()),
                     "_rowkind": ["+I", "-D", "+I"]})
    write = private.StreamWrite(writer._table, "test")
    try:
        ours = write.file_store_write._create_data_writer((), 0, writer._table.options)
        assert type(ours) is private.KeyValueWriter
        theirs = write.file_store_write._create_data_writer((), 0, writer._table.options)
        theirs.__class__ = KeyValueDataWriter
        full = pa.table({f.name: rows.column(f.name) if f.name in rows.column_names else pa.nulls(3, f.type)
                         for f in writer._write_schema}).cast(writer._write_schema)
        batch = full.to_batches()[0]
        for _ in range(2):  # sequence numbers continue across calls
            assert ours._add_system_fields(batch).equals(theirs._add_system_fields(batch))
        assert write._prepare_arrow_data(batch).equals(super(private.StreamWrite, write)._prepare_arrow_data(batch))
    finally:
        write.close()
