"""Benchmark: the per-ping CPU cost of the full rule set against the zone rules alone.

    .venv/bin/python bench/bench_behaviour.py [--subjects 2000] [--minutes 30] [--rounds 2]

A fleet of N subjects in a 12 km city, one wearable each (one fix a minute, GNSS noise,
walking around home), each with a permitted district, a home zone with a curfew and two
exclusion zones of its own. Run twice over the same messages and ticks (15 s, as the
daemon):

- zone rules alone: zone and device rules (what issue 4 built); no behaviour rules;
- full rule set: the same, plus every issue-5 rule on this branch: frequent places learnt
  (two per subject, armed) with the trajectory-anomaly rule, 5 % of the subjects in
  co-offender groups of two or three (half of the groups meet) with `any_subjects` on too
  (every pair in the fleet is judged; `--no-any-subjects`: co-offenders only, the default
  config), and one protected person per 200 subjects linked to one subject, whose phone
  reports every minute.

Reported: CPU microseconds per subject ping (best of `--rounds`; process time, because on a
small shared machine wall time mostly measures the other processes), ticks included, the
ratio full / zone-only, and the learner's CPU per subject for four weeks of history.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import shapely

from geofence.behaviour_config import (
    BehaviourParams,
    GatheringParams,
    HabitParams,
    ProtectedLink,
)
from geofence.config import (
    DEFAULT_DEVICE_THRESHOLDS,
    CoreConfig,
    DeviceSpec,
    ExclusionAssignment,
    RuleParams,
    SubjectSpec,
)
from geofence.engine import Engine
from geofence.habits import FrequentPlace, HistoryFix, LearnedPlaces, learn_frequent_places
from geofence.observation import DeviceKind, FixSource, LocationFix
from geofence.schedule import Schedule, Window
from geofence.victims import ProtectedPosition
from geofence.zones import LocalProjection, Zone, ZoneKind

PROJECTION = LocalProjection(114.05, 22.54)
KX = PROJECTION.forward(115.05, 22.54)[0]
KY = PROJECTION.forward(114.05, 23.54)[1]
TZ = ZoneInfo("Asia/Shanghai")
CITY_HALF_M = 6000.0
START = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai
FIX_INTERVAL = timedelta(seconds=60)
TICK = timedelta(seconds=15)
GROUP_SHARE = 0.05
SUBJECTS_PER_PROTECTED = 200


def lonlat(x: float, y: float) -> tuple[float, float]:
    return PROJECTION.lon0 + x / KX, PROJECTION.lat0 + y / KY


def square(cx: float, cy: float, half: float) -> shapely.Polygon:
    return shapely.box(*lonlat(cx - half, cy - half), *lonlat(cx + half, cy + half))


def fleet(n: int, rng: random.Random) -> tuple[dict[str, Zone], dict[str, SubjectSpec],
                                               dict[str, tuple[float, float]]]:
    zones = {"district": Zone.build("district", "district", ZoneKind.INCLUSION,
                                    square(0.0, 0.0, CITY_HALF_M + 2000.0), PROJECTION)}
    curfew = Schedule("curfew", (Window(datetime.min.time().replace(hour=22),
                                        datetime.min.time().replace(hour=6)),))
    subjects: dict[str, SubjectSpec] = {}
    homes: dict[str, tuple[float, float]] = {}
    for i in range(n):
        sid = f"s{i:05d}"
        home = (rng.uniform(-CITY_HALF_M, CITY_HALF_M), rng.uniform(-CITY_HALF_M, CITY_HALF_M))
        homes[sid] = home
        zones[f"home-{sid}"] = Zone.build(f"home-{sid}", "home", ZoneKind.INCLUSION,
                                          square(*home, 50.0), PROJECTION)
        exclusions = []
        for k in range(2):
            zid = f"ex-{sid}-{k}"
            centre = (home[0] + rng.uniform(-3000, 3000), home[1] + rng.uniform(-3000, 3000))
            zones[zid] = Zone.build(zid, zid, ZoneKind.EXCLUSION, square(*centre, 50.0),
                                    PROJECTION)
            exclusions.append(ExclusionAssignment(zid, None, 100.0 if k == 0 else 0.0))
        subjects[sid] = SubjectSpec(
            subject_id=sid, timezone=TZ, officer_id="off",
            devices=(DeviceSpec(f"tag-{sid}", DeviceKind.WEARABLE, sid),),
            home_zone_id=f"home-{sid}", permitted_zone_id="district",
            exclusions=tuple(exclusions), curfew=curfew,
        )
    return zones, subjects, homes


def behaviour(subject_ids: list[str], rng: random.Random, any_subjects: bool) -> BehaviourParams:
    grouped = subject_ids[: int(len(subject_ids) * GROUP_SHARE)]
    groups: dict[str, frozenset[str]] = {}
    index = 0
    while index + 1 < len(grouped):
        size = 3 if rng.random() < 0.3 and index + 2 < len(grouped) else 2
        groups[f"case-{index}"] = frozenset(grouped[index:index + size])
        index += size
    protected = {
        f"p{k}": (ProtectedLink(f"p{k}", subject_ids[-1 - k], 500.0, 500.0),)
        for k in range(max(1, len(subject_ids) // SUBJECTS_PER_PROTECTED))
    }
    return BehaviourParams(
        habits=HabitParams(enabled=True),
        gathering=GatheringParams(any_subjects=any_subjects),
        co_offender_groups=groups,
        protected=protected,
    )


def messages(homes: dict[str, tuple[float, float]], params: BehaviourParams, minutes: int,
             rng: random.Random) -> list[LocationFix | ProtectedPosition]:
    """Fixes of every subject (groups that meet share a meeting place) and protected
    persons' positions, in arrival order."""
    meeting: dict[str, tuple[float, float]] = {}
    for n, members in enumerate(sorted(params.co_offender_groups.items())):
        if n % 2 == 0:
            for sid in members[1]:
                meeting[sid] = homes[min(members[1])]
    out: list[LocationFix | ProtectedPosition] = []
    positions = {sid: meeting.get(sid, home) for sid, home in homes.items()}
    for minute in range(minutes):
        base = START + minute * FIX_INTERVAL
        for n, (sid, (x, y)) in enumerate(sorted(positions.items())):
            if sid not in meeting:
                angle = rng.uniform(0, 2 * math.pi)
                x, y = x + 40 * math.cos(angle), y + 40 * math.sin(angle)
                positions[sid] = (x, y)
            lon, lat = lonlat(x + rng.gauss(0, 5), y + rng.gauss(0, 5))
            ts = base + timedelta(seconds=n * 60 / len(positions))
            out.append(LocationFix(f"tag-{sid}", ts, lat, lon, 8.0, FixSource.GNSS,
                                   ts + timedelta(seconds=2)))
        for pid, links in sorted(params.protected.items()):
            victim = homes[links[0].subject_id]
            lon, lat = lonlat(victim[0] + 2000.0 - 60.0 * minute, victim[1])
            ts = base + timedelta(seconds=30)
            out.append(ProtectedPosition(pid, ts, lat, lon, 15.0, ts + timedelta(seconds=2)))
    out.sort(key=lambda m: m.received_at)
    return out


