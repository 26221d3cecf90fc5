"""The Centrifugo peer's pure parts: its JSON protocol framing, commands, config and tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from loadtest.peers import centrifugo
from loadtest.peers.centrifugo_worker import (
    Pub,
    connect_command,
    replies,
    subscribe_command,
)


def test_one_frame_may_carry_several_replies_and_pings() -> None:
    frame = (
        b'{"push":{"channel":"room:3","pub":{"data":{"content":"1 x"},"offset":7}}}\n'
        b"{}\n"
        b'{"id":2,"subscribe":{"epoch":"e","offset":7,"recoverable":true}}'
    )
    got = replies(frame)
    assert len(got) == 3
    assert got[0].push is not None and got[0].push.channel == "room:3"
    assert got[0].push.pub == Pub({"content": "1 x"}, 7)
    assert got[1].id == 0 and got[1].push is None and got[1].error is None  # a ping
    assert got[2].id == 2 and got[2].subscribe == {"epoch": "e", "offset": 7, "recoverable": True}
    err = replies('{"id":1,"error":{"code":109,"message":"token expired"}}')[0]
    assert err.error == {"code": 109, "message": "token expired"}


def test_commands() -> None:
    assert json.loads(connect_command("t")) == {
        "id": 1,
        "connect": {"token": "t", "name": "shardchat-loadtest"},
    }
    assert json.loads(subscribe_command(5, None, None)) == {
        "id": 2,
        "subscribe": {"channel": "room:5"},
    }
    assert json.loads(subscribe_command(5, "ep", 41)) == {
        "id": 2,
        "subscribe": {"channel": "room:5", "recover": True, "epoch": "ep", "offset": 41},
    }


def test_connection_token_is_a_valid_hs256_jwt() -> None:
    token = centrifugo.connection_token(42, "secret")
    head, claims, sig = token.split(".")

    def pad(part: str) -> str:
        return part + "=" * (-len(part) % 4)

    assert json.loads(base64.urlsafe_b64decode(pad(head))) == {"alg": "HS256", "typ": "JWT"}
    assert json.loads(base64.urlsafe_b64decode(pad(claims)))["sub"] == "42"
    want = hmac.new(b"secret", f"{head}.{claims}".encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(pad(sig)) == want


def test_config_turns_history_recovery_and_positioning_on() -> None:
    conf = centrifugo.config(
        port=9000, redis_url="redis://127.0.0.1:6379/0", prefix="p", token_key="k", api_key="a"
    )
    (ns,) = conf["channel"]["namespaces"]
    assert ns["name"] == "room" and centrifugo.channel(3) == "room:3"
    assert ns["history_size"] == 256 and ns["force_recovery"] and ns["force_positioning"]
    assert conf["engine"]["type"] == "redis"
    assert conf["engine"]["redis"] == {"address": ["redis://127.0.0.1:6379/0"], "prefix": "p"}
    assert conf["http_api"]["key"] == "a" and conf["client"]["token"]["hmac_secret_key"] == "k"
