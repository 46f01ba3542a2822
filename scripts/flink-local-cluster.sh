#!/usr/bin/env bash
# A Flink cluster and Beam's Flink job server on 127.0.0.1, for tests and for trying the
# pipeline on a real Flink.
#
#   scripts/flink-local-cluster.sh install          # Flink (PyPI) + job server classpath (Maven), cached
#   scripts/flink-local-cluster.sh start [--local]  # start what is not running; prints the addresses
#   scripts/flink-local-cluster.sh status           # the addresses, and which processes run
#   scripts/flink-local-cluster.sh stop
#
# Standalone (default): a JobManager, FLINK_TASKMANAGERS TaskManagers (default 2) with
# FLINK_SLOTS slots each (default 2), a Beam SDK worker pool, and the Beam job server submitting
# to them. `start` is idempotent: run it again and it starts only what is missing (e.g. a killed
# TaskManager or worker pool).
# --local: only the job server, running Flink as a MiniCluster in its own JVM (--flink-master [local]),
# and the worker pool.
#
# SDK workers: the worker pool (python -m apache_beam.runners.worker.worker_pool_main) serves
# jobs submitted with --environment_type EXTERNAL --environment_config $BEAM_WORKER_POOL: it
# starts one SDK worker process per request, so the job does not depend on the process that
# submitted it. The TaskManagers reach it at 127.0.0.1, so there is one per host: here one for
# all TaskManagers, on a multi-host cluster one on every TaskManager host (docs/flink-cluster.md).
# It runs from BEAM_PIXELS_WORKER_VENV (a virtual environment with beam-pixels installed, used as
# it is) or, when that is unset, from $FLINK_CLUSTER_DIR/worker-venv, which `start` makes and
# refreshes from this repository whenever its sources changed (a non-editable install: a worker
# pool runs the code of its last start).
#
# Versions: no beam-runners-flink-*-job-server jar is served by the Maven Central these
# machines reach, so the job server runs from the dependency closure of
# org.apache.beam:beam-runners-flink-1.19:2.62.0 (scripts/flink/pom.xml), the newest Flink
# runner that resolves completely; its Flink is 1.19.0, so the cluster is apache-flink 1.19.0.
# install also patches three of that runner's classes (apache/beam#27648, docs/flink-state.md).
#
# Environment: FLINK_CLUSTER_DIR (state: conf, logs, pids, checkpoints, cluster.env; default
# ~/.cache/beam-pixels/flink-cluster), FLINK_CACHE_DIR (installs; default ~/.cache/beam-pixels),
# BEAM_PIXELS_WORKER_VENV (the worker pool's virtual environment, see above).
set -euo pipefail

FLINK_VERSION=1.19.0
BEAM_RUNNER_VERSION=2.62.0
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE="${FLINK_CACHE_DIR:-$HOME/.cache/beam-pixels}"
STATE="${FLINK_CLUSTER_DIR:-$HOME/.cache/beam-pixels/flink-cluster}"
TASKMANAGERS="${FLINK_TASKMANAGERS:-2}"
SLOTS="${FLINK_SLOTS:-2}"
FLINK_VENV="$CACHE/flink-$FLINK_VERSION"
CLASSPATH_FILE="$CACHE/beam-flink-job-server-$BEAM_RUNNER_VERSION.classpath"
# Beam 2.62.0's portable Flink runner with apache/beam#27648 fixed (an SDF's self-checkpoint
# state grew without end): scripts/flink/beam-sdf-residual-state.patch applied to Beam's sources
# and compiled. The jar's name carries the patch's hash, so a changed patch is rebuilt.
SDF_PATCH="$HERE/flink/beam-sdf-residual-state.patch"
SDF_PATCH_JAR="$CACHE/beam-flink-sdf-residual-state-$BEAM_RUNNER_VERSION-$(sha256sum "$SDF_PATCH" | cut -c1-12).jar"
# A launcher jar for Beam's FlinkRunner (--flink_job_server_jar): no classes, only a manifest
# naming the main class, the patched classes and the classpath above (in that order: the job
# server stages it to the TaskManagers in that order too) and the --add-opens Java 17 needs.
LAUNCHER_JAR="$CACHE/beam-flink-job-server-$BEAM_RUNNER_VERSION.jar"
# Java 17: the packages the job server opens to reflection (as Beam's own Flink tests do).
ADD_OPENS="java.base/java.lang java.base/java.nio java.base/java.util java.base/java.lang.reflect java.base/java.io java.base/java.net java.base/java.time java.base/sun.nio.ch java.base/java.util.concurrent"

