"""A labelled corpus of noisy tracks with known true violations, and its scoring.

Generated in memory from a fixed seed: `SUBJECTS` subjects for `DAYS` days (Monday
2026-11-16 to Sunday 2026-11-22, Asia/Shanghai), one fix a minute from an ankle tag. Each
subject lives in one district (a ~9 km wide polygon), with a home (r 60 m), a workplace
(r 80 m, Mon-Fri 09:00-12:00 and 13:00-18:00, 15 min grace), a school exclusion zone
(120 x 90 m, 100 m approach band) and a 22:00-06:00 curfew.

Days follow a routine (sleep, commute, lunch, evening walk, weekend errands) and some carry
an injected **true violation**, labelled with the interval during which it is detectable:

| kind              | rule                 | detectable while                                |
|-------------------|----------------------|-------------------------------------------------|
| curfew breach     | curfew_away          | outside home by > margin + 2 x 15 m in curfew   |
| out at curfew     | curfew_away          | same (already out when 22:00 comes)             |
| left the district | boundary_exit        | outside the district by > margin + 2 x 15 m     |
| left work         | inclusion_away       | outside work by > margin + 2 x 15 m, in hours   |
| school visit      | exclusion_entry      | inside the school                               |
| walk through      | exclusion_entry      | same (under 2 min: scored for precision only)   |
| lingering near    | exclusion_approach   | within band - margin of the school, not inside  |
| device off        | device_silent        | nothing arrived for the silence threshold       |
| underground       | gnss_lost            | cell fixes only, past the GNSS threshold        |
| strap blip        | strap_open           | from the open event (closed 2 min later)        |
| flat battery      | battery_low          | from the 2nd reading at or below 20 %           |

"margin + 2 x 15 m": a fix counts as outside only when its whole accuracy circle is beyond
the margin; outdoors the accuracy is at most 15 m and the error at most that, so the
violation becomes detectable 50 m past the fence. Latencies are measured from there.

**Noise** (never labelled): accuracy 5-15 m outdoors, 15-60 m indoors (home, work) with
correlated indoor drift of up to ~2.2 x the stated accuracy, occasional Wi-Fi fixes
indoors, single 1-3 km outliers (p = 0.2 % per fix) with a small stated accuracy, a few
double outliers, fixes skipped (gaps of 2-8 min), upload latency 1-5 s, and coverage
holes of 5-12 min whose fixes arrive late in one burst, in order or current fix first.
Noise events are kept out of the five minutes around the start of a violation, so the
latency measured is the engine's and not a coverage hole's.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import shapely

from alerts.model import Finding, FindingKind, RuleId
from daemon.rulesettings import RuleSettings, compile_rule_params
from geofence.config import (
    CoreConfig,
    DeviceSpec,
    ExclusionAssignment,
    InclusionAssignment,
    SubjectSpec,
)
from geofence.engine import Engine
from geofence.observation import (
    DeviceEvent,
    DeviceEventType,
    DeviceKind,
    FixSource,
    LocationFix,
    Observation,
)
from geofence.schedule import Schedule, Window
from geofence.zones import Zone, ZoneKind
from tests.core_helpers import PROJECTION, lonlat

SEED = 20261116
SUBJECTS = 8
DAYS = 7
FIRST_DAY = date(2026, 11, 16)  # a Monday
TZ = ZoneInfo("Asia/Shanghai")
PING_S = 60
TICK_S = 15
LABEL_STEP_S = 10  # the true track is judged every 10 s for the labels

DISTRICT_RADIUS_M = 4500.0
HOME_R_M = 60.0
WORK_R_M = 80.0
SCHOOL_W_M, SCHOOL_H_M = 120.0, 90.0
APPROACH_M = 100.0
OUTDOOR_ACC_MAX_M = 15.0
DETECT_PAST_FENCE_M = 20.0 + 2 * OUTDOOR_ACC_MAX_M  # margin + accuracy + error
WALK_MPS = 1.4
BUS_MPS = 7.0
CAR_MPS = 12.0

OUTLIER_P = 0.002
DOUBLE_OUTLIERS = 3  # in the whole corpus
GAPS_PER_DAY = 2
BURSTS_PER_WEEK = 4
QUIET_AROUND_S = 300  # no noise event this close to the start of a violation

RULES = compile_rule_params(RuleSettings())  # exactly the operator defaults
ZONE_RULES = (RuleId.BOUNDARY_EXIT, RuleId.CURFEW_AWAY, RuleId.INCLUSION_AWAY,
              RuleId.EXCLUSION_ENTRY, RuleId.EXCLUSION_APPROACH)
MIN_VIOLATION = timedelta(minutes=2)
# What "within one ping interval plus the configured dwell" allows, per rule (seconds); the
# scheduler tick adds at most one tick interval for time-driven rules.
LATENCY_SLACK_S = TICK_S


def allowed_latency(rule: RuleId) -> timedelta:
    if rule in ZONE_RULES:
        params = RULES.zone_params(rule)
        dwell_s = max(params.dwell_seconds, (params.dwell_fixes - 1) * PING_S)
        return timedelta(seconds=PING_S + dwell_s + LATENCY_SLACK_S)
    if rule is RuleId.BATTERY_LOW:
        return timedelta(seconds=PING_S * RULES.battery_dwell_readings + LATENCY_SLACK_S)
    return timedelta(seconds=PING_S + LATENCY_SLACK_S)


# ---------------------------------------------------------------------- geometry

XY = tuple[float, float]


_KX = PROJECTION.forward(PROJECTION.lon0 + 1.0, PROJECTION.lat0)[0]
_KY = PROJECTION.forward(PROJECTION.lon0, PROJECTION.lat0 + 1.0)[1]


def _lonlat_fast(east_m: float, north_m: float) -> tuple[float, float]:
    """`core_helpers.lonlat` with its two constants computed once (called per fix)."""
    return PROJECTION.lon0 + east_m / _KX, PROJECTION.lat0 + north_m / _KY


def _circle(center: XY, radius: float, n: int = 24) -> shapely.Polygon:
    return shapely.Polygon(
        [lonlat(center[0] + radius * math.cos(2 * math.pi * k / n),
                center[1] + radius * math.sin(2 * math.pi * k / n)) for k in range(n)]
    )


def _rect(center: XY, w: float, h: float) -> shapely.Polygon:
    x, y = center
    return shapely.Polygon([lonlat(x - w / 2, y - h / 2), lonlat(x + w / 2, y - h / 2),
                            lonlat(x + w / 2, y + h / 2), lonlat(x - w / 2, y + h / 2)])


def _district(rng: random.Random) -> list[XY]:
    return [
        (DISTRICT_RADIUS_M * (0.85 + 0.3 * rng.random()) * math.cos(2 * math.pi * k / 12),
         DISTRICT_RADIUS_M * (0.85 + 0.3 * rng.random()) * math.sin(2 * math.pi * k / 12))
        for k in range(12)
    ]


# ---------------------------------------------------------------------- labels


@dataclass(frozen=True, slots=True)
class Violation:
    subject_id: str
    rule: RuleId
    zone_id: str | None
    start: datetime  # detectable from here
    end: datetime
    kind: str

    @property
    def duration(self) -> timedelta:
        return self.end - self.start


@dataclass(slots=True)
class Message:
    observation: Observation
    arrival: datetime


@dataclass(slots=True)
class Corpus:
    config: CoreConfig
    messages: list[Message]  # in arrival order
    violations: list[Violation]
    subject_days: int
    places: dict[str, dict[str, XY]] = field(default_factory=dict)

    @property
    def first(self) -> datetime:
        return self.messages[0].arrival

    @property
    def last(self) -> datetime:
        return self.messages[-1].arrival


# ---------------------------------------------------------------------- itineraries


@dataclass(slots=True)
class Leg:
    """From `t0` to `t1` the true position moves linearly from `a` to `b`."""

    t0: datetime
    t1: datetime
    a: XY
    b: XY
    indoor: bool = False
    underground: bool = False


class Track:
    def __init__(self, start: datetime, at: XY, indoor: bool) -> None:
        self.legs: list[Leg] = []
        self.now = start
        self.at = at
        self.indoor = indoor

    def stay(self, until: datetime, indoor: bool | None = None,
             underground: bool = False) -> None:
        if until <= self.now:
            return
        indoor = self.indoor if indoor is None else indoor
        self.legs.append(Leg(self.now, until, self.at, self.at, indoor, underground))
        self.now, self.indoor = until, indoor

    def go(self, to: XY, speed: float) -> None:
        seconds = max(math.dist(self.at, to) / speed, 1.0)
        end = self.now + timedelta(seconds=seconds)
        self.legs.append(Leg(self.now, end, self.at, to, False))
        self.now, self.at, self.indoor = end, to, False

    def position(self, t: datetime) -> tuple[XY, Leg]:
        index = self._index(t)
        leg = self.legs[index]
        span = (leg.t1 - leg.t0).total_seconds()
        f = 0.0 if span <= 0 else min(max((t - leg.t0).total_seconds() / span, 0.0), 1.0)
        return (leg.a[0] + f * (leg.b[0] - leg.a[0]), leg.a[1] + f * (leg.b[1] - leg.a[1])), leg

    def positions_at(self, offsets_s: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Positions at many moments at once (seconds after the first leg starts), by
        piecewise-linear interpolation over the legs; an (n, 2) array."""
        origin = self.legs[0].t0
        knots_t: list[float] = []
        knots_x: list[float] = []
        knots_y: list[float] = []
        for leg in self.legs:
            for when, (x, y) in ((leg.t0, leg.a), (leg.t1, leg.b)):
                knots_t.append((when - origin).total_seconds())
                knots_x.append(x)
                knots_y.append(y)
        return np.column_stack(
            (np.interp(offsets_s, knots_t, knots_x), np.interp(offsets_s, knots_t, knots_y))
        )

    def _index(self, t: datetime) -> int:
        lo, hi = 0, len(self.legs) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.legs[mid].t1 <= t:
                lo = mid + 1
            else:
                hi = mid
        return lo


