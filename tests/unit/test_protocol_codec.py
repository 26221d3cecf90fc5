"""Codec: round trips, the close code of every malformed input, the DISPATCH splice."""

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.close_codes import CloseCode
from protocol.codec import (
    Codec,
    DispatchEvent,
    Encoding,
    encode_dispatch_prefix,
    msgpack_uint,
    negotiate,
)
from protocol.errors import ProtocolError
from protocol.frames import (
    EVENT_PAYLOAD_TYPES,
    ClientFrame,
    ClientInfo,
    Encrypted,
    ErrorInfo,
    Heartbeat,
    Hello,
    Identify,
    InvalidSession,
    Member,
    MessageCreate,
    MessageDelete,
    MessageUpdate,
    PresenceChanged,
    PresenceUpdate,
    Reaction,
    Ready,
    ReadyRoom,
    Reconnect,
    ReplyError,
    ReplyOk,
    Resume,
    Resumed,
    RoomSubscribed,
    RoomSubscription,
    Send,
    Subscribe,
    Typing,
    TypingStart,
    Unsubscribe,
    UserInfo,
    enc_hook,
    event_from_wire,
    reply_from_wire,
    wire_timestamp,
)
from protocol.opcodes import CLIENT_OPS, SERVER_OPS, Op
from protocol.snowflake import INT64_MAX, Snowflake

ENCODINGS = list(Encoding)
S = Snowflake
CONTRACT_CODES = {int(c) for c in CloseCode}


def raw(encoding: Encoding, obj: Any) -> bytes:
    if encoding is Encoding.JSON:
        return msgspec.json.encode(obj)
    return msgspec.msgpack.encode(obj)


def close_code_of(codec: Codec, data: bytes | str) -> int:
    with pytest.raises(ProtocolError) as info:
        codec.decode_client(data)
    return int(info.value.close_code)


# ---- client frames: round trips ---------------------------------------------------------------

CLIENT_FRAMES = [
    ClientFrame(Op.HEARTBEAT, Heartbeat(seq=None)),
    ClientFrame(Op.HEARTBEAT, Heartbeat(seq=42)),
    ClientFrame(Op.IDENTIFY, Identify(token="tok")),
    ClientFrame(
        Op.IDENTIFY,
        Identify(token="t", client=ClientInfo(name="web", version="1.2"), subscribe="all"),
    ),
    ClientFrame(Op.IDENTIFY, Identify(token="t", subscribe=(S(1), S(INT64_MAX)))),
    ClientFrame(Op.PRESENCE_UPDATE, PresenceUpdate(status="dnd")),
    ClientFrame(
        Op.SUBSCRIBE,
        Subscribe(
            rooms=(RoomSubscription(room_id=S(5)), RoomSubscription(room_id=S(6), after_seq=9))
        ),
        id=7,
    ),
    ClientFrame(Op.UNSUBSCRIBE, Unsubscribe(rooms=(S(5),))),
    ClientFrame(Op.RESUME, Resume(token="t", session_id="abc", seq=17)),
    ClientFrame(
        Op.RESUME, Resume(token="t", session_id="abc", seq=17, rooms={S(5): 0, S(INT64_MAX): 9})
    ),
    ClientFrame(Op.SEND, Send(room_id=S(5), content="héllo 👋", nonce="n-1"), id=-3),
    ClientFrame(Op.SEND, Send(room_id=S(5), content="", nonce=""), id=None),
    ClientFrame(
        Op.SEND, Send(room_id=S(5), content="", nonce="f", attachment_ids=(S(7), S(8))), id=2
    ),
    ClientFrame(  # an end-to-end encrypted room (docs/e2e.md): no content
        Op.SEND,
        Send(
            room_id=S(5),
            nonce="n-2",
            encrypted=Encrypted(
                ciphertext="Y3Q", nonce="bm9uY2U", epoch=3, sender_device="ZGV2", signature="c2ln"
            ),
        ),
        id=4,
    ),
    ClientFrame(Op.TYPING, Typing(room_id=S(5))),
]


