"""A realistic fleet: N subjects, each with an ankle tag and a phone, living ordinary days.

Pure and deterministic for a seed (apart from `district_polygon`, which reads the zone
file). `build_fleet` places every subject (home, workplace, favourite errand places, a
personal exclusion zone such as a victim's home) inside the permitted district;
`fleet_messages` streams what their devices publish, in arrival order, lazily, so a fleet
of thousands over days never sits in memory at once.

Each day (subject's local time): workers leave home 07:15-08:45, commute along street-grid
paths (walk, bicycle, bus or metro by distance), work, sometimes lunch out or run an errand
after work, and are home before the 22:00 curfew; on weekends and for non-workers, one to
three errands. The tag charges in the evening on most days; the phone overnight.

Faults real devices have: GNSS noise by environment (`simulators.devices.GnssModel`: 5-100 m
accuracy, indoor drift, urban-canyon outliers, cold starts after power-on), battery drain
and charging with low-battery and power-off events, loss of coverage (random, and
underground on the metro) with store-and-forward bursts, QoS 1 duplicates, and clock skew.
The fleet is compliant by design: every alert emon raises on it is a false alert, which
makes `emon replay` over a fleet a measure of alert fatigue.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geofence.datum import Datum, convert_geometry_to_wgs84
from simulators.devices import (
    BurstOrder,
    Environment,
    GnssModel,
    Protocol,
    Uplink,
    event_message,
    location_message,
)
from simulators.scripted_day import EARTH_RADIUS_M, LonLat, SimMessage

DISTRICT_ZONE_ID: Final = "district-futian"
DISTRICT_FILE: Final = (
    Path(__file__).resolve().parent / "scenarios" / "config" / "zones"
    / "district-futian.gcj02.geojson"
)
LOCAL_TZ: Final = ZoneInfo("Asia/Shanghai")

INTERIOR_INSET_M: Final = 400.0
"""Homes, workplaces and paths keep this far inside the district edge (no true exits)."""
WORKER_SHARE: Final = 0.75
WORK_DISTANCE_M: Final = (1000.0, 8000.0)
FAVOURITE_PLACES: Final = 3
FAVOURITE_DISTANCE_M: Final = (300.0, 2000.0)
EXCLUSION_DISTANCE_M: Final = (1500.0, 4000.0)
EXCLUSION_CLEARANCE_M: Final = 700.0
"""A subject's own exclusion zone keeps this far from every place and path of theirs."""
HOME_RADIUS_M: Final = 75.0
WORK_RADIUS_M: Final = 100.0
EXCLUSION_RADIUS_M: Final = 100.0
PLACE_ATTEMPTS: Final = 200

WALK_MPS: Final = 1.3
BIKE_MPS: Final = 4.0
BUS_MPS: Final = 6.0
METRO_MPS: Final = 9.0
WALK_MAX_M: Final = 1500.0
BIKE_MAX_M: Final = 4000.0
METRO_SHARE: Final = 0.6
"""Of long commutes, the share by metro (the rest by bus)."""
TRANSIT_WAIT: Final = timedelta(minutes=5)
METRO_UNDERGROUND_PART: Final = (0.1, 0.9)
"""Fraction of a metro ride spent underground (no coverage, mostly no fix)."""

LATEST_HOME: Final = time(21, 30)
"""Everyone is home by then: the curfew starts at 22:00."""
WEARABLE_INTERVAL: Final = timedelta(seconds=60)
PHONE_INTERVAL: Final = timedelta(seconds=120)

WEARABLE_DRAIN_PCT_PER_H: Final = (2.0, 3.0)
PHONE_DRAIN_PCT_PER_H: Final = (2.5, 4.5)
CHARGE_PCT_PER_H: Final = 45.0
TAG_CHARGE_DAY_PROBABILITY: Final = 0.85
PHONE_CHARGE_NIGHT_PROBABILITY: Final = 0.95
BATTERY_LOW_PCT: Final = 20.0

OUTAGES_PER_DAY: Final = 1.2
OUTAGE_MEDIAN_MINUTES: Final = 8.0
OUTAGE_MAX: Final = timedelta(hours=3)
NEWEST_FIRST_SHARE: Final = 0.3
"""Share of tags that send a stored burst newest first."""
DUPLICATE_RATE: Final = 0.005
SKEW_SIGMA_S: Final = 3.0
BAD_CLOCK_SHARE: Final = 0.03
BAD_CLOCK_SKEW_S: Final = (60.0, 600.0)
"""Some device clocks are minutes off (still inside the daemon's 15-minute tolerance)."""


