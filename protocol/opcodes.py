"""Gateway opcodes (docs/protocol.md section 2)."""

from __future__ import annotations

from enum import IntEnum


class Op(IntEnum):
    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    SUBSCRIBE = 4
    UNSUBSCRIBE = 5
    RESUME = 6
    RECONNECT = 7
    SEND = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    TYPING = 12
    REPLY = 13


#: Ops a client may send. A server-to-client op arriving from a client is answered like an
#: unknown op (close 4005): the server never understands it in that direction.
CLIENT_OPS: frozenset[Op] = frozenset(
    {
        Op.HEARTBEAT,
        Op.IDENTIFY,
        Op.PRESENCE_UPDATE,
        Op.SUBSCRIBE,
        Op.UNSUBSCRIBE,
        Op.RESUME,
        Op.SEND,
        Op.TYPING,
    }
)

#: Ops only the server sends.
SERVER_OPS: frozenset[Op] = frozenset(Op) - CLIENT_OPS

#: Client ops the server answers with a REPLY carrying the envelope ``id``.
REPLYING_OPS: frozenset[Op] = frozenset({Op.SUBSCRIBE, Op.SEND})
