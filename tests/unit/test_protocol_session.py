"""The sans-I/O session state machine."""

from typing import Any

import pytest

from protocol.actions import (
    Authenticate,
    Close,
    DoPresence,
    DoResume,
    DoSend,
    DoSubscribe,
    DoTyping,
    DoUnsubscribe,
    SendFrame,
)
from protocol.close_codes import CloseCode
from protocol.codec import Codec, DispatchEvent, Encoding
from protocol.errors import LocalProtocolError
from protocol.frames import RoomSubscription
from protocol.opcodes import Op
from protocol.session import Session, SessionState
from protocol.snowflake import Snowflake

ROOM = Snowflake(5)


def frame(
    op: Op, d: Any = None, id: int | None = None, encoding: Encoding = Encoding.JSON
) -> bytes:
    return Codec(encoding).encode(op, d, id=id)


def sent(action: Any, encoding: Encoding = Encoding.JSON) -> Any:
    assert isinstance(action, SendFrame)
    return Codec(encoding).decode(action.data)


def closed_with(actions: list[Any], code: CloseCode) -> None:
    assert len(actions) == 1 and isinstance(actions[0], Close)
    assert actions[0].code is code


def ready_session(now: float = 0.0, **kwargs: Any) -> Session:
    session = Session(now=now, gateway_id="gw", **kwargs)
    [auth] = session.receive(frame(Op.IDENTIFY, {"token": "t"}), now)
    assert isinstance(auth, Authenticate)
    session.accept_identify(session_id="sess", user_id=1, ready={"session_id": "sess"})
    return session


def test_hello_is_the_contract() -> None:
    session = Session(now=0.0, gateway_id="gw-1", heartbeat_interval_ms=1000)
    env = sent(session.hello())
    assert (env.op, env.d) == (Op.HELLO, {"heartbeat_interval_ms": 1000, "gateway_id": "gw-1"})
    assert session.state is SessionState.AWAITING_IDENTIFY


def test_identify_then_ready_then_traffic() -> None:
    session = Session(now=0.0)
    identify = {"token": "tok", "client": {"name": "web", "version": "1"}, "subscribe": ["7"]}
    [auth] = session.receive(frame(Op.IDENTIFY, identify), 0.0)
    assert auth == Authenticate("tok", auth.client, (Snowflake(7),))
    assert session.state is SessionState.IDENTIFYING
    ready = session.accept_identify(session_id="s1", user_id=42, ready={"session_id": "s1"})
    env = sent(ready)
    assert (env.op, env.t, env.s, env.d) == (Op.DISPATCH, "READY", 1, {"session_id": "s1"})
    assert session.state is SessionState.READY and session.user_id == 42

    assert session.receive(
        frame(Op.SEND, {"room_id": "5", "content": "hi", "nonce": "n"}, id=3), 1.0
    ) == [DoSend(3, ROOM, "hi", "n")]
    with_files = {"room_id": "5", "content": "", "nonce": "f", "attachment_ids": ["8", "9"]}
    assert session.receive(frame(Op.SEND, with_files, id=5), 1.0) == [
        DoSend(5, ROOM, "", "f", (Snowflake(8), Snowflake(9)))
    ]
    assert session.receive(frame(Op.SUBSCRIBE, {"rooms": [{"room_id": "5"}]}, id=4), 1.0) == [
        DoSubscribe(4, (RoomSubscription(room_id=ROOM),))
    ]
    assert session.receive(frame(Op.SUBSCRIBE, {"rooms": []}), 1.0) == [DoSubscribe(None, ())]
    assert session.receive(frame(Op.UNSUBSCRIBE, {"rooms": ["5"]}), 1.0) == [DoUnsubscribe((ROOM,))]
    assert session.receive(frame(Op.TYPING, {"room_id": "5"}), 1.0) == [DoTyping(ROOM)]
    assert session.receive(frame(Op.PRESENCE_UPDATE, {"status": "idle"}), 1.0) == [
        DoPresence("idle")
    ]


def test_replies_carry_the_request_id() -> None:
    session = ready_session()
    ok = sent(session.reply_ok(7, {"id": "1"}))
    assert (ok.op, ok.id, ok.d) == (Op.REPLY, 7, {"ok": True, "result": {"id": "1"}})
    err = sent(session.reply_error(8, "FORBIDDEN", "no"))
    assert (err.id, err.d) == (8, {"ok": False, "error": {"code": "FORBIDDEN", "message": "no"}})
    assert sent(session.reconnect("ws://x/ws")).d == {"url": "ws://x/ws"}
    assert sent(session.heartbeat_ack()).op == Op.HEARTBEAT_ACK


@pytest.mark.parametrize(
    ("op", "d"),
    [
        (Op.SEND, {"room_id": "5", "content": "x", "nonce": "n"}),
        (Op.SUBSCRIBE, {"rooms": []}),
        (Op.UNSUBSCRIBE, {"rooms": []}),
        (Op.TYPING, {"room_id": "5"}),
        (Op.PRESENCE_UPDATE, {"status": "online"}),
    ],
)
def test_ops_before_identify_close_4003(op: Op, d: Any) -> None:
    session = Session(now=0.0)
    closed_with(session.receive(frame(op, d), 0.0), CloseCode.NOT_IDENTIFIED)
    assert session.state is SessionState.CLOSED
    assert session.receive(frame(Op.HEARTBEAT), 0.0) == []  # closed: ignore everything