def encode_client(codec: Codec, frame: ClientFrame) -> bytes:
    d: Any = frame.d.seq if isinstance(frame.d, Heartbeat) else frame.d
    return codec.encode(frame.op, d, id=frame.id)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=lambda f: f.op.name)
def test_client_frame_round_trip(encoding: Encoding, frame: ClientFrame) -> None:
    codec = Codec(encoding)
    assert codec.decode_client(encode_client(codec, frame)) == frame


def test_client_wire_shape_is_the_contract() -> None:
    codec = Codec(Encoding.JSON)
    text = '{"op":8,"d":{"room_id":"5","content":"hi","nonce":"x"},"id":1}'
    assert codec.decode_client(text) == ClientFrame(
        Op.SEND, Send(room_id=S(5), content="hi", nonce="x"), id=1
    )
    # extra keys (forward compatibility), explicit nulls and a missing d for HEARTBEAT
    assert codec.decode_client(b'{"op":1,"s":null,"t":null,"id":null,"x":1}') == ClientFrame(
        Op.HEARTBEAT, Heartbeat(seq=None)
    )
    assert codec.decode_client(b'{"op":2,"d":{"token":"t","future":true}}').d == Identify(token="t")


def test_resume_rooms_is_an_optional_extension() -> None:
    """RESUME ``rooms`` maps room ids (strings) to room seqs; absent or null is "not sent", and
    a RESUME without it encodes exactly as a v1 RESUME always did (no ``rooms`` key)."""
    codec = Codec(Encoding.JSON)
    plain = '{"op":6,"d":{"token":"t","session_id":"s","seq":3}}'
    assert codec.decode_client(plain).d == Resume(token="t", session_id="s", seq=3)
    nulled = '{"op":6,"d":{"token":"t","session_id":"s","seq":3,"rooms":null}}'
    assert codec.decode_client(nulled).d == Resume(token="t", session_id="s", seq=3)
    listed = '{"op":6,"d":{"token":"t","session_id":"s","seq":3,"rooms":{"12":7,"13":0}}}'
    d = codec.decode_client(listed).d
    assert isinstance(d, Resume) and d.rooms == {S(12): 7, S(13): 0}
    assert all(type(k) is Snowflake for k in d.rooms)
    assert b"rooms" not in codec.encode(Op.RESUME, Resume(token="t", session_id="s", seq=3))
    with_rooms = codec.encode(Op.RESUME, Resume(token="t", session_id="s", seq=3, rooms={S(12): 7}))
    assert b'"rooms":{"12":7}' in with_rooms


# ---- server frames: round trips ---------------------------------------------------------------

SERVER_FRAMES: list[tuple[Op, Any]] = [
    (Op.HELLO, Hello(heartbeat_interval_ms=41_250, gateway_id="gw-1")),
    (Op.HEARTBEAT_ACK, None),
    (Op.RECONNECT, Reconnect()),
    (Op.RECONNECT, Reconnect(url="ws://127.0.0.1:8081/ws")),
    (Op.INVALID_SESSION, InvalidSession(resumable=False)),
]

