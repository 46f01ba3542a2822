"""Where Flink puts each poll group (beam_pixels.flink.placement), without a cluster: the hashing
against values Flink's own classes computed, and the spreading. tests/test_flink.py checks on a
cluster that both poller subtasks poll."""

import pytest
from apache_beam import coders
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pixels.buckets import partition_buckets
from beam_pixels.flink.placement import (
    Subtasks,
    default_max_parallelism,
    java_bytes_hash,
    runner_key,
    spread,
    subtask_of,
)
from beam_pixels.source import PollGroup

# java.nio.ByteBuffer.wrap(key).hashCode() and KeyGroupRangeAssignment.assignKeyToParallelOperator(
# key, 128, 2 and 3), computed with flink-dist-1.19.0.jar.
FLINK_VECTORS = [
    (b"", 1, 1, 2),
    (b"\x00", 31, 1, 2),
    (b"pixels", -12243404, 1, 2),
    (b"\xff" * 10, 1842086433, 1, 2),
    (bytes(range(256)), -727396479, 1, 1),
    (b"\x80\x01", 864, 0, 1),
]


@pytest.mark.parametrize("key, java_hash, of_two, of_three", FLINK_VECTORS)
def test_keys_land_where_flink_puts_them(key, java_hash, of_two, of_three):
    assert java_bytes_hash(key) == java_hash
    assert subtask_of(key, 2, 128) == of_two
    assert subtask_of(key, 3, 128) == of_three


def test_the_default_max_parallelism_is_flinks():
    # KeyGroupRangeAssignment.computeDefaultMaxParallelism
    assert [default_max_parallelism(p) for p in (1, 2, 85, 86, 100, 200, 30000)] == [128, 128, 128, 256, 256, 512, 32768]


@pytest.mark.parametrize("parallelism, groups", [(2, 2), (3, 3), (4, 8), (8, 8)])
def test_spread_gives_each_group_a_subtask_of_its_own(parallelism, groups):
    polled = [PollGroup(i, tuple(b), 1000 * i, "", "orders") for i, b in enumerate(partition_buckets(list(range(128)), groups))]
    placed = spread(polled, Subtasks(parallelism))
    coder = coders.registry.get_coder(PollGroup)
    subtasks = [subtask_of(runner_key(g, coder), parallelism, 128) for g in placed]
    assert subtasks == [i % parallelism for i in range(groups)]
    # Only the placement differs: the same buckets, positions and table.
    assert [(g.group_id, g.buckets, g.start_position, g.table_label) for g in placed] == \
        [(g.group_id, g.buckets, g.start_position, g.table_label) for g in polled]


def test_the_subtasks_come_from_the_flink_options():
    assert Subtasks.of(PipelineOptions(["--parallelism", "4"])) == Subtasks(4)
    assert Subtasks.of(PipelineOptions(["--parallelism", "4", "--max_parallelism", "64"])) == Subtasks(4, 64)
    assert Subtasks.of(PipelineOptions([])) is None  # the cluster's default: unknown here
    assert Subtasks.of(PipelineOptions(["--parallelism", "1"])) is None
