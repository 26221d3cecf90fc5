"""loadtest/graphql_libs.py: every variant does the same work, and the report has its fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.graphql_libs import (
    LIBRARIES,
    OPERATIONS,
    PAGE,
    SAMPLES,
    USER_ID,
    Operation,
    Variants,
    main,
)


@pytest.fixture(scope="module")
def variants() -> Variants:
    return Variants()


def _op(name: str) -> Operation:
    return next(op for op in OPERATIONS if op.name == name)


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
async def test_all_variants_return_the_same_body(variants: Variants, op: Operation) -> None:
    runners = variants.runners()
    assert set(runners) == set(LIBRARIES)
    bodies = {lib: await runners[lib](op) for lib in LIBRARIES}
    # twice: the cached variants answer from their caches the second time
    again = {lib: await runners[lib](op) for lib in LIBRARIES}
    expected = bodies["graphql-core"]
    assert "errors" not in expected
    assert expected["data"]
    for lib in LIBRARIES:
        assert bodies[lib] == expected, lib
        assert again[lib] == expected, lib


async def test_bodies_are_the_real_answers(variants: Variants) -> None:
    send = await variants.ariadne(_op("sendMessage"))
    assert send == {"data": {"sendMessage": {"id": "901001", "seq": 1001}}}

    page = (await variants.ariadne(_op("messages")))["data"]["messages"]
    assert page["hasMore"] is True
    assert len(page["items"]) == PAGE
    assert page["items"][0] == {"id": "901000", "seq": 1000, "content": "message number 1000"}

    me = (await variants.graphql_core(_op("me+rooms")))["data"]
    assert me["me"] == {"id": str(USER_ID), "username": "bench", "status": "offline"}
    assert [r["name"] for r in me["rooms"]] == ["room-0", "room-1", "room-2"]


async def test_cached_variants_parse_and_validate_once(variants: Variants) -> None:
    op = _op("messages")
    await variants.graphql_core(op)
    await variants.ariadne_cached(op)
    doc = variants.pipeline._document(op.query)
    for _ in range(3):
        await variants.graphql_core(op)
        await variants.ariadne_cached(op)
    assert variants.pipeline._document(op.query) is doc
    assert variants._ariadne_docs[op.query] is variants._cached_parse(None, op.data)


def test_report_has_the_documented_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "sub" / "graphql_libs.json"
    assert main(["--seconds", "0.01", "--out", str(out)]) == 0
    report = json.loads(out.read_text())

    assert report["benchmark"] == "graphql_libs"
    assert "process_time" in report["method"]
    assert report["python"].split()[-1].count(".") == 2
    assert set(report["versions"]) >= {"graphql-core", "ariadne"}
    assert report["versions"]["graphql-core"].startswith("3.")

    runs = report["runs"]
    assert {(r["library"], r["operation"]) for r in runs} == {
        (lib, op.name) for lib in LIBRARIES for op in OPERATIONS
    }
    for r in runs:
        assert r["ops_per_cpu_s"] > 0
        assert r["us_per_op"] == pytest.approx(1e6 / r["ops_per_cpu_s"], rel=0.01)
        assert len(r["samples"]) == SAMPLES
        assert min(r["samples"]) <= r["ops_per_cpu_s"] <= max(r["samples"])

    assert set(report["ratio"]) == {op.name for op in OPERATIONS}
    for ratios in report["ratio"].values():
        assert set(ratios) == {f"graphql-core/{lib}" for lib in LIBRARIES[1:]}
        assert all(v > 0 for v in ratios.values())

    table = capsys.readouterr().out
    assert "ops/CPU-s" in table and "ariadne-cached" in table and str(out) in table