die() { echo "flink-local-cluster: $*" >&2; exit 1; }

flink_home() { echo "$FLINK_VENV"/lib/python3*/site-packages/pyflink; }

install() {
  command -v java >/dev/null || die "java not found (Java 11 or 17 is needed)"
  command -v mvn >/dev/null || die "mvn not found (Maven fetches the job server's classpath)"
  mkdir -p "$CACHE"
  if [ ! -x "$(flink_home)/bin/jobmanager.sh" ]; then
    echo "installing Flink $FLINK_VERSION from PyPI into $FLINK_VENV" >&2
    python3 -m venv "$FLINK_VENV"
    # --no-deps: PyFlink pins an old apache-beam; only its scripts, conf and jars are used.
    "$FLINK_VENV/bin/pip" install --quiet --no-deps "apache-flink==$FLINK_VERSION" "apache-flink-libraries==$FLINK_VERSION"
  fi
  if [ ! -s "$CLASSPATH_FILE" ]; then
    echo "resolving Beam's Flink job server $BEAM_RUNNER_VERSION with Maven" >&2
    mvn --batch-mode --quiet -Dstyle.color=never -f "$HERE/flink/pom.xml" dependency:build-classpath \
      -Dmdep.outputFile="$CLASSPATH_FILE.tmp" >&2
    mv "$CLASSPATH_FILE.tmp" "$CLASSPATH_FILE"
  fi
  if [ ! -s "$SDF_PATCH_JAR" ]; then
    build_sdf_patch_jar
  fi
  if [ ! -s "$LAUNCHER_JAR" ] || [ "$CLASSPATH_FILE" -nt "$LAUNCHER_JAR" ] || [ "$SDF_PATCH_JAR" -nt "$LAUNCHER_JAR" ]; then
    write_launcher_jar
  fi
}