EVENTS: list[tuple[str, Any]] = [
    (
        "READY",
        Ready(
            session_id="s1",
            user=UserInfo(id=S(1), username="ann", status="online"),
            rooms=(ReadyRoom(id=S(2), name="general", last_seq=10),),
            resume_url="ws://127.0.0.1:8081/ws",
        ),
    ),
    ("RESUMED", Resumed(replayed=3)),
    ("ROOM_SUBSCRIBED", RoomSubscribed(room_id=S(2), seq=10, recovered=True)),
    (
        "MESSAGE_CREATE",
        MessageCreate(
            room_id=S(2),
            seq=11,
            id=S(99),
            author_id=S(1),
            content="hi",
            nonce=None,
            created_at=wire_timestamp(1_714_564_800_123),
        ),
    ),
    (
        "MESSAGE_UPDATE",
        MessageUpdate(
            room_id=S(2), seq=12, id=S(99), content="yo", edited_at="2024-05-01T12:00:00.000Z"
        ),
    ),
    ("MESSAGE_DELETE", MessageDelete(room_id=S(2), seq=13, id=S(99))),
    ("REACTION_ADD", Reaction(room_id=S(2), seq=14, message_id=S(99), user_id=S(1), emoji="👍")),
    ("REACTION_REMOVE", Reaction(room_id=S(2), seq=15, message_id=S(99), user_id=S(1), emoji="x")),
    ("MEMBER_JOIN", Member(room_id=S(2), seq=16, user_id=S(3))),
    ("MEMBER_LEAVE", Member(room_id=S(2), seq=17, user_id=S(3))),
    ("TYPING_START", TypingStart(room_id=S(2), user_id=S(3))),
    ("PRESENCE_UPDATE", PresenceChanged(user_id=S(3), status="idle")),
]


def test_every_event_type_is_covered() -> None:
    assert {t for t, _ in EVENTS} == set(EVENT_PAYLOAD_TYPES)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("op", "d"), SERVER_FRAMES, ids=lambda x: str(x))
def test_server_frame_round_trip(encoding: Encoding, op: Op, d: Any) -> None:
    codec = Codec(encoding)
    env = codec.decode(codec.encode(op, d))
    assert (env.op, env.s, env.t, env.id) == (op, None, None, None)
    expected = msgspec.to_builtins(d, enc_hook=enc_hook)
    assert env.d == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_reply_round_trip(encoding: Encoding) -> None:
    codec = Codec(encoding)
    ok = codec.decode(codec.encode(Op.REPLY, ReplyOk(result={"id": "5"}), id=9))
    assert (ok.op, ok.id, ok.d) == (Op.REPLY, 9, {"ok": True, "result": {"id": "5"}})
    assert reply_from_wire(ok.d) == ReplyOk(result={"id": "5"})
    error = ReplyError(error=ErrorInfo(code="FORBIDDEN", message="not a member"))
    bad = codec.decode(codec.encode(Op.REPLY, error, id=10))
    assert bad.d == {"ok": False, "error": {"code": "FORBIDDEN", "message": "not a member"}}
    assert reply_from_wire(bad.d) == error


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("t", "d"), EVENTS, ids=lambda x: str(x)[:20])
def test_dispatch_round_trip(encoding: Encoding, t: str, d: Any) -> None:
    codec = Codec(encoding)
    env = codec.decode(codec.encode_dispatch(t, d, 5))
    assert (env.op, env.t, env.s, env.id) == (Op.DISPATCH, t, 5, None)
    assert event_from_wire(t, env.d) == d
    assert event_from_wire("SOMETHING_NEW", {"x": 1}) == {"x": 1}


def test_server_envelope_has_all_five_keys_and_ids_as_strings() -> None:
    codec = Codec(Encoding.JSON)
    assert codec.encode(Op.HEARTBEAT_ACK) == b'{"op":11,"t":null,"s":null,"id":null,"d":null}'
    frame = codec.encode_dispatch("TYPING_START", TypingStart(room_id=S(2), user_id=S(3)), 1)
    assert frame == (
        b'{"op":0,"t":"TYPING_START","s":1,"id":null,"d":{"room_id":"2","user_id":"3"}}'
    )
    assert codec.encode(Op.RECONNECT, Reconnect()) == (
        b'{"op":7,"t":null,"s":null,"id":null,"d":{}}'
    )


# ---- malformed input -> close code ------------------------------------------------------------


