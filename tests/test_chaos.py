"""Crash safety: runs killed with SIGKILL at random moments, restarted, lose and duplicate nothing."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"


@pytest.mark.parametrize("sink", ["iceberg", "paimon"])
def test_killed_and_restarted_runs_write_every_record_exactly_once(tmp_path, sink):
    result = subprocess.run(
        [sys.executable, str(CHAOS), "--cycles", "3", "--rows", "3000", "--sink", sink, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = result.stdout.strip().splitlines()[-1]
    figures = dict(re.findall(r"(\w+)=(\d+)", line))
    assert set(figures) == {"cycles", "expected", "found", "duplicates", "lost", "lost_in_flight"}, line
    assert int(figures["expected"]) == 3000, line
    assert int(figures["duplicates"]) == 0, line
    # Only records of a response the killed client never came back after may be missing.
    assert int(figures["lost"]) == int(figures["lost_in_flight"]), line
    assert int(figures["found"]) == 3000 - int(figures["lost"]), line
    assert result.returncode == 0, result.stdout + result.stderr
    log = (tmp_path / "runs.log").read_text(errors="replace")
    assert "replaying" in log, "no restart replayed the journal: the kills missed the window they test"