class Mode(StrEnum):
    WALK = "walk"
    BIKE = "bike"
    BUS = "bus"
    METRO = "metro"


@dataclass(frozen=True, slots=True)
class SubjectPlan:
    subject_id: str
    home: LonLat
    work: LonLat | None
    favourites: tuple[LonLat, ...]
    exclusion: LonLat | None
    tag_charges_evening: bool = True

    @property
    def wearable_id(self) -> str:
        return f"tag-{self.subject_id}"

    def phone_id(self, protocol: Protocol) -> str:
        return f"{self.subject_id}.phone" if protocol is Protocol.OWNTRACKS else \
            f"phone-{self.subject_id}"


@dataclass(frozen=True)
class Fleet:
    seed: int
    subjects: tuple[SubjectPlan, ...]
    phone_protocol: Protocol
    tz: ZoneInfo = LOCAL_TZ


# ---------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Metric:
    """Local equirectangular metres around a centre (fine over a district)."""

    lon0: float
    lat0: float

    @property
    def kx(self) -> float:
        return math.radians(1.0) * EARTH_RADIUS_M * math.cos(math.radians(self.lat0))

    @property
    def ky(self) -> float:
        return math.radians(1.0) * EARTH_RADIUS_M

    def xy(self, p: LonLat) -> tuple[float, float]:
        return (p.lon - self.lon0) * self.kx, (p.lat - self.lat0) * self.ky

    def lonlat(self, x: float, y: float) -> LonLat:
        return LonLat(self.lon0 + x / self.kx, self.lat0 + y / self.ky)