def _malformed(encoding: Encoding) -> list[tuple[str, bytes, CloseCode]]:
    def r(obj: Any) -> bytes:
        return raw(encoding, obj)

    bad_syntax = b'{"op":1' if encoding is Encoding.JSON else b"\x82\xa2op"
    d4002 = CloseCode.DECODE_ERROR
    return [
        ("bad syntax", bad_syntax, d4002),
        ("trailing garbage", r({"op": 1}) + b"}", d4002),
        ("empty", b"", d4002),
        ("array", r([1, None]), d4002),
        ("string", r("hello"), d4002),
        ("null", r(None), d4002),
        ("no op", r({"d": None}), d4002),
        ("op is a string", r({"op": "1"}), d4002),
        ("op is a float", r({"op": 1.5}), d4002),
        ("op is a bool", r({"op": True}), d4002),
        ("s is a string", r({"op": 1, "s": "x"}), d4002),
        ("t is an int", r({"op": 1, "t": 5}), d4002),
        ("id is a string", r({"op": 8, "id": "1"}), d4002),
        ("id too big", r({"op": 1, "id": 2**63}), d4002),
        ("unknown op", r({"op": 99}), CloseCode.UNKNOWN_OPCODE),
        ("negative op", r({"op": -1}), CloseCode.UNKNOWN_OPCODE),
        ("server op DISPATCH", r({"op": 0, "d": {}}), CloseCode.UNKNOWN_OPCODE),
        ("server op HELLO", r({"op": 10, "d": {}}), CloseCode.UNKNOWN_OPCODE),
        ("server op REPLY", r({"op": 13, "d": {}}), CloseCode.UNKNOWN_OPCODE),
        ("unknown op wins over bad d", r({"op": 77, "d": "junk"}), CloseCode.UNKNOWN_OPCODE),
        ("identify without d", r({"op": 2}), d4002),
        ("identify d null", r({"op": 2, "d": None}), d4002),
        ("identify token int", r({"op": 2, "d": {"token": 1}}), d4002),
        ("identify bad subscribe", r({"op": 2, "d": {"token": "t", "subscribe": "some"}}), d4002),
        ("identify bad client", r({"op": 2, "d": {"token": "t", "client": {"name": "x"}}}), d4002),
        ("heartbeat string", r({"op": 1, "d": "5"}), d4002),
        ("heartbeat negative", r({"op": 1, "d": -1}), d4002),
        ("presence unknown status", r({"op": 3, "d": {"status": "offline"}}), d4002),
        ("subscribe rooms not a list", r({"op": 4, "d": {"rooms": "1"}}), d4002),
        (
            "subscribe negative after_seq",
            r({"op": 4, "d": {"rooms": [{"room_id": "1", "after_seq": -1}]}}),
            d4002,
        ),
        ("resume seq missing", r({"op": 6, "d": {"token": "t", "session_id": "s"}}), d4002),
        (
            "send attachment id not a string",
            r({"op": 8, "d": {"room_id": "1", "content": "", "nonce": "n", "attachment_ids": [7]}}),
            d4002,
        ),
        (
            "resume rooms not a map",
            r({"op": 6, "d": {"token": "t", "session_id": "s", "seq": 1, "rooms": ["1"]}}),
            d4002,
        ),
        (
            "resume rooms bad room id",
            r({"op": 6, "d": {"token": "t", "session_id": "s", "seq": 1, "rooms": {"01": 1}}}),
            d4002,
        ),
        (
            "resume rooms negative seq",
            r({"op": 6, "d": {"token": "t", "session_id": "s", "seq": 1, "rooms": {"1": -1}}}),
            d4002,
        ),
        (
            "resume rooms seq a string",
            r({"op": 6, "d": {"token": "t", "session_id": "s", "seq": 1, "rooms": {"1": "2"}}}),
            d4002,
        ),
        (
            "send content int",
            r({"op": 8, "d": {"room_id": "1", "content": 5, "nonce": "n"}}),
            d4002,
        ),
        (
            "send encrypted epoch a string",
            r(
                {
                    "op": 8,
                    "d": {
                        "room_id": "1",
                        "nonce": "n",
                        "encrypted": {
                            "ciphertext": "a",
                            "nonce": "b",
                            "epoch": "1",
                            "sender_device": "c",
                            "signature": "d",
                        },
                    },
                }
            ),
            d4002,
        ),
        ("typing d array", r({"op": 12, "d": ["1"]}), d4002),
        # snowflakes: decimal strings, canonical, int64
        ("snowflake as number", r({"op": 12, "d": {"room_id": 1}}), d4002),
        ("snowflake not digits", r({"op": 12, "d": {"room_id": "12a"}}), d4002),
        ("snowflake negative", r({"op": 12, "d": {"room_id": "-1"}}), d4002),
        ("snowflake leading zero", r({"op": 12, "d": {"room_id": "012"}}), d4002),
        ("snowflake over int64", r({"op": 12, "d": {"room_id": str(2**63)}}), d4002),
        ("snowflake in list", r({"op": 5, "d": {"rooms": ["1", "x"]}}), d4002),
    ]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_malformed_frames_map_to_their_close_code(encoding: Encoding) -> None:
    codec = Codec(encoding)
    for name, data, code in _malformed(encoding):
        assert close_code_of(codec, data) == code, name