def test_ops_while_identifying_close_4003() -> None:
    session = Session(now=0.0)
    session.receive(frame(Op.IDENTIFY, {"token": "t"}), 0.0)
    closed_with(session.receive(frame(Op.TYPING, {"room_id": "5"}), 0.0), CloseCode.NOT_IDENTIFIED)


@pytest.mark.parametrize("ready", [True, False])
@pytest.mark.parametrize(
    ("op", "d"),
    [(Op.IDENTIFY, {"token": "t"}), (Op.RESUME, {"token": "t", "session_id": "s", "seq": 1})],
)
def test_second_identify_or_resume_closes_4004(ready: bool, op: Op, d: Any) -> None:
    session = ready_session() if ready else Session(now=0.0)
    if not ready:
        session.receive(frame(Op.IDENTIFY, {"token": "t"}), 0.0)
    closed_with(session.receive(frame(op, d), 0.0), CloseCode.ALREADY_IDENTIFIED)


def test_heartbeat_is_acked_in_every_open_state() -> None:
    session = Session(now=0.0)
    [ack] = session.receive(frame(Op.HEARTBEAT, None), 0.0)
    assert sent(ack).op == Op.HEARTBEAT_ACK and sent(ack).d is None
    session = ready_session()
    [ack] = session.receive(frame(Op.HEARTBEAT, 1), 0.0)
    assert sent(ack).op == Op.HEARTBEAT_ACK
    assert session.client_seq == 1


def test_heartbeat_timeout_closes_4001_after_one_and_a_half_intervals() -> None:
    session = Session(now=100.0, heartbeat_interval_ms=10_000)
    assert session.heartbeat_deadline == 115.0
    assert session.poll(114.9) == []
    session.receive(frame(Op.HEARTBEAT), 110.0)  # any frame pushes the deadline
    assert session.poll(124.9) == []
    closed_with(session.poll(125.1), CloseCode.HEARTBEAT_TIMEOUT)
    assert session.poll(200.0) == []  # already closed


def test_rate_limit_closes_4008_and_heartbeats_do_not_count() -> None:
    session = ready_session(now=0.0, ops_per_window=120, ops_window_s=60.0, ops_burst=20)
    typing = frame(Op.TYPING, {"room_id": "5"})
    for _ in range(100):
        assert sent(session.receive(frame(Op.HEARTBEAT), 0.0)[0]).op == Op.HEARTBEAT_ACK
    for _ in range(19):  # IDENTIFY took one token of the burst of 20
        assert session.receive(typing, 0.0) == [DoTyping(ROOM)]
    closed_with(session.receive(typing, 0.0), CloseCode.RATE_LIMITED)


def test_rate_limit_refills() -> None:
    session = ready_session(now=0.0, ops_burst=2, ops_per_window=1, ops_window_s=1.0)
    typing = frame(Op.TYPING, {"room_id": "5"})
    assert session.receive(typing, 0.0) == [DoTyping(ROOM)]
    assert session.receive(typing, 1.0) == [DoTyping(ROOM)]
    closed_with(session.receive(typing, 1.0), CloseCode.RATE_LIMITED)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"not json", CloseCode.DECODE_ERROR),
        (b'{"op":42}', CloseCode.UNKNOWN_OPCODE),
        (b'{"op":1,"d":"' + b"x" * 20_000 + b'"}', CloseCode.FRAME_TOO_LARGE),
    ],
)
def test_decode_failures_become_close_actions(data: bytes, code: CloseCode) -> None:
    session = Session(now=0.0)
    closed_with(session.receive(data, 0.0), code)


def test_frame_limit_is_configurable() -> None:
    session = Session(now=0.0, max_frame_bytes=10)
    closed_with(session.receive(frame(Op.HEARTBEAT), 0.0), CloseCode.FRAME_TOO_LARGE)


def test_dispatch_seq() -> None:
    session = ready_session()
    assert session.dispatch_seq == 1  # READY
    events = [DispatchEvent("TYPING_START", {"room_id": "5", "user_id": str(i)}) for i in range(5)]
    for i, event in enumerate(events):
        env = Codec().decode(session.dispatch(event))
        assert (env.op, env.t, env.s) == (Op.DISPATCH, "TYPING_START", i + 2)
    assert session.dispatch_seq == 6


def test_dispatch_before_identify_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        Session(now=0.0).dispatch(DispatchEvent("X", None))
    with pytest.raises(LocalProtocolError):
        Session(now=0.0).accept_identify(session_id="s", user_id=1, ready={})


