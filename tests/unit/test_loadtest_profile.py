"""loadtest.profile: stages read leaf-first, the CPU budget, the flame graph, and py-spy on a
real process."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from loadtest.profile import (
    OTHER,
    Profiler,
    budget,
    flamegraph_svg,
    parse_collapsed,
    stage_of,
    stages,
    write_profile,
)

LOOP = "run_forever (asyncio/base_events.py:608);_run (asyncio/events.py:84)"


def test_stage_is_the_innermost_known_frame() -> None:
    send = f"{LOOP};run (gateway/connection.py:170);_send_message (gateway/connection.py:420)"
    assert stage_of(send) == "gateway SEND"
    # the Store call made while serving the SEND is the Store's
    assert stage_of(send + ";insert_messages (shardchat/adapters/pg_store.py:650)") == (
        "store write"
    )
    consume = f"{LOOP};_run (gateway/consumer.py:190);_route (gateway/consumer.py:210)"
    assert stage_of(consume) == "Kafka consume"
    assert stage_of(consume + ";decode_event (chat_core/models.py:88)") == "decode"
    assert stage_of(consume + ";on_events (gateway/rooms.py:150)") == "fan-out"
    sweep = f"{LOOP};_sweep_loop (gateway/server.py:470);to_blob (gateway/session.py:190)"
    assert stage_of(sweep) == "session bookkeeping"
    assert stage_of(f"{LOOP};data_received (websockets/asyncio/connection.py:1000)") == (
        "heartbeats and frames in"
    )
    assert stage_of("<module> (x.py:1);f (x.py:2)") == OTHER
    # a library's own task: by library (aiokafka's producer sender, its fetcher, its connection)
    sender = f"{LOOP};_send_produce_req (aiokafka/producer/sender.py:1)"
    assert stage_of(sender + ";send (aiokafka/conn.py:2)") == "outbox publish"
    fetcher = f"{LOOP};_proc_fetch_request (aiokafka/consumer/fetcher.py:1)"
    assert stage_of(fetcher + ";send (aiokafka/conn.py:2)") == "Kafka consume"
    assert stage_of(f"{LOOP};_read (aiokafka/conn.py:3)") == "Kafka client I/O (both ways)"
    assert stage_of(f"{LOOP};_publish_loop (chat_core/outbox.py:1);send (aiokafka/conn.py:2)") == (
        "outbox publish"
    )


def test_parse_and_budget_spread_the_cpu_by_share() -> None:
    text = "a (x.py:1);_send_message (gateway/connection.py:1) 30\n" + (
        "a (x.py:1);fanout (gateway/fanout.py:2) 70\nnot a line\n"
    )
    stacks = parse_collapsed(text)
    assert sum(stacks.values()) == 100
    by_stage = stages(stacks)
    assert by_stage == {"fan-out": 70, "gateway SEND": 30}
    rows = {r["stage"]: r for r in budget(by_stage, cpu_s=10.0, acks=1000, deliveries=10_000)}
    assert rows["fan-out"]["cpu_s"] == 7.0
    assert rows["fan-out"]["cpu_ms_per_ack"] == 7.0
    assert rows["gateway SEND"]["cpu_us_per_delivery"] == 300.0


def test_flamegraph_is_valid_svg_with_every_wide_frame(tmp_path: Path) -> None:
    # a label cut to its box's width must not cut an escaped entity (<, &) in two
    stacks = Counter({"main (a.py:1);work (a.py:2)": 90, "main (a.py:1);<b> & c (a.py:3)": 10})
    stacks["main (a.py:1);" + "<&" * 200 + " (a.py:9)"] = 3
    svg = flamegraph_svg(stacks, "t")
    root = ET.fromstring(svg)  # well-formed, escaped
    titles = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert any(t.startswith("work (a.py:2) (90 samples, 87.4%)") for t in titles)
    assert any("&" in t and "<b>" in t for t in titles)
    body = write_profile({1: stacks}, tmp_path, "p", cpu_s=1.0, acks=10, deliveries=100)
    assert (tmp_path / "p.svg").stat().st_size > 0 and body["samples"] == 103
    assert (tmp_path / "p.json").read_text().startswith("{")


def test_py_spy_samples_a_real_process(tmp_path: Path) -> None:
    busy = subprocess.Popen(
        [sys.executable, "-c", "import time\nwhile True:\n    sum(range(10000))\n"]
    )
    try:
        prof = Profiler([busy.pid], seconds=1.0, rate=200)
        prof.start()
        samples = prof.finish()
    finally:
        busy.kill()
        busy.wait()
    if not samples:
        pytest.fail("py-spy returned no samples (ptrace not permitted?)")
    assert sum(samples[busy.pid].values()) > 20
    assert any("<module>" in stack for stack in samples[busy.pid])