def test_msgpack_specific_malformations() -> None:
    codec = Codec(Encoding.MSGPACK)
    assert close_code_of(codec, b"\xc1") == CloseCode.DECODE_ERROR  # never-used byte
    assert close_code_of(codec, b"\xd4\x01\x00") == CloseCode.DECODE_ERROR  # ext type
    bin_token = b"\x82\xa2op\x02\xa1d\x81\xa5token\xc4\x01t"  # token as bin, not str
    assert close_code_of(codec, bin_token) == CloseCode.DECODE_ERROR
    assert close_code_of(codec, b"\xdf\xff\xff\xff\xff") == CloseCode.DECODE_ERROR  # huge map


def test_json_specific_malformations() -> None:
    codec = Codec(Encoding.JSON)
    assert close_code_of(codec, b"\xff\xfe") == CloseCode.DECODE_ERROR  # not UTF-8
    assert close_code_of(codec, "\ud800") == CloseCode.DECODE_ERROR  # lone surrogate
    deep = b'{"op":1,"d":' + b"[" * 5000 + b"]" * 5000 + b"}"
    assert close_code_of(Codec(Encoding.JSON, 1 << 20), deep) == CloseCode.DECODE_ERROR


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_oversized_frames_close_4502_before_parsing(encoding: Encoding) -> None:
    codec = Codec(encoding, max_frame_bytes=64)
    big = raw(encoding, {"op": 8, "d": {"room_id": "1", "content": "x" * 100, "nonce": "n"}})
    assert close_code_of(codec, big) == CloseCode.FRAME_TOO_LARGE
    assert close_code_of(codec, b"\xff" * 65) == CloseCode.FRAME_TOO_LARGE  # size comes first
    assert close_code_of(codec, "é" * 40) == CloseCode.FRAME_TOO_LARGE  # 80 bytes in UTF-8
    just_fits = raw(encoding, {"op": 1, "d": None, "t": "x" * 30})
    assert len(just_fits) <= 64
    codec.decode_client(just_fits)
    assert Codec(encoding).max_frame_bytes == 16 * 1024


def test_frame_limit_is_exact() -> None:
    frame = b'{"op":1,"d":null}'
    Codec(Encoding.JSON, max_frame_bytes=len(frame)).decode_client(frame)
    assert close_code_of(Codec(Encoding.JSON, len(frame) - 1), frame) == CloseCode.FRAME_TOO_LARGE


def test_negotiate() -> None:
    assert negotiate("1", "json") is Encoding.JSON
    assert negotiate("1", "msgpack") is Encoding.MSGPACK
    assert negotiate(None, None) is Encoding.JSON
    for version, encoding in [("2", "json"), ("1", "etf"), ("1", "")]:
        with pytest.raises(ProtocolError) as info:
            negotiate(version, encoding)
        assert info.value.close_code is CloseCode.UNSUPPORTED_VERSION


