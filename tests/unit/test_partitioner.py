"""shardchat.partitioner agrees with Kafka's Java client and with aiokafka's partitioner."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from shardchat.partitioner import murmur2, partition_for

# From Kafka's own UtilsTest.testMurmur2 (Java signed ints).
JAVA_VECTORS: list[tuple[bytes, int]] = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


def _signed(value: int) -> int:
    return value - (1 << 32) if value >= 1 << 31 else value


@pytest.mark.parametrize(("key", "expected"), JAVA_VECTORS)
def test_murmur2_matches_java_vectors(key: bytes, expected: int) -> None:
    assert _signed(murmur2(key)) == expected
    assert _signed(aiokafka_murmur2(key)) == expected


@pytest.mark.parametrize(
    ("key", "num_partitions", "expected"),
    [
        # Derived from the Java vectors above: toPositive(murmur2) % n.
        (b"21", 32, (-973932308 & 0x7FFFFFFF) % 32),
        (b"foobar", 32, (-790332482 & 0x7FFFFFFF) % 32),
        (b"abc", 7, 479470107 % 7),
        (b"anything", 1, 0),
    ],
)
def test_partition_for_known(key: bytes, num_partitions: int, expected: int) -> None:
    assert partition_for(key, num_partitions) == expected


def test_murmur2_edge_lengths_match_aiokafka() -> None:
    for length in range(0, 17):
        data = bytes((i * 37 + 11) & 0xFF for i in range(length))
        assert murmur2(data) == aiokafka_murmur2(data)
    assert murmur2(b"\xff" * 9) == aiokafka_murmur2(b"\xff" * 9)


@given(key=st.binary(max_size=64), num_partitions=st.integers(min_value=1, max_value=512))
def test_partition_for_agrees_with_aiokafka_default_partitioner(
    key: bytes, num_partitions: int
) -> None:
    partitions = list(range(num_partitions))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert partition_for(key, num_partitions) == expected
    assert murmur2(key) == aiokafka_murmur2(key)


def test_partition_for_room_ids_spread() -> None:
    seen = {partition_for(str(room_id).encode(), 32) for room_id in range(1000)}
    assert seen == set(range(32))


@pytest.mark.parametrize("bad", [0, -1])
def test_partition_for_rejects_non_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        partition_for(b"k", bad)
