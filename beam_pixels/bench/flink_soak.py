"""Flink soak: ``beam-pixels soak --runner flink``, the soak benchmark on a real Flink cluster.

The job runs as a user submits it (``beam-pixels run --runner PortableRunner --job_endpoint ...
--environment_type LOOPBACK``) to the local cluster of ``scripts/flink-local-cluster.sh``
(``FLINK_CLUSTER_DIR``, or one of its own in the work directory), against the soak benchmark's
endless CDC stream (:mod:`beam_pixels.bench.soak_server`), committing into a local Iceberg or Paimon
warehouse. Two phases: ``--rate`` changes/s for the first ``1 - --idle-share`` of
``--duration-s`` (busy), then no new changes (idle: the job keeps polling an empty stream).
Per commit it prints, as the local soak does, the commit's ``commit_s``, the table's bytes and
files, and besides the latest completed Flink checkpoint (id and state size, from
``GET /jobs/<id>/checkpoints``) and the TaskManagers' live heap (each one's heap after its latest
collection, from its GC log, summed: :mod:`beam_pixels.flink.gc_log`; the heap used at a moment
swings with the garbage since the last collection, up to 14x in a 1.3 GB heap); every ``--sample-s`` the checkpoint and heap figures are sampled
too (idle phases commit nothing). At the end, once every change handed out is committed, the
job is cancelled and the table compared row by row with the server's expected state.
Figures go to ``flink_soak.csv`` / ``flink_soak.json`` in the work directory; the last line::

    RESULT runner=flink sink=iceberg checkpoints=N state_kb_min2=X state_kb_last=X state_ratio=X heap_mb_min2=X heap_mb_last=X heap_ratio=X commits=N commit_s_first=X commit_s_last=X correct=yes|no

``*_min2`` are medians of the samples taken 90-150 s after the job started, ``*_last`` medians
of the samples over the last 10% of the checkpoints, ``*_ratio`` the second over the first
(flat state: at most 1.2).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from beam_pixels.bench import soak
from beam_pixels.bench.soak_server import SoakServerProcess, StreamOptions
from beam_pixels.flink import gc_log
from beam_pixels.flink.rest import FlinkRest

CLUSTER_SCRIPT = soak.REPO / "scripts" / "flink-local-cluster.sh"
# The reference figures: samples taken this long after the job started (minute 2).
REFERENCE_WINDOW_S = (90.0, 150.0)
# The last figures: samples over this last share of the checkpoints.
LAST_SHARE = 0.1


def runner_of(argv: list[str]) -> tuple[str, list[str]]:
    """The soak's ``--runner`` (``local`` unless given) and the other arguments."""
    rest, runner = [], "local"
    args = iter(argv)
    for arg in args:
        if arg == "--runner":
            runner = next(args, "")
        elif arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return runner, rest


@dataclasses.dataclass(frozen=True)
class Options:
    sink: str = "iceberg"
    preload: int = 10_000
    rate: float = 300.0
    duration_s: float = 600.0
    idle_share: float = 0.3
    checkpoint_interval_ms: int = 2000
    parallelism: int = 2
    sample_s: float = 10.0
    seed: int = 0
    bucket_count: int = 16
    batch_size: int = 200
    properties: tuple[tuple[str, str], ...] = ()
    workdir: Path | None = None
    drain_timeout_s: float = 300.0


@dataclasses.dataclass
class Sample:
    """The job's latest completed checkpoint and the TaskManagers' heap, at one moment."""

    elapsed_s: float  # since the job started running
    phase: str
    checkpoint: int
    state_bytes: int
    heap_bytes: int
    commit: int | None = None  # the commit (of the progress lines) this sample was taken at
    batch_id: int | None = None
    changes: int | None = None
    commit_s: float | None = None
    table_bytes: int | None = None
    data_files: int | None = None
    delete_files: int | None = None


