"""A richer config for the issue-4 rule tests, built in code on core_helpers' metre grid.

Layout (metres east/north of ORIGIN; squares are exact in the config's projection):

    permitted  inclusion  half-side 2000 m at (0, 0)           the district (boundary_exit)
    home       inclusion  half-side 50 m at HOME (-1000, -1000) curfew 22:00-06:00
    work       inclusion  half-side 60 m at WORK (1000, -1000)  Mon-Fri 09:00-18:00, 15 min
                                                                 grace, no work on EXCEPTION_DAY
    school     exclusion  half-side 50 m at SCHOOL (1000, 1000) always, 100 m approach band
    park       exclusion  half-side 50 m at PARK (-1000, 1000)  only 07:00-18:00
    dest       inclusion  half-side 1000 m at DEST (6000, 0)    a leave's destination

Subject S (tag TAG, phone PHONE) is held to all of them. Leave LEAVE_ID: Saturday
LEAVE_DAY 09:00-17:00 to `dest`, route corridor 400 m wide along y = 0 from the district
edge, 30 minutes' return grace. Devices: a tag (silence 15 min, GNSS lost 20 min, battery
20/10 %) and a phone (silence 60 min, no GNSS rule, battery 15/5 %).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import shapely

from alerts.model import Finding, FindingKind, RuleId
from geofence.config import (
    CoreConfig,
    DeviceSpec,
    DeviceThresholds,
    ExclusionAssignment,
    InclusionAssignment,
    LeaveSpec,
    RuleParams,
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
from tests.core_helpers import DAY, PROJECTION, TZ, local, lonlat, square_zone

SUBJECT = "s1"
TAG = "tag1"
PHONE = "phone1"
OFFICER = "off1"

PERMITTED, HOME_ZONE, WORK, SCHOOL, PARK, DEST = (
    "permitted", "home", "work", "school", "park", "dest",
)
HOME = (-1000.0, -1000.0)
WORK_XY = (1000.0, -1000.0)
SCHOOL_XY = (1000.0, 1000.0)
PARK_XY = (-1000.0, 1000.0)
DEST_XY = (6000.0, 0.0)
HALF_SMALL_M = 50.0
HALF_WORK_M = 60.0
APPROACH_M = 100.0

LEAVE_ID = "leave1"
LEAVE_DAY = DAY + timedelta(days=1)  # Saturday 2026-11-21
EXCEPTION_DAY = date(2026, 11, 23)  # a Monday without work
ROUTE_WIDTH_M = 400.0

MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)

WEARABLE_THRESHOLDS = DeviceThresholds(
    silence_seconds=15 * 60.0,
    gnss_lost_seconds=20 * 60.0,
    battery_low_pct=20.0,
    battery_critical_pct=10.0,
)
PHONE_THRESHOLDS = DeviceThresholds(
    silence_seconds=60 * 60.0,
    gnss_lost_seconds=None,
    battery_low_pct=15.0,
    battery_critical_pct=5.0,
)


def zones() -> dict[str, Zone]:
    return {
        PERMITTED: square_zone(PERMITTED, ZoneKind.INCLUSION, 0.0, 0.0, 2000.0),
        HOME_ZONE: square_zone(HOME_ZONE, ZoneKind.INCLUSION, *HOME, HALF_SMALL_M),
        WORK: square_zone(WORK, ZoneKind.INCLUSION, *WORK_XY, HALF_WORK_M),
        SCHOOL: square_zone(SCHOOL, ZoneKind.EXCLUSION, *SCHOOL_XY, HALF_SMALL_M),
        PARK: square_zone(PARK, ZoneKind.EXCLUSION, *PARK_XY, HALF_SMALL_M),
        DEST: square_zone(DEST, ZoneKind.INCLUSION, *DEST_XY, 1000.0),
    }


def leave(zone_map: dict[str, Zone], start: datetime, end: datetime) -> LeaveSpec:
    corridor = shapely.buffer(shapely.LineString([(2000.0, 0.0), (5000.0, 0.0)]),
                              ROUTE_WIDTH_M / 2.0)
    area_m = shapely.union_all(
        [zone_map[PERMITTED].geometry_m, zone_map[DEST].geometry_m, corridor]
    )
    area = Zone.from_projected(f"leave:{LEAVE_ID}", LEAVE_ID, ZoneKind.INCLUSION, area_m,
                               PROJECTION)
    return LeaveSpec(LEAVE_ID, start, end, area, DEST, return_grace_seconds=30 * 60.0)


def make_rules_config(
    rules: RuleParams | None = None,
    with_leave: bool = True,
    approach_m: float = APPROACH_M,
    thresholds: dict[DeviceKind, DeviceThresholds] | None = None,
    subject_thresholds: dict[DeviceKind, DeviceThresholds] | None = None,
    devices: Iterable[tuple[str, DeviceKind]] = ((TAG, DeviceKind.WEARABLE),
                                                 (PHONE, DeviceKind.PHONE)),
    zone_map: dict[str, Zone] | None = None,
) -> CoreConfig:
    if zone_map is None:
        zone_map = zones()
    curfew = Schedule("curfew", (Window(time(22), time(6)),))
    work_hours = Schedule(
        "work-hours",
        (Window(time(9), time(18), frozenset(range(5))),),
        frozenset({EXCEPTION_DAY}),
    )
    park_hours = Schedule("park-hours", (Window(time(7), time(18)),))
    leaves: tuple[LeaveSpec, ...] = ()
    if with_leave:
        leaves = (leave(zone_map, local(9, day=LEAVE_DAY), local(17, day=LEAVE_DAY)),)
    subject = SubjectSpec(
        subject_id=SUBJECT,
        timezone=TZ,
        officer_id=OFFICER,
        devices=tuple(DeviceSpec(d, k, SUBJECT) for d, k in devices),
        home_zone_id=HOME_ZONE,
        permitted_zone_id=PERMITTED,
        exclusions=(
            ExclusionAssignment(SCHOOL, None, approach_m),
            ExclusionAssignment(PARK, park_hours),
        ),
        curfew=curfew,
        inclusions=(InclusionAssignment(WORK, work_hours, grace_seconds=15 * 60.0),),
        leaves=leaves,
        device_thresholds=subject_thresholds or {},
    )
    base = rules if rules is not None else RuleParams()
    if thresholds is None:
        thresholds = {DeviceKind.WEARABLE: WEARABLE_THRESHOLDS, DeviceKind.PHONE: PHONE_THRESHOLDS}
    params = RuleParams(
        zone=base.zone,
        zone_overrides=base.zone_overrides,
        max_speed_mps=base.max_speed_mps,
        max_consecutive_jump_rejections=base.max_consecutive_jump_rejections,
        crossing=base.crossing,
        late_horizon_seconds=base.late_horizon_seconds,
        curfew_grace_seconds=base.curfew_grace_seconds,
        devices=thresholds,
        battery_hysteresis_pct=base.battery_hysteresis_pct,
        battery_dwell_readings=base.battery_dwell_readings,
        tiers=base.tiers,
    )
    return CoreConfig("rules-test", PROJECTION, zone_map, {SUBJECT: subject}, params)


def gps(
    xy: tuple[float, float],
    ts: datetime,
    accuracy_m: float = 5.0,
    device_id: str = TAG,
    source: FixSource = FixSource.GNSS,
    battery_pct: float | None = None,
) -> LocationFix:
    lon, lat = lonlat(*xy)
    return LocationFix(
        device_id=device_id, ts=ts, lat=lat, lon=lon, accuracy_m=accuracy_m, source=source,
        received_at=ts + SECOND, battery_pct=battery_pct,
    )


def device_event(
    kind: DeviceEventType, ts: datetime, device_id: str = TAG, **attributes: Any
) -> DeviceEvent:
    return DeviceEvent(device_id=device_id, ts=ts, type=kind, received_at=ts + SECOND,
                       attributes=dict(attributes))


def feed(engine: Engine, observations: Iterable[Observation]) -> list[Finding]:
    """Each observation arrives one second after it was taken; no ticks."""
    out: list[Finding] = []
    for observation in observations:
        out += engine.observe(observation, observation.ts + SECOND)
    return out


def run(
    engine: Engine,
    observations: Iterable[Observation],
    until: datetime,
    tick: timedelta = timedelta(seconds=15),
    latency: timedelta = SECOND,
) -> list[Finding]:
    """Observations (in arrival order, arriving `latency` after `ts`) interleaved with ticks
    every `tick` on the epoch grid, as the daemon and replay run them, up to `until`."""
    out: list[Finding] = []
    step = tick.total_seconds()
    next_tick: datetime | None = None
    for observation in observations:
        arrival = observation.ts + latency
        if next_tick is None:
            next_tick = _grid_ceil(arrival, step)
        while next_tick <= arrival:
            out += engine.tick(next_tick)
            next_tick += tick
        out += engine.observe(observation, arrival)
    if next_tick is not None:
        while next_tick <= until:
            out += engine.tick(next_tick)
            next_tick += tick
    return out


def _grid_ceil(at: datetime, step_s: float) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    seconds = (at - epoch).total_seconds()
    whole = -(-seconds // step_s) * step_s
    return epoch + timedelta(seconds=whole)


def every(
    xy: tuple[float, float],
    start: datetime,
    end: datetime,
    step: timedelta = MINUTE,
    **kwargs: Any,
) -> list[LocationFix]:
    """A fix at `xy` every `step` from `start` (inclusive) to `end` (exclusive)."""
    out: list[LocationFix] = []
    ts = start
    while ts < end:
        out.append(gps(xy, ts, **kwargs))
        ts += step
    return out


Summary = tuple[FindingKind, RuleId, str | None, datetime]


def summary(findings: Iterable[Finding]) -> list[Summary]:
    return [(f.kind, f.rule, f.zone_id, f.at) for f in findings]


def of_rule(findings: Iterable[Finding], rule: RuleId) -> list[Summary]:
    return [s for s in summary(findings) if s[1] is rule]


RAISED, CLEARED = FindingKind.RAISED, FindingKind.CLEARED
