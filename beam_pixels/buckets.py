"""Bucket routing: which of a Pixels server's per-key queues a record lives in.

A pixels-sink server keeps one FIFO per (schema, table, bucket) and routes a
record by its primary key: the key columns' canonical encodings are concatenated
and hashed with MurmurHash3 (x86, 32 bit, seed 0, as Guava's
``murmur3_32_fixed``), and the bucket is ``abs(hash) % bucket_count``. A client
polls a list of buckets; :func:`partition_buckets` splits them among readers.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import mmh3

DEFAULT_BUCKET_COUNT = 128
"""Buckets per table on a pixels-sink server unless configured otherwise."""


def key_bytes(encoded_key_values: Sequence[bytes]) -> bytes:
    """The routing key of a row: its key columns' canonical encodings, concatenated in key order."""
    return b"".join(encoded_key_values)


def bucket_of(key: bytes, bucket_count: int = DEFAULT_BUCKET_COUNT) -> int:
    """The bucket a server puts a record with routing key ``key`` in.

    The hash is signed 32-bit, as Java sees it. For the one hash ``-2**31``,
    Java's ``Math.abs`` overflows and stays negative; Python's ``abs`` gives
    ``2**31``. Both agree (bucket 0) whenever ``bucket_count`` divides ``2**31``,
    which covers the default 128 and every power of two.
    """
    if bucket_count < 1:
        raise ValueError(f"bucket_count must be at least 1, got {bucket_count}")
    return abs(mmh3.hash(key, 0, signed=True)) % bucket_count


def partition_buckets(buckets: Sequence[int], groups: int) -> list[tuple[int, ...]]:
    """Split ``buckets`` into ``groups`` disjoint, non-empty poll groups, round-robin.

    Group ``g`` gets ``buckets[g], buckets[g + groups], ...`` so group sizes differ
    by at most one and each group keeps the buckets' given order. Every bucket
    lands in exactly one group: a bucket polled by two readers would split its
    records between them and lose per-key order.
    """
    duplicates = sorted(b for b, n in Counter(buckets).items() if n > 1)
    if duplicates:
        raise ValueError(f"buckets must be distinct; repeated: {duplicates}")
    if not 1 <= groups <= len(buckets):
        raise ValueError(
            f"cannot split {len(buckets)} bucket(s) into {groups} poll group(s): "
            f"use between 1 and {len(buckets)} groups (at most one group per bucket)"
        )
    return [tuple(buckets[g::groups]) for g in range(groups)]
