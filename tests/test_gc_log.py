"""Reading the TaskManagers' GC logs (lines as JDK 17's ``-Xlog:gc`` writes them)."""

import datetime

from beam_pixels.flink import gc_log

LOG = """\
[2026-12-08T03:24:38.101+0000][0.003s] Using G1
[2026-12-08T03:24:38.612+0000][0.514s] GC(0) Pause Young (Concurrent Start) (Metadata GC Threshold) 74M->16M(1302M) 11.281ms
[2026-12-08T03:24:39.010+0000][0.912s] GC(1) Pause Remark 17M->17M(1302M) 2.105ms
[2026-12-08T03:24:39.020+0000][0.922s] GC(1) Pause Cleanup 17M->17M(1302M) 0.051ms
[2026-12-08T03:24:39.021+0000][0.923s] GC(1) Concurrent Mark Cycle 410.211ms
[2026-12-08T03:30:28.500+0000][350.402s] GC(2) Pause Young (Normal) (G1 Evacuation Pause) 830M->61M(1302M) 24.470ms
"""


def _at(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_the_heap_after_the_latest_collection_is_what_the_taskmanager_keeps(tmp_path):
    log = tmp_path / "gc-taskmanager-1.log"
    log.write_text(LOG)
    assert gc_log.heap_after_latest_mb(log) == 61
    log.write_text(LOG.splitlines()[0] + "\n")
    assert gc_log.heap_after_latest_mb(log) is None  # before the first collection


def test_the_latest_collection_is_found_at_the_end_of_a_long_log(tmp_path):
    log = tmp_path / "gc-taskmanager-1.log"
    log.write_text(LOG * 500 + LOG.splitlines()[1] + "\n")  # ~250 KB, the last pause 16 MB after
    assert gc_log.heap_after_latest_mb(log) == 16


def test_pauses_between_two_moments_of_every_taskmanager(tmp_path):
    (tmp_path / "gc-taskmanager-1.log").write_text(LOG)
    (tmp_path / "gc-taskmanager-2.log").write_text(LOG.replace("03:30:28.500", "03:40:00.000"))
    found = gc_log.pauses(tmp_path, _at("2026-12-08T03:24:39+00:00"), _at("2026-12-08T03:35:00+00:00"))
    assert [(p.kind, p.ms, p.heap_after_mb) for p in found] == [
        ("Remark", 2.105, 17), ("Cleanup", 0.051, 17), ("Young", 24.47, 61),  # the first TaskManager's
        ("Remark", 2.105, 17), ("Cleanup", 0.051, 17),  # the second's (its young pause came later)
    ]
