"""Smoke test of the throughput benchmark: a small run, its RESULT line, and what it wrote."""

import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_pixels.bench import throughput as bench

ROWS = 2000
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
RESULT = re.compile(
    r"RESULT ceiling_rows_per_s=(\d+) iceberg_rows_per_s=(\d+) paimon_rows_per_s=(\d+) "
    r"iceberg_ratio=(\d+\.\d\d) paimon_ratio=(\d+\.\d\d) peak_rss_mb=(\d+)"
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One benchmark run of ROWS rows (the script, as a user runs it); returns (stdout, workdir)."""
    workdir = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--rows", str(ROWS), "--repeat", "1", "--workdir", str(workdir)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, workdir


def test_last_line_is_the_result_line(run):
    stdout, _ = run
    match = RESULT.fullmatch(stdout.strip().splitlines()[-1])
    assert match, stdout[-2000:]
    assert all(float(figure) > 0 for figure in match.groups())


def test_each_output_holds_exactly_the_rows(run):
    _, workdir = run
    assert pq.read_metadata(workdir / "ceiling.parquet").num_rows == ROWS
    for ids in (bench.iceberg_keys(workdir / "iceberg"), bench.paimon_keys(workdir / "paimon")):
        assert sorted(ids.to_pylist()) == sorted(range(-(ROWS // 2), ROWS // 2))


def test_a_wrong_table_fails_loudly():
    with pytest.raises(bench.BenchmarkError, match="1999 rows with 1999 distinct keys, not 2000"):
        bench.check_keys("iceberg", pa.chunked_array([range(1999)]), ROWS)


def test_result_line_format():
    ceiling = bench.Measurement("ceiling", 1000, 0.01, 100.0)
    iceberg = bench.Measurement("iceberg", 1000, 0.02, 250.4)
    paimon = bench.Measurement("paimon", 1000, 0.03, 300.6)
    assert bench.result_line(ceiling, iceberg, paimon) == (
        "RESULT ceiling_rows_per_s=100000 iceberg_rows_per_s=50000 paimon_rows_per_s=33333 "
        "iceberg_ratio=0.50 paimon_ratio=0.33 peak_rss_mb=301"
    )


def test_repeated_measurements_report_the_median_run_and_the_highest_rss():
    runs = [bench.Measurement("iceberg", 1000, seconds, rss) for seconds, rss in ((0.02, 300.0), (0.01, 200.0), (0.04, 250.0))]
    assert bench.median_run(runs) == bench.Measurement("iceberg", 1000, 0.02, 300.0)
    assert bench.median_run(runs[1:]).seconds == 0.04  # an even count: the slower middle run


def test_beam_pixels_bench_is_the_same_benchmark():
    done = subprocess.run(
        [sys.executable, "-m", "beam_pixels", "bench", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "--rows" in done.stdout and "ceiling" in done.stdout


def test_result_line_with_many_tables_gives_their_ratio_to_one_table():
    ceiling = bench.Measurement("ceiling", 1000, 0.01, 100.0)
    iceberg = bench.Measurement("iceberg", 1000, 0.02, 250.4)
    paimon = bench.Measurement("paimon", 1000, 0.03, 300.6)
    many_iceberg = bench.Measurement("iceberg-10-tables", 1000, 0.025, 320.0)
    many_paimon = bench.Measurement("paimon-10-tables", 1000, 0.03, 310.0)
    assert bench.result_line(ceiling, iceberg, paimon, many_iceberg, many_paimon) == (
        "RESULT ceiling_rows_per_s=100000 iceberg_rows_per_s=50000 paimon_rows_per_s=33333 "
        "iceberg_ratio=0.50 paimon_ratio=0.33 peak_rss_mb=320 "
        "iceberg_10_tables_rows_per_s=40000 iceberg_10_tables_ratio=0.80 "
        "paimon_10_tables_rows_per_s=33333 paimon_10_tables_ratio=1.00"
    )


def test_tables_must_divide_the_rows():
    done = subprocess.run(
        [sys.executable, "-m", "beam_pixels", "bench", "--rows", "1001", "--tables", "10"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "--rows 1001 is not a multiple of --tables 10" in done.stderr, done.stderr
