#!/usr/bin/env bash
# Other engines and catalogs the tests run beside the connector: Spark 4.0 with Iceberg's Java
# library (reads and maintains the tables the connector writes) and Iceberg's REST catalog server.
#
#   scripts/engines.sh install   # pyspark (PyPI) + jars (Maven), cached; prints where they are
#   scripts/engines.sh check     # exit 0 when installed
#   scripts/engines.sh env       # the paths `install` prints, without installing
#
# pyspark (PYSPARK_VERSION below, ~300 MB with Spark's jars) goes into its own directory
# (pip install --target), not into the package's test extra: the tests put it on sys.path.
# The jars (scripts/engines/pom.xml) stay in Maven's repository (~/.m2); their classpath file
# goes to $ENGINES_CACHE_DIR (default ~/.cache/beam-pixels)/engines-<hash of pom and versions>.
# Needs Java 17 (Spark 4) and Maven.
set -euo pipefail

PYSPARK_VERSION=4.0.1
ICEBERG_VERSION=1.10.0  # keep in step with pom.xml (install checks)
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${ENGINES_CACHE_DIR:-$HOME/.cache/beam-pixels}"
PYTHON_TAG="$(python3 -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')"
HASH="$( (cat "$HERE/engines/pom.xml"; echo "$PYSPARK_VERSION $PYTHON_TAG") | sha256sum | cut -c1-12)"
DIR="$CACHE/engines-$HASH"
. "$HERE/lib/cached-install.sh"

die() { echo "engines: $*" >&2; exit 1; }

installed() {  # pyspark importable from its directory, and every jar of the classpath in Maven's repository
  [ -f "$DIR/pyspark/pyspark/__init__.py" ] && classpath_present "$DIR/classpath"
}

jar_named() { tr ':' '\n' <"$DIR/classpath" | grep "/$1-[^/]*\.jar\$"; }

print_env() {
  echo "ENGINES_PYSPARK_PATH=$DIR/pyspark"
  echo "ENGINES_SPARK_JARS=$(jar_named iceberg-spark-runtime-4.0_2.13),$(jar_named sqlite-jdbc)"
  echo "ENGINES_REST_CATALOG_JAR=$(jar_named iceberg-open-api)"
}

install() {
  if installed; then return 0; fi
  hold_install_lock "$CACHE" engines
  if installed; then return 0; fi
  command -v java >/dev/null || die "java not found (Java 17 is needed by Spark 4)"
  command -v mvn >/dev/null || die "mvn not found (Maven fetches Iceberg's jars)"
  grep -q "<iceberg.version>$ICEBERG_VERSION</iceberg.version>" "$HERE/engines/pom.xml" \
    || die "pom.xml does not name Iceberg $ICEBERG_VERSION"
  local started=$SECONDS
  echo "installing pyspark $PYSPARK_VERSION and Iceberg $ICEBERG_VERSION's Spark runtime and REST catalog server into $DIR" >&2
  rm -rf "$DIR.tmp" && mkdir -p "$DIR.tmp"
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$DIR.tmp/pyspark" "pyspark==$PYSPARK_VERSION" >&2
  maven_classpath "$HERE/engines/pom.xml" "$DIR.tmp/classpath"
  rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
  echo "installed the other engines in $((SECONDS - started)) s" >&2
}

case "${1:-}" in
  install) install; print_env ;;
  check) installed ;;
  env) installed || die "not installed; run $0 install"; print_env ;;
  *) die "usage: $0 install | check | env" ;;
esac
