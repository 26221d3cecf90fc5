"""gateway/gctune.py: objects of new connections get frozen; heavy churn thaws once."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway import gctune


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_freezes_after_new_connections_only() -> None:
    freezer = gctune.GcFreezer()
    gc.unfreeze()
    assert freezer.poll(0, 0) == ""
    assert freezer.poll(10, 0) == "frozen"
    assert gc.get_freeze_count() > 0
    assert freezer.poll(10, 0) == ""  # nothing new since


def test_thaws_and_collects_after_heavy_churn() -> None:
    freezer = gctune.GcFreezer()
    assert freezer.poll(3000, 0) == "frozen"
    assert freezer.poll(3000, 900) == ""  # under 1000 closed: not worth a full collection
    assert freezer.poll(3000, 2000) == "thawed"
    assert freezer.poll(3000, 2500) == ""  # counted from the last thaw


def test_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCHAT_GC_TUNE", "0")
    before = gc.get_threshold()
    gctune.tune()
    assert gc.get_threshold() == before
    assert gctune.GcFreezer().poll(10, 0) == ""


def test_tune_raises_the_young_threshold() -> None:
    gctune.tune(freeze=False)
    assert gc.get_threshold() == gctune.THRESHOLDS
