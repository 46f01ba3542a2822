"""Paimon's fixed bucket of each key, computed on whole Arrow columns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_INT_KEYS = {"TINYINT": "<i1", "SMALLINT": "<i2", "INT": "<i4", "INTEGER": "<i4", "BIGINT": "<i8", "DATE": "<i4"}
_BYTES_KEYS = ("CHAR", "VARCHAR", "STRING", "BINARY", "VARBINARY", "BYTES")
_MAX_KEY_ROW_BYTES = 512
_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)


def bucket_ids(keys: pa.Table, type_names: list[str], num_buckets: int) -> np.ndarray | None:
    """Paimon's fixed bucket of each key row, or None for key types not covered here.

    Paimon hashes the key's BinaryRow bytes (8-byte header, one 8-byte slot per
    field, text/binary over 7 bytes in a word-aligned tail) with murmur3-32 over
    4-byte words, seed 42, and takes ``abs(hash % buckets)`` in Java arithmetic.
    """
    n, arity = keys.num_rows, keys.num_columns
    header = ((arity + 63 + 8) // 64) * 8
    fixed = header + 8 * arity
    plans = []
    tail = np.zeros(n, np.int64)
    for column, type_name in zip(keys.columns, type_names):
        column = column.combine_chunks()
        base = type_name.split("(")[0].upper()
        if column.null_count or not (base in _INT_KEYS or base in _BYTES_KEYS):
            return None
        if base in _INT_KEYS:
            plans.append((column.to_numpy(zero_copy_only=False).astype(_INT_KEYS[base]), None))
            continue
        column = column.cast(pa.binary())
        offsets = np.frombuffer(column.buffers()[1], np.int32)[column.offset : column.offset + n + 1]
        lengths = np.diff(offsets).astype(np.int64)
        plans.append((column, (offsets, lengths, tail.copy())))
        tail += np.where(lengths > 7, (lengths + 7) // 8 * 8, 0)
    width = fixed + int(tail.max(initial=0))
    if width > _MAX_KEY_ROW_BYTES:
        return None

    rows = np.zeros((n, width), np.uint8)
    for i, (values, var) in enumerate(plans):
        slot = header + 8 * i
        if var is None:
            rows[:, slot : slot + values.itemsize] = values.view(np.uint8).reshape(n, values.itemsize)
            continue
        offsets, lengths, tail_before = var
        long = lengths > 7
        start = np.where(long, fixed + tail_before, slot)
        data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
        row_of_byte = np.repeat(np.arange(n), lengths)
        position = np.arange(len(data)) - np.repeat(offsets[:-1] - offsets[0], lengths)
        rows[row_of_byte, start[row_of_byte] + position] = data
        rows[~long, slot + 7] = 0x80 | lengths[~long]
        pointer = ((fixed + tail_before) << 32 | lengths).astype("<i8")
        rows[long, slot : slot + 8] = pointer[long].view(np.uint8).reshape(-1, 8)

    words = rows.view("<u4")
    word_count = (fixed + tail) // 4
    h = np.full(n, 42, np.uint32)
    for j in range(words.shape[1]):
        k = words[:, j] * _C1
        k = ((k << np.uint32(15)) | (k >> np.uint32(17))) * _C2
        mixed = h ^ k
        mixed = ((mixed << np.uint32(13)) | (mixed >> np.uint32(19))) * np.uint32(5) + np.uint32(0xE6546B64)
        h = np.where(j < word_count, mixed, h)
    h ^= (word_count * 4).astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return np.abs(np.fmod(h.view(np.int32).astype(np.int64), num_buckets))
