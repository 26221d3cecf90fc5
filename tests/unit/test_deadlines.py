"""DeadlineWheel: what the gateway's sweep relies on to find expired connections."""

from __future__ import annotations

import pytest

from gateway.deadlines import DeadlineWheel


def test_due_returns_what_is_due_once_and_nothing_early_by_more_than_a_slot() -> None:
    w: DeadlineWheel[str] = DeadlineWheel(1.0)
    w.add("a", 10.2)
    w.add("b", 11.7)
    w.add("c", 30.0)
    assert w.due(9.99) == []
    assert w.due(10.0) == ["a"]  # within its slot: the caller re-checks the exact deadline
    assert w.due(10.5) == []  # returned once
    assert w.due(12.0) == ["b"]
    assert len(w) == 1 and "c" in w
    assert w.due(1000.0) == ["c"]
    assert len(w) == 0


def test_refiling_under_a_passed_deadline_comes_back_at_the_next_call() -> None:
    w: DeadlineWheel[str] = DeadlineWheel(1.0)
    w.add("a", 5.5)
    assert w.due(5.6) == ["a"]
    w.add("a", 5.5)  # not expired by the caller's exact check (or busy): look again
    assert w.due(5.7) == []  # same slot already returned: the slot moved to the next one
    assert w.due(6.0) == ["a"]


def test_add_moves_an_item_and_discard_forgets_it() -> None:
    w: DeadlineWheel[int] = DeadlineWheel(0.5)
    w.add(1, 2.0)
    w.add(1, 40.0)  # a frame arrived: the deadline moved later
    w.add(2, 2.0)
    w.discard(2)
    w.discard(3)  # unknown: no-op
    assert w.due(10.0) == []
    assert w.due(40.0) == [1]


def test_many_items_over_a_long_gap_and_a_fine_resolution() -> None:
    w: DeadlineWheel[int] = DeadlineWheel(0.01)
    for i in range(1000):
        w.add(i, 1.0 + i * 0.5)
    assert w.due(0.5) == []
    got = w.due(1_000_000.0)  # one call after a long stall: every slot in between
    assert sorted(got) == list(range(1000))


def test_resolution_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DeadlineWheel(0.0)
