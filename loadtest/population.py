"""The benchmark's users, rooms and access tokens, created straight through the Store.

Why not GraphQL ``register``: argon2 costs tens of milliseconds per user on purpose, so 10k
registrations would take minutes. Benchmark users get an unusable password hash and a token
minted with the cluster's JWT key, which is exactly what the gateway verifies.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from shardchat.config import Settings
from shardchat.runtime import Core
from user_core.models import User


@dataclass(frozen=True)
class Population:
    tokens: dict[int, str]  # user id -> access token
    rooms: list[tuple[int, list[int]]]  # (room id, member user ids), largest first

    @property
    def users(self) -> int:
        return len(self.tokens)


async def populate(
    settings: Settings, sizes: list[int], run_id: str, concurrency: int = 8
) -> Population:
    """One room per entry of ``sizes``, each with that many fresh members."""
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    rooms = [list(range(start, start + size)) for start, size in zip(starts, sizes, strict=True)]
    return await populate_rooms(settings, sum(sizes), rooms, run_id, concurrency)


async def populate_rooms(
    settings: Settings, users: int, rooms: list[list[int]], run_id: str, concurrency: int = 8
) -> Population:
    """``users`` fresh users and one room per entry of ``rooms``: the indexes of its members
    (a user may be in several rooms), the first one its creator."""
    core = await Core.open(settings, apply_migrations=False)
    try:
        sem = asyncio.Semaphore(concurrency)
        now = int(time.time() * 1000)

        async def make_user(n: int) -> int:
            user = User(core.chat.ids.next_id(), f"b{run_id}-{n}", now)
            async with sem:
                await core.store.create_user(user, "!bench")  # no password logs in
            return user.id

        ids = list(await asyncio.gather(*(make_user(n) for n in range(users))))

        async def make_room(k: int, members: list[int]) -> tuple[int, list[int]]:
            async with sem:
                room = await core.chat.create_room(members[0], f"bench {k}", members[1:])
            return room.id, members

        made = list(
            await asyncio.gather(
                *(make_room(k, [ids[i] for i in members]) for k, members in enumerate(rooms))
            )
        )
        tokens = {uid: core.auth.access.issue(uid, "bench") for uid in ids}
        await core.publisher.flush(30)
        return Population(tokens, made)
    finally:
        await core.close()
