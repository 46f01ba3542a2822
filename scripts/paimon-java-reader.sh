#!/usr/bin/env bash
# Paimon's own Java reader, to check that tables the connector writes read the same in Java
# (tests/test_paimon_java_reader.py, whose first test runs `install`).
#
#   scripts/paimon-java-reader.sh install                       # classpath (Maven) + compile, cached
#   scripts/paimon-java-reader.sh read WAREHOUSE DB.TABLE [OPTION=VALUE ...] [-- DB.TABLE ...]
#   scripts/paimon-java-reader.sh check                         # exit 0 when installed
#
# `read` prints JSON lines (scripts/paimon-java-reader/PaimonJavaReader.java says the format).
# The classpath is paimon-bundle (PAIMON_VERSION below) and a few Hadoop jars without their
# dependency tree (scripts/paimon-java-reader/pom.xml says why each is there); Maven keeps
# the jars in its own repository (~/.m2), the classpath file and the compiled class go to
# $PAIMON_JAVA_READER_CACHE_DIR (default ~/.cache/beam-pixels)/paimon-java-reader-<hash of
# the pom and the source>, so a changed pom or source is installed anew. Needs Java 11+ and Maven.
set -euo pipefail

PAIMON_VERSION=1.3.1  # keep in step with pom.xml (install checks)
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$HERE/paimon-java-reader"
CACHE="${PAIMON_JAVA_READER_CACHE_DIR:-$HOME/.cache/beam-pixels}"
HASH="$(cat "$SRC/pom.xml" "$SRC/PaimonJavaReader.java" | sha256sum | cut -c1-12)"
DIR="$CACHE/paimon-java-reader-$PAIMON_VERSION-$HASH"
. "$HERE/lib/cached-install.sh"

die() { echo "paimon-java-reader: $*" >&2; exit 1; }

installed() {  # the compiled class, and every jar of its classpath still in Maven's repository
  [ -s "$DIR/classes/PaimonJavaReader.class" ] && classpath_present "$DIR/classpath"
}

install() {
  if installed; then return 0; fi
  hold_install_lock "$CACHE" paimon-java-reader
  if installed; then return 0; fi
  command -v java >/dev/null || die "java not found (Java 11 or newer is needed)"
  command -v javac >/dev/null || die "javac not found (a JDK, not only a JRE, is needed)"
  command -v mvn >/dev/null || die "mvn not found (Maven fetches Paimon's jars)"
  grep -q "<version>$PAIMON_VERSION</version>" "$SRC/pom.xml" || die "pom.xml does not name paimon-bundle $PAIMON_VERSION"
  local started=$SECONDS
  echo "installing Paimon's Java reader $PAIMON_VERSION into $DIR" >&2
  rm -rf "$DIR.tmp" && mkdir -p "$DIR.tmp/classes"
  maven_classpath "$SRC/pom.xml" "$DIR.tmp/classpath"
  javac -nowarn -d "$DIR.tmp/classes" -cp "$(cat "$DIR.tmp/classpath")" "$SRC/PaimonJavaReader.java"
  rm -rf "$DIR" && mv "$DIR.tmp" "$DIR"
  echo "installed Paimon's Java reader $PAIMON_VERSION in $((SECONDS - started)) s" >&2
}

read_table() {
  installed || { echo "paimon-java-reader: not installed; run $0 install" >&2; exit 3; }
  # A short-lived JVM: client compiler only, serial GC, Paimon's log at warnings only.
  exec java -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xss4m -Xmx1g \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dorg.slf4j.simpleLogger.logFile=System.err \
    -cp "$DIR/classes:$(cat "$DIR/classpath")" PaimonJavaReader "$@"
}

case "${1:-}" in
  install) install; echo "PAIMON_JAVA_READER=$DIR" ;;
  read) shift; read_table "$@" ;;
  check) installed ;;
  *) die "usage: $0 install | read WAREHOUSE DB.TABLE [OPTION=VALUE ...] [-- DB.TABLE ...] | check" ;;
esac
