"""Frequent places (居住地, 工作地, 经常活动区域) and the trajectory-anomaly rule (日常轨迹异常).

Pure. `learn_frequent_places` turns the last weeks of one subject's fixes into places;
`HabitRule` counts, per local day, the time the subject spends far from all of them.

The learner is dwell-weighted grid clustering in local metres:
- each fix stands for the time until the next one (at most `max_dwell_seconds`: a gap in
  the data is not time spent there), so a fix a minute at home all night weighs a night
  and a stray outlier weighs a minute;
- weights are summed in square cells (`cell_m`, 150 m); cells with at least
  `min_cell_share` of all the time are kept, and kept cells that touch (8 neighbours) form
  one place, so a home whose indoor drift straddles a cell edge is one place;
- a place's centre is the dwell-weighted mean of its fixes, its radius reaches the far
  corner of its farthest cell, its share is its part of all the time, its typical hours
  the local hours holding at least a quarter of its busiest hour's time;
- the place with most night time (22:00-06:00 local) is the residence, the other with most
  weekday working time (09:00-17:00) the workplace, the rest `area-1`, `area-2`, ...
Why this and not DBSCAN or k-means: it needs no parameter that depends on the person (no
number of clusters, no density that changes with the fix rate), it is linear in the fixes,
one outlier cannot move a place, the result does not depend on the order of the fixes, and
it needs no new dependency (scikit-learn would be the heavy alternative).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from alerts.model import Finding, FindingKind, RuleId
from geofence.behaviour_config import HabitParams
from geofence.observation import LocationFix
from geofence.zones import LocalProjection

NIGHT_HOURS = frozenset({22, 23, 0, 1, 2, 3, 4, 5})
WORK_HOURS = frozenset(range(9, 17))
WORK_WEEKDAYS = frozenset(range(5))  # Monday to Friday
# A typical hour of a place holds at least this part of its busiest hour's time.
TYPICAL_HOUR_SHARE = 0.25
_HALF_DIAGONAL = math.sqrt(2.0) / 2.0
_NEIGHBOURS = tuple((dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy)


@dataclass(frozen=True, slots=True)
class HistoryFix:
    """One stored fix of a subject, as the learner reads it."""

    ts: datetime
    lat: float
    lon: float
    accuracy_m: float
    device_id: str = ""


@dataclass(frozen=True, slots=True)
class FrequentPlace:
    label: str  # residence, workplace, area-1, ...
    lat: float
    lon: float
    radius_m: float
    share: float  # part of the subject's observed time spent here
    hours: tuple[int, ...]  # typical local hours

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label, "lat": round(self.lat, 6), "lon": round(self.lon, 6),
            "radius_m": round(self.radius_m, 1), "share": round(self.share, 4),
            "hours": list(self.hours),
        }


@dataclass(frozen=True, slots=True)
class LearnedPlaces:
    subject_id: str
    learned_at: datetime
    history_days: int  # local days with usable fixes in the window
    places: tuple[FrequentPlace, ...]

    def armed(self, params: HabitParams) -> bool:
        return bool(self.places) and self.history_days >= params.min_history_days


def sample_bucket(ts: datetime, sample_seconds: float) -> int:
    """The learning sample a fix belongs to (epoch-aligned; the store's query uses the
    same: `floor(extract(epoch from ts) / sample_seconds)`)."""
    return math.floor(ts.timestamp() / sample_seconds)


def sample_history(fixes: Iterable[HistoryFix], sample_seconds: float) -> list[HistoryFix]:
    """The first fix (by ts, then device id) of each sample bucket, in time order."""
    first: dict[int, HistoryFix] = {}
    for fix in fixes:
        bucket = sample_bucket(fix.ts, sample_seconds)
        held = first.get(bucket)
        if held is None or (fix.ts, fix.device_id) < (held.ts, held.device_id):
            first[bucket] = fix
    return [first[b] for b in sorted(first)]


@dataclass(slots=True)
class _Cell:
    weight: float = 0.0
    sum_x: float = 0.0
    sum_y: float = 0.0
    hours: list[float] = field(default_factory=lambda: [0.0] * 24)
    night: float = 0.0
    work: float = 0.0


def learn_frequent_places(
    subject_id: str,
    fixes: Iterable[HistoryFix],
    timezone: ZoneInfo,
    params: HabitParams,
    learned_at: datetime,
) -> LearnedPlaces:
    """The subject's frequent places from the fixes taken in the `history_days` before
    `learned_at` (others are ignored), sampled to one per `sample_seconds`."""
    since = learned_at - timedelta(days=params.history_days)
    usable = [
        f for f in fixes
        if since <= f.ts < learned_at and f.accuracy_m <= params.max_accuracy_m
    ]
    sampled = sample_history(usable, params.sample_seconds)
    if not sampled:
        return LearnedPlaces(subject_id, learned_at, 0, ())
    lats = sorted(f.lat for f in sampled)
    lons = sorted(f.lon for f in sampled)
    projection = LocalProjection(lons[len(lons) // 2], lats[len(lats) // 2])
    cells: dict[tuple[int, int], _Cell] = {}
    days: set[date] = set()
    total = 0.0
    for index, fix in enumerate(sampled):
        following = sampled[index + 1].ts if index + 1 < len(sampled) else learned_at
        weight = min((following - fix.ts).total_seconds(), params.max_dwell_seconds)
        x, y = projection.forward(fix.lon, fix.lat)
        key = (math.floor(x / params.cell_m), math.floor(y / params.cell_m))
        cell = cells.setdefault(key, _Cell())
        local = fix.ts.astimezone(timezone)
        days.add(local.date())
        cell.weight += weight
        cell.sum_x += weight * x
        cell.sum_y += weight * y
        cell.hours[local.hour] += weight
        if local.hour in NIGHT_HOURS:
            cell.night += weight
        if local.hour in WORK_HOURS and local.weekday() in WORK_WEEKDAYS:
            cell.work += weight
        total += weight
    if total <= 0.0:
        return LearnedPlaces(subject_id, learned_at, len(days), ())
    kept = {k for k, c in cells.items() if c.weight >= params.min_cell_share * total}
    components: list[list[tuple[int, int]]] = []
    seen: set[tuple[int, int]] = set()
    for start in sorted(kept):
        if start in seen:
            continue
        seen.add(start)
        stack, members = [start], []
        while stack:
            cx, cy = stack.pop()
            members.append((cx, cy))
            for dx, dy in _NEIGHBOURS:
                other = (cx + dx, cy + dy)
                if other in kept and other not in seen:
                    seen.add(other)
                    stack.append(other)
        components.append(sorted(members))
    summaries = [_summarise(m, cells, projection, params, total) for m in components]
    summaries.sort(key=lambda s: (-s.weight, s.lat, s.lon))
    summaries = summaries[: params.max_places]
    return LearnedPlaces(subject_id, learned_at, len(days), _label(summaries))


@dataclass(slots=True)
class _Summary:
    weight: float
    lat: float
    lon: float
    radius_m: float
    share: float
    hours: tuple[int, ...]
    night: float
    work: float


def _summarise(
    members: Sequence[tuple[int, int]],
    cells: dict[tuple[int, int], _Cell],
    projection: LocalProjection,
    params: HabitParams,
    total: float,
) -> _Summary:
    weight = sum(cells[k].weight for k in members)
    cx = sum(cells[k].sum_x for k in members) / weight
    cy = sum(cells[k].sum_y for k in members) / weight
    radius = max(
        math.dist((cx, cy), ((kx + 0.5) * params.cell_m, (ky + 0.5) * params.cell_m))
        for kx, ky in members
    ) + params.cell_m * _HALF_DIAGONAL
    hours = [sum(cells[k].hours[h] for k in members) for h in range(24)]
    busiest = max(hours)
    lon_lat = projection.inverse_array(np.array([[cx, cy]], dtype=float))
    return _Summary(
        weight=weight, lon=float(lon_lat[0, 0]), lat=float(lon_lat[0, 1]), radius_m=radius,
        share=weight / total,
        hours=tuple(
            h for h in range(24) if busiest > 0 and hours[h] >= TYPICAL_HOUR_SHARE * busiest
        ),
        night=sum(cells[k].night for k in members), work=sum(cells[k].work for k in members),
    )


def _label(summaries: list[_Summary]) -> tuple[FrequentPlace, ...]:
    labels: dict[int, str] = {}
    by_night = max(range(len(summaries)), key=lambda i: summaries[i].night, default=None)
    if by_night is not None and summaries[by_night].night > 0:
        labels[by_night] = "residence"
    rest = [i for i in range(len(summaries)) if i not in labels]
    by_work = max(rest, key=lambda i: summaries[i].work, default=None)
    if by_work is not None and summaries[by_work].work > 0:
        labels[by_work] = "workplace"
    area = 0
    for i in range(len(summaries)):
        if i not in labels:
            area += 1
            labels[i] = f"area-{area}"
    return tuple(
        FrequentPlace(labels[i], s.lat, s.lon, s.radius_m, s.share, s.hours)
        for i, s in enumerate(summaries)
    )


# ---------------------------------------------------------------------- the rule


@dataclass(slots=True)
class _SubjectDay:
    """What the rule knows of one subject: its places (projected with the config's
    projection) and the current local day's time far from them."""

    learned: LearnedPlaces | None = None
    projected: tuple[tuple[FrequentPlace, float, float], ...] = ()
    projection: LocalProjection | None = None
    last_ts: datetime | None = None
    last_far: bool = False
    day: date | None = None
    day_start: datetime | None = None  # the local day's midnight, in UTC
    far_seconds: float = 0.0
    raised: bool = False
    raised_device: str = ""