def district_polygon(path: Path = DISTRICT_FILE) -> BaseGeometry:
    """The permitted district in WGS-84 (the file is GCJ-02, converted on load)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    geometry = shapely.geometry.shape(data["features"][0]["geometry"])
    return convert_geometry_to_wgs84(Datum(data["datum"]), geometry)


@dataclass
class _Region:
    metric: Metric
    interior: BaseGeometry  # metres, inset from the edge, prepared
    bounds: tuple[float, float, float, float]

    @classmethod
    def of(cls, district_wgs84: BaseGeometry) -> _Region:
        centre = district_wgs84.centroid
        metric = Metric(float(centre.x), float(centre.y))
        projected = shapely.transform(
            district_wgs84,
            lambda c: np.column_stack(
                ((c[:, 0] - metric.lon0) * metric.kx, (c[:, 1] - metric.lat0) * metric.ky)
            ),
        )
        interior = projected.buffer(-INTERIOR_INSET_M)
        shapely.prepare(interior)
        return cls(metric, interior, tuple(interior.bounds))

    def contains(self, x: float, y: float) -> bool:
        return bool(shapely.contains_xy(self.interior, x, y))

    def random_point(self, rng: random.Random) -> tuple[float, float]:
        x0, y0, x1, y1 = self.bounds
        while True:
            x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if self.contains(x, y):
                return x, y

    def point_near(
        self, rng: random.Random, origin: tuple[float, float], distance: tuple[float, float]
    ) -> tuple[float, float] | None:
        for _ in range(PLACE_ATTEMPTS):
            r = rng.uniform(*distance)
            bearing = rng.uniform(0, 2 * math.pi)
            x, y = origin[0] + r * math.sin(bearing), origin[1] + r * math.cos(bearing)
            if self.contains(x, y):
                return x, y
        return None

    def path(
        self, a: tuple[float, float], b: tuple[float, float], rng: random.Random
    ) -> list[tuple[float, float]]:
        """A street-grid route: an L (east-west then north-south, or the other way), kept
        inside the district; a straight line if neither L fits."""
        corners = [(b[0], a[1]), (a[0], b[1])]
        rng.shuffle(corners)
        for corner in corners:
            line = shapely.LineString([a, corner, b])
            if self.interior.contains(line):
                return [a, corner, b]
        return [a, b]


def _path_distance(point: tuple[float, float], path: Sequence[tuple[float, float]]) -> float:
    return float(shapely.LineString(path).distance(shapely.Point(point))) if len(path) > 1 \
        else math.dist(point, path[0])


def build_fleet(
    subjects: int, seed: int, phone_protocol: Protocol = Protocol.OWNTRACKS,
    district_wgs84: BaseGeometry | None = None,
) -> Fleet:
    """Place `subjects` subjects (ids f00001, ...) deterministically for `seed`."""
    if subjects <= 0:
        raise ValueError("a fleet needs at least one subject")
    region = _Region.of(district_wgs84 if district_wgs84 is not None else district_polygon())
    plans: list[SubjectPlan] = []
    for index in range(1, subjects + 1):
        subject_id = f"f{index:05d}"
        rng = random.Random(f"emon-fleet:{seed}:{subject_id}:places")
        home = region.random_point(rng)
        work = region.point_near(rng, home, WORK_DISTANCE_M) if rng.random() < WORKER_SHARE \
            else None
        favourites = [
            p for p in (region.point_near(rng, home, FAVOURITE_DISTANCE_M)
                        for _ in range(FAVOURITE_PLACES)) if p is not None
        ] or [home]
        anchors = [home, *favourites, *([work] if work else [])]
        # Routes among home, work and favourites are L-paths inside their bounding boxes.
        xs, ys = [p[0] for p in anchors], [p[1] for p in anchors]
        box = shapely.box(min(xs), min(ys), max(xs), max(ys))
        exclusion = None
        for _ in range(PLACE_ATTEMPTS):
            candidate = region.point_near(rng, home, EXCLUSION_DISTANCE_M)
            if candidate is not None and box.distance(shapely.Point(candidate)) > (
                EXCLUSION_CLEARANCE_M
            ):
                exclusion = candidate
                break
        plans.append(
            SubjectPlan(
                subject_id=subject_id,
                home=region.metric.lonlat(*home),
                work=region.metric.lonlat(*work) if work else None,
                favourites=tuple(region.metric.lonlat(*p) for p in favourites),
                exclusion=region.metric.lonlat(*exclusion) if exclusion else None,
                tag_charges_evening=rng.random() < TAG_CHARGE_DAY_PROBABILITY,
            )
        )
    return Fleet(seed, tuple(plans), phone_protocol)


# ---------------------------------------------------------------------- daily plans


@dataclass(frozen=True, slots=True)
class Segment:
    """From `start` to `end`: still at `points[0]`, or moving along `points` by `mode`."""

    start: datetime
    end: datetime
    points: tuple[LonLat, ...]
    environment: Environment
    mode: Mode | None = None
    cumulative_m: tuple[float, ...] = ()
    underground: tuple[datetime, datetime] | None = None

    def position(self, at: datetime, metric: Metric) -> LonLat:
        if len(self.points) == 1 or at <= self.start:
            return self.points[0]
        if at >= self.end:
            return self.points[-1]
        total = self.cumulative_m[-1]
        travelled = total * (at - self.start) / (self.end - self.start)
        i = max(1, bisect.bisect_left(self.cumulative_m, travelled))
        i = min(i, len(self.points) - 1)
        leg = self.cumulative_m[i] - self.cumulative_m[i - 1]
        f = 0.0 if leg <= 0 else (travelled - self.cumulative_m[i - 1]) / leg
        (x0, y0), (x1, y1) = metric.xy(self.points[i - 1]), metric.xy(self.points[i])
        return metric.lonlat(x0 + f * (x1 - x0), y0 + f * (y1 - y0))

    def environment_at(self, at: datetime) -> Environment:
        if self.underground is not None and self.underground[0] <= at < self.underground[1]:
            return Environment.UNDERGROUND
        return self.environment


@dataclass
class DayPlanner:
    """Builds one subject's segments day after day (deterministic per subject and day)."""

    fleet_seed: int
    plan: SubjectPlan
    area: _Region
    tz: ZoneInfo
    segments: list[Segment] = field(default_factory=list)

    @property
    def region(self) -> Metric:
        return self.area.metric

    def _route(self, a: LonLat, b: LonLat, rng: random.Random) -> list[LonLat]:
        path = self.area.path(self.region.xy(a), self.region.xy(b), rng)
        return [self.region.lonlat(*p) for p in path]

    def _travel(self, at: datetime, a: LonLat, b: LonLat, rng: random.Random) -> datetime:
        points = self._route(a, b, rng)
        xy = [self.region.xy(p) for p in points]
        cumulative = [0.0]
        for p, q in pairwise(xy):
            cumulative.append(cumulative[-1] + math.dist(p, q))
        length = cumulative[-1]
        if length < 1.0:
            return at
        if length <= WALK_MAX_M:
            mode, speed, wait = Mode.WALK, WALK_MPS, timedelta(0)
        elif length <= BIKE_MAX_M:
            mode, speed, wait = Mode.BIKE, BIKE_MPS, timedelta(0)
        elif rng.random() < METRO_SHARE:
            mode, speed, wait = Mode.METRO, METRO_MPS, TRANSIT_WAIT
        else:
            mode, speed, wait = Mode.BUS, BUS_MPS, TRANSIT_WAIT
        if wait:
            self._stay(at, at + wait, a, Environment.URBAN)
            at += wait
        end = at + timedelta(seconds=length / speed)
        underground = None
        if mode is Mode.METRO:
            ride = end - at
            underground = (at + ride * METRO_UNDERGROUND_PART[0],
                           at + ride * METRO_UNDERGROUND_PART[1])
        self.segments.append(Segment(at, end, tuple(points), Environment.URBAN, mode,
                                     tuple(cumulative), underground))
        return end

    def _stay(self, start: datetime, end: datetime, where: LonLat, env: Environment) -> None:
        if end > start:
            self.segments.append(Segment(start, end, (where,), env))

    def add_day(self, day: date) -> None:
        rng = random.Random(f"emon-fleet:{self.fleet_seed}:{self.plan.subject_id}:{day}")
        plan = self.plan

        def local(hour: float) -> datetime:
            seconds = round(hour * 3600)
            return datetime.combine(day, time(), tzinfo=self.tz) + timedelta(seconds=seconds)

        day_start, latest_home = local(0), local(LATEST_HOME.hour + LATEST_HOME.minute / 60)
        day_end = local(24)
        home = plan.home
        at = day_start
        weekday = day.weekday() < 5
        if plan.work is not None and weekday:
            leave = local(rng.uniform(7.25, 8.75))
            self._stay(at, leave, home, Environment.INDOOR)
            at = self._travel(leave, home, plan.work, rng)
            leave_work = local(rng.uniform(17.0, 18.75))
            if rng.random() < 0.4:
                lunch = local(rng.uniform(11.9, 12.3))
                self._stay(at, lunch, plan.work, Environment.INDOOR)
                wx, wy = self.region.xy(plan.work)
                bearing = rng.uniform(0, 2 * math.pi)
                r = rng.uniform(150, 400)
                sx, sy = wx + r * math.sin(bearing), wy + r * math.cos(bearing)
                spot = self.region.lonlat(sx, sy) if self.area.contains(sx, sy) else plan.work
                at = self._travel(lunch, plan.work, spot, rng)
                back = at + timedelta(minutes=rng.uniform(25, 45))
                self._stay(at, back, spot, Environment.URBAN)
                at = self._travel(back, spot, plan.work, rng)
            self._stay(at, leave_work, plan.work, Environment.INDOOR)
            at = leave_work
            where = plan.work
            if rng.random() < 0.4:
                errand = rng.choice(plan.favourites)
                arrive = self._travel(at, where, errand, rng)
                done = arrive + timedelta(minutes=rng.uniform(15, 60))
                self._stay(arrive, done, errand, rng.choice(
                    [Environment.URBAN, Environment.INDOOR]))
                at, where = done, errand
            at = self._travel(at, where, home, rng)
        else:
            at_home_until = local(rng.uniform(9.0, 11.0))
            self._stay(at, at_home_until, home, Environment.INDOOR)
            at = at_home_until
            for _ in range(rng.randint(1, 3)):
                errand = rng.choice(plan.favourites)
                # Only go if there is clearly time to be back before the curfew.
                if at + timedelta(hours=3) > latest_home:
                    break
                arrive = self._travel(at, home, errand, rng)
                done = arrive + timedelta(minutes=rng.uniform(20, 90))
                self._stay(arrive, done, errand,
                           rng.choice([Environment.URBAN, Environment.INDOOR]))
                at = self._travel(done, errand, home, rng)
                rest = at + timedelta(minutes=rng.uniform(30, 120))
                self._stay(at, rest, home, Environment.INDOOR)
                at = rest
        self._stay(at, day_end, home, Environment.INDOOR)


