"""Smoke of the Kafka consume benchmark (loadtest/kafka_consume.py) on the real Kafka: a short
run counts the gateways' reader's fetch requests and CPU per record of records really appended."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.kafka_consume import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_kafka_consume_benchmark_smoke(tmp_path: Path, kafka_bootstrap: str) -> None:
    out = tmp_path / "kafka_consume.json"
    main(
        ["--rate", "50", "--seconds", "2", "--runs", "4:100", "--bootstrap", kafka_bootstrap,
         "--out", str(out)]
    )  # fmt: skip
    result = json.loads(out.read_text())
    assert result["scenario"] == "kafka_consume"
    (run,) = result["runs"]
    assert (run["partitions"], run["fetch_max_wait_ms"]) == (4, 100)
    assert run["records_per_s"] > 20  # about 50 a second were produced
    assert run["fetch_requests_per_s"] > 0 and run["consumer_cpu_ms_per_record"] > 0
    assert run["latency_ms"]["count"] >= 50  # every record of the 2 s window, timed
