"""Shared builders for the pure-core tests: a tiny `CoreConfig` built in code, and fixes,
events and findings placed at metre offsets and local wall-clock times.

Layout (metres east/north of ORIGIN, in the config's own projection, so squares are exact):

    permitted  inclusion  square, half-side 2000 m, centred on (0, 0)
    home       inclusion  square, half-side 50 m, centred on HOME = (-1000, -1000)
    school     exclusion  square, half-side 50 m, centred on SCHOOL = (1000, 1000)
    mall       exclusion  square, half-side 50 m, centred on MALL = (-1000, 1000);
                          assigned to nobody (the engine must ignore it)

Subject SUBJECT (device DEVICE, officer OFFICER) lives at HOME, may not leave `permitted`,
must keep out of `school`, and has a 22:00-06:00 curfew in Asia/Shanghai. Subject
OTHER_SUBJECT (device OTHER_DEVICE) has only the permitted zone.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import shapely
from shapely.geometry import Polygon

from alerts.model import DEFAULT_TIERS, Finding, FindingKind, RuleId
from geofence.config import (
    CoreConfig,
    DeviceSpec,
    ExclusionAssignment,
    RuleParams,
    SubjectSpec,
)
from geofence.observation import (
    DeviceEvent,
    DeviceEventType,
    DeviceKind,
    FixSource,
    LocationFix,
)
from geofence.schedule import Schedule, Window
from geofence.zones import LocalProjection, Zone, ZoneKind

ORIGIN_LON = 114.05
ORIGIN_LAT = 22.54
PROJECTION = LocalProjection(ORIGIN_LON, ORIGIN_LAT)
TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)  # a Friday

PERMITTED = "permitted"
HOME_ZONE = "home"
SCHOOL = "school"
MALL = "mall"

PERMITTED_HALF_M = 2000.0
HOME = (-1000.0, -1000.0)
SCHOOL_XY = (1000.0, 1000.0)
MALL_XY = (-1000.0, 1000.0)
SMALL_HALF_M = 50.0

SUBJECT = "s1"
DEVICE = "dev1"
OFFICER = "off1"
OTHER_SUBJECT = "s2"
OTHER_DEVICE = "dev2"
OTHER_OFFICER = "off2"


def lonlat(east_m: float, north_m: float) -> tuple[float, float]:
    """WGS-84 (lon, lat) of a point `east_m`/`north_m` metres from ORIGIN (exact inverse of
    PROJECTION, so a point placed here projects back to the same metres)."""
    kx = PROJECTION.forward(ORIGIN_LON + 1.0, ORIGIN_LAT)[0]
    ky = PROJECTION.forward(ORIGIN_LON, ORIGIN_LAT + 1.0)[1]
    return ORIGIN_LON + east_m / kx, ORIGIN_LAT + north_m / ky


def square_wgs84(cx: float, cy: float, half_m: float) -> Polygon:
    corners = [
        (cx - half_m, cy - half_m),
        (cx + half_m, cy - half_m),
        (cx + half_m, cy + half_m),
        (cx - half_m, cy + half_m),
    ]
    return shapely.Polygon([lonlat(x, y) for x, y in corners])


def square_zone(zone_id: str, kind: ZoneKind, cx: float, cy: float, half_m: float) -> Zone:
    return Zone.build(zone_id, zone_id, kind, square_wgs84(cx, cy, half_m), PROJECTION)


def curfew_schedule(exception_dates: Iterable[date] = ()) -> Schedule:
    return Schedule("curfew", (Window(time(22), time(6)),), frozenset(exception_dates))


def zones() -> dict[str, Zone]:
    return {
        PERMITTED: square_zone(PERMITTED, ZoneKind.INCLUSION, 0.0, 0.0, PERMITTED_HALF_M),
        HOME_ZONE: square_zone(HOME_ZONE, ZoneKind.INCLUSION, *HOME, SMALL_HALF_M),
        SCHOOL: square_zone(SCHOOL, ZoneKind.EXCLUSION, *SCHOOL_XY, SMALL_HALF_M),
        MALL: square_zone(MALL, ZoneKind.EXCLUSION, *MALL_XY, SMALL_HALF_M),
    }


def make_config(
    rules: RuleParams | None = None,
    curfew: Schedule | None = None,
    school_schedule: Schedule | None = None,
) -> CoreConfig:
    """The tiny config. `curfew` defaults to 22:00-06:00 every day; `school_schedule` None
    means the exclusion is always in force."""
    subject = SubjectSpec(
        subject_id=SUBJECT,
        timezone=TZ,
        officer_id=OFFICER,
        devices=(DeviceSpec(DEVICE, DeviceKind.WEARABLE, SUBJECT),),
        home_zone_id=HOME_ZONE,
        permitted_zone_id=PERMITTED,
        exclusions=(ExclusionAssignment(SCHOOL, school_schedule),),
        curfew=curfew if curfew is not None else curfew_schedule(),
    )
    other = SubjectSpec(
        subject_id=OTHER_SUBJECT,
        timezone=TZ,
        officer_id=OTHER_OFFICER,
        devices=(DeviceSpec(OTHER_DEVICE, DeviceKind.WEARABLE, OTHER_SUBJECT),),
        permitted_zone_id=PERMITTED,
    )
    return CoreConfig(
        version="test",
        projection=PROJECTION,
        zones=zones(),
        subjects={SUBJECT: subject, OTHER_SUBJECT: other},
        rules=rules if rules is not None else RuleParams(),
    )


def local(hour: int, minute: int = 0, second: int = 0, day: date = DAY) -> datetime:
    """The UTC instant of a local (Asia/Shanghai) wall-clock time on `day`."""
    return datetime.combine(day, time(hour, minute, second), tzinfo=TZ).astimezone(UTC)


def fix(
    east_m: float,
    north_m: float,
    ts: datetime,
    accuracy_m: float = 5.0,
    device_id: str = DEVICE,
) -> LocationFix:
    lon, lat = lonlat(east_m, north_m)
    return LocationFix(
        device_id=device_id,
        ts=ts,
        lat=lat,
        lon=lon,
        accuracy_m=accuracy_m,
        source=FixSource.GNSS,
        received_at=ts + timedelta(seconds=1),
    )


def event(kind: DeviceEventType, ts: datetime, device_id: str = DEVICE) -> DeviceEvent:
    return DeviceEvent(device_id=device_id, ts=ts, type=kind, received_at=ts + timedelta(seconds=1))


def finding(
    kind: FindingKind,
    at: datetime,
    rule: RuleId = RuleId.BOUNDARY_EXIT,
    zone_id: str | None = PERMITTED,
    subject_id: str = SUBJECT,
    evidence: dict[str, Any] | None = None,
) -> Finding:
    return Finding(
        subject_id=subject_id,
        device_id=DEVICE,
        rule=rule,
        zone_id=zone_id,
        tier=DEFAULT_TIERS[rule],
        kind=kind,
        at=at,
        evidence=evidence if evidence is not None else {"n": at.isoformat()},
        reason=f"{rule.value} {kind.value}",
    )
