"""Lost and duplicated deliveries, counted per (room, seq) per receiver.

The guarantee under test (docs/protocol.md 4): every subscribed member sees every acknowledged
message's room seq exactly once. A receiver records every seq it is dispatched; at the end the
harness hands it the acknowledged seqs of its rooms. Missing acknowledged seqs are lost; a seq
seen more than once counts once per extra copy, acknowledged or not (a duplicate of an event
whose ack the sender never saw is still a duplicate).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class SeqTracker:
    """The room seqs one receiver has been dispatched, with how many times each."""

    __slots__ = ("_dupes", "_seen")

    def __init__(self) -> None:
        self._seen: dict[int, set[int]] = {}
        self._dupes = 0

    def see(self, room_id: int, seq: int) -> bool:
        """Record one delivery; False when it is a duplicate."""
        seen = self._seen.get(room_id)
        if seen is None:
            seen = self._seen[room_id] = set()
        if seq in seen:
            self._dupes += 1
            return False
        seen.add(seq)
        return True

    @property
    def duplicated(self) -> int:
        return self._dupes

    def missing(self, room_id: int, acked: Iterable[int]) -> int:
        seen = self._seen.get(room_id, set())
        return sum(1 for seq in acked if seq not in seen)

    def lost(self, acked_by_room: Mapping[int, Iterable[int]], rooms: Iterable[int]) -> int:
        """Acknowledged seqs of ``rooms`` (the receiver's memberships) never seen."""
        return sum(self.missing(r, acked_by_room.get(r, ())) for r in rooms)


def account(
    trackers: Iterable[tuple[SeqTracker, Iterable[int]]],
    acked_by_room: Mapping[int, Iterable[int]],
) -> tuple[int, int]:
    """(lost, duplicated) summed over receivers given as (tracker, rooms it is a member of)."""
    acked = {room: frozenset(seqs) for room, seqs in acked_by_room.items()}
    lost = dup = 0
    for tracker, rooms in trackers:
        lost += tracker.lost(acked, rooms)
        dup += tracker.duplicated
    return lost, dup
