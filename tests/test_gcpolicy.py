"""daemon/gcpolicy.py: survivors are frozen (full collections skip them) and every
collection's pause is timed; the policy's task ends with the daemon's stop event."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from prometheus_client import REGISTRY

from daemon import gcpolicy


def _pauses(generation: int) -> float:
    value = REGISTRY.get_sample_value(
        "emon_gc_pause_seconds_count", {"generation": str(generation)}
    )
    return value or 0.0


async def test_survivors_are_frozen_and_collections_timed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gcpolicy, "GC_FREEZE_INTERVAL_SECONDS", 0.01)
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(gcpolicy.freeze_periodically(stop), name="test-gc-freeze")
        await asyncio.sleep(0)
        survivors = [[i] for i in range(5_000)]  # lists are tracked by the collector
        frozen_before = gc.get_freeze_count()
        await asyncio.sleep(0.1)
        assert gc.get_freeze_count() >= frozen_before + len(survivors)
        assert REGISTRY.get_sample_value("emon_gc_frozen_objects") == gc.get_freeze_count()
        timed_before = _pauses(2)
        gc.collect()
        assert _pauses(2) == timed_before + 1
        stop.set()
        await asyncio.wait_for(task, 5)
        assert gcpolicy._time_collection not in gc.callbacks
        assert survivors[-1] == [4_999]
    finally:
        gc.unfreeze()  # the rest of the test process is not the daemon's


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_young_cycles_are_freed_not_frozen_and_the_daily_refreeze_frees_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gcpolicy, "GC_FREEZE_INTERVAL_SECONDS", 0.01)
    monkeypatch.setattr(gcpolicy, "GC_REFREEZE_INTERVAL_SECONDS", 3600.0)
    stop = asyncio.Event()
    try:
        task = asyncio.create_task(gcpolicy.freeze_periodically(stop), name="test-gc-freeze")
        # Garbage when the next freeze comes: collected first, so never frozen.
        young = _Cycle()
        young_ref = weakref.ref(young)
        del young
        await asyncio.sleep(0.1)
        assert young_ref() is None
        # Frozen while alive, then dropped: only the daily full collection frees it.
        alive = _Cycle()
        alive_ref = weakref.ref(alive)
        await asyncio.sleep(0.1)
        del alive
        gc.collect()
        assert alive_ref() is not None  # frozen: the automatic collections skip it
        monkeypatch.setattr(gcpolicy, "GC_REFREEZE_INTERVAL_SECONDS", 0.0)
        stop.set()
        await asyncio.wait_for(task, 5)
        stop.clear()
        task = asyncio.create_task(gcpolicy.freeze_periodically(stop), name="test-gc-refreeze")
        await asyncio.sleep(0.1)
        assert alive_ref() is None
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        gc.unfreeze()


def test_start_up_freeze_sets_the_daemons_thresholds() -> None:
    before = gc.get_threshold()
    try:
        gcpolicy.freeze_survivors()
        assert gc.get_threshold() == gcpolicy.GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
