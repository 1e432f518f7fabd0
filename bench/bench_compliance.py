"""Benchmark: what issue 5 part A's subject-level rules (person-device separation, check-ins,
Art. 29 authorisation) add to the cost of one ping.

    .venv/bin/python bench/bench_compliance.py [--subjects 200] [--hours 6] [--rounds 3]

`--subjects` subjects, each with a tag and a phone reporting every 60 s (phone offset by
20 s), wandering around home; every tenth subject leaves its phone behind for an hour (so
separations are raised and cleared). Ticks every 15 s as the daemon runs them. Two configs
on the same stream: the device and zone rules alone (a home zone and a permitted district
per subject, no behaviour rules), and the same with separation on, a daily check-in
schedule and two authorisation periods per subject (a check-in event per subject per day).

Reported: CPU microseconds per message (best of `--rounds`; CPU time because on a small
shared machine wall time measures the other processes), the ratio, and the findings count.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import shapely

from geofence.compliancespec import (
    AuthorisationPeriod,
    AuthorisationSpec,
    CheckinRequirement,
    ComplianceParams,
    SeparationParams,
)
from geofence.config import (
    DEFAULT_DEVICE_THRESHOLDS,
    CoreConfig,
    DeviceSpec,
    RuleParams,
    SubjectSpec,
)
from geofence.engine import Engine
from geofence.observation import DeviceEvent, DeviceEventType, DeviceKind, FixSource, LocationFix
from geofence.zones import LocalProjection, Zone, ZoneKind

PROJECTION = LocalProjection(114.05, 22.54)
TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 11, 20, 6, 0, tzinfo=TZ).astimezone(UTC)
PING = timedelta(seconds=60)
PHONE_OFFSET = timedelta(seconds=20)
TICK = timedelta(seconds=15)
ARRIVAL_LAG = timedelta(seconds=2)


def _square(zone_id: str, kind: ZoneKind, x: float, y: float, half: float) -> Zone:
    box = shapely.box(x - half, y - half, x + half, y + half)
    return Zone.from_projected(zone_id, zone_id, kind, box, PROJECTION)


def build(subjects: int, with_behaviour: bool) -> CoreConfig:
    zones = {"district": _square("district", ZoneKind.INCLUSION, 0.0, 0.0, 20_000.0)}
    specs: dict[str, SubjectSpec] = {}
    rng = random.Random(5)
    for index in range(subjects):
        sid = f"s{index}"
        hx, hy = rng.uniform(-10_000, 10_000), rng.uniform(-10_000, 10_000)
        zones[f"home-{sid}"] = _square(f"home-{sid}", ZoneKind.INCLUSION, hx, hy, 50.0)
        spec = SubjectSpec(
            sid, TZ, "off", (DeviceSpec(f"tag-{sid}", DeviceKind.WEARABLE, sid),
                             DeviceSpec(f"phone-{sid}", DeviceKind.PHONE, sid)),
            home_zone_id=f"home-{sid}", permitted_zone_id="district",
        )
        if with_behaviour:
            first = datetime(2026, 10, 1, tzinfo=TZ)
            middle = datetime(2026, 12, 1, tzinfo=TZ)
            spec = dataclasses.replace(
                spec,
                checkins=(CheckinRequirement(
                    datetime.min.time().replace(hour=8), datetime.min.time().replace(hour=20),
                    frozenset(range(7))),),
                authorisation=AuthorisationSpec((
                    AuthorisationPeriod(first, middle, "order"),
                    AuthorisationPeriod(middle, datetime(2027, 2, 1, tzinfo=TZ), "renewal"),
                )),
            )
        specs[sid] = spec
    behaviour = ComplianceParams(separation=SeparationParams()) if with_behaviour \
        else ComplianceParams()
    rules = RuleParams(devices=dict(DEFAULT_DEVICE_THRESHOLDS), compliance=behaviour)
    return CoreConfig("bench", PROJECTION, zones, specs, rules)


def stream(config: CoreConfig, hours: float) -> list[LocationFix | DeviceEvent]:
    rng = random.Random(7)
    out: list[LocationFix | DeviceEvent] = []
    steps = int(hours * 3600 / PING.total_seconds())
    for sid, subject in config.subjects.items():
        home = config.zones[subject.home_zone_id or ""]
        hx, hy = home.geometry_m.centroid.x, home.geometry_m.centroid.y
        leaves_phone = int(sid[1:]) % 10 == 0
        for step in range(steps):
            ts = START + step * PING
            angle = step / 30.0
            tx, ty = hx + 400 * math.cos(angle), hy + 400 * math.sin(angle)
            px, py = (hx, hy) if leaves_phone and 60 <= step < 120 else (tx, ty)
            for device, (x, y), at in ((f"tag-{sid}", (tx, ty), ts),
                                       (f"phone-{sid}", (px, py), ts + PHONE_OFFSET)):
                point = np.array([[x + rng.gauss(0, 5), y + rng.gauss(0, 5)]])
                lon, lat = (float(v) for v in PROJECTION.inverse_array(point)[0])
                out.append(LocationFix(device, at, lat, lon, 8.0, FixSource.GNSS,
                                       at + ARRIVAL_LAG))
            if step == 200:
                out.append(DeviceEvent(f"phone-{sid}", ts + PHONE_OFFSET, DeviceEventType.CHECKIN,
                                       ts + PHONE_OFFSET + ARRIVAL_LAG, {"verification": "passed"}))
    out.sort(key=lambda o: (o.received_at, o.device_id))
    return out


def run(config: CoreConfig, messages: list[LocationFix | DeviceEvent]) -> tuple[float, int]:
    engine = Engine(config)
    findings = 0
    next_tick = messages[0].received_at
    began = time.process_time()
    for message in messages:
        while next_tick <= message.received_at:
            findings += len(engine.tick(next_tick))
            next_tick += TICK
        findings += len(engine.observe(message, message.received_at))
    return time.process_time() - began, findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=200)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs, "
          f"{args.subjects} subjects x {args.hours:g} h")
    baseline_us = 0.0
    for label, with_behaviour in (("device + zone rules", False),
                                  ("+ separation, check-ins, Art. 29", True)):
        config = build(args.subjects, with_behaviour)
        messages = stream(config, args.hours)
        best = min(run(config, messages)[0] for _ in range(args.rounds))
        _, findings = run(config, messages)
        per_us = best / len(messages) * 1e6
        baseline_us = baseline_us or per_us
        print(f"{label:34s} {len(messages):8d} messages  {per_us:7.1f} CPU us/message  "
              f"ratio {per_us / baseline_us:4.2f}  findings {findings}")


if __name__ == "__main__":
    main()