def test_resume_replays_with_heartbeats_only_until_finish() -> None:
    """Between accept_resume and finish_resume the missed events stream (numbered by the shell
    from the client's seq); heartbeats are answered, other ops are not served yet."""
    new = Session(now=10.0, encoding=Encoding.MSGPACK)
    resume = {"token": "t", "session_id": "sess", "seq": 3}
    [request] = new.receive(frame(Op.RESUME, resume, encoding=Encoding.MSGPACK), 10.0)
    assert request == DoResume("t", "sess", 3)
    new.accept_resume(user_id=1)
    assert new.state is SessionState.REPLAYING and new.session_id == "sess"
    assert new.dispatch_seq == 3  # the next DISPATCH (the first replayed event) is s = 4
    [ack] = new.receive(frame(Op.HEARTBEAT, 4, encoding=Encoding.MSGPACK), 11.0)
    assert sent(ack, Encoding.MSGPACK).op == Op.HEARTBEAT_ACK and new.client_seq == 4
    [again] = new.receive(frame(Op.RESUME, resume, encoding=Encoding.MSGPACK), 11.0)
    assert again == Close(CloseCode.ALREADY_IDENTIFIED, CloseCode.ALREADY_IDENTIFIED.description)


def test_ops_before_resumed_are_not_identified_4003() -> None:
    session = Session(now=0.0)
    session.receive(frame(Op.RESUME, {"token": "t", "session_id": "s", "seq": 0}), 0.0)
    session.accept_resume(user_id=1)
    send = {"room_id": "5", "content": "hi", "nonce": "n"}
    closed_with(session.receive(frame(Op.SEND, send), 0.0), CloseCode.NOT_IDENTIFIED)


def test_finish_resume_then_traffic() -> None:
    session = Session(now=0.0)
    session.receive(frame(Op.RESUME, {"token": "t", "session_id": "s", "seq": 9}), 0.0)
    with pytest.raises(LocalProtocolError):
        session.finish_resume()  # not accepted yet
    session.accept_resume(user_id=1)
    session.finish_resume()
    assert session.state is SessionState.READY
    [action] = session.receive(frame(Op.TYPING, {"room_id": "5"}), 0.0)
    assert action == DoTyping(ROOM)


def test_a_room_lost_while_replaying_invalidates_the_session() -> None:
    session = Session(now=0.0)
    session.receive(frame(Op.RESUME, {"token": "t", "session_id": "s", "seq": 9}), 0.0)
    session.accept_resume(user_id=1)
    env = sent(session.invalid_session(resumable=False))
    assert (env.op, env.d) == (Op.INVALID_SESSION, {"resumable": False})
    assert session.state is SessionState.AWAITING_IDENTIFY and session.session_id is None
    [auth] = session.receive(frame(Op.IDENTIFY, {"token": "t"}), 0.0)
    assert isinstance(auth, Authenticate)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_resume_rooms_reach_the_gateway(encoding: Encoding) -> None:
    """The optional RESUME ``rooms`` (client-held room positions) is handed over as ints."""
    resume = {"token": "t", "session_id": "sess", "seq": 3, "rooms": {"5": 7}}
    [request] = Session(now=0.0, encoding=encoding).receive(
        frame(Op.RESUME, resume, encoding=encoding), 0.0
    )
    assert request == DoResume("t", "sess", 3, {ROOM: 7})
    plain = {"token": "t", "session_id": "sess", "seq": 3}
    [request] = Session(now=0.0, encoding=encoding).receive(
        frame(Op.RESUME, plain, encoding=encoding), 0.0
    )
    assert isinstance(request, DoResume) and request.rooms is None


def test_resume_rejected_then_identify_on_the_same_connection() -> None:
    session = Session(now=0.0)
    session.receive(frame(Op.RESUME, {"token": "t", "session_id": "gone", "seq": 9}), 0.0)
    env = sent(session.invalid_session(resumable=False))
    assert (env.op, env.d) == (Op.INVALID_SESSION, {"resumable": False})
    assert session.state is SessionState.AWAITING_IDENTIFY
    [auth] = session.receive(frame(Op.IDENTIFY, {"token": "t"}), 0.0)
    assert isinstance(auth, Authenticate)


def test_authentication_failure_closes_4501_terminally() -> None:
    session = Session(now=0.0)
    session.receive(frame(Op.IDENTIFY, {"token": "bad"}), 0.0)
    action = session.close(CloseCode.AUTHENTICATION_FAILED)
    assert action == Close(
        CloseCode.AUTHENTICATION_FAILED, CloseCode.AUTHENTICATION_FAILED.description
    )
    assert session.state is SessionState.CLOSED and not session.resumable


@pytest.mark.parametrize(
    ("code", "resumable"), [(1000, False), (1001, False), (4000, True), (None, True), (4501, False)]
)
def test_client_close_code_decides_resumability(code: int | None, resumable: bool) -> None:
    session = ready_session()
    session.connection_lost(code)
    assert session.resumable is resumable


def test_server_close_code_is_kept_over_the_connection_lost_code() -> None:
    session = ready_session()
    session.close(CloseCode.HEARTBEAT_TIMEOUT)
    session.connection_lost(1000)
    assert session.close_code == 4001 and session.resumable
    assert not Session(now=0.0).resumable  # never identified: nothing to resume