build_sdf_patch_jar() {
  command -v javac >/dev/null || die "javac not found (a JDK 11 or 17 compiles the patched runner classes)"
  command -v patch >/dev/null || die "patch not found (it applies $SDF_PATCH)"
  echo "building $SDF_PATCH_JAR from Beam $BEAM_RUNNER_VERSION's sources and $SDF_PATCH" >&2
  local work; work="$(mktemp -d)"
  local artifact files
  for artifact in beam-runners-java-fn-execution beam-runners-flink-1.19; do
    mvn --batch-mode --quiet -Dstyle.color=never -f "$HERE/flink/pom.xml" dependency:copy \
      -Dartifact="org.apache.beam:$artifact:$BEAM_RUNNER_VERSION:jar:sources" -DoutputDirectory="$work" >&2
  done
  files="$(sed -n 's|^+++ b/||p' "$SDF_PATCH")"
  mkdir "$work/src" "$work/classes"
  # shellcheck disable=SC2086
  (cd "$work/src" && for jar in "$work"/*-sources.jar; do jar xf "$jar" $files; done)  # each jar holds some
  patch --batch --silent -p1 -d "$work/src" <"$SDF_PATCH" || die "$SDF_PATCH does not apply to Beam $BEAM_RUNNER_VERSION"
  # shellcheck disable=SC2086
  (cd "$work/src" && javac -nowarn -XDsuppressNotes -proc:none -encoding UTF-8 -d "$work/classes" -cp "$(cat "$CLASSPATH_FILE")" $files) >&2 \
    || die "the patched Beam classes did not compile"
  jar cf "$work/patched.jar" -C "$work/classes" .
  mv "$work/patched.jar" "$SDF_PATCH_JAR"  # whole or not at all, also when two installs race
  rm -rf "$work"
}

write_launcher_jar() {
  python3 - "$CLASSPATH_FILE" "$LAUNCHER_JAR" "$ADD_OPENS" "$SDF_PATCH_JAR" <<'PY'
import pathlib, sys, zipfile
classpath, jar, opens, patched = sys.argv[1:5]
entries = [patched] + pathlib.Path(classpath).read_text().strip().split(":")
urls = " ".join(pathlib.Path(p).as_uri() for p in entries)
def header(name, value):  # manifest lines hold at most 72 bytes; continuations start with a space
    line = f"{name}: {value}".encode()
    parts = [line[:72]] + [b" " + line[i:i + 71] for i in range(72, len(line), 71)]
    return b"\r\n".join(parts) + b"\r\n"
manifest = (header("Manifest-Version", "1.0") + header("Main-Class", "org.apache.beam.runners.flink.FlinkJobServerDriver")
            + header("Add-Opens", opens) + header("Class-Path", urls) + b"\r\n")
with zipfile.ZipFile(jar + ".tmp", "w") as out:
    out.writestr("META-INF/MANIFEST.MF", manifest)
pathlib.Path(jar + ".tmp").replace(jar)
PY
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

alive() {  # a pid file whose process runs (a killed one not yet reaped counts as gone)
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && [[ "$(ps -o stat= -p "$(cat "$1")")" != Z* ]]
}

wait_port() {  # host port what
  for _ in $(seq 1 240); do
    if python3 -c "import socket,sys; socket.create_connection(('$1', $2), 1).close()" 2>/dev/null; then return 0; fi
    sleep 0.25
  done
  die "$3 did not open port $2 (logs in $STATE/log)"
}

write_conf() {  # rest_port rpc_port
  local conf="$STATE/conf"
  mkdir -p "$conf" "$STATE/checkpoints" "$STATE/savepoints" "$STATE/log" "$STATE/tmp"
  cp "$(flink_home)"/conf/log4j*.properties "$conf/"
  cat >"$conf/config.yaml" <<EOF
env.java.opts.all: $(sed -n 's/^ *all: //p' "$(flink_home)/conf/config.yaml")
env.log.dir: $STATE/log
env.pid.dir: $STATE
io.tmp.dirs: $STATE/tmp
jobmanager.rpc.address: 127.0.0.1
jobmanager.rpc.port: $2
jobmanager.bind-host: 127.0.0.1
jobmanager.memory.process.size: 768m
jobmanager.execution.failover-strategy: region
taskmanager.host: 127.0.0.1
taskmanager.bind-host: 127.0.0.1
taskmanager.numberOfTaskSlots: $SLOTS
# 2 GB, a 1.3 GB heap: with 1 GB (a 384 MB heap) a window of 500,000 rows set off G1's concurrent
# cycle in every job, and the pauses grew job after job (docs/performance.md#on-flink)
taskmanager.memory.process.size: 2048m
# each TaskManager's collections and their pauses, a line each (log/gc-taskmanager-<pid>.log)
env.java.opts.taskmanager: -Xlog:gc:file=$STATE/log/gc-taskmanager-%p.log:time,uptime:filecount=3,filesize=10m
# The HashMap state backend keeps state (a window's batches until it commits) on the JVM heap and
# uses no managed memory: Flink's default (40% managed) left the tasks 26 MB of a 154 MB heap, and
# at 1,000,000 rows GC stalled checkpoints and commits (docs/performance.md#on-flink).
taskmanager.memory.managed.size: 0m
taskmanager.rpc.port: 0
taskmanager.data.port: 0
rest.address: 127.0.0.1
rest.bind-address: 127.0.0.1
rest.port: $1
blob.server.port: 0
parallelism.default: 1
cluster.evenly-spread-out-slots: true
# a killed TaskManager is noticed within seconds, and the job restarts from its latest checkpoint
heartbeat.interval: 1000
heartbeat.timeout: 8000
restart-strategy.type: fixed-delay
restart-strategy.fixed-delay.attempts: 1000
restart-strategy.fixed-delay.delay: 2 s
state.backend.type: hashmap
state.checkpoints.dir: file://$STATE/checkpoints
state.savepoints.dir: file://$STATE/savepoints
execution.checkpointing.externalized-checkpoint-retention: RETAIN_ON_CANCELLATION
state.checkpoints.num-retained: 3
EOF
}

source_stamp() {  # changes whenever the package's sources do
  (cd "$REPO" && find setup.py beam_pixels proto -type f ! -name '*.pyc' -print0 | sort -z | xargs -0 sha1sum | sha1sum | cut -c1-40)
}

worker_venv() {  # the worker pool's virtual environment: given, or made and kept current from the repo
  local venv="${BEAM_PIXELS_WORKER_VENV:-}"
  if [ -n "$venv" ]; then
    "$venv/bin/python" -c 'import apache_beam, beam_pixels' 2>/dev/null \
      || die "BEAM_PIXELS_WORKER_VENV=$venv: no bin/python importing apache_beam and beam_pixels (pip install beam-pixels there)"
    echo "$venv"
    return
  fi
  venv="$STATE/worker-venv"
  local stamp; stamp="$(source_stamp)"
  if [ "$(cat "$venv/beam-pixels.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "installing beam-pixels from $REPO into $venv (the SDK worker pool's environment)" >&2
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "$REPO" >&2                              # with its dependencies
    "$venv/bin/pip" install --quiet --force-reinstall --no-deps "$REPO" >&2  # these sources, same version
    echo "$stamp" >"$venv/beam-pixels.stamp"
  fi
  echo "$venv"
}

start_worker_pool() {  # port
  alive "$STATE/workerpool.pid" && return
  local venv; venv="$(worker_venv)"
  # The pool starts each SDK worker as `python -c ...` from PATH: the venv's, in the pool's working
  # directory, which Python puts first on sys.path: $STATE, so no checkout shadows the venv's
  # beam_pixels. setsid: its own process group, so `stop` ends its SDK workers with it.
  (cd "$STATE" && PATH="$venv/bin:$PATH" exec setsid nohup "$venv/bin/python" -m apache_beam.runners.worker.worker_pool_main \
    --service_port="$1") >>"$STATE/log/workerpool.log" 2>&1 </dev/null &
  echo $! >"$STATE/workerpool.pid"
  wait_port 127.0.0.1 "$1" "the SDK worker pool"
}

start() {
  local mode="${1:-standalone}"
  install
  mkdir -p "$STATE"
  local home; home="$(flink_home)"
  export FLINK_CONF_DIR="$STATE/conf" FLINK_LOG_DIR="$STATE/log" FLINK_PID_DIR="$STATE"
  if [ -s "$STATE/cluster.env" ] && ! grep -q "^FLINK_MODE=$mode\$" "$STATE/cluster.env"; then
    die "a cluster of another mode is running from $STATE; stop it first"
  fi
  local rest_port rpc_port job_port pool_port flink_master
  if [ -s "$STATE/cluster.env" ]; then
    # shellcheck disable=SC1091
    . "$STATE/cluster.env"
    rest_port="${FLINK_REST_PORT:-}" rpc_port="${FLINK_RPC_PORT:-}" job_port="${BEAM_JOB_PORT}"
    pool_port="${BEAM_WORKER_POOL_PORT:-$(free_port)}"
  else
    rest_port="$(free_port)" rpc_port="$(free_port)" job_port="$(free_port)" pool_port="$(free_port)"
    write_conf "$rest_port" "$rpc_port"  # --local: the MiniCluster reads it too (checkpoints, REST port)
  fi
  if [ "$mode" = standalone ]; then
    if ! alive "$STATE/jobmanager.pid"; then
      rm -f "$STATE"/flink-*-standalonesession.pid
      "$home/bin/jobmanager.sh" start >/dev/null
      cp "$(ls "$STATE"/flink-*-standalonesession.pid)" "$STATE/jobmanager.pid"
    fi
    wait_port 127.0.0.1 "$rest_port" "the JobManager"
    local i
    for i in $(seq 1 "$TASKMANAGERS"); do
      if ! alive "$STATE/taskmanager-$i.pid"; then
        "$home/bin/taskmanager.sh" start >/dev/null  # appends its pid to Flink's own pid file
        tail -n 1 "$(ls "$STATE"/flink-*-taskexecutor.pid)" >"$STATE/taskmanager-$i.pid"
      fi
    done
    flink_master="127.0.0.1:$rest_port"
  else
    mkdir -p "$STATE/log"
    flink_master="[local]"
  fi
  start_worker_pool "$pool_port"
  if ! alive "$STATE/jobserver.pid"; then
    nohup java -Xmx1g -jar "$LAUNCHER_JAR" --flink-master "$flink_master" \
      --flink-conf-dir "$STATE/conf" --job-host 127.0.0.1 --job-port "$job_port" --artifact-port 0 --expansion-port 0 \
      >"$STATE/log/jobserver.log" 2>&1 &
    echo $! >"$STATE/jobserver.pid"
  fi
  wait_port 127.0.0.1 "$job_port" "the Beam job server"
  {
    echo "FLINK_MODE=$mode"
    echo "FLINK_VERSION=$FLINK_VERSION"
    echo "FLINK_HOME=$home"
    echo "FLINK_CONF_DIR=$STATE/conf"
    echo "BEAM_JOB_PORT=$job_port"
    echo "BEAM_JOB_ENDPOINT=127.0.0.1:$job_port"
    echo "FLINK_CHECKPOINT_DIR=$STATE/checkpoints"
    echo "BEAM_FLINK_JOB_SERVER_JAR=$LAUNCHER_JAR"
    echo "FLINK_REST_PORT=$rest_port"
    echo "FLINK_RPC_PORT=$rpc_port"
    echo "FLINK_REST_URL=http://127.0.0.1:$rest_port"
    echo "BEAM_WORKER_POOL_PORT=$pool_port"
    echo "BEAM_WORKER_POOL=127.0.0.1:$pool_port"
    if [ "$mode" = standalone ]; then echo "FLINK_MASTER=127.0.0.1:$rest_port"; else echo "FLINK_MASTER=[local]"; fi
  } >"$STATE/cluster.env"
  status
}

status() {
  [ -s "$STATE/cluster.env" ] || { echo "no cluster in $STATE"; return 1; }
  cat "$STATE/cluster.env"
  local pid
  for pid in "$STATE"/jobmanager.pid "$STATE"/taskmanager-*.pid "$STATE"/workerpool.pid "$STATE"/jobserver.pid; do
    [ -e "$pid" ] || continue
    if alive "$pid"; then echo "# $(basename "$pid" .pid): running (pid $(cat "$pid"))"
    else echo "# $(basename "$pid" .pid): not running"; fi
  done
  echo "# submit with: --runner PortableRunner --job_endpoint \$BEAM_JOB_ENDPOINT --flink_master \$FLINK_MASTER \\"
  echo "#   --environment_type EXTERNAL --environment_config \$BEAM_WORKER_POOL [--detach]   (SDK workers in the pool)"
  echo "#   or --environment_type LOOPBACK   (SDK workers in the submitting process: tests and trials)"
  echo "# or let FlinkRunner start its own job server: --runner FlinkRunner --flink_version 1.19 \\"
  echo "#   --flink_job_server_jar \$BEAM_FLINK_JOB_SERVER_JAR --flink_master \$FLINK_MASTER (or [local]) --environment_type LOOPBACK"
}

stop() {
  local pid
  for pid in "$STATE"/jobserver.pid "$STATE"/taskmanager-*.pid "$STATE"/jobmanager.pid; do
    [ -e "$pid" ] || continue
    if alive "$pid"; then
      kill "$(cat "$pid")"
      for _ in $(seq 1 60); do alive "$pid" || break; sleep 0.25; done
      alive "$pid" && kill -9 "$(cat "$pid")"
    fi
    rm -f "$pid"
  done
  stop_worker_pool
  rm -f "$STATE/cluster.env" "$STATE"/flink-*.pid
}

stop_worker_pool() {  # the pool and the SDK workers it started (its process group)
  local pid="$STATE/workerpool.pid"
  [ -e "$pid" ] || return 0
  kill -TERM -- "-$(cat "$pid")" 2>/dev/null || true
  for _ in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
  kill -KILL -- "-$(cat "$pid")" 2>/dev/null || true
  rm -f "$pid"
}

case "${1:-}" in
  install) install; echo "BEAM_FLINK_JOB_SERVER_JAR=$LAUNCHER_JAR" ;;
  start) shift; if [ "${1:-}" = "--local" ]; then start local; else start standalone; fi ;;
  status) status ;;
  stop) stop ;;
  *) die "usage: $0 install | start [--local] | status | stop" ;;
esac
