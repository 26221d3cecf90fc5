import msgspec

from loadtest.report import BenchResult, Latency, Timeline, build_result, write_json, write_plot


def test_latency_percentiles_of_a_known_distribution() -> None:
    lat = Latency()
    for ms in range(1, 1001):  # 1 .. 1000 ms, uniform
        lat.record_ms(ms)
    s = lat.summary()
    assert s["count"] == 1000
    assert abs(s["p50"] - 500) <= 1
    assert abs(s["p99"] - 990) <= 2
    assert abs(s["max"] - 1000) <= 1


def test_latency_survives_encode_and_merge() -> None:
    a, b = Latency(), Latency()
    for _ in range(100):
        a.record_ms(1.0)
        b.record_ms(9.0)
    merged = Latency.decode(a.encode())
    merged.merge(Latency.decode(b.encode()))
    assert merged.count == 200
    assert merged.percentile_ms(25) < 1.1
    assert merged.percentile_ms(75) > 8.9


def test_result_json_has_the_one_schema(tmp_path) -> None:
    lat = Latency()
    tl = Timeline(start=0.0)
    for i in range(30):
        tl.sent(now=i / 10)
        tl.delivered(2.0 + i, now=i / 10)
        lat.record_ms(2.0 + i)
    result = build_result(
        "e2e",
        started_at="2026-01-01T00:00:00Z",
        duration_s=3.0,
        params={"connections": 10},
        counters={"sent": 30, "delivered": 30},
        latency=lat,
        timeline=tl,
    )
    path = write_json(result, tmp_path / "r.json")
    back = msgspec.json.decode(path.read_bytes(), type=BenchResult)
    assert back.scenario == "e2e"
    assert back.counters["lost"] == 0 and back.counters["duplicated"] == 0
    assert back.throughput["delivered_per_s"] == 10.0
    assert [p.t for p in back.timeline] == [0, 1, 2]
    assert sum(p.delivered for p in back.timeline) == 30
    assert back.latency_ms["p50"] > 0
    png = write_plot(back, lat, tmp_path / "r.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