class FlinkCluster:
    """The cluster of ``scripts/flink-local-cluster.sh`` in ``state_dir``, started if not running."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.env = dict(os.environ, FLINK_CLUSTER_DIR=str(state_dir))
        self.started_here = not (state_dir / "cluster.env").exists()
        done = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start"], env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{CLUSTER_SCRIPT} start failed:\n{done.stdout}\n{done.stderr[-3000:]}")
        settings = dict(line.split("=", 1) for line in (state_dir / "cluster.env").read_text().splitlines()
                        if "=" in line)
        self.rest = FlinkRest(settings["FLINK_REST_URL"], timeout_s=30)
        self.job_endpoint = settings["BEAM_JOB_ENDPOINT"]
        missing = [log for log in self._gc_logs() if not log.exists()]
        if missing:
            raise RuntimeError(f"no GC log {missing[0]}: the cluster in {state_dir} was started by an older "
                               f"{CLUSTER_SCRIPT.name}; restart it ({CLUSTER_SCRIPT} stop, then start)")

    def _gc_logs(self) -> list[Path]:
        """Each running TaskManager's GC log (named by its pid)."""
        return [self.state_dir / "log" / f"gc-taskmanager-{pid.read_text().strip()}.log"
                for pid in sorted(self.state_dir.glob("taskmanager-*.pid"))]

    def jobs(self) -> set[str]:
        return {j["id"] for j in self.rest.get("/jobs")["jobs"]}

    def running_job(self, before: set[str], timeout: float) -> str:
        """The job submitted after ``before`` was listed, once it and all its tasks run."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for job in (j["id"] for j in self.rest.get("/jobs")["jobs"] if j["status"] == "RUNNING" and j["id"] not in before):
                if all(v["status"] == "RUNNING" for v in self.rest.get(f"/jobs/{job}")["vertices"]):
                    return job
            time.sleep(1)
        raise RuntimeError(f"no new job running within {timeout:.0f} s: {self.rest.get('/jobs')}")

    def latest_checkpoint(self, job: str) -> tuple[int, int]:
        """(id, state size in bytes) of the job's latest completed checkpoint; (0, 0) before the first."""
        completed = (self.rest.get(f"/jobs/{job}/checkpoints").get("latest") or {}).get("completed") or {}
        return int(completed.get("id", 0)), int(completed.get("state_size", 0))

    def heap_live(self) -> int:
        """The TaskManagers' live heap in bytes: each one's heap after its latest collection, summed
        (one before its first collection counts 0)."""
        return sum((gc_log.heap_after_latest_mb(log) or 0) * 2**20 for log in self._gc_logs())

    def figures(self, job: str) -> tuple[int, int, int]:
        """(checkpoint id, state bytes, heap bytes) now; zeros, which the summary leaves out, when
        the REST API does not answer (a loaded machine)."""
        try:
            return (*self.latest_checkpoint(job), self.heap_live())
        except OSError as e:
            soak._say(f"flink soak: Flink's REST API did not answer ({e}); no checkpoint or heap figures this time")
            return 0, 0, 0

    def cancel(self, job: str) -> None:
        request = urllib.request.Request(f"{self.rest.url}/jobs/{job}?mode=cancel", method="PATCH")
        urllib.request.urlopen(request, timeout=30).close()

    def stop(self) -> None:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], env=self.env, capture_output=True, timeout=300)


def summary(samples: list[Sample]) -> dict[str, float]:
    """Checkpoint size and heap at minute 2 and over the last 10% of the checkpoints (medians)."""
    low, high = REFERENCE_WINDOW_S
    reference = [s for s in samples if low <= s.elapsed_s < high and s.checkpoint]
    last_id = max((s.checkpoint for s in samples), default=0)
    last = [s for s in samples if s.checkpoint and s.checkpoint >= last_id * (1 - LAST_SHARE)]

    def median(chosen: list[Sample], field: str) -> float:
        return statistics.median(getattr(s, field) for s in chosen) if chosen else float("nan")

    figures = {"checkpoints": last_id}
    for field, name, unit in (("state_bytes", "state_kb", 1024), ("heap_bytes", "heap_mb", 2**20)):
        first, final = median(reference, field) / unit, median(last, field) / unit
        figures.update({f"{name}_min2": first, f"{name}_last": final, f"{name.split('_')[0]}_ratio": final / first})
    return figures


