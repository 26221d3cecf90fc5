"""Password hashing with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile).

Hashing costs tens of milliseconds of CPU on purpose: callers on an event loop use the async
helpers, which run it in a worker thread.
"""

from __future__ import annotations

import asyncio
from functools import cache
from importlib import resources

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()

# Verified against when the user does not exist, so "unknown user" costs the same time as
# "wrong password" and response timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-real-password-only-for-timing")


def hash_password(password: str) -> str:
    return str(_hasher.hash(password))


def verify_password(password_hash: str | None, password: str) -> bool:
    """True if it matches; with ``None`` (no such user) it does the same work and is False."""
    try:
        ok = bool(_hasher.verify(password_hash or _DUMMY_HASH, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    return ok and password_hash is not None


async def hash_password_async(password: str) -> str:
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(password_hash: str | None, password: str) -> bool:
    return await asyncio.to_thread(verify_password, password_hash, password)


@cache
def common_passwords() -> frozenset[str]:
    """The shipped list (``common_passwords.txt``), lower case."""
    text = resources.files("user_core").joinpath("common_passwords.txt").read_text("utf-8")
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line.strip() and line[0] != "#"
    )


def policy_problem(username: str, password: str) -> str | None:
    """Why ``password`` is refused for ``username`` (None: acceptable). Length is checked by
    the caller; here: one of the most common passwords, or the username itself (any case)."""
    lowered = password.lower()
    if lowered == username.lower():
        return "password must not be the username"
    if lowered in common_passwords() or lowered.strip() in common_passwords():
        return "password is too common; choose a less guessable one"
    return None
