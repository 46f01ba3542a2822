"""Read an Iceberg table with DuckDB's iceberg extension: a second reader besides pyiceberg."""

from __future__ import annotations

from beam_pixels.testing.duckdb_reader import connect


def duckdb_rows(metadata_location: str) -> list[dict]:
    """Every row of the table snapshot that ``metadata_location`` describes, as dicts."""
    con = connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute("SELECT * FROM iceberg_scan(?)", [metadata_location])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.close()