def result_line(sink: str, figures: dict[str, float], commits: list[Sample], correct: bool) -> str:
    first, last = soak.first_last([s.commit_s for s in commits])
    return (
        f"RESULT runner=flink sink={sink} checkpoints={figures['checkpoints']} "
        f"state_kb_min2={figures['state_kb_min2']:.0f} state_kb_last={figures['state_kb_last']:.0f} "
        f"state_ratio={figures['state_ratio']:.2f} heap_mb_min2={figures['heap_mb_min2']:.0f} "
        f"heap_mb_last={figures['heap_mb_last']:.0f} heap_ratio={figures['heap_ratio']:.2f} "
        f"commits={len(commits)} commit_s_first={first:.3f} commit_s_last={last:.3f} correct={'yes' if correct else 'no'}"
    )


def _describe(s: Sample) -> str:
    flink = (f"checkpoint {s.checkpoint}: state {s.state_bytes / 1024:.0f} KB, "
             f"TaskManager live heap {s.heap_bytes / 2**20:.0f} MB")
    if s.commit is None:
        return f"t={s.elapsed_s:.0f}s ({s.phase}) {flink}"
    return (f"t={s.elapsed_s:.0f}s commit {s.commit} ({s.phase}) batch {s.batch_id}: {s.changes} changes, "
            f"commit_s={s.commit_s:.3f}, table {s.table_bytes / 2**20:.1f} MB, {s.data_files} data / "
            f"{s.delete_files} delete files; {flink}")


def run(options: Options, workdir: Path) -> tuple[str, list[Sample]]:
    """Run the Flink soak; returns the RESULT line and every sample."""
    warehouse = workdir / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    state_dir = Path(os.environ.get("FLINK_CLUSTER_DIR") or workdir / "flink-cluster")
    soak._say(f"flink soak: starting the Flink cluster in {state_dir}")
    cluster = FlinkCluster(state_dir)
    stream = StreamOptions(preload=options.preload, rate=options.rate, seed=options.seed,
                           bucket_count=options.bucket_count, batch_size=options.batch_size)
    table = soak.SinkTable(options.sink, warehouse, soak.TABLE)
    samples: list[Sample] = []
    app = None
    try:
        with SoakServerProcess(stream) as server:
            local = soak.Options(sink=options.sink, checkpoint_interval_ms=options.checkpoint_interval_ms,
                                 bucket_count=options.bucket_count, properties=options.properties)
            props = soak._properties(local, server.port, warehouse)
            props.update({
                "source.stop.after.idle.ms": "0",
                "source.parallelism": str(options.parallelism),
                "source.journal.dir": str(workdir / "journal"),
            })
            props.update(dict(options.properties))
            config_path = workdir / "soak.properties"
            soak._write_properties(props, config_path)
            busy_s = options.duration_s * (1 - options.idle_share)
            soak._say(f"flink soak: sink {options.sink}, preload {options.preload:,} keys, {options.rate:,.0f} "
                      f"changes/s for {busy_s:.0f} s, then idle for {options.duration_s - busy_s:.0f} s; "
                      f"checkpoint.interval.ms={options.checkpoint_interval_ms}; Flink REST {cluster.rest.url}")
            before = cluster.jobs()
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(soak.REPO), os.environ.get("PYTHONPATH")])))
            with open(workdir / "app.out", "wb") as out, open(workdir / "app.err", "wb") as err:
                app = subprocess.Popen(
                    [sys.executable, "-m", "beam_pixels", "run", "--config", str(config_path),
                     "--runner", "PortableRunner", "--job_endpoint", cluster.job_endpoint,
                     "--environment_type", "LOOPBACK", "--parallelism", str(options.parallelism)],
                    cwd=workdir, stdout=out, stderr=err, env=env,
                )  # fmt: skip
            job = cluster.running_job(before, timeout=300)
            started = time.monotonic()
            soak._say(f"flink soak: job {job} running; {cluster.rest.job_page(job)}")
            tail = soak._LogTail(workdir / "app.err")
            committed = 0
            commits = 0
            phase = "busy"
            next_sample = 0.0
            drain_deadline = None
            while True:
                if app.poll() is not None:
                    raise RuntimeError(f"the run exited with code {app.returncode}; see {workdir / 'app.err'}")
                elapsed = time.monotonic() - started
                if phase == "busy" and elapsed >= busy_s:
                    server.stop_generating()
                    phase = "idle"
                    soak._say(f"flink soak: t={elapsed:.0f}s generator stopped; idle from now on")
                for line in tail.lines():
                    match = soak.COMMIT_LINE.search(line)
                    if not match:
                        continue
                    commits += 1
                    committed += int(match.group("changes"))
                    files = table.files()
                    sample = Sample(
                        elapsed, phase, *cluster.figures(job), commit=commits,
                        batch_id=int(match.group("batch")), changes=int(match.group("changes")),
                        commit_s=float(match.group("commit_s")),
                        table_bytes=sum(soak.walk_sizes(table.location()).values()),
                        data_files=files["data_files"], delete_files=files["delete_files"],
                    )
                    samples.append(sample)
                    soak._say(_describe(sample))
                if elapsed >= next_sample:
                    samples.append(Sample(elapsed, phase, *cluster.figures(job)))
                    soak._say(_describe(samples[-1]))
                    next_sample = elapsed + options.sample_s
                if elapsed >= options.duration_s:
                    # Quiesced: everything handed out is committed (the idle phase leaves time for that).
                    handed_out = server.stats.handed_out.value
                    if server.pending == 0 and committed >= handed_out:
                        break
                    drain_deadline = drain_deadline or time.monotonic() + options.drain_timeout_s
                    if time.monotonic() > drain_deadline:
                        raise RuntimeError(f"{committed:,} of {handed_out:,} changes committed "
                                           f"{options.drain_timeout_s:.0f} s after the end")
                time.sleep(0.2)
            soak._say(f"flink soak: all {committed:,} changes handed out are committed; cancelling job {job}")
            cluster.cancel(job)
            expected = server.dump_expected(workdir / "expected.npz")
    finally:
        if app is not None and app.poll() is None:
            app.send_signal(signal.SIGTERM)
            try:
                app.wait(60)
            except subprocess.TimeoutExpired:
                app.kill()
                app.wait()
        if cluster.started_here:
            cluster.stop()
    rows = table.read()
    correct, why = soak.check_rows(rows, expected["keys"], expected["versions"])
    soak._say(f"flink soak: table check: {'correct' if correct else 'WRONG: ' + why} ({rows.num_rows:,} rows)")
    figures = summary(samples)
    _write_figures(workdir, samples, {**dataclasses.asdict(options), "workdir": str(workdir), **figures,
                                      "correct": correct})
    return result_line(options.sink, figures, [s for s in samples if s.commit is not None], correct), samples