class _Timeline:
    def __init__(self, segments: Sequence[Segment], metric: Metric) -> None:
        self._segments = sorted(segments, key=lambda s: s.start)
        self._starts = [s.start for s in self._segments]
        self._metric = metric

    def at(self, when: datetime) -> tuple[LonLat, Environment, Segment]:
        i = max(0, bisect.bisect_right(self._starts, when) - 1)
        segment = self._segments[i]
        return segment.position(when, self._metric), segment.environment_at(when), segment


# ---------------------------------------------------------------------- devices


@dataclass
class FleetStats:
    counts: Counter[str] = field(default_factory=Counter)


def _outages(
    rng: random.Random, start: datetime, end: datetime, timeline: _Timeline,
    segments: Sequence[Segment],
) -> list[tuple[datetime, datetime]]:
    days = (end - start).total_seconds() / 86400
    outages: list[tuple[datetime, datetime]] = []
    for _ in range(_poisson(rng, OUTAGES_PER_DAY * days)):
        begin = start + (end - start) * rng.random()
        length = timedelta(minutes=OUTAGE_MEDIAN_MINUTES * math.exp(rng.gauss(0, 1.0)))
        outages.append((begin, begin + min(length, OUTAGE_MAX)))
    outages += [s.underground for s in segments if s.underground is not None]
    outages.sort()
    merged: list[tuple[datetime, datetime]] = []
    for begin, finish in outages:
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], finish))
        else:
            merged.append((begin, finish))
    return merged


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method; means here are small (a few outages per device and day).
    limit, count, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count