def places(homes: dict[str, tuple[float, float]]) -> list[LearnedPlaces]:
    out = []
    for sid, (x, y) in homes.items():
        home, work = lonlat(x, y), lonlat(x + 2500.0, y)
        out.append(LearnedPlaces(sid, START - timedelta(hours=6), 28, (
            FrequentPlace("residence", home[1], home[0], 200.0, 0.6, (0, 1, 2, 3, 4, 5)),
            FrequentPlace("workplace", work[1], work[0], 200.0, 0.3, (9, 10, 11)),
        )))
    return out


def run(config: CoreConfig, feed: list[LocationFix | ProtectedPosition],
        learned: list[LearnedPlaces]) -> tuple[float, int, int]:
    engine = Engine(config)
    for item in learned:
        engine.set_frequent_places(item)
    findings = pings = 0
    next_tick = START
    begin = time.process_time()
    for message in feed:
        while next_tick <= message.received_at:
            findings += len(engine.tick(next_tick))
            next_tick += TICK
        if isinstance(message, ProtectedPosition):
            findings += len(engine.observe_protected(message, message.received_at))
        else:
            pings += 1
            findings += len(engine.observe(message, message.received_at))
    end = feed[-1].received_at + timedelta(minutes=10)
    while next_tick <= end:
        findings += len(engine.tick(next_tick))
        next_tick += TICK
    return time.process_time() - begin, pings, findings


def learner_cost(rng: random.Random, subjects: int = 20) -> float:
    """CPU seconds per subject to learn from four weeks of 5-minute samples."""
    params = HabitParams(enabled=True)
    moment = START
    total = 0.0
    for _ in range(subjects):
        hx, hy = rng.uniform(-5000, 5000), rng.uniform(-5000, 5000)
        fixes = []
        ts = moment - timedelta(days=28)
        while ts < moment:
            hour = ts.astimezone(TZ).hour
            x, y = (hx + 2500.0, hy) if 9 <= hour < 17 else (hx, hy)
            lon, lat = lonlat(x + rng.gauss(0, 20), y + rng.gauss(0, 20))
            fixes.append(HistoryFix(ts, lat, lon, 15.0))
            ts += timedelta(minutes=5)
        begin = time.process_time()
        learn_frequent_places("s", fixes, TZ, params, moment)
        total += time.process_time() - begin
    return total / subjects


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=2000)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--no-any-subjects", action="store_true",
                        help="judge co-offender pairs only (the default config)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    zones, subjects, homes = fleet(args.subjects, rng)
    full_params = behaviour(sorted(subjects), rng, not args.no_any_subjects)
    rules = RuleParams(devices=dict(DEFAULT_DEVICE_THRESHOLDS))
    zone_only = CoreConfig("zone-only", PROJECTION, zones, subjects, rules)
    full = CoreConfig("full", PROJECTION, zones, subjects, rules, behaviour=full_params)
    feed = messages(homes, full_params, args.minutes, rng)
    subject_feed: list[LocationFix | ProtectedPosition] = [
        m for m in feed if isinstance(m, LocationFix)
    ]
    learned = places(homes)
    print(f"machine: {os.cpu_count()} cores, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"fleet: {args.subjects} subjects, {len(full_params.co_offender_groups)} co-offender "
          f"groups, {len(full_params.protected)} protected persons; {len(subject_feed)} subject "
          f"pings + {len(feed) - len(subject_feed)} protected positions over {args.minutes} min; "
          f"any_subjects {'off' if args.no_any_subjects else 'on'}")
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, config, items, places_in in (
            ("zone rules alone", zone_only, subject_feed, []),
            ("full rule set", full, feed, learned),
        ):
            seconds, pings, findings = run(config, items, places_in)
            per_ping = seconds / pings * 1e6
            best[name] = min(best.get(name, per_ping), per_ping)
            print(f"  {name:17s} {per_ping:7.1f} µs/ping  ({findings} findings)")
    ratio = best["full rule set"] / best["zone rules alone"]
    print(f"best: zone rules alone {best['zone rules alone']:.1f} µs/ping, full rule set "
          f"{best['full rule set']:.1f} µs/ping, ratio {ratio:.2f}")
    print(f"learner: {learner_cost(rng) * 1e3:.1f} ms CPU per subject for 4 weeks "
          "(5-minute samples)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
