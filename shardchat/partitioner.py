"""Kafka's default partitioner for keyed records, in pure Python.

The Java client (``org.apache.kafka.common.utils.Utils.murmur2`` and
``BuiltInPartitioner.partitionForKey``) and aiokafka's ``DefaultPartitioner`` both map a key to
``toPositive(murmur2(key)) % num_partitions`` where ``toPositive`` is ``& 0x7fffffff``. Every
component that must know a room's partition without producing (the gateway choosing which
partitions to ``assign()``, the router's partition map, the outbox relay) calls
:func:`partition_for` so that they all agree with the producer.
"""

from __future__ import annotations

import struct

__all__ = ["murmur2", "partition_for"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """MurmurHash2 of ``data`` as Kafka computes it, returned as an unsigned 32-bit int.

    Java returns the same 32 bits as a signed ``int``; the partitioner masks the sign bit away,
    so the two representations give the same partition.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    n_words = length // 4
    for (k,) in struct.iter_unpack("<I", data[: n_words * 4]):
        k = (k * _M) & _MASK32
        k ^= k >> _R
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    tail = n_words * 4
    extra = length - tail
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h


def partition_for(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` among ``num_partitions``."""
    if num_partitions <= 0:
        raise ValueError(f"num_partitions must be positive, got {num_partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