@dataclass
class _DeviceSpec:
    device_id: str
    protocol: Protocol
    interval: timedelta
    wearable: bool


def _charge_windows(
    rng: random.Random, plan: SubjectPlan, wearable: bool, days: Sequence[date], tz: ZoneInfo,
) -> list[tuple[datetime, datetime]]:
    windows = []
    for day in days:
        base = datetime.combine(day, time(), tzinfo=tz)
        if wearable:
            if plan.tag_charges_evening and rng.random() < TAG_CHARGE_DAY_PROBABILITY + 0.1:
                begin = base + timedelta(hours=rng.uniform(21.5, 22.5))
                windows.append((begin, begin + timedelta(minutes=rng.uniform(60, 120))))
        elif rng.random() < PHONE_CHARGE_NIGHT_PROBABILITY:
            begin = base + timedelta(hours=rng.uniform(22.5, 23.75))
            windows.append((begin, base + timedelta(hours=24 + rng.uniform(6.5, 7.5))))
    return windows


def _device_stream(
    fleet: Fleet, plan: SubjectPlan, spec: _DeviceSpec, timeline: _Timeline,
    segments: Sequence[Segment], start: datetime, end: datetime, days: Sequence[date],
    stats: FleetStats, phase: timedelta,
) -> Iterator[SimMessage]:
    rng = random.Random(f"emon-fleet:{fleet.seed}:{spec.device_id}:device")
    tz = fleet.tz
    gnss = GnssModel(random.Random(f"emon-fleet:{fleet.seed}:{spec.device_id}:gnss"))
    uplink = Uplink(
        random.Random(f"emon-fleet:{fleet.seed}:{spec.device_id}:uplink"),
        duplicate_rate=DUPLICATE_RATE,
        burst_order=(BurstOrder.NEWEST_FIRST
                     if spec.wearable and rng.random() < NEWEST_FIRST_SHARE
                     else BurstOrder.OLDEST_FIRST),
    )
    skew_s = rng.gauss(0, SKEW_SIGMA_S)
    if rng.random() < BAD_CLOCK_SHARE:
        skew_s = rng.choice((-1, 1)) * rng.uniform(*BAD_CLOCK_SKEW_S)
    skew = timedelta(seconds=skew_s)
    drain = rng.uniform(*(WEARABLE_DRAIN_PCT_PER_H if spec.wearable else PHONE_DRAIN_PCT_PER_H))
    battery = rng.uniform(80.0, 100.0)
    charges = _charge_windows(rng, plan, spec.wearable, days, tz)
    outages = _outages(rng, start, end, timeline, segments)
    charge_i = outage_i = 0
    charging = powered = True
    low_sent = False
    offline = False
    t = start + phase
    last = t
    counts = stats.counts

    def emit_event(at: datetime, kind: str, attributes: dict[str, Any]) -> None:
        if spec.protocol is Protocol.OWNTRACKS:
            return  # phones report battery in their fixes; OwnTracks has no such events
        topic, payload = event_message(spec.device_id, at + skew, kind, attributes, tz)
        uplink.send(at, topic, payload)
        counts[f"event_{kind}"] += 1

    charging = False
    while t < end:
        hours = (t - last).total_seconds() / 3600
        last = t
        # Charging windows: the charger goes on and off at their edges.
        while charge_i < len(charges) and charges[charge_i][1] <= t:
            if charging:
                charging = False
                emit_event(charges[charge_i][1], "charger_disconnected", {})
            charge_i += 1
        in_charge = charge_i < len(charges) and charges[charge_i][0] <= t
        if in_charge and not charging:
            charging = True
            emit_event(charges[charge_i][0], "charger_connected", {})
        battery = min(100.0, battery + CHARGE_PCT_PER_H * hours) if charging else \
            max(0.0, battery - drain * hours)
        if battery > BATTERY_LOW_PCT + 5:
            low_sent = False
        if powered and not low_sent and battery <= BATTERY_LOW_PCT:
            low_sent = True
            emit_event(t, "battery_low", {"level": round(battery)})
        if powered and battery <= 0.0:
            powered = False
            emit_event(t, "power_off", {"reason": "battery"})
            if spec.protocol is Protocol.OWNTRACKS:
                # The broker publishes the phone's last will when it drops off.
                user, device = spec.device_id.split(".", 1)
                uplink.send(t, f"owntracks/{user}/{device}",
                            {"_type": "lwt", "tst": int((t + skew).timestamp())})
                counts["owntracks_lwt"] += 1
            counts["power_off"] += 1
        if not powered and charging and battery > 1.0:
            powered = True
            gnss.cold_start()
            emit_event(t, "power_on", {})
        # Coverage: lose it at an outage's start, regain (burst) at its end.
        while outage_i < len(outages) and outages[outage_i][1] <= t:
            if offline:
                uplink.regain_coverage(outages[outage_i][1])
                offline = False
                counts["bursts"] += 1
            outage_i += 1
        if not offline and outage_i < len(outages) and outages[outage_i][0] <= t:
            uplink.lose_coverage()
            offline = True
            counts["outages"] += 1
        if powered:
            position, environment, _ = timeline.at(t)
            fix = gnss.measure(position, environment)
            if fix is None:
                counts["no_fix"] += 1
            else:
                topic, payload = location_message(
                    spec.device_id, spec.protocol, t + skew, fix, battery, tz,
                    connection="o" if offline else ("w" if environment is Environment.INDOOR
                                                    else "m"),
                    charging=charging,
                )
                uplink.send(t, topic, payload)
                counts["fixes"] += 1
                counts[f"fix_{fix.source}"] += 1
        yield from uplink.due(t)
        t += spec.interval
    if offline:
        uplink.regain_coverage(end)
    counts["duplicates"] += uplink.stats["duplicates"]
    yield from uplink.due(None)


