"""Start-up refuses signing keys that a forger could know or guess (issue 11, observation 5), and
the limits that need no server: client address behind proxies, password policy."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from starlette.requests import Request

from graphql_edge.http import client_address
from shardchat.clientip import real_client
from shardchat.config import Settings
from shardchat.runtime import Core, InsecureSettings, check_signing_keys
from user_core.passwords import common_passwords, policy_problem


@pytest.mark.parametrize(
    "keys",
    [
        {},  # each process would sign with its own random key
        {"k1": "change-me-compose-dev-secret"},  # compose's old fallback: forged tokens read rooms
        {"k1": "CHANGE-ME-32-random-bytes-base64"},  # the k8s placeholder
        {"k1": "short-but-random-Zq8v"},  # < 32 bytes
        {"k1": "a" * 64},  # one character repeated
        {"good": secrets.token_urlsafe(48), "old": "secret"},  # every key verifies: all count
    ],
)
async def test_start_refuses_weak_signing_keys(tmp_path: Path, keys: dict[str, str]) -> None:
    settings = Settings(jwt_keys=keys, sqlite_path=str(tmp_path / "s.sqlite3"))
    with pytest.raises(InsecureSettings):
        check_signing_keys(settings)
    with pytest.raises(InsecureSettings):
        await Core.open(settings)  # before anything is opened
    check_signing_keys(Settings(jwt_keys=keys, dev_mode=True))  # dev mode may


def test_a_random_key_passes() -> None:
    check_signing_keys(Settings(jwt_keys={"k1": secrets.token_urlsafe(48)}))


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        ("127.0.0.1", "198.51.100.7", (), "127.0.0.1"),  # nobody trusted: the header is ignored
        ("203.0.113.9", "198.51.100.7", ("127.0.0.1",), "203.0.113.9"),  # not from the proxy
        ("127.0.0.1", "198.51.100.7", ("127.0.0.1",), "198.51.100.7"),
        ("127.0.0.1", "6.6.6.6, 198.51.100.7", ("127.0.0.1",), "198.51.100.7"),  # forged left
        ("10.0.0.2", "198.51.100.7, 10.0.0.1", ("10.0.0.0/8",), "198.51.100.7"),  # two proxies
        ("127.0.0.1", "garbage", ("127.0.0.1",), "127.0.0.1"),
        ("127.0.0.1", None, ("127.0.0.1",), "127.0.0.1"),
    ],
)
def test_real_client_address(
    peer: str, forwarded: str | None, trusted: tuple[str, ...], client: str
) -> None:
    assert real_client(peer, forwarded, trusted) == client


def test_password_policy() -> None:
    assert len(common_passwords()) > 10_000
    for weak in ("12345678", "password", "Password1", "qwertyuiop", "iloveyou"):
        assert policy_problem("someone", weak) is not None, weak
    assert policy_problem("Alice_99", "alice_99") is not None
    assert policy_problem("alice", "correct horse battery") is None


def test_edge_reads_every_forwarded_for_line() -> None:
    """A forged line first, the proxy's own after it: the edge sees one list, like the gateway."""
    scope = {
        "type": "http",
        "client": ("127.0.0.1", 5000),
        "headers": [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.7")],
    }
    assert client_address(Request(scope), ("127.0.0.1",)) == "198.51.100.7"
