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
import numpy as np

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


_MAX_VECTOR_KEY_BYTES = 256
_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def murmur3_32_of_ranges(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray | None:
    """``mmh3.hash(key, 0, signed=True)`` of each row's key: the concatenation of the
    byte ranges ``data[starts[i, c]:starts[i, c] + lengths[i, c]]`` over columns ``c``.
    None when a key is longer than ``_MAX_VECTOR_KEY_BYTES`` (hash those one by one)."""
    n, columns = starts.shape
    totals = lengths.sum(axis=1)
    width = int(totals.max(initial=0))
    if width > _MAX_VECTOR_KEY_BYTES:
        return None
    rows = np.zeros((n, max(4, (width + 3) // 4 * 4)), dtype=np.uint8)
    offsets = np.zeros(n, dtype=np.int64)
    for c in range(columns):
        column_starts, column_lengths = starts[:, c], lengths[:, c]
        if n and (column_lengths == column_lengths[0]).all() and (offsets == offsets[0]).all():
            at, size = int(offsets[0]), int(column_lengths[0])  # fixed width: one 2-D copy
            rows[:, at : at + size] = data[column_starts[:, None] + np.arange(size)]
        else:
            row_of_byte = np.repeat(np.arange(n), column_lengths)
            within = np.arange(int(column_lengths.sum())) - np.repeat(np.cumsum(column_lengths) - column_lengths, column_lengths)
            rows[row_of_byte, offsets[row_of_byte] + within] = data[np.repeat(column_starts, column_lengths) + within]
        offsets += column_lengths
    h = np.zeros(n, dtype=np.uint32)
    for j, word in enumerate(rows.view("<u4").T):
        k = _rotl(word * _C1, 15) * _C2
        whole = (j + 1) * 4 <= totals
        tail = ~whole & (j * 4 < totals)  # the last 1-3 bytes, zero-padded as murmur3 reads them
        h = np.where(whole, _rotl(h ^ k, 13) * np.uint32(5) + np.uint32(0xE6546B64), np.where(tail, h ^ k, h))
    h ^= totals.astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h.view(np.int32)


def keys_of_ranges(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> list[bytes]:
    """The keys :func:`murmur3_32_of_ranges` hashes, as bytes (for keys too long to vectorise)."""
    raw = data.tobytes()
    return [
        key_bytes([raw[s : s + k] for s, k in zip(row_starts, row_lengths)])
        for row_starts, row_lengths in zip(starts.tolist(), lengths.tolist())
    ]
