"""Paimon tables read with Paimon's own Java reader (``scripts/paimon-java-reader.sh``), as
Python values that compare exactly with what the connector wrote and with pypaimon's reads.

The first test that calls :func:`require` installs the reader (``scripts/paimon-java-reader.sh
install``: Maven fetches Paimon's jars, javac compiles the reader; about a minute with an empty
Maven repository, cached after), as the Flink tests install their cluster. Where it cannot be
installed (no JDK or Maven, Maven Central unreachable) those tests skip with the reason, or fail
when ``BEAM_PIXELS_REQUIRE_FLINK=1`` (CI).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "paimon-java-reader.sh"
REQUIRED = os.environ.get("BEAM_PIXELS_REQUIRE_FLINK") == "1"

_EPOCH = datetime(1970, 1, 1)


@functools.cache
def _install() -> str | None:
    """Install the reader unless it is (once per test session); None, or why it could not be."""
    done = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True, timeout=900)
    if done.returncode == 0:
        return None
    return (f"Paimon's Java reader could not be installed ({SCRIPT.relative_to(REPO)} install, exit "
            f"{done.returncode}; needs a JDK 11+, Maven and Maven Central):\n{done.stderr[-3000:]}")


def require() -> None:
    """Install the reader on first use; skip the calling test when that fails (fail instead in CI)."""
    reason = _install()
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"{reason} (BEAM_PIXELS_REQUIRE_FLINK=1 forbids skipping the Java reader tests)")
    pytest.skip(reason)


@dataclass
class JavaRead:
    """One read: the snapshot Java read, its columns and rows (row kinds apart)."""

    version: str
    table: str
    snapshot: int | None
    filter: str | None
    splits: int
    types: dict[str, str]
    rows: list[dict] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def sorted_rows(self, key: list[str], columns: list[str] | None = None) -> list[dict]:
        """Rows (only ``columns``, default all) sorted by ``key``."""
        rows = self.rows if columns is None else [{c: r[c] for c in columns} for r in self.rows]
        return sorted(rows, key=lambda r: tuple(r[k] for k in key))


def read(warehouse, table: str, **options: str) -> JavaRead:
    """``table`` (``db.name``) of the filesystem catalog at ``warehouse``; ``options`` are
    dynamic table options (e.g. ``**{"scan.snapshot-id": "3"}``), and ``where.<field>=<value>``
    a filter pushed down as a Java query would (best effort: a superset of the matching rows)."""
    return read_many(warehouse, [(table, options)])[0]


def read_many(warehouse, reads: list[tuple[str, dict[str, str]]]) -> list[JavaRead]:
    """Several reads in one JVM (a JVM start is about a second)."""
    args = []
    for table, options in reads:
        args += (["--"] if args else []) + [table] + [f"{k}={v}" for k, v in options.items()]
    done = subprocess.run(["bash", str(SCRIPT), "read", str(warehouse), *args], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise AssertionError(f"Paimon's Java reader failed (exit {done.returncode}):\n{done.stderr[-5000:]}")
    results: list[JavaRead] = []
    converters: list = []
    names: list[str] = []
    for line in done.stdout.splitlines():
        item = json.loads(line)
        if isinstance(item, dict):
            types = {f["name"]: f["type"] for f in item["fields"]}
            names = list(types)
            converters = [_converter(t) for t in types.values()]
            results.append(JavaRead(item["version"], item["table"], item["snapshot"], item["filter"], item["splits"],
                                    types))
        else:
            results[-1].kinds.append(item[0])
            results[-1].rows.append({n: (None if v is None else c(v)) for n, c, v in zip(names, converters, item[1:])})
    assert len(results) == len(reads), done.stderr[-5000:]
    return results


def _timestamp(value: list[int], tz) -> datetime:
    millis, nanos = value
    if nanos % 1000:
        raise ValueError(f"a timestamp finer than microseconds: {value}")
    at = _EPOCH + timedelta(milliseconds=millis, microseconds=nanos // 1000)
    return at.replace(tzinfo=tz) if tz else at


def _converter(sql_type: str):
    """From the JSON form PaimonJavaReader prints for ``sql_type`` to the Python value."""
    root = re.match(r"[A-Z_]+", sql_type).group(0)
    if root == "TIMESTAMP" and "WITH LOCAL TIME ZONE" in sql_type:
        return lambda v: _timestamp(v, timezone.utc)
    if root in ("TIMESTAMP", "TIMESTAMP_LTZ"):
        return lambda v: _timestamp(v, timezone.utc if root == "TIMESTAMP_LTZ" else None)
    return {
        "BOOLEAN": bool,
        "TINYINT": int,
        "SMALLINT": int,
        "INT": int,
        "INTEGER": int,
        "BIGINT": int,
        "FLOAT": float,
        "DOUBLE": float,
        "DECIMAL": Decimal,
        "CHAR": str,
        "VARCHAR": str,
        "STRING": str,
        "BINARY": base64.b64decode,
        "VARBINARY": base64.b64decode,
        "BYTES": base64.b64decode,
        "DATE": lambda days: _EPOCH.date() + timedelta(days=days),
        "TIME": lambda millis: (datetime.min + timedelta(milliseconds=millis)).time(),
    }[root]
