"""Benchmark: memory of the pure core's per-device state (target ≤ 2 KB per device).

    .venv/bin/python bench/bench_memory.py                  # 2,000 devices, 10 and 130 fixes
    .venv/bin/python bench/bench_memory.py --devices 500 --by-line 15

The engine (pure core, in process) is fed `fixes` in-order GNSS fixes per device, one a
minute, walking a few metres each, and `tracemalloc` reports what the engine's state grew
by, per device: after 10 fixes (a device that has just started) and after 130 fixes (its
late-fix history of HISTORY_FIXES = 128 full). `--by-line N` prints the N source lines
that hold the most, to show what is left. Same measurement as bench_e2e's memory phase
(`engine_memory_per_device`); the daemon-process RSS per device is bench_e2e's sustained
phase (`bench_e2e.py --quick --skip limits,latency,replay --zones 100`).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_e2e import AREA_LAT, AREA_LON, write_config

from daemon.configfiles import load_config
from geofence.engine import Engine
from geofence.observation import FixSource, LocationFix
from simulators.load import device_id

FIX_INTERVAL_SECONDS = 60
STEP_DEGREES = 2e-5  # ~2 m per fix at this latitude
# Two frames: a dataclass's generated __init__ shows as "<string>", its caller names it.
TRACE_FRAMES = 2


def measure(devices: int, fixes_per_device: int, by_line: int, echo: bool = True) -> float:
    """Bytes the engine's state grew by per device after `fixes_per_device` fixes each."""
    with tempfile.TemporaryDirectory(prefix="emon-bench-mem-") as tmp:
        write_config(Path(tmp), devices, 100, 1)
        config = load_config(Path(tmp)).core
    rng = random.Random(2)
    start = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    positions = [[rng.uniform(*AREA_LON), rng.uniform(*AREA_LAT)] for _ in range(devices)]
    # One id string per device, as the wire decoder hands the engine (interned ids).
    ids = [device_id(index) for index in range(1, devices + 1)]
    engine = Engine(config)
    tracemalloc.start(TRACE_FRAMES)
    before = tracemalloc.take_snapshot()
    cpu_before = time.process_time()
    for k in range(fixes_per_device):
        ts = start + timedelta(seconds=FIX_INTERVAL_SECONDS * k)
        for index, position in enumerate(positions):
            position[0] += rng.uniform(-STEP_DEGREES, STEP_DEGREES)
            position[1] += rng.uniform(-STEP_DEGREES, STEP_DEGREES)
            fix = LocationFix(ids[index], ts, position[1], position[0], 8.0,
                              FixSource.GNSS, ts, battery_pct=80.0)
            engine.observe(fix, ts)
    cpu_s = time.process_time() - cpu_before
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    per_device = grown / devices
    if not echo:
        return per_device
    print(f"engine state (tracemalloc): {per_device:,.0f} bytes/device after "
          f"{fixes_per_device} fixes each ({devices:,} devices; "
          f"{cpu_s / (devices * fixes_per_device) * 1e6:,.0f} µs CPU per fix under tracemalloc)")
    if by_line:
        for stat in after.compare_to(before, "traceback")[:by_line]:
            where = " <- ".join(f"{Path(frame.filename).name}:{frame.lineno}"
                                for frame in reversed(stat.traceback))
            print(f"    {stat.size_diff / devices:>8,.0f} B/device "
                  f"{stat.count_diff / devices:>7,.1f} blocks  {where}")
    return per_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2_000)
    parser.add_argument("--fixes", type=int, nargs="+", default=[10, 130])
    parser.add_argument("--by-line", type=int, default=0, metavar="N",
                        help="print the N source lines holding the most memory")
    args = parser.parse_args()
    one, five, _ = os.getloadavg()
    print(f"bench_memory: {args.devices:,} devices, load average {one:.1f} (5 min {five:.1f})")
    for fixes in args.fixes:
        measure(args.devices, fixes, args.by_line)


if __name__ == "__main__":
    main()
