# Sourced by the install scripts (scripts/engines.sh, scripts/paimon-java-reader.sh): an install
# cached in a directory named by a hash of its inputs, whose Maven classpath file lists jars that
# stay in Maven's repository (~/.m2).

# The classpath file $1 exists and every jar it names is still in Maven's repository.
classpath_present() {
  [ -s "$1" ] || return 1
  local jar
  for jar in $(tr ':' ' ' <"$1"); do [ -f "$jar" ] || return 1; done
}

# Hold the install lock $1/$2.lock until the script exits: the tests install on first use, so
# two test runs starting at once install one after the other.
hold_install_lock() {
  mkdir -p "$1"
  exec 9>"$1/$2.lock"
  flock 9
}

# Resolve the dependencies of the pom $1 and write their classpath to $2.
maven_classpath() {
  mvn --batch-mode --quiet -Dstyle.color=never -f "$1" dependency:build-classpath -Dmdep.outputFile="$2" >&2
}
