"""AuthService on SQLite: registration rules, login, refresh rotation and family revocation,
access-token verification (expiry, forgery, key rotation)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import jwt
import pytest

from shardchat.adapters.memory_registry import MemoryRegistry
from shardchat.adapters.sqlite_store import SqliteStore
from shardchat.config import Settings
from shardchat.errors import BadInput, Conflict, Unauthenticated
from shardchat.migrate import migrate
from user_core import passwords
from user_core.models import User
from user_core.service import AuthService
from user_core.tokens import AccessTokens, hash_refresh_token, new_refresh_token

KEYS = {
    "k2": "second-secret-key-of-at-least-32-bytes!!",
    "k1": "first-secret-key-of-32-bytes-or-more!!",
}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "auth.sqlite3"))
    await s.start()
    await migrate(s)
    yield s
    await s.close()


@pytest.fixture
def auth(store: SqliteStore) -> AuthService:
    return AuthService(store, MemoryRegistry(), Settings(jwt_keys=KEYS))


async def test_revocation_and_missing_users(auth: AuthService) -> None:
    first = await auth.register("ivy", "quiet harbor 1")
    second = await auth.login("ivy", "quiet harbor 1")
    assert (await auth.authenticate(first.access_token)).user_id == first.user.id
    me = auth.verify_access(second.access_token)
    # revoking one session refuses its access tokens, not the other session's
    assert await auth.revoke_session(me, auth.verify_access(first.access_token).session_id)
    with pytest.raises(Unauthenticated):
        await auth.authenticate(first.access_token)
    assert [s.id for s in await auth.sessions(me)] == [me.session_id]
    # a password change ends every session and returns a new one that works
    fresh = await auth.change_password(me, "quiet harbor 1", "quiet harbor 3")
    with pytest.raises(Unauthenticated):
        await auth.authenticate(second.access_token)
    assert (await auth.authenticate(fresh.access_token)).user_id == first.user.id
    with pytest.raises(Unauthenticated):
        await auth.refresh(second.refresh_token)
    # a token for a user that does not exist (a reset database, say) is UNAUTHENTICATED
    ghost = auth.access.issue(123456789, "f")
    with pytest.raises(Unauthenticated):
        await auth.authenticate(ghost)


async def test_reused_refresh_token_revokes_the_access_tokens(auth: AuthService) -> None:
    first = await auth.register("jack", "quiet harbor 1")
    second = await auth.refresh(first.refresh_token)
    with pytest.raises(Unauthenticated):
        await auth.refresh(first.refresh_token)  # reuse: the family is revoked ...
    with pytest.raises(Unauthenticated):
        await auth.authenticate(second.access_token)  # ... with its access tokens


async def test_register_login_and_verify(auth: AuthService) -> None:
    tokens = await auth.register("alice_1", "correct horse")
    assert tokens.user.username == "alice_1" and tokens.expires_in == 900
    assert auth.verify_access(tokens.access_token).user_id == tokens.user.id
    assert jwt.get_unverified_header(tokens.access_token)["kid"] == "k2"  # the first key signs
    again = await auth.login("ALICE_1", "correct horse")  # usernames are case-insensitive
    assert again.user == tokens.user and again.refresh_token != tokens.refresh_token
    assert await auth.get_user(tokens.user.id) == tokens.user
    assert await auth.get_users([tokens.user.id, 1]) == {tokens.user.id: tokens.user}


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("ab", "long enough"),
        ("x" * 33, "long enough"),
        ("bad name", "long enough"),
        ("émile", "long enough"),
        ("good.name-1", "short"),
        ("good.name-1", "x" * 129),
        ("good.name-1", "12345678"),  # on the common-password list
        ("good.name-1", "Password1"),  # ... whatever the case
        ("good.name-1", "GOOD.NAME-1"),  # the username itself
    ],
)
async def test_register_rejects_bad_input(auth: AuthService, username: str, password: str) -> None:
    with pytest.raises(BadInput) as info:
        await auth.register(username, password)
    assert info.value.code == "BAD_USER_INPUT"


async def test_duplicate_username_is_conflict(auth: AuthService) -> None:
    await auth.register("bob", "quiet harbor 1")
    with pytest.raises(Conflict) as info:
        await auth.register("BOB", "quiet harbor 2")
    assert info.value.code == "BAD_USER_INPUT"


async def test_login_same_error_for_unknown_user_and_bad_password(auth: AuthService) -> None:
    await auth.register("carol", "quiet harbor 1")
    with pytest.raises(Unauthenticated) as wrong:
        await auth.login("carol", "quiet harbor 2")
    with pytest.raises(Unauthenticated) as unknown:
        await auth.login("nobody", "quiet harbor 1")
    assert wrong.value.message == unknown.value.message
    assert wrong.value.code == "UNAUTHENTICATED"


async def test_refresh_rotates_and_reuse_revokes_family(auth: AuthService) -> None:
    first = await auth.register("dave", "quiet harbor 1")
    second = await auth.refresh(first.refresh_token)
    assert second.refresh_token != first.refresh_token and second.user == first.user
    assert auth.verify_access(second.access_token).user_id == first.user.id
    third = await auth.refresh(second.refresh_token)
    with pytest.raises(Unauthenticated):
        await auth.refresh(second.refresh_token)  # reuse of a spent token: family revoked
    with pytest.raises(Unauthenticated):
        await auth.refresh(third.refresh_token)  # ... so the newest one is dead too
    other = await auth.login("dave", "quiet harbor 1")  # other logins are other families
    assert (await auth.refresh(other.refresh_token)).user == first.user


async def test_refresh_rejects_unknown_and_expired(store: SqliteStore) -> None:
    now = [time.time()]
    auth = AuthService(
        store,
        MemoryRegistry(),
        Settings(jwt_keys=KEYS, refresh_token_ttl_s=60),
        clock=lambda: now[0],
    )
    tokens = await auth.register("erin", "quiet harbor 1")
    for bad in ("", "x" * 300, new_refresh_token()):
        with pytest.raises(Unauthenticated):
            await auth.refresh(bad)
    now[0] += 61
    with pytest.raises(Unauthenticated):
        await auth.refresh(tokens.refresh_token)


async def test_refresh_tokens_are_stored_hashed(auth: AuthService, store: SqliteStore) -> None:
    tokens = await auth.register("fred", "quiet harbor 1")
    rows = await store._all("SELECT token_hash FROM refresh_tokens")
    assert [bytes(r[0]) for r in rows] == [hash_refresh_token(tokens.refresh_token)]


async def test_logout_revokes_the_family(auth: AuthService) -> None:
    tokens = await auth.register("gina", "quiet harbor 1")
    rotated = await auth.refresh(tokens.refresh_token)
    assert await auth.logout(tokens.refresh_token)  # an old token of the family still logs out
    assert not await auth.logout(rotated.refresh_token)  # already revoked
    assert not await auth.logout("not-a-token")
    with pytest.raises(Unauthenticated):
        await auth.refresh(rotated.refresh_token)


async def test_expired_access_token(store: SqliteStore) -> None:
    past = time.time() - 3600
    auth = AuthService(store, MemoryRegistry(), Settings(jwt_keys=KEYS), clock=lambda: past)
    tokens = await auth.register("hank", "quiet harbor 1")
    with pytest.raises(Unauthenticated):
        auth.verify_access(tokens.access_token)


# The HS512 token below is signed with the real (HS256-sized) key on purpose: only its algorithm
# may be what gets it rejected. PyJWT warns that the key is short for HS512.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_forged_and_malformed_access_tokens() -> None:
    issuer = AccessTokens(KEYS, 900)
    good = issuer.issue(42, "f1")
    assert issuer.verify(good).user_id == 42
    forged = [
        jwt.encode(
            {"sub": "42", "iat": 1, "exp": 2**40, "typ": "access"},
            "guess" * 8,
            algorithm="HS256",
            headers={"kid": "k2"},
        ),
        jwt.encode(
            {"sub": "42", "iat": 1, "exp": 2**40, "typ": "access"},
            KEYS["k2"],
            algorithm="HS256",
            headers={"kid": "k9"},
        ),  # unknown kid
        jwt.encode(
            {"sub": "42", "iat": 1, "exp": 2**40, "typ": "access"},
            KEYS["k2"],
            algorithm="HS512",
            headers={"kid": "k2"},
        ),  # algorithm not allowed
        jwt.encode(
            {"sub": "42", "iat": 1, "exp": 2**40},
            KEYS["k2"],
            algorithm="HS256",
            headers={"kid": "k2"},
        ),  # no typ
        jwt.encode(
            {"sub": "x", "iat": 1, "exp": 2**40, "typ": "access"},
            KEYS["k2"],
            algorithm="HS256",
            headers={"kid": "k2"},
        ),
        jwt.encode(
            {"sub": "42", "iat": 1, "typ": "access"},
            KEYS["k2"],
            algorithm="HS256",
            headers={"kid": "k2"},
        ),  # no exp
        jwt.encode(
            {"sub": str(2**64), "iat": 1, "exp": 2**40, "typ": "access"},
            KEYS["k2"],
            algorithm="HS256",
            headers={"kid": "k2"},
        ),  # sub beyond int64 (was INTERNAL with a traceback)
        jwt.encode(
            {"sub": "-5", "iat": 1, "exp": 2**40, "typ": "access"},
            KEYS["k2"],
            algorithm="HS256",
            headers={"kid": "k2"},
        ),
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "not.a.jwt",
        "",
    ]
    for token in forged:
        with pytest.raises(Unauthenticated):
            issuer.verify(token)


def test_key_rotation_all_keys_verify_first_signs() -> None:
    old = AccessTokens({"k1": KEYS["k1"]}, 900)
    token = old.issue(7, "f1")
    rotated = AccessTokens(KEYS, 900)  # k2 first (signs), k1 kept for tokens in flight
    assert rotated.verify(token).user_id == 7
    assert jwt.get_unverified_header(rotated.issue(7, "f1"))["kid"] == "k2"
    dropped = AccessTokens({"k2": KEYS["k2"]}, 900)
    with pytest.raises(Unauthenticated):
        dropped.verify(token)


def test_dev_key_generated_when_none_configured() -> None:
    a, b = AccessTokens({}, 900), AccessTokens({}, 900)
    assert a.verify(a.issue(5, "f")).user_id == 5
    with pytest.raises(Unauthenticated):
        b.verify(a.issue(5, "f"))  # a random key per process


def test_password_hashing() -> None:
    h = passwords.hash_password("s3cret-pass")
    assert h.startswith("$argon2id$")
    assert passwords.verify_password(h, "s3cret-pass")
    assert not passwords.verify_password(h, "wrong")
    assert not passwords.verify_password(None, "s3cret-pass")
    assert not passwords.verify_password("garbage", "s3cret-pass")


async def test_search_users_by_prefix(auth: AuthService) -> None:
    for name in ("finder", "Finley", "fin_", "other"):
        await auth.register(name, "correct horse battery")
    assert [u.username for u in await auth.search_users("FIN")] == ["fin_", "finder", "Finley"]
    assert [u.username for u in await auth.search_users("fin", 1)] == ["fin_"]
    for prefix, limit in (("", 10), ("a b", 10), ("x" * 33, 10), ("fin", 0), ("fin", 21)):
        with pytest.raises(BadInput):
            await auth.search_users(prefix, limit)


async def test_an_identify_reads_the_user_once_then_never_again(
    auth: AuthService, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """authenticate() checks that the user exists and get_user() (READY's username) reuses
    that read: users are never renamed or deleted, so one read per user per process is exact."""
    token = (await auth.register("rowan", "quiet harbor 1")).access_token
    other = AuthService(store, MemoryRegistry(), Settings(jwt_keys=KEYS))  # a fresh process
    reads: list[list[int]] = []
    get_users = store.get_users

    async def counting(user_ids: Sequence[int]) -> dict[int, User]:
        reads.append(list(user_ids))
        return await get_users(user_ids)

    monkeypatch.setattr(store, "get_users", counting)
    principal = await other.authenticate(token)
    user = await other.get_user(principal.user_id)
    assert user is not None and user.username == "rowan"
    assert len(reads) == 1
    await other.authenticate(token)
    assert await other.get_user(principal.user_id) == user
    assert len(reads) == 1
    assert await other.get_user(987654321) is None  # unknown: read, not cached
    assert await other.get_user(987654321) is None
    assert len(reads) == 3
