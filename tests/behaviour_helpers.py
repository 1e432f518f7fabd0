"""Builders for the issue-5 part-B tests: a config of a few subjects (one tag each) in a
40 km square district, with the behaviour rules switched on as a test asks, and fixes and
protected-person positions placed at metre offsets (core_helpers' projection)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from daemon.replay import replay_lines
from geofence.behaviour_config import BehaviourParams, ProtectedLink
from geofence.config import CoreConfig, DeviceSpec, RuleParams, SubjectSpec
from geofence.observation import DeviceKind, FixSource, LocationFix
from geofence.victims import ProtectedPosition
from geofence.zones import ZoneKind
from tests.core_helpers import PROJECTION, TZ, lonlat, square_zone

DISTRICT = "district"
OFFICER = "off1"
TICK_SECONDS = 15.0


def tag(subject_id: str) -> str:
    return f"tag-{subject_id}"


def behaviour_config(
    subject_ids: Iterable[str], behaviour: BehaviourParams, rules: RuleParams | None = None
) -> CoreConfig:
    subjects = {
        s: SubjectSpec(
            subject_id=s, timezone=TZ, officer_id=OFFICER,
            devices=(DeviceSpec(tag(s), DeviceKind.WEARABLE, s),),
            permitted_zone_id=DISTRICT,
        )
        for s in subject_ids
    }
    return CoreConfig(
        version="behaviour-test",
        projection=PROJECTION,
        zones={DISTRICT: square_zone(DISTRICT, ZoneKind.INCLUSION, 0.0, 0.0, 20_000.0)},
        subjects=subjects,
        rules=rules if rules is not None else RuleParams(),
        behaviour=behaviour,
    )


def links(protected_id: str, subject_id: str, radius_m: float, warning_m: float
          ) -> Mapping[str, tuple[ProtectedLink, ...]]:
    return {protected_id: (ProtectedLink(protected_id, subject_id, radius_m, warning_m),)}


def at_xy(
    subject_id: str, xy: tuple[float, float], ts: datetime, accuracy_m: float = 5.0
) -> LocationFix:
    lon, lat = lonlat(*xy)
    return LocationFix(
        device_id=tag(subject_id), ts=ts, lat=lat, lon=lon, accuracy_m=accuracy_m,
        source=FixSource.GNSS, received_at=ts + timedelta(seconds=2),
    )


def protected_at(
    protected_id: str, xy: tuple[float, float], ts: datetime, accuracy_m: float = 10.0
) -> ProtectedPosition:
    lon, lat = lonlat(*xy)
    return ProtectedPosition(protected_id, ts, lat, lon, accuracy_m, ts + timedelta(seconds=2))


def to_line(item: LocationFix | ProtectedPosition) -> str:
    arrival = item.received_at
    if isinstance(item, ProtectedPosition):
        topic = f"emon/v1/protected/{item.protected_id}/location"
        payload: dict[str, Any] = {"ts": item.ts.isoformat(), "lat": item.lat, "lon": item.lon,
                                   "acc": item.accuracy_m}
    else:
        topic = f"emon/v1/devices/{item.device_id}/location"
        payload = {"ts": item.ts.isoformat(), "lat": item.lat, "lon": item.lon,
                   "acc": item.accuracy_m, "src": item.source.value}
    return json.dumps({"topic": topic, "payload": payload, "received_at": arrival.isoformat()})


def replay(
    items: Sequence[LocationFix | ProtectedPosition], config: CoreConfig,
    until: datetime | None = None,
) -> list[dict[str, Any]]:
    """Through `emon replay`'s own path (wire decoding, pipeline, lifecycle, ticks)."""
    out = io.StringIO()
    lines = [to_line(i) for i in sorted(items, key=lambda i: i.received_at)]
    if until is not None:
        # A last line the pipeline ignores moves the virtual clock on (ticks run).
        lines.append(json.dumps({"topic": "emon/v1/devices/nobody/location",
                                 "payload": "{}", "received_at": until.isoformat()}))
    stats = replay_lines(lines, config, TICK_SECONDS, out, progress=None)
    assert stats.bad_lines == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def opened(transitions: Iterable[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [t for t in transitions if t["rule"] == rule and t["transition"] == "opened"]
