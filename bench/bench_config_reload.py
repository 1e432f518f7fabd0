"""Benchmark: how long a hot reload of a config with 10,000 zones takes, and what it costs
the pings arriving meanwhile.

    .venv/bin/python bench/bench_config_reload.py [--zones 10000] [--rounds 3]

A config directory is generated in a temporary directory: one district (inclusion), one
home per subject (inclusion) and the rest exclusion zones, 16-vertex circles of 40-150 m
scattered over Shenzhen, in files of 1,000 features, half of them in GCJ-02 (so the datum
conversion is paid), every zone used by some subject (so the checker's warnings do not
dominate). Subjects get 1 home and about 9 exclusion zones each.

Measured, each the best of `--rounds` (least disturbed by other load on a shared box):

* load_config: read, validate (pydantic), check (geometry, cross-file), compile the
  CoreConfig (projection, prepared geometries, STRtree);
* reload: the same through `load_attempt`, as the reloader does it (plus a stat stamp
  before and after, and re-reading the files to prove the version matches the bytes);
* swap: `Pipeline.swap_config`, the only part that runs between two messages;
* pings during a reload: an event-loop task evaluating pings (against the 10k-zone config)
  while the reload runs in its worker thread, as in the daemon. Reported: pings/s during
  the reload vs. idle (the ratio) and the longest event-loop stall (a ping can wait that
  long; the GIL is shared with the loading thread).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.configfiles import LoadedConfig, load_config
from daemon.pipeline import Pipeline
from daemon.reload import load_attempt
from geofence.datum import Datum

DEFAULT_ZONES = 10_000
DEFAULT_ROUNDS = 3
FEATURES_PER_FILE = 1_000
EXCLUSIONS_PER_SUBJECT = 9
CIRCLE_VERTICES = 16
EARTH_RADIUS_M = 6_371_008.8
# Shenzhen, WGS-84 (lon_min, lat_min, lon_max, lat_max): inside the region bbox below.
AREA = (113.80, 22.45, 114.40, 22.75)
REGION_BBOX = [113.70, 22.30, 114.70, 22.90]
# GCJ-02 is ~300-600 m off WGS-84 around Shenzhen: shifting the generated WGS-84 points by
# this much keeps the converted zones in the region. The exact offset does not matter here.
GCJ_SHIFT_DEG = (0.0049, -0.0027)
PINGS_PER_YIELD = 50  # the ping task yields to the loop like an MQTT reader between messages


def _circle(lon: float, lat: float, radius_m: float) -> list[list[float]]:
    ring = []
    for k in range(CIRCLE_VERTICES):
        angle = 2 * math.pi * k / CIRCLE_VERTICES
        d_lat = math.degrees(radius_m * math.sin(angle) / EARTH_RADIUS_M)
        d_lon = math.degrees(
            radius_m * math.cos(angle) / (EARTH_RADIUS_M * math.cos(math.radians(lat)))
        )
        ring.append([round(lon + d_lon, 7), round(lat + d_lat, 7)])
    ring.append(ring[0])
    return ring


def generate(directory: Path, zones: int, seed: int = 7) -> dict[str, int]:
    """Write a valid config with `zones` zones; return its counts."""
    rng = random.Random(seed)
    subjects = max(1, (zones - 1) // (1 + EXCLUSIONS_PER_SUBJECT))
    exclusions = zones - 1 - subjects
    features: list[dict[str, Any]] = []

    def add(zone_id: str, kind: str, ring: list[list[float]]) -> None:
        features.append({
            "type": "Feature",
            "properties": {"id": zone_id, "kind": kind},
            "geometry": {"type": "Polygon", "coordinates": [ring]},
        })

    lon0, lat0, lon1, lat1 = AREA
    district = [[lon0, lat0], [lon1, lat0], [lon1, lat1], [lon0, lat1], [lon0, lat0]]
    add("district", "inclusion", district)
    homes = []
    for s in range(subjects):
        centre = (rng.uniform(lon0 + 0.01, lon1 - 0.01), rng.uniform(lat0 + 0.01, lat1 - 0.01))
        homes.append(centre)
        add(f"home-{s:05d}", "inclusion", _circle(*centre, rng.uniform(40, 80)))
    for x in range(exclusions):
        centre = (rng.uniform(lon0 + 0.01, lon1 - 0.01), rng.uniform(lat0 + 0.01, lat1 - 0.01))
        # Keep exclusions away from every home is not needed: overlaps only warn.
        add(f"x-{x:05d}", "exclusion", _circle(*centre, rng.uniform(40, 150)))

    (directory / "zones").mkdir(parents=True)
    for file_index, start in enumerate(range(0, len(features), FEATURES_PER_FILE)):
        chunk = features[start:start + FEATURES_PER_FILE]
        datum = Datum.GCJ02 if file_index % 2 else Datum.WGS84
        if datum is Datum.GCJ02:
            dx, dy = GCJ_SHIFT_DEG
            for feature in chunk:
                for ring in feature["geometry"]["coordinates"]:
                    for position in ring:
                        position[0] = round(position[0] + dx, 7)
                        position[1] = round(position[1] + dy, 7)
        name = f"zones-{file_index:02d}.{'gcj02' if datum is Datum.GCJ02 else 'wgs84'}.geojson"
        body = {"type": "FeatureCollection", "datum": datum.value, "features": chunk}
        (directory / "zones" / name).write_text(json.dumps(body), encoding="utf-8")

    lines = ["officers:", '  - {id: off-1, name: "Officer 1"}', "subjects:"]
    for s in range(subjects):
        mine = range(s * EXCLUSIONS_PER_SUBJECT, min((s + 1) * EXCLUSIONS_PER_SUBJECT, exclusions))
        refs = ", ".join(f"{{zone: x-{x:05d}}}" for x in mine)
        lines += [
            f"  - id: s{s:05d}", "    officer: off-1",
            f"    devices: [{{id: tag-{s:05d}, kind: wearable}}]",
            f"    home_zone: home-{s:05d}", "    permitted_zone: district",
            f"    exclusion_zones: [{refs}]",
        ]
    leftover = range(subjects * EXCLUSIONS_PER_SUBJECT, exclusions)
    if len(leftover) > 0:  # give the remainder to the last subject
        extra = ", ".join(f"{{zone: x-{x:05d}}}" for x in leftover)
        lines[-1] = lines[-1][:-1] + ", " + extra + "]"
    (directory / "subjects.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / "settings.yaml").write_text(
        f"region: {{name: Shenzhen, bbox: {REGION_BBOX}}}\n", encoding="utf-8"
    )
    (directory / "schedules.yaml").write_text("schedules: {}\n", encoding="utf-8")
    return {"zones": len(features), "subjects": subjects, "exclusions": exclusions}


def best_of(rounds: int, fn: Callable[[], Any]) -> tuple[float, list[float], float, Any]:
    """(best wall s, all wall s, best CPU s of this process, last result)."""
    times, cpu, result = [], [], None
    for _ in range(rounds):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return min(times), times, min(cpu), result


def _pings(loaded: LoadedConfig, count: int, seed: int = 11) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    devices = sorted(loaded.core.devices)
    base = datetime.now(UTC) - timedelta(hours=2)
    lon0, lat0, lon1, lat1 = AREA
    out = []
    for i in range(count):
        device = devices[i % len(devices)]
        payload = {"ts": (base + timedelta(seconds=i // len(devices))).isoformat(),
                   "lat": rng.uniform(lat0, lat1), "lon": rng.uniform(lon0, lon1), "acc": 10.0}
        out.append((f"emon/v1/devices/{device}/location", json.dumps(payload).encode()))
    return out


async def pings_during(
    pipeline: Pipeline, pings: list[tuple[str, bytes]], busy: Callable[[], Any] | None
) -> tuple[float, float, float]:
    """(pings/s, longest loop stall in s, elapsed s): pings evaluated on the event loop while
    `busy` runs in a worker thread (None: for as long as the pings last, idle)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    handled = 0
    stall = 0.0

    async def evaluate() -> None:
        nonlocal handled
        index = 0
        while not done.is_set():
            topic, payload = pings[index % len(pings)]
            pipeline.handle(topic, payload, datetime.now(UTC))
            handled += 1
            index += 1
            if busy is None and index >= len(pings):
                done.set()
            if handled % PINGS_PER_YIELD == 0:
                await asyncio.sleep(0)

    async def watch_stalls() -> None:
        nonlocal stall
        while not done.is_set():
            before = loop.time()
            await asyncio.sleep(0.001)
            stall = max(stall, loop.time() - before - 0.001)

    started = loop.time()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(evaluate(), name="bench-pings")
        tasks.create_task(watch_stalls(), name="bench-stalls")
        if busy is not None:
            await asyncio.to_thread(busy)
            done.set()
    elapsed = loop.time() - started
    return handled / elapsed, stall, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zones", type=int, default=DEFAULT_ZONES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="emon-bench-config-") as tmp:
        directory = Path(tmp) / "config"
        counts = generate(directory, args.zones)
        size_mb = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e6
        print(f"config: {counts['zones']:,} zones ({counts['exclusions']:,} exclusion, "
              f"{counts['subjects']:,} homes, 1 district), {counts['subjects']:,} subjects, "
              f"{size_mb:.1f} MB on disk")

        load_s, load_all, load_cpu, loaded = best_of(
            args.rounds, lambda: load_config(directory, {})
        )
        print(f"load_config:        best {load_s:6.2f} s wall, {load_cpu:5.2f} s CPU  (rounds: "
              f"{', '.join(f'{t:.2f}' for t in load_all)}); {len(loaded.warnings)} warnings")
        reload_s, reload_all, reload_cpu, attempt = best_of(
            args.rounds, lambda: load_attempt(directory, {})
        )
        assert attempt.loaded is not None
        assert attempt.stable
        print(f"reload (attempt):   best {reload_s:6.2f} s wall, {reload_cpu:5.2f} s CPU  (rounds: "
              f"{', '.join(f'{t:.2f}' for t in reload_all)})")

        pipeline = Pipeline(loaded.core)
        other = attempt.loaded.core
        swaps = 10_000
        started = time.perf_counter()
        for i in range(swaps):
            pipeline.swap_config(other if i % 2 else loaded.core)
        swap_us = (time.perf_counter() - started) / swaps * 1e6
        print(f"swap_config:        {swap_us:6.2f} µs per swap (mean of {swaps:,})")

        pings = _pings(loaded, 20_000)
        idle_rate, idle_stall, _ = asyncio.run(pings_during(Pipeline(loaded.core), pings, None))
        busy_rate, busy_stall, busy_s = asyncio.run(
            pings_during(Pipeline(loaded.core), pings, lambda: load_attempt(directory, {}))
        )
        print(f"pings, idle:        {idle_rate:8,.0f} pings/s, longest loop stall "
              f"{idle_stall * 1e3:5.1f} ms")
        print(f"pings, reloading:   {busy_rate:8,.0f} pings/s, longest loop stall "
              f"{busy_stall * 1e3:5.1f} ms, for the {busy_s:.1f} s the reload took")
        print(f"ratio reloading/idle: {busy_rate / idle_rate:.2f}")
        print(f"per zone: load {load_cpu / counts['zones'] * 1e6:.0f} µs CPU; "
              f"median of rounds {statistics.median(load_all):.2f} s wall; load average now "
              f"{os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