def _write_figures(workdir: Path, samples: list[Sample], summary_: dict) -> None:
    rows = [dataclasses.asdict(s) for s in samples]
    with open(workdir / "flink_soak.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[field.name for field in dataclasses.fields(Sample)])
        writer.writeheader()
        writer.writerows(rows)
    (workdir / "flink_soak.json").write_text(json.dumps({"summary": summary_, "samples": rows}, indent=1, default=str))


def _parse_args(argv: list[str]) -> Options:
    d = Options()
    parser = soak.soak_parser("beam-pixels soak --runner flink", d, "changes per second in the busy phase")
    parser.add_argument("--duration-s", type=float, default=d.duration_s, help="busy and idle phases together (default %(default)s)")
    parser.add_argument("--idle-share", type=float, default=d.idle_share, help="share of the duration without new changes (default %(default)s)")
    parser.add_argument("--parallelism", type=int, default=d.parallelism, help="Flink parallelism and poll groups (default %(default)s)")
    parser.add_argument("--sample-s", type=float, default=d.sample_s, help="seconds between checkpoint/heap samples (default %(default)s)")
    args = parser.parse_args(argv)
    if not 0 <= args.idle_share < 1:
        parser.error(f"--idle-share {args.idle_share}: expected at least 0 and below 1")
    return Options(**dict(vars(args), properties=tuple(args.properties)))


def main(argv: list[str]) -> int:
    return soak.run_and_print(_parse_args(argv), run, "beam-pixels-flink-soak-")
