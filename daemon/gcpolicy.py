"""Keep CPython's full garbage collections from stalling the event loop.

A full (generation 2) collection walks every tracked object. The daemon holds hundreds of
thousands of long-lived ones (the config's zones and rules, the engine's per-device
history), and nothing of them is garbage: measured on the 2-core machine with a
10,000-zone config and 5,000 devices x 10 fixes, 19 full collections during 50,000 fixes,
each holding the loop ~1 s (418,000 objects), i.e. a one-second gap in ingest and alerting
(bench: the p99 publish-to-alert). `gc.freeze()` moves every object alive now into the
permanent generation, which collections skip: after start-up, and then every
GC_FREEZE_INTERVAL_SECONDS for what the engine has accumulated since, so a collection
walks only the objects made since (measured with a freeze per 5,000 fixes: 1 collection
of 0.1-0.24 s in the same run instead of 19 of ~1 s).

The price: a reference cycle frozen while alive and dropped later is never collected by
the automatic collections (objects without cycles are freed by reference counting whether
frozen or not). Two things bound it: each freeze first collects the young generations
(cheap: only what was made since the last automatic collection), so cyclic garbage made
since is freed, not frozen; and every GC_REFREEZE_INTERVAL_SECONDS (a day) the permanent
generation is unfrozen, collected in full and frozen again, so what was frozen alive and
died since is freed then: one full pause a day (seconds at 50,000 devices, timed in
`emon_gc_pause_seconds{generation="2"}`) instead of one every few seconds under load. The
measuring run found 0 such objects (`gc.unfreeze()` then `gc.collect()`);
`emon_gc_frozen_objects` shows the permanent generation, which should follow the fleet's
size and drop back at each daily re-freeze if anything leaked.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

from prometheus_client import Gauge, Histogram

_LOGGER = logging.getLogger(__name__)

# Objects that survived this long are frozen (see the module docstring). A full collection
# walks what accumulated since the last freeze: at 60 s the bench's drain (~1,900 fixes/s)
# still saw 4 full collections of 0.35-0.5 s; shorter freezes the live objects of a moment
# more often (a cycle among them is then never collected: see the docstring).
GC_FREEZE_INTERVAL_SECONDS = 10.0
# The collector's thresholds (generation 0 allocations, then collections of the younger
# generation) for `emon run`. CPython's (700, 10, 10) ran 14 full collections of 0.1-1 s
# (3.4-3.9 s in all) in a 40,000-fix drain of 50,000 new devices at 10,000 zones: after a
# freeze the collector's "a quarter of the long-lived objects are new" test passes at once,
# so every tenth young collection became a full one. With (5,000, 10, 100), measured in the
# same drain (bench_e2e, 3 runs each): no full collection, young ones <= 30 ms each, 1.0-1.1
# s in all, and daemon CPU per stored ping 288-298 us instead of 323-372. (20,000, 20, 100)
# paused 0.1-0.3 s per generation-1 collection: too long for the p99.
GC_THRESHOLDS = (5_000, 10, 100)
# The whole heap is collected once this often (unfreeze, full collection, freeze): frees any
# cycle that was frozen alive and died since (see the docstring), at one full pause a day.
GC_REFREEZE_INTERVAL_SECONDS = 24 * 3600.0

GC_PAUSE_SECONDS = Histogram(
    "emon_gc_pause_seconds",
    "Pauses of the garbage collector (the event loop waits), by generation",
    ["generation"],
    buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
)
GC_FROZEN_OBJECTS = Gauge(
    "emon_gc_frozen_objects", "Objects in the permanent generation (gc.freeze), never scanned"
)
GC_FROZEN_OBJECTS.set_function(gc.get_freeze_count)

_PAUSE_CHILDREN = tuple(GC_PAUSE_SECONDS.labels(str(g)) for g in range(3))
_started_at = 0.0


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    global _started_at  # one collection at a time (the GIL): one start time
    if phase == "start":
        _started_at = time.perf_counter()
    else:
        _PAUSE_CHILDREN[min(int(info["generation"]), 2)].observe(time.perf_counter() - _started_at)


def freeze_survivors() -> None:
    """Collect once (what is garbage now is freed), then freeze everything alive: at
    start-up, before ingest begins (the one full collection is paid then)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def freeze_periodically(stop: asyncio.Event) -> None:
    """The daemon's GC policy, as a task: time every collection, freeze the start-up heap
    and then every GC_FREEZE_INTERVAL_SECONDS what survived, until `stop` is set."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)
    _LOGGER.info("garbage collector: %s start-up objects frozen", gc.get_freeze_count())
    refreeze_at = time.monotonic() + GC_REFREEZE_INTERVAL_SECONDS
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), GC_FREEZE_INTERVAL_SECONDS)
            except TimeoutError:
                if time.monotonic() >= refreeze_at:
                    refreeze_at = time.monotonic() + GC_REFREEZE_INTERVAL_SECONDS
                    frozen = gc.get_freeze_count()
                    gc.unfreeze()
                    freed = gc.collect()
                    gc.freeze()
                    _LOGGER.info(
                        "garbage collector: daily full collection freed %d objects; "
                        "%d frozen (were %d)", freed, gc.get_freeze_count(), frozen,
                    )
                else:
                    # The young generations only (not a full collection, which is what
                    # this avoids): cyclic garbage made since is freed, not frozen.
                    gc.collect(1)
                    gc.freeze()
    finally:
        gc.callbacks.remove(_time_collection)