def test_protocol_error_reason_fits_a_close_frame() -> None:
    codec = Codec(Encoding.JSON)
    with pytest.raises(ProtocolError) as info:
        codec.decode_client(b'{"op":2,"d":{"token":"t","client":{"name":1,"version":"v"}}}')
    assert info.value.close_code is CloseCode.DECODE_ERROR
    assert 0 < len(info.value.reason.encode()) <= 123


# ---- properties -------------------------------------------------------------------------------


def _assert_decodes_or_contract_error(codec: Codec, data: bytes | str) -> None:
    try:
        frame = codec.decode_client(data)
    except ProtocolError as exc:
        assert int(exc.close_code) in CONTRACT_CODES
        assert exc.close_code in (
            CloseCode.DECODE_ERROR, CloseCode.UNKNOWN_OPCODE, CloseCode.FRAME_TOO_LARGE
        )  # fmt: skip
    else:
        assert frame.op in CLIENT_OPS


@settings(max_examples=400)
@given(data=st.binary(max_size=300), encoding=st.sampled_from(ENCODINGS))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes, encoding: Encoding) -> None:
    _assert_decodes_or_contract_error(Codec(encoding, max_frame_bytes=200), data)


@settings(max_examples=200)
@given(text=st.text(max_size=200))
def test_arbitrary_text_decodes_or_raises_protocol_error(text: str) -> None:
    _assert_decodes_or_contract_error(Codec(Encoding.JSON), text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
envelope_like = st.fixed_dictionaries(
    {"op": st.integers(min_value=-2, max_value=15) | json_values},
    optional={"d": json_values, "id": json_values, "s": json_values, "t": json_values},
)


@settings(max_examples=400)
@given(obj=envelope_like, encoding=st.sampled_from(ENCODINGS))
def test_structured_junk_decodes_or_raises_protocol_error(obj: Any, encoding: Encoding) -> None:
    try:
        data = raw(encoding, obj)
    except (OverflowError, TypeError):  # ints msgpack can't hold
        return
    _assert_decodes_or_contract_error(Codec(encoding), data)


def test_msgpack_uint_matches_msgspec() -> None:
    for n in [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]:
        assert msgpack_uint(n) == msgspec.msgpack.encode(n)
    with pytest.raises(ValueError):
        msgpack_uint(-1)


event_names = st.sampled_from(sorted(EVENT_PAYLOAD_TYPES)) | st.text(max_size=20)


@settings(max_examples=300)
@given(
    t=event_names,
    d=json_values,
    s=st.integers(min_value=0, max_value=2**63 - 1),
    encoding=st.sampled_from(ENCODINGS),
)
def test_spliced_dispatch_equals_normal_encoding(
    t: str, d: Any, s: int, encoding: Encoding
) -> None:
    codec = Codec(encoding)
    try:
        normal = codec.encode_dispatch(t, d, s)
    except (OverflowError, TypeError):  # ints msgpack can't hold
        return
    spliced = encode_dispatch_prefix(t, d, encoding).frame(s)
    assert spliced == normal  # byte-identical, so it decodes identically too
    assert codec.decode(spliced) == codec.decode(normal)
    assert DispatchEvent(t, d).frame(s, encoding) == normal


def test_dispatch_event_encodes_once_per_encoding() -> None:
    event = DispatchEvent("MESSAGE_DELETE", MessageDelete(room_id=S(1), seq=1, id=S(2)))
    first = event.template(Encoding.JSON)
    assert event.template(Encoding.JSON) is first
    assert event.template(Encoding.MSGPACK) is not first
    assert event.template(Encoding.MSGPACK) is event.template(Encoding.MSGPACK)
    codec = Codec(Encoding.JSON)
    assert codec.dispatch_template(event.t, event.d).frame(3) == event.frame(3, Encoding.JSON)


def test_server_only_ops_are_disjoint_from_client_ops() -> None:
    assert Op.REPLY in SERVER_OPS and Op.SEND in CLIENT_OPS
