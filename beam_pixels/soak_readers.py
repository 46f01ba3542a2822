"""Readers the project did not write, for the soak benchmark: DuckDB's iceberg extension.

The extension comes from the ``duckdb-extension-iceberg`` / ``-avro`` wheels
(the ``bench`` extra; loaded from their files, never downloaded), as ``tests/iceberg_helpers.py`` does.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa


def _duckdb():
    try:
        import duckdb
    except ImportError as error:
        raise RuntimeError(
            "the soak benchmark reads Iceberg with DuckDB: pip install 'beam-pixels[bench]'"
        ) from error
    return duckdb


def _extension(package: str, name: str) -> str:
    duckdb = _duckdb()

    try:
        module = __import__(package)
    except ImportError as error:
        raise RuntimeError(f"{package} is missing: pip install 'beam-pixels[bench]'") from error
    path = Path(module.__file__).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; install {package.replace('_', '-')}=={duckdb.__version__}")
    return str(path)


def duckdb_iceberg_read(metadata_location: str) -> pa.Table:
    """Every row of the Iceberg table snapshot ``metadata_location`` describes, via DuckDB."""
    duckdb = _duckdb()

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    try:
        con.execute(f"LOAD '{_extension('duckdb_extension_avro', 'avro')}'")
        con.execute(f"LOAD '{_extension('duckdb_extension_iceberg', 'iceberg')}'")
        return con.execute(
            "SELECT id, version, amount, note FROM iceberg_scan(?)", [metadata_location]
        ).fetch_arrow_table()
    finally:
        con.close()
