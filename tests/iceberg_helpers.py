"""Read an Iceberg table with DuckDB's iceberg extension: a second reader besides pyiceberg."""

from __future__ import annotations

from pathlib import Path

import duckdb


def _extension(package: str, name: str) -> str:
    """Path of an extension that a ``duckdb-extension-*`` wheel ships for this duckdb."""
    module = __import__(package)
    path = Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; install {package.replace('_', '-')}=={duckdb.__version__}")
    return str(path)


def duckdb_rows(metadata_location: str) -> list[dict]:
    """Every row of the table snapshot that ``metadata_location`` describes, as dicts."""
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute(f"LOAD '{_extension('duckdb_extension_avro', 'avro')}'")
        con.execute(f"LOAD '{_extension('duckdb_extension_iceberg', 'iceberg')}'")
        con.execute("SET TimeZone = 'UTC'")
        cursor = con.execute("SELECT * FROM iceberg_scan(?)", [metadata_location])
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.close()