def fleet_messages(
    fleet: Fleet, first_day: date, days: int = 1, stats: FleetStats | None = None,
    district_wgs84: BaseGeometry | None = None,
) -> Iterator[SimMessage]:
    """Every message of the fleet's devices over `days` local days, in arrival order."""
    if days <= 0:
        raise ValueError("days must be positive")
    stats = stats if stats is not None else FleetStats()
    district = district_wgs84 if district_wgs84 is not None else district_polygon()
    area = _Region.of(district)
    metric = area.metric
    tz = fleet.tz
    day_list = [first_day + timedelta(days=i) for i in range(days)]
    start = datetime.combine(first_day, time(), tzinfo=tz)
    end = datetime.combine(first_day + timedelta(days=days), time(), tzinfo=tz)
    streams: list[Iterator[SimMessage]] = []
    for index, plan in enumerate(fleet.subjects):
        planner = DayPlanner(fleet.seed, plan, area, tz)
        for day in day_list:
            planner.add_day(day)
        timeline = _Timeline(planner.segments, metric)
        devices = (
            _DeviceSpec(plan.wearable_id, Protocol.EMON, WEARABLE_INTERVAL, True),
            _DeviceSpec(plan.phone_id(fleet.phone_protocol), fleet.phone_protocol,
                        PHONE_INTERVAL, False),
        )
        for d_index, spec in enumerate(devices):
            # Spread devices over the interval so they do not all publish in one instant.
            slot = (index * len(devices) + d_index) % 997
            phase = spec.interval * (slot / 997)
            streams.append(
                _device_stream(fleet, plan, spec, timeline, planner.segments, start, end,
                               day_list, stats, phase)
            )
    for message in heapq.merge(*streams, key=lambda m: m.at):
        stats.counts["messages"] += 1
        yield message


def utc_day_bounds(first_day: date, days: int, tz: ZoneInfo = LOCAL_TZ) -> tuple[datetime,
                                                                                   datetime]:
    start = datetime.combine(first_day, time(), tzinfo=tz).astimezone(UTC)
    return start, start + timedelta(days=days)
