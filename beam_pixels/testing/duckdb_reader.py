"""DuckDB's iceberg extension: the Iceberg reader the project did not write (soak benchmark, tests).

The extensions come from the ``duckdb-extension-iceberg`` / ``-avro`` wheels (the ``bench``
and ``test`` extras) and are loaded from their files: DuckDB cannot download them here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

_MISSING = "the Iceberg reader is DuckDB's iceberg extension: pip install 'beam-pixels[bench]'"


def _extension(duckdb, package: str, name: str) -> str:
    """Path of an extension that a ``duckdb-extension-*`` wheel ships for this duckdb."""
    try:
        module = __import__(package)
    except ImportError as error:
        raise RuntimeError(f"{package} is missing; {_MISSING}") from error
    path = Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; install {package.replace('_', '-')}=={duckdb.__version__}")
    return str(path)


def connect():
    """A DuckDB connection with the avro and iceberg extensions loaded (no progress bar)."""
    try:
        import duckdb
    except ImportError as error:
        raise RuntimeError(_MISSING) from error
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"LOAD '{_extension(duckdb, 'duckdb_extension_avro', 'avro')}'")
        con.execute(f"LOAD '{_extension(duckdb, 'duckdb_extension_iceberg', 'iceberg')}'")
    except BaseException:
        con.close()
        raise
    return con


def read_iceberg(metadata_location: str, columns: str = "*") -> pa.Table:
    """``columns`` of every row of the table snapshot ``metadata_location`` describes."""
    con = connect()
    try:
        return con.execute(f"SELECT {columns} FROM iceberg_scan(?)", [metadata_location]).to_arrow_table()
    finally:
        con.close()