def _local(day: date, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second), tzinfo=TZ).astimezone(UTC)


def _point_in_district(rng: random.Random, district: shapely.Polygon, keep_out: Sequence[XY],
                       min_gap: float = 500.0) -> XY:
    while True:
        xy = (rng.uniform(-3000, 3000), rng.uniform(-3000, 3000))
        if district.contains(shapely.Point(xy)) and all(
            math.dist(xy, k) > min_gap for k in keep_out
        ):
            return xy


# ---------------------------------------------------------------------- the generator


def generate(seed: int = SEED, subjects: int = SUBJECTS, days: int = DAYS) -> Corpus:
    rng = random.Random(seed)
    district_m = shapely.Polygon(_district(rng))
    district_zone = Zone.build(
        "district", "district", ZoneKind.INCLUSION,
        shapely.Polygon([lonlat(*p) for p in district_m.exterior.coords]), PROJECTION,
    )
    zones: dict[str, Zone] = {"district": district_zone}
    specs: dict[str, SubjectSpec] = {}
    curfew = Schedule("curfew", (Window(time(22), time(6)),))
    weekdays = frozenset(range(5))
    work_hours = Schedule("work", (Window(time(9), time(12), weekdays),
                                   Window(time(13), time(18), weekdays)))
    messages: list[Message] = []
    violations: list[Violation] = []
    places: dict[str, dict[str, XY]] = {}
    double_outlier_slots = {
        (rng.randrange(subjects), rng.randrange(days)) for _ in range(DOUBLE_OUTLIERS)
    }
    burst_slots = {(rng.randrange(subjects), rng.randrange(days)) for _ in range(
        BURSTS_PER_WEEK * subjects // 4)}
    deck = _deal(rng, subjects)
    for s in range(subjects):
        sid, device = f"c{s:02d}", f"ctag{s:02d}"
        home = _point_in_district(rng, district_m.buffer(-1500), [])
        work = _point_in_district(rng, district_m.buffer(-800), [home], 1500.0)
        school = _point_in_district(rng, district_m.buffer(-800), [home, work], 800.0)
        places[sid] = {"home": home, "work": work, "school": school}
        zones[f"home-{sid}"] = Zone.build(f"home-{sid}", "home", ZoneKind.INCLUSION,
                                          _circle(home, HOME_R_M), PROJECTION)
        zones[f"work-{sid}"] = Zone.build(f"work-{sid}", "work", ZoneKind.INCLUSION,
                                          _circle(work, WORK_R_M), PROJECTION)
        zones[f"school-{sid}"] = Zone.build(f"school-{sid}", "school", ZoneKind.EXCLUSION,
                                            _rect(school, SCHOOL_W_M, SCHOOL_H_M), PROJECTION)
        specs[sid] = SubjectSpec(
            subject_id=sid, timezone=TZ, officer_id="off", devices=(
                DeviceSpec(device, DeviceKind.WEARABLE, sid),),
            home_zone_id=f"home-{sid}", permitted_zone_id="district",
            exclusions=(ExclusionAssignment(f"school-{sid}", None, APPROACH_M),),
            curfew=curfew,
            inclusions=(InclusionAssignment(f"work-{sid}", work_hours, 15 * 60.0),),
        )
        plan = _Plan(rng, sid, device, district_m, home, work, school, deck[4 * s:4 * s + 4])
        for d in range(days):
            plan.day(FIRST_DAY + timedelta(days=d), s, d)
        plan.finish()
        track = plan.track
        plan_violations = plan.labels(zones)
        violations += plan_violations
        starts = [v.start for v in plan_violations] + [at for _, at in plan.kinds]
        messages += _device_messages(
            rng, device, track, plan, starts,
            double=[d for (ss, d) in double_outlier_slots if ss == s],
            bursts=[d for (ss, d) in burst_slots if ss == s],
            zones=zones, sid=sid,
        )
        violations += plan.silence_labels(messages, device)
    messages.sort(key=lambda m: (m.arrival, m.observation.device_id, m.observation.ts))
    config = CoreConfig("corpus", PROJECTION, zones, specs, RULES)
    return Corpus(config, messages, violations, subjects * days, places)


INJECTED_KINDS = ["curfew_breach", "out_at_curfew", "left_district", "left_work",
                  "school_visit", "walk_through", "approach", "device_off", "underground",
                  "strap_blip", "flat_battery"]
INJECTIONS_PER_SUBJECT = 4


def _deal(rng: random.Random, subjects: int) -> list[str]:
    """Four injected kinds per subject, dealt from a shuffled deck so that every kind
    occurs about equally often and no subject gets one twice."""
    while True:
        deck: list[str] = []
        while len(deck) < INJECTIONS_PER_SUBJECT * subjects:
            round_ = list(INJECTED_KINDS)
            rng.shuffle(round_)
            deck += round_
        hands = [deck[INJECTIONS_PER_SUBJECT * s:INJECTIONS_PER_SUBJECT * (s + 1)]
                 for s in range(subjects)]
        if all(len(set(hand)) == len(hand) for hand in hands):
            return deck


class _Plan:
    """One subject's week: the true track, device events and the injected violations."""

    def __init__(self, rng: random.Random, sid: str, device: str, district: shapely.Polygon,
                 home: XY, work: XY, school: XY, kinds: list[str]) -> None:
        self.rng, self.sid, self.device = rng, sid, device
        self.district, self.home, self.work, self.school = district, home, work, school
        self.track = Track(_local(FIRST_DAY, 0), home, indoor=True)
        self.events: list[tuple[datetime, DeviceEventType]] = []
        self.off: list[tuple[datetime, datetime]] = []  # device switched off (no fixes)
        self.underground: list[tuple[datetime, datetime]] = []
        self.battery_low_day: date | None = None
        self.battery_first_low: datetime | None = None  # first reading at or below 20 %
        self.kinds: list[tuple[str, datetime]] = []  # injected (kind, start)
        self.injections = self._choose(kinds)

    def _choose(self, kinds: list[str]) -> dict[int, str]:
        """Which day gets which of this subject's injected violations (one a day at most);
        leaving work only on a weekday."""
        days = self.rng.sample(range(DAYS), len(kinds))
        chosen = list(kinds)
        if "left_work" in chosen:
            index = chosen.index("left_work")
            weekday = next((i for i, d in enumerate(days) if d < 5), None)
            if weekday is None:
                chosen[index] = "school_visit"
            else:
                days[index], days[weekday] = days[weekday], days[index]
        return dict(zip(days, chosen, strict=True))

    def _walk_point(self, near: XY, distance: float) -> XY:
        while True:
            a = self.rng.uniform(0, 2 * math.pi)
            xy = (near[0] + distance * math.cos(a), near[1] + distance * math.sin(a))
            inside = self.district.buffer(-300).contains(shapely.Point(xy))
            if inside and math.dist(xy, self.school) > 400 and math.dist(xy, self.home) > 300:
                return xy

    def day(self, d: date, s: int, index: int) -> None:
        rng, t = self.rng, self.track
        kind = self.injections.get(index)
        weekday = d.weekday() < 5
        t.stay(_local(d, 7, rng.randrange(30, 59)), indoor=True)
        if weekday and kind != "left_district":
            t.go(self.work, BUS_MPS)
            t.stay(max(t.now, _local(d, 8, 50)), indoor=True)
            t.stay(_local(d, 12, 5), indoor=True)
            t.go(self._walk_point(self.work, 250), WALK_MPS)
            t.stay(_local(d, 12, 40))
            t.go(self.work, WALK_MPS)
            t.stay(_local(d, 12, 58), indoor=True)
            if kind == "left_work":
                t.stay(_local(d, 14), indoor=True)
                self.kinds.append((kind, t.now))
                t.go(self._walk_point(self.work, 1500), WALK_MPS)
                t.stay(_local(d, 16, 30))
                t.go(self.work, BUS_MPS)
            t.stay(_local(d, 18, rng.randrange(0, 10)), indoor=True)
            t.go(self.home, BUS_MPS)
        else:
            t.stay(_local(d, 9, rng.randrange(30, 59)), indoor=True)
            for _ in range(rng.randrange(2, 4)):
                stop = self._walk_point(self.home, rng.uniform(600, 2500))
                t.go(stop, BUS_MPS)
                t.stay(t.now + timedelta(minutes=rng.randrange(30, 90)))
            if kind == "left_district":
                outside = self._outside_point()
                self.kinds.append((kind, t.now))
                t.go(outside, CAR_MPS)
                t.stay(t.now + timedelta(minutes=rng.randrange(60, 120)))
                t.go(self._walk_point(self.home, 1200), CAR_MPS)
            t.go(self.home, BUS_MPS)
        t.stay(_local(d, 19, rng.randrange(0, 30)), indoor=True)
        self._midday_injection(d, kind)
        if kind == "out_at_curfew":
            spot = self._walk_point(self.home, 900)
            t.stay(_local(d, 20, 30), indoor=True)
            t.go(spot, WALK_MPS)
            t.stay(_local(d, 22, rng.randrange(15, 40)))
            self.kinds.append((kind, _local(d, 22)))
            t.go(self.home, WALK_MPS)
        else:
            # An evening walk that is home well before the curfew.
            spot = self._walk_point(self.home, 500)
            t.stay(_local(d, 20), indoor=True)
            t.go(spot, WALK_MPS)
            t.stay(_local(d, 20, 40))
            t.go(self.home, WALK_MPS)
        if kind == "flat_battery":
            self.battery_low_day = d
            self.events.append((_local(d, 21, 30), DeviceEventType.CHARGER_CONNECTED))
            self.events.append((_local(d, 23, 50), DeviceEventType.CHARGER_DISCONNECTED))
        if kind == "curfew_breach":
            t.stay(_local(d, 23, rng.randrange(0, 30)), indoor=True)
            self.kinds.append((kind, t.now))
            t.go(self._walk_point(self.home, 800), WALK_MPS)
            t.stay(t.now + timedelta(minutes=rng.randrange(20, 50)))
            t.go(self.home, WALK_MPS)
        t.stay(_local(d + timedelta(days=1), 0), indoor=True)

    def _midday_injection(self, d: date, kind: str | None) -> None:
        """Injections that replace part of the early evening (17:00-19:00 is home time on
        weekends and the commute on weekdays, so these go 19:xx-19:59)."""
        rng, t = self.rng, self.track
        if kind in ("school_visit", "walk_through", "approach"):
            t.go(self._near_school(300.0), BUS_MPS)
            t.stay(t.now + timedelta(minutes=2))
            if kind == "school_visit":
                self.kinds.append((kind, t.now))
                t.go(self.school, WALK_MPS)
                t.stay(t.now + timedelta(minutes=rng.randrange(5, 15)))
                t.go(self._near_school(300.0), WALK_MPS)
            elif kind == "walk_through":
                west = (self.school[0] - 250.0, self.school[1])
                east = (self.school[0] + 250.0, self.school[1])
                t.go(west, WALK_MPS)
                self.kinds.append((kind, t.now))
                t.go(east, WALK_MPS)
            else:
                spot = (self.school[0] - SCHOOL_W_M / 2 - 55.0, self.school[1])
                t.go(spot, WALK_MPS)
                self.kinds.append((kind, t.now))
                t.stay(t.now + timedelta(minutes=rng.randrange(6, 11)))
                t.go(self._near_school(300.0), WALK_MPS)
            t.go(self.home, BUS_MPS)
            t.stay(t.now + timedelta(minutes=5), indoor=True)
        elif kind == "device_off":
            start = t.now + timedelta(minutes=5)
            self.off.append((start, start + timedelta(minutes=rng.randrange(25, 45))))
            self.kinds.append((kind, start))
        elif kind == "underground":
            mall = self._walk_point(self.home, 1500)
            t.go(mall, BUS_MPS)
            start = t.now
            t.stay(start + timedelta(minutes=rng.randrange(30, 45)), underground=True)
            self.underground.append((start, t.now))
            self.kinds.append((kind, start))
            t.go(self.home, BUS_MPS)
        elif kind == "strap_blip":
            at = t.now + timedelta(minutes=3)
            self.events.append((at, DeviceEventType.STRAP_OPEN))
            self.events.append((at + timedelta(minutes=2), DeviceEventType.STRAP_CLOSED))
            self.kinds.append((kind, at))

    def _near_school(self, distance: float) -> XY:
        return (self.school[0], self.school[1] - distance)

    def _outside_point(self) -> XY:
        boundary = self.district.exterior
        p = boundary.interpolate(self.rng.random(), normalized=True)
        direction = (p.x, p.y)
        norm = math.hypot(*direction)
        return (p.x + 3000 * direction[0] / norm, p.y + 3000 * direction[1] / norm)

    def finish(self) -> None:
        end = _local(FIRST_DAY + timedelta(days=DAYS), 0)
        self.track.stay(end, indoor=True)

    # ------------------------------------------------------------------ labels

    def labels(self, zones: dict[str, Zone]) -> list[Violation]:
        """Ground truth from the true track, sampled every 5 s against the zones."""
        sid = self.sid
        start, end = self.track.legs[0].t0, self.track.legs[-1].t1
        step_s = LABEL_STEP_S
        count = int((end - start).total_seconds() // step_s) + 1
        offsets_s = np.arange(count, dtype=np.float64) * step_s
        points = shapely.points(self.track.positions_at(offsets_s))

        def at(index: int) -> datetime:
            return start + timedelta(seconds=float(offsets_s[index]))

        def signed(zone: Zone) -> npt.NDArray[np.float64]:
            distance = shapely.distance(zone.boundary_m, points)
            inside = shapely.contains(zone.geometry_m, points)
            signed_m: npt.NDArray[np.float64] = np.where(inside, -distance, distance)
            return signed_m

        # Local wall-clock minute and weekday of each sample (Asia/Shanghai has no DST).
        offset_s = (TZ.utcoffset(start.replace(tzinfo=None)) or timedelta(0)).total_seconds()
        epoch_s = np.arange(count) * step_s + start.timestamp() + offset_s
        minute = (epoch_s // 60) % 1440
        weekday = ((epoch_s // 86400).astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
        curfew = (minute >= 22 * 60) | (minute < 6 * 60)
        work_hours = (weekday < 5) & (  # 09:00-12:00 and 13:00-18:00 with 15 min grace
            ((minute >= 555) & (minute < 720)) | ((minute >= 795) & (minute < 1080)))
        margin = RULES.zone.margin_m
        school = signed(zones[f"school-{sid}"])
        states = {
            (RuleId.BOUNDARY_EXIT, "district"): signed(zones["district"]) > DETECT_PAST_FENCE_M,
            (RuleId.CURFEW_AWAY, f"home-{sid}"):
                (signed(zones[f"home-{sid}"]) > DETECT_PAST_FENCE_M) & curfew,
            (RuleId.INCLUSION_AWAY, f"work-{sid}"):
                (signed(zones[f"work-{sid}"]) > DETECT_PAST_FENCE_M) & work_hours,
            # Inside at all (a route home that cuts through the school counts too); the
            # rule's own test is liberal (the accuracy circle reaching in by the margin).
            (RuleId.EXCLUSION_ENTRY, f"school-{sid}"): school <= 0.0,
            (RuleId.EXCLUSION_APPROACH, f"school-{sid}"):
                (school > 0) & (school <= APPROACH_M - margin),
        }
        out: list[Violation] = []
        for (rule, zone_id), on in states.items():
            padded = np.concatenate(([False], on, [False])).astype(np.int8)
            edges = np.diff(padded)
            for first, after in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1),
                                    strict=True):
                stop = at(int(after)) if after < count else end
                out.append(Violation(sid, rule, zone_id, at(int(first)), stop, "track"))
        for opened, kind in self.events:
            if kind is DeviceEventType.STRAP_OPEN:
                out.append(Violation(sid, RuleId.STRAP_OPEN, None, opened,
                                     opened + timedelta(minutes=2), "strap_blip"))
        gnss_s = RULES.thresholds(DeviceKind.WEARABLE).gnss_lost_seconds or 0.0
        for began, ended in self.underground:
            out.append(Violation(sid, RuleId.GNSS_LOST, None,
                                 began + timedelta(seconds=gnss_s), ended, "underground"))
        return out

    def silence_labels(self, messages: Sequence[Message], device: str) -> list[Violation]:
        threshold = timedelta(seconds=RULES.thresholds(DeviceKind.WEARABLE).silence_seconds
                              or 0)
        arrivals = sorted(m.arrival for m in messages if m.observation.device_id == device)
        out = []
        for a, b in itertools.pairwise(arrivals):
            if b - a > threshold:
                out.append(Violation(self.sid, RuleId.DEVICE_SILENT, None, a + threshold, b,
                                     "device_off"))
        if self.battery_low_day is not None and self.battery_first_low is not None:
            # Detectable with the second reading at or below the threshold.
            start = self.battery_first_low + timedelta(seconds=PING_S)
            out.append(Violation(self.sid, RuleId.BATTERY_LOW, None, start,
                                 _local(self.battery_low_day, 21, 30), "flat_battery"))
        return out


# ---------------------------------------------------------------------- the device


def _device_messages(
    rng: random.Random,
    device: str,
    track: Track,
    plan: _Plan,
    violation_starts: Sequence[datetime],
    double: Sequence[int],
    bursts: Sequence[int],
    zones: dict[str, Zone],
    sid: str,
) -> list[Message]:
    start = track.legs[0].t0 + timedelta(seconds=rng.randrange(PING_S))
    end = track.legs[-1].t1
    quiet = sorted(violation_starts)
    quiet_gap = timedelta(seconds=QUIET_AROUND_S)

    def near_violation(t: datetime) -> bool:
        index = bisect.bisect_left(quiet, t - quiet_gap)
        return index < len(quiet) and quiet[index] < t + quiet_gap

    def within(t: datetime, spans: Sequence[tuple[datetime, datetime]]) -> bool:
        return any(a <= t < b for a, b in spans)

    # Noise schedule: skipped-fix gaps and late bursts, away from violation starts.
    gaps: list[tuple[datetime, datetime]] = []
    for d in range(DAYS):
        for _ in range(GAPS_PER_DAY):
            g0 = _local(FIRST_DAY + timedelta(days=d), rng.randrange(6, 23), rng.randrange(60))
            g1 = g0 + timedelta(minutes=rng.randrange(2, 9))
            if not near_violation(g0) and not near_violation(g1):
                gaps.append((g0, g1))
    burst_windows: list[tuple[datetime, datetime, bool]] = []
    for d in bursts:
        b0 = _local(FIRST_DAY + timedelta(days=d), rng.randrange(8, 21), rng.randrange(60))
        b1 = b0 + timedelta(minutes=rng.randrange(5, 13))
        if not near_violation(b0) and not near_violation(b1):
            burst_windows.append((b0, b1, rng.random() < 0.5))
    doubles = {
        _local(FIRST_DAY + timedelta(days=d), rng.randrange(1, 23), rng.randrange(60))
        for d in double
    }

    out: list[Message] = []
    drift = [0.0, 0.0]
    battery = 96.0
    battery_day = plan.battery_low_day
    pending_double: tuple[XY, float] | None = None
    t = start
    while t < end:
        xy, leg = track.position(t)
        if within(t, plan.off) or within(t, gaps):
            t += timedelta(seconds=PING_S)
            continue
        # Accuracy and indoor drift (an AR(1) offset in units of the stated accuracy).
        if leg.indoor:
            accuracy = rng.uniform(15.0, 60.0)
            drift = [0.9 * drift[0] + rng.gauss(0, 0.28), 0.9 * drift[1] + rng.gauss(0, 0.28)]
            norm = math.hypot(*drift)
            if norm > 2.2:
                drift = [drift[0] * 2.2 / norm, drift[1] * 2.2 / norm]
            error = (drift[0] * accuracy, drift[1] * accuracy)
            source = FixSource.WIFI if rng.random() < 0.15 else FixSource.GNSS
        else:
            drift = [0.0, 0.0]
            accuracy = rng.uniform(5.0, OUTDOOR_ACC_MAX_M)
            r = accuracy * math.sqrt(rng.random())
            a = rng.uniform(0, 2 * math.pi)
            error = (r * math.cos(a), r * math.sin(a))
            source = FixSource.GNSS
        if leg.underground:
            accuracy = rng.uniform(300.0, 700.0)
            r = accuracy * 0.7 * math.sqrt(rng.random())
            a = rng.uniform(0, 2 * math.pi)
            error = (r * math.cos(a), r * math.sin(a))
            source = FixSource.CELL
        reported = (xy[0] + error[0], xy[1] + error[1])
        # Outliers: 1-3 km away, claiming a good accuracy.
        if pending_double is not None:
            reported, accuracy = pending_double
            pending_double = None
        elif not near_violation(t) and rng.random() < OUTLIER_P:
            jump = rng.uniform(1000, 3000)
            a = rng.uniform(0, 2 * math.pi)
            reported = (xy[0] + jump * math.cos(a), xy[1] + jump * math.sin(a))
            accuracy = rng.uniform(10.0, 40.0)
        elif any(0 <= (t - d0).total_seconds() < PING_S for d0 in doubles):
            jump = rng.uniform(1000, 3000)
            a = rng.uniform(0, 2 * math.pi)
            reported = (xy[0] + jump * math.cos(a), xy[1] + jump * math.sin(a))
            accuracy = rng.uniform(10.0, 40.0)
            pending_double = (reported, accuracy)
        # Battery: drains 12 points a day and is charged every night; on the flat-battery
        # day it runs down from 96 % at noon to 14 % at 21:20 and charges from 21:30.
        local_t = t.astimezone(TZ)
        minute_of_day = local_t.hour * 60 + local_t.minute
        battery = 96.0 - minute_of_day / 1440 * 12.0
        if battery_day is not None and local_t.date() == battery_day and minute_of_day >= 720:
            battery = max(96.0 - (minute_of_day - 720) * 82.0 / 560.0, 14.0)
            if minute_of_day >= 1290:
                battery = min(100.0, 14.0 + (minute_of_day - 1290) * 0.5)
        lon, lat = _lonlat_fast(*reported)
        fix = LocationFix(
            device_id=device, ts=t, lat=lat, lon=lon, accuracy_m=round(accuracy, 1),
            source=source, received_at=t, battery_pct=round(battery),
        )
        latency = timedelta(seconds=rng.uniform(1.0, 5.0))
        arrival = t + latency
        for b0, b1, current_first in burst_windows:
            if b0 <= t < b1:
                # Stored while out of coverage; uploaded together when it returns.
                arrival = b1 + timedelta(seconds=30 if current_first else 5)
        out.append(Message(fix, arrival))
        if (battery_day is not None and local_t.date() == battery_day
                and round(battery) <= 20.0 and plan.battery_first_low is None):
            plan.battery_first_low = t
        t += timedelta(seconds=PING_S)
    for at, kind in plan.events:
        out.append(Message(DeviceEvent(device, at, kind, at), at + timedelta(seconds=2)))
    # In a current-first burst the newest fix goes first: give it the earlier arrival.
    for b0, b1, current_first in burst_windows:
        if current_first:
            in_burst = [m for m in out if b0 <= m.observation.ts < b1]
            if in_burst:
                newest = max(in_burst, key=lambda m: m.observation.ts)
                newest.arrival = b1 + timedelta(seconds=4)
    return out


# ---------------------------------------------------------------------- running and scoring


@dataclass(frozen=True, slots=True)
class Alert:
    """A raised finding and when it was emitted (arrival or tick time)."""

    subject_id: str
    rule: RuleId
    zone_id: str | None
    at: datetime
    emitted: datetime


def run_emon(corpus: Corpus) -> list[Alert]:
    engine = Engine(corpus.config)
    alerts: list[Alert] = []
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = corpus.first
    next_tick = epoch + timedelta(
        seconds=math.ceil((first - epoch).total_seconds() / TICK_S) * TICK_S
    )
    tick = timedelta(seconds=TICK_S)

    def record(findings: Iterable[Finding], emitted: datetime) -> None:
        for f in findings:
            if f.kind is FindingKind.RAISED:
                alerts.append(Alert(f.subject_id, f.rule, f.zone_id, f.at, emitted))

    for message in corpus.messages:
        while next_tick <= message.arrival:
            record(engine.tick(next_tick), next_tick)
            next_tick += tick
        record(engine.observe(message.observation, message.arrival), message.arrival)
    record(engine.tick(corpus.last), corpus.last)
    return alerts


def run_naive(corpus: Corpus) -> list[Alert]:
    """Per-ping point-in-polygon: each fix's point against each zone, in arrival order, no
    accuracy, no dwell, no jump filter; a rule is raised on the first violating ping and
    cleared on the next good one."""
    config = corpus.config
    active: set[tuple[str, RuleId, str | None]] = set()
    alerts: list[Alert] = []
    for message in corpus.messages:
        fix = message.observation
        if not isinstance(fix, LocationFix):
            continue
        subject = config.subjects[config.devices[fix.device_id].subject_id]
        x, y = config.projection.forward(fix.lon, fix.lat)
        point = shapely.Point(x, y)
        zones = config.zones

        def inside(zone_id: str, point: shapely.Point = point) -> bool:
            return _contains(config, zone_id, point)

        states: dict[tuple[RuleId, str | None], bool] = {}
        assert subject.permitted_zone_id is not None
        assert subject.home_zone_id is not None
        assert subject.curfew is not None
        states[(RuleId.BOUNDARY_EXIT, subject.permitted_zone_id)] = not inside(
            subject.permitted_zone_id)
        states[(RuleId.CURFEW_AWAY, subject.home_zone_id)] = subject.curfew.is_active(
            fix.ts, subject.timezone) and not inside(subject.home_zone_id)
        for inclusion in subject.inclusions:
            hours = inclusion.schedule.active_interval(fix.ts, subject.timezone)
            late_ok = hours is not None and fix.ts < hours[0] + timedelta(
                seconds=inclusion.grace_seconds)
            states[(RuleId.INCLUSION_AWAY, inclusion.zone_id)] = (
                hours is not None and not late_ok and not inside(inclusion.zone_id))
        for exclusion in subject.exclusions:
            zone = zones[exclusion.zone_id]
            in_zone = inside(exclusion.zone_id)
            states[(RuleId.EXCLUSION_ENTRY, exclusion.zone_id)] = in_zone
            near = float(zone.geometry_m.distance(point)) <= exclusion.approach_m
            states[(RuleId.EXCLUSION_APPROACH, exclusion.zone_id)] = near and not in_zone
        for (rule, zone_id), on in states.items():
            key = (subject.subject_id, rule, zone_id)
            if on and key not in active:
                active.add(key)
                alerts.append(Alert(subject.subject_id, rule, zone_id, fix.ts, message.arrival))
            elif not on:
                active.discard(key)
    return alerts


def _contains(config: CoreConfig, zone_id: str, point: shapely.Point) -> bool:
    return bool(config.zones[zone_id].geometry_m.contains(point))


MATCH_TOLERANCE = timedelta(minutes=3)
CROSSING_AS = {RuleId.EXCLUSION_CROSSED: RuleId.EXCLUSION_ENTRY}


@dataclass(slots=True)
class Score:
    alerts: int = 0
    true_alerts: int = 0
    violations: int = 0  # lasting >= 2 min
    detected: int = 0
    timely: int = 0
    false_by_subject: dict[str, int] = field(default_factory=dict)
    late: list[tuple[Violation, timedelta]] = field(default_factory=list)
    missed: list[Violation] = field(default_factory=list)
    false: list[Alert] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.true_alerts / self.alerts if self.alerts else 1.0

    @property
    def recall(self) -> float:
        return self.detected / self.violations if self.violations else 1.0


def score(corpus: Corpus, alerts: Sequence[Alert], rules: Iterable[RuleId]) -> Score:
    wanted = set(rules)
    result = Score()
    truth = [v for v in corpus.violations if v.rule in wanted]
    for alert in alerts:
        rule = CROSSING_AS.get(alert.rule, alert.rule)
        if rule not in wanted:
            continue
        result.alerts += 1
        matched = any(
            v.subject_id == alert.subject_id and v.rule == rule and v.zone_id == alert.zone_id
            and v.start - MATCH_TOLERANCE <= alert.at <= v.end + MATCH_TOLERANCE
            for v in truth
        )
        if matched:
            result.true_alerts += 1
        else:
            result.false.append(alert)
            result.false_by_subject[alert.subject_id] = (
                result.false_by_subject.get(alert.subject_id, 0) + 1)
    for v in truth:
        if v.duration < MIN_VIOLATION:
            continue
        result.violations += 1
        hits = [
            a for a in alerts
            if a.subject_id == v.subject_id and CROSSING_AS.get(a.rule, a.rule) == v.rule
            and a.zone_id == v.zone_id
            and v.start - MATCH_TOLERANCE <= a.at <= v.end + MATCH_TOLERANCE
        ]
        if not hits:
            result.missed.append(v)
            continue
        result.detected += 1
        latency = min(h.emitted for h in hits) - v.start
        result.latencies_s.append(latency.total_seconds())
        if latency <= allowed_latency(v.rule):
            result.timely += 1
        else:
            result.late.append((v, latency))
    return result