class HabitRule:
    """`trajectory_anomaly`: raised the moment a subject's time far from all their frequent
    places in one local day reaches `far_seconds_per_day`; cleared at the start of the next
    local day they report from. In-order fixes only (late fixes are not counted)."""

    def __init__(self) -> None:
        self._subjects: dict[str, _SubjectDay] = {}

    def set_places(self, learned: LearnedPlaces) -> None:
        state = self._subjects.setdefault(learned.subject_id, _SubjectDay())
        state.learned, state.projection, state.projected = learned, None, ()

    def places(self, subject_id: str) -> LearnedPlaces | None:
        state = self._subjects.get(subject_id)
        return state.learned if state is not None else None

    def on_fix(
        self,
        params: HabitParams,
        projection: LocalProjection,
        timezone: ZoneInfo,
        tier_of: Any,
        subject_id: str,
        fix: LocationFix,
        xy: tuple[float, float],
    ) -> list[Finding]:
        state = self._subjects.get(subject_id)
        if state is None or state.learned is None or not state.learned.armed(params):
            return []
        if state.last_ts is not None and fix.ts <= state.last_ts:
            return []  # an older fix of the subject's other device
        if fix.accuracy_m > params.max_accuracy_m:
            return []
        if state.projection != projection:
            state.projection = projection
            state.projected = tuple(
                (p, *projection.forward(p.lon, p.lat)) for p in state.learned.places
            )
        distances = [
            (p, max(0.0, math.dist(xy, (px, py)) - p.radius_m)) for p, px, py in state.projected
        ]
        far = min(d for _, d in distances) - fix.accuracy_m > params.far_m
        local = fix.ts.astimezone(timezone)
        findings: list[Finding] = []
        if state.day != local.date() or state.day_start is None:
            day_start = datetime.combine(local.date(), time(0), timezone).astimezone(UTC)
            if state.raised:
                findings.append(self._finding(
                    tier_of, subject_id, state.raised_device, FindingKind.CLEARED, day_start,
                    {"day": state.day.isoformat() if state.day else None,
                     "far_minutes": round(state.far_seconds / 60.0)},
                    "A new day began; the count of time away from the usual places restarts.",
                ))
                state.raised = False
            state.day, state.day_start, state.far_seconds = local.date(), day_start, 0.0
        day_start = state.day_start
        if state.last_far and far and state.last_ts is not None:
            begun = max(state.last_ts, day_start)
            gap = (fix.ts - begun).total_seconds()
            state.far_seconds += max(0.0, min(gap, params.max_dwell_seconds))
        state.last_ts, state.last_far = fix.ts, far
        if not state.raised and state.far_seconds >= params.far_seconds_per_day:
            state.raised, state.raised_device = True, fix.device_id
            nearest, distance = min(distances, key=lambda pd: pd[1])
            evidence = {
                "day": local.date().isoformat(),
                "far_minutes": round(state.far_seconds / 60.0),
                "far_m": params.far_m,
                "places": [
                    {"label": p.label, "distance_m": round(d, -1)} for p, d in distances
                ],
                "learned_at": state.learned.learned_at.isoformat(),
                "fix": fix.to_wire(),
            }
            reason = (
                f"Spent {_duration(state.far_seconds)} today more than "
                f"{_km(params.far_m)} from all usual places (nearest: {nearest.label}, "
                f"{_km(distance)} away)."
            )
            findings.append(self._finding(
                tier_of, subject_id, fix.device_id, FindingKind.RAISED, fix.ts, evidence, reason
            ))
        return findings

    @staticmethod
    def _finding(
        tier_of: Any, subject_id: str, device_id: str, kind: FindingKind, at: datetime,
        evidence: dict[str, Any], reason: str,
    ) -> Finding:
        return Finding(
            subject_id=subject_id, device_id=device_id, rule=RuleId.TRAJECTORY_ANOMALY,
            zone_id=None, tier=tier_of(RuleId.TRAJECTORY_ANOMALY), kind=kind,
            at=at.astimezone(UTC), evidence=evidence, reason=reason,
        )


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60.0)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _km(metres: float) -> str:
    return f"{metres / 1000.0:.1f} km"
