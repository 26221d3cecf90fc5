"""Opcodes, close codes, snowflakes and the token bucket."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.close_codes import MAX_REASON_BYTES, CloseCode, is_resumable_close, truncate_reason
from protocol.opcodes import CLIENT_OPS, SERVER_OPS, Op
from protocol.ratelimit import TokenBucket
from protocol.snowflake import (
    EPOCH_MS,
    INT64_MAX,
    MAX_SEQUENCE,
    Snowflake,
    SnowflakeGenerator,
    parse_snowflake,
    snowflake_at,
    snowflake_sequence,
    snowflake_timestamp_ms,
    snowflake_worker,
)


def test_opcodes_match_the_contract() -> None:
    assert [(op.value, op.name) for op in Op] == [
        (0, "DISPATCH"), (1, "HEARTBEAT"), (2, "IDENTIFY"), (3, "PRESENCE_UPDATE"),
        (4, "SUBSCRIBE"), (5, "UNSUBSCRIBE"), (6, "RESUME"), (7, "RECONNECT"), (8, "SEND"),
        (9, "INVALID_SESSION"), (10, "HELLO"), (11, "HEARTBEAT_ACK"), (12, "TYPING"),
        (13, "REPLY"),
    ]  # fmt: skip
    assert set(Op) == CLIENT_OPS | SERVER_OPS
    assert not CLIENT_OPS & SERVER_OPS


def test_close_code_table() -> None:
    assert {c.value for c in CloseCode} == {
        1000,
        1001,
        4000,
        4001,
        4002,
        4003,
        4004,
        4005,
        4008,
        4010,
        4011,
        4501,
        4502,
        4503,
        4504,
    }
    for code in CloseCode:
        assert code.description
        if 4000 <= code <= 4499:
            assert code.resumable and not code.terminal
        elif 4500 <= code <= 4999:
            assert not code.resumable and code.terminal
        else:
            assert not code.resumable and not code.terminal
    assert CloseCode(4001) is CloseCode.HEARTBEAT_TIMEOUT
    assert int(CloseCode.HEARTBEAT_TIMEOUT) == 4001


@pytest.mark.parametrize(
    ("code", "resumable"),
    [(None, True), (1000, False), (1001, False), (1006, True), (4000, True), (4499, True),
     (4500, False), (4999, False), (3000, True)],
)  # fmt: skip
def test_is_resumable_close(code: int | None, resumable: bool) -> None:
    assert is_resumable_close(code) is resumable


def test_truncate_reason_keeps_utf8_whole() -> None:
    assert truncate_reason("short") == "short"
    cut = truncate_reason("é" * 100)
    assert len(cut.encode()) <= MAX_REASON_BYTES
    assert cut == "é" * (MAX_REASON_BYTES // 2)


# ---- snowflakes -------------------------------------------------------------------------------


def test_snowflake_layout() -> None:
    gen = SnowflakeGenerator(worker_id=7)
    now = EPOCH_MS + 123_456
    first = gen.next_id(now)
    assert snowflake_timestamp_ms(first) == now
    assert snowflake_worker(first) == 7
    assert snowflake_sequence(first) == 0
    assert snowflake_sequence(gen.next_id(now)) == 1
    assert snowflake_at(now) <= first < snowflake_at(now + 1)
    assert isinstance(first, Snowflake) and isinstance(first, int)


def test_snowflake_generator_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        SnowflakeGenerator(worker_id=1024)
    with pytest.raises(ValueError):
        SnowflakeGenerator(worker_id=0).next_id(EPOCH_MS - 1)


def test_snowflake_borrows_from_the_future_when_a_millisecond_is_full() -> None:
    gen = SnowflakeGenerator(worker_id=1)
    now = EPOCH_MS + 10
    ids = [gen.next_id(now) for _ in range(MAX_SEQUENCE + 2)]
    assert ids == sorted(set(ids))
    assert snowflake_timestamp_ms(ids[-1]) == now + 1
    assert snowflake_sequence(ids[-1]) == 0


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=300))
def test_snowflakes_monotonic_and_unique_under_clock_regression(offsets: list[int]) -> None:
    gen = SnowflakeGenerator(worker_id=3)
    ids = [gen.next_id(EPOCH_MS + off) for off in offsets]  # the clock jumps back and forth
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert all(0 < i <= INT64_MAX or i == 0 for i in ids)


@pytest.mark.parametrize("text", ["0", "1", "123456789", str(INT64_MAX)])
def test_parse_snowflake_accepts_canonical(text: str) -> None:
    assert parse_snowflake(text) == int(text)


@pytest.mark.parametrize(
    "text", ["", "-1", "+1", "01", " 1", "1 ", "1.0", "1e3", "abc", "١٢", "²", str(INT64_MAX + 1),
             "9" * 20]
)  # fmt: skip
def test_parse_snowflake_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_snowflake(text)


# ---- token bucket -----------------------------------------------------------------------------


def test_token_bucket_burst_then_rate() -> None:
    bucket = TokenBucket(120, 60.0, 20, now=0.0)
    assert all(bucket.try_acquire(0.0) for _ in range(20))
    assert not bucket.try_acquire(0.0)
    assert bucket.retry_after(0.0) == pytest.approx(0.5)
    assert bucket.try_acquire(0.5)  # 2 tokens per second
    assert not bucket.try_acquire(0.5)
    assert bucket.tokens(1000.0) == 20  # never above the burst


def test_token_bucket_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(1, 1.0, 2, now=100.0)
    assert bucket.try_acquire(100.0) and bucket.try_acquire(100.0)
    assert not bucket.try_acquire(50.0)
    assert bucket.tokens(50.0) == 0
    assert bucket.try_acquire(101.0)


def test_token_bucket_validates() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1.0, 1, now=0.0)
