"""Other engines and catalogs beside the connector, for the tests: Spark 4.0 with Iceberg's
Java library, and Iceberg's REST catalog server (both installed by ``scripts/engines.sh``).

The first test that calls :func:`require` installs them (pyspark from PyPI into its own cached
directory, which is put on ``sys.path`` here; Iceberg's jars from Maven; a few minutes with
empty caches, cached after), as the Flink tests install their cluster. Where they cannot be
installed (no Java 17 or Maven, the registries unreachable) those tests skip with the reason,
or fail when ``BEAM_PIXELS_REQUIRE_FLINK=1`` (CI).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "engines.sh"
REQUIRED = os.environ.get("BEAM_PIXELS_REQUIRE_FLINK") == "1"


@dataclass(frozen=True)
class Engines:
    pyspark_path: str
    spark_jars: str
    rest_catalog_jar: str


@functools.cache
def _install() -> Engines | str:
    """Install the engines unless they are (once per test session); where they are, or why not."""
    done = subprocess.run(["bash", str(SCRIPT), "install"], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return (f"Spark and Iceberg's REST catalog server could not be installed ({SCRIPT.relative_to(REPO)} "
                f"install, exit {done.returncode}; needs Java 17, Maven, PyPI and Maven Central):\n{done.stderr[-3000:]}")
    paths = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return Engines(paths["ENGINES_PYSPARK_PATH"], paths["ENGINES_SPARK_JARS"], paths["ENGINES_REST_CATALOG_JAR"])


def require() -> Engines:
    """Install on first use; skip the calling test when that fails (fail instead in CI)."""
    found = _install()
    if isinstance(found, Engines):
        return found
    if REQUIRED:
        pytest.fail(f"{found} (BEAM_PIXELS_REQUIRE_FLINK=1 forbids skipping the tests of other engines)")
    pytest.skip(found)


# --- Spark -------------------------------------------------------------------------------


def spark_session(engines: Engines):
    """A local Spark session (one core, no UI) with Iceberg's SQL extensions (procedures)."""
    if engines.pyspark_path not in sys.path:
        sys.path.insert(0, engines.pyspark_path)
    from pyspark.sql import SparkSession

    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # tests talk only to 127.0.0.1

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("beam-pixels tests")
        .config("spark.jars", engines.spark_jars)
        .config("spark.sql.extensions", "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def with_catalog(spark, catalog_properties: dict[str, str], name: str = "pixels"):
    """A session of ``spark`` (its own catalogs, the same JVM) whose catalog ``name`` is the
    connector's: ``catalog_properties`` as the connector's ``iceberg.catalog.*`` keys (a sql
    catalog on SQLite, or rest). A sql catalog's tables are Iceberg's JdbcCatalog's, listed under
    the catalog's name, so Spark's catalog must be named like the connector's (``pixels``)."""
    session = spark.newSession()
    prefix = f"spark.sql.catalog.{name}"
    session.conf.set(prefix, "org.apache.iceberg.spark.SparkCatalog")
    # Spark caches a table it loaded: maintenance would start from a stale snapshot and conflict.
    session.conf.set(f"{prefix}.cache-enabled", "false")
    if catalog_properties.get("type") == "rest":
        session.conf.set(f"{prefix}.type", "rest")
        session.conf.set(f"{prefix}.uri", catalog_properties["uri"])
    else:
        uri = catalog_properties["uri"]
        assert uri.startswith("sqlite:///"), uri
        session.conf.set(f"{prefix}.type", "jdbc")
        session.conf.set(f"{prefix}.uri", "jdbc:sqlite:" + uri[len("sqlite://"):])
        session.conf.set(f"{prefix}.warehouse", catalog_properties["warehouse"])
        # The connector created the catalog's tables. Iceberg's check for them at start leaves a
        # statement open on its SQLite connection, whose read lock then refuses every other
        # writer's commits (database is locked) for as long as the session lives.
        session.conf.set(f"{prefix}.jdbc.init-catalog-tables", "false")
    return session


def spark_rows(session, sql: str) -> list[dict]:
    """The rows of ``sql`` as dicts (Spark's Python values)."""
    return [row.asDict() for row in session.sql(sql).collect()]


# --- the REST catalog server -------------------------------------------------------------


class RestCatalogServer:
    """Iceberg's REST catalog server (``java -jar iceberg-open-api.jar``) on 127.0.0.1, backed by
    a JDBC catalog in a SQLite file under ``directory``; it can be stopped and started again on
    the same port and database, or frozen (SIGSTOP) and thawed."""

    def __init__(self, engines: Engines, directory: Path, port: int):
        self.jar = engines.rest_catalog_jar
        self.directory = directory
        self.port = port
        self.uri = f"http://127.0.0.1:{port}"
        self.warehouse = f"file://{directory}/warehouse"
        self.log = directory / "rest-catalog.log"
        self.proc: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 90) -> RestCatalogServer:
        env = dict(
            os.environ,
            CATALOG_REST_PORT=str(self.port),
            CATALOG_WAREHOUSE=self.warehouse,
            CATALOG_CATALOG__IMPL="org.apache.iceberg.jdbc.JdbcCatalog",
            CATALOG_URI=f"jdbc:sqlite:file:{self.directory}/rest.db",
            CATALOG_JDBC_USER="u",
            CATALOG_JDBC_PASSWORD="p",
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["java", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx512m", "-jar", self.jar],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/v1/config", timeout=2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"the REST catalog server did not answer on {self.uri}:\n"
                                         f"{self.log.read_text(errors='replace')[-3000:]}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot end
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def catalog_properties(self) -> dict[str, str]:
        """The connector's ``iceberg.catalog.*`` keys for this server."""
        return {"type": "rest", "uri": self.uri}


# --- a CDC stream ------------------------------------------------------------------------


def feed(server, history, chunk: int, every_s: float, stop: threading.Event | None = None,
         lull: threading.Event | None = None) -> threading.Thread:
    """Load ``history`` into the mock ``server`` ``chunk`` changes every ``every_s`` seconds on a
    thread, until ``stop`` is set, pausing while ``lull`` is set."""
    stop, lull = stop or threading.Event(), lull or threading.Event()

    def run():
        start = 0
        while start < len(history):
            if stop.wait(every_s):
                return
            if not lull.is_set():
                server.load_cdc(history[start : start + chunk])
                start += chunk

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread
