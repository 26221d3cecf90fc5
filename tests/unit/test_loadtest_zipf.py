"""Room sizing for load tests: Zipf-shaped, exact totals, clamped."""

from __future__ import annotations

import pytest

from loadtest.zipf import room_sizes


@pytest.mark.parametrize("total", [1, 7, 100, 999, 10_000])
@pytest.mark.parametrize("exponent", [0.0, 0.5, 1.0, 1.5])
def test_sizes_sum_to_total(total: int, exponent: float) -> None:
    sizes = room_sizes(total, 10, exponent)
    assert sum(sizes) == total
    assert sizes == sorted(sizes, reverse=True)


def test_exponent_zero_gives_equal_rooms() -> None:
    assert room_sizes(100, 10, 0.0) == [10] * 10


def test_zipf_is_heavy_tailed() -> None:
    sizes = room_sizes(10_000, 10, 1.0)
    assert len(sizes) == 1000
    assert sizes[0] >= 100 * sizes[-1]  # the biggest room dwarfs the smallest
    assert sizes[0] >= 10 * sizes[len(sizes) // 2]


def test_min_and_max_clamps() -> None:
    sizes = room_sizes(1000, 10, 1.2, min_size=3, max_size=50)
    assert sum(sizes) == 1000
    assert max(sizes) <= 50
    assert min(sizes) >= 3


def test_deterministic() -> None:
    assert room_sizes(5000, 20, 1.0) == room_sizes(5000, 20, 1.0)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        room_sizes(10, 0, 1.0)
    with pytest.raises(ValueError):
        room_sizes(10, 5, -1.0)
    assert room_sizes(0, 10, 1.0) == []
