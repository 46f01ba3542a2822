"""The Flink soak's command line and figures (its runs need a Flink cluster: docs/flink-state.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pixels.bench.flink_soak import Sample, runner_of, summary

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "argv, runner, rest",
    [
        (["--sink", "paimon"], "local", ["--sink", "paimon"]),
        (["--runner", "flink", "--rate", "5"], "flink", ["--rate", "5"]),
        (["--rate", "5", "--runner=flink"], "flink", ["--rate", "5"]),
    ],
)
def test_runner_is_taken_out_of_the_soak_arguments(argv, runner, rest):
    assert runner_of(argv) == (runner, rest)


def test_summary_compares_minute_two_with_the_last_tenth_of_the_checkpoints():
    samples = [Sample(elapsed_s=t, phase="busy", checkpoint=t // 2, state_bytes=400 * 1024 + t, heap_bytes=100 * 2**20)
               for t in range(0, 400, 10)]
    for sample in samples[36:]:  # t=360..390: checkpoints 180-195, the last tenth
        sample.state_bytes = 600 * 1024
    samples.append(Sample(elapsed_s=100, phase="busy", checkpoint=0, state_bytes=0, heap_bytes=0))  # before one
    figures = summary(samples)
    assert figures["checkpoints"] == 195
    assert figures["state_kb_min2"] == pytest.approx(400 + 115 / 1024)  # median of t=90..140
    assert figures["state_kb_last"] == pytest.approx(600)
    assert figures["state_ratio"] == pytest.approx(600 / (400 + 115 / 1024))
    assert figures["heap_mb_min2"] == figures["heap_mb_last"] == 100 and figures["heap_ratio"] == 1


def test_flink_soak_is_a_command():
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "beam_pixels", "soak", *args], capture_output=True, text=True, timeout=120,
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    done = run("--runner", "flink", "--help")
    assert done.returncode == 0, done.stderr
    assert "--idle-share" in done.stdout and "--checkpoint-interval-ms" in done.stdout
    wrong = run("--runner", "spark")
    assert wrong.returncode == 2 and "--runner 'spark'" in wrong.stderr
