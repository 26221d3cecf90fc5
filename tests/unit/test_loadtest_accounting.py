"""Lost/duplicated accounting per (room, seq) per receiver."""

from __future__ import annotations

from loadtest.accounting import SeqTracker, account


def _tracker(room: int, seqs: list[int]) -> SeqTracker:
    t = SeqTracker()
    for s in seqs:
        t.see(room, s)
    return t


def test_exactly_once_is_clean() -> None:
    t = _tracker(1, [1, 2, 3, 4])
    assert account([(t, [1])], {1: [1, 2, 3, 4]}) == (0, 0)


def test_gaps_are_lost() -> None:
    t = _tracker(1, [1, 2, 5])
    assert account([(t, [1])], {1: [1, 2, 3, 4, 5]}) == (2, 0)


def test_duplicates_count_every_extra_copy() -> None:
    t = _tracker(1, [1, 2, 2, 3, 3, 3])
    assert t.duplicated == 3
    assert account([(t, [1])], {1: [1, 2, 3]}) == (0, 3)


def test_gaps_and_dupes_together_per_receiver() -> None:
    a = _tracker(1, [1, 1, 3])  # lost 2, one dupe
    b = _tracker(1, [1, 2, 3])  # clean
    c = _tracker(2, [7, 9, 9])  # other room: lost 8, one dupe
    assert account([(a, [1]), (b, [1]), (c, [2])], {1: [1, 2, 3], 2: [7, 8, 9]}) == (2, 2)


def test_unacknowledged_seqs_are_not_lost_but_dupes_still_count() -> None:
    # seq 4 was delivered twice but its ack never reached the sender (a crash mid-reply)
    t = _tracker(1, [1, 2, 3, 4, 4])
    assert account([(t, [1])], {1: [1, 2, 3]}) == (0, 1)


def test_see_reports_first_delivery() -> None:
    t = SeqTracker()
    assert t.see(5, 1) is True
    assert t.see(5, 1) is False
    assert t.see(6, 1) is True  # the same seq in another room is another event


def test_receiver_without_acked_messages() -> None:
    t = SeqTracker()
    assert account([(t, [1])], {}) == (0, 0)
    assert account([(t, [1])], {1: [1]}) == (1, 0)
