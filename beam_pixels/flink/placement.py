"""Which Flink subtask polls each poll group, and spreading the groups over the subtasks.

Beam's portable Flink runner keys a splittable DoFn's elements by the element's encoded bytes
(``SdfByteBufferKeySelector``) and Flink sends each key to the subtask that its key group belongs
to. The poller's elements are the poll groups, so with as many groups as subtasks two groups
often share a subtask (one run in two with two of each): that subtask's single bundle at a time
polls them one after the other while another subtask has nothing to poll. A poll group's
``placement`` is part of its bytes and nothing else: :func:`spread` picks, for each group, the
first placement that puts it on a subtask of its own (round-robin over the subtasks), by computing
what Flink computes (``java.nio.ByteBuffer.hashCode``, ``MathUtils.murmurHash``,
``KeyGroupRangeAssignment``). A group that lands elsewhere all the same (another coder, another
max parallelism) is only polled in turn with another, as without this.
"""

from __future__ import annotations

import dataclasses
import typing

from apache_beam import coders
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions

# Flink's KeyGroupRangeAssignment: the default max parallelism is the operator's parallelism
# times 1.5 rounded up to a power of two, at least 128 (and at most 32768).
_DEFAULT_MIN_MAX_PARALLELISM = 128
_UPPER_MAX_PARALLELISM = 32768
# Placements tried per group before giving up on it (each tries one key group of many).
_MAX_TRIES = 10_000

T = typing.TypeVar("T")


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _rotate_left(value: int, bits: int) -> int:
    value &= 0xFFFFFFFF
    return _int32((value << bits) | (value >> (32 - bits)))


def java_bytes_hash(data: bytes) -> int:
    """``java.nio.ByteBuffer.wrap(data).hashCode()``."""
    h = 1
    for byte in reversed(data):
        h = _int32(31 * h + (byte - 256 if byte > 127 else byte))
    return h


def murmur_hash(code: int) -> int:
    """Flink's ``MathUtils.murmurHash(int)``: a non-negative int."""
    code = _int32(code * 0xCC9E2D51)
    code = _rotate_left(code, 15)
    code = _int32(code * 0x1B873593)
    code = _rotate_left(code, 13)
    code = _int32(code * 5 + 0xE6546B64)
    code ^= 4
    code = _int32(code ^ ((code & 0xFFFFFFFF) >> 16))  # bitMix
    code = _int32(code * 0x85EBCA6B)
    code = _int32(code ^ ((code & 0xFFFFFFFF) >> 13))
    code = _int32(code * 0xC2B2AE35)
    code = _int32(code ^ ((code & 0xFFFFFFFF) >> 16))
    if code >= 0:
        return code
    return -code if code != -(1 << 31) else 0


def default_max_parallelism(parallelism: int) -> int:
    """Flink's ``KeyGroupRangeAssignment.computeDefaultMaxParallelism``."""
    rounded = 1 << max(0, (parallelism + parallelism // 2) - 1).bit_length()
    return min(max(rounded, _DEFAULT_MIN_MAX_PARALLELISM), _UPPER_MAX_PARALLELISM)


def subtask_of(key: bytes, parallelism: int, max_parallelism: int) -> int:
    """The subtask (0-based) of an operator of ``parallelism`` that Flink gives the key ``key``."""
    key_group = murmur_hash(java_bytes_hash(key)) % max_parallelism
    return key_group * parallelism // max_parallelism


def runner_key(element: typing.Any, coder: coders.Coder) -> bytes:
    """The key the runner derives from an element the SDK encodes with ``coder`` (a Python coder,
    which the runner sees length-prefixed): the length as a varint, then the bytes."""
    encoded = coder.encode(element)
    return coders.VarIntCoder().encode(len(encoded)) + encoded


@dataclasses.dataclass(frozen=True)
class Subtasks:
    """How many subtasks the poller has on Flink (``--parallelism``), and Flink's max parallelism
    (``--max_parallelism``; None: Flink's default for the parallelism)."""

    parallelism: int
    max_parallelism: int | None = None

    @classmethod
    def of(cls, options: PipelineOptions) -> "Subtasks | None":
        """The subtasks that ``options`` give a Flink job; None without ``--parallelism`` (the
        cluster's default then, unknown here) or with one subtask."""
        flink = options.view_as(FlinkRunnerOptions)
        if flink.parallelism is None or flink.parallelism < 2:
            return None
        return cls(flink.parallelism, flink.max_parallelism if (flink.max_parallelism or 0) > 0 else None)


def spread(groups: typing.Sequence[T], subtasks: Subtasks) -> list[T]:
    """``groups`` (dataclasses with a ``placement`` field), each with the placement that puts it
    on subtask ``i % parallelism`` (``i`` its index), as Flink places the keys of an operator of
    ``subtasks``."""
    parallelism = subtasks.parallelism
    max_parallelism = subtasks.max_parallelism or default_max_parallelism(parallelism)
    placed = []
    for index, group in enumerate(groups):
        coder = coders.registry.get_coder(type(group))  # the groups' own type: the coder Create uses
        wanted = index % parallelism
        for placement in range(_MAX_TRIES):
            candidate = dataclasses.replace(group, placement=placement)
            if subtask_of(runner_key(candidate, coder), parallelism, max_parallelism) == wanted:
                break
        else:
            candidate = group
        placed.append(candidate)
    return placed
