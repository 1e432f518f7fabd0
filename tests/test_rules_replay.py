"""A replay scenario per issue-4 rule, through `emon replay`'s own `replay_lines` (wire
decoding, pipeline, alert lifecycle, ticks on the grid): each scenario opens its rule's
alert, and a control that looks alike stays quiet. The leave scenarios use the shipped
config (config/leaves.yaml)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.configfiles import load_config
from daemon.replay import replay_lines
from geofence.config import CoreConfig
from geofence.observation import DeviceEvent, DeviceEventType, FixSource, LocationFix, Observation
from tests.core_helpers import DAY, local
from tests.rules_helpers import (
    HOME,
    MINUTE,
    PARK_XY,
    SCHOOL_XY,
    WORK_XY,
    device_event,
    every,
    gps,
    make_rules_config,
)

TICK_SECONDS = 15.0
SUNDAY = DAY + timedelta(days=2)
TOWN = (0.0, 0.0)
CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def sun(hour: int, minute: int = 0) -> datetime:
    return local(hour, minute, day=SUNDAY)


def to_line(observation: Observation, arrival: datetime | None = None) -> str:
    arrival = arrival or observation.ts + timedelta(seconds=2)
    payload: dict[str, Any]
    if isinstance(observation, LocationFix):
        topic = f"emon/v1/devices/{observation.device_id}/location"
        payload = {"ts": observation.ts.isoformat(), "lat": observation.lat,
                   "lon": observation.lon, "acc": observation.accuracy_m,
                   "src": observation.source.value}
        if observation.battery_pct is not None:
            payload["batt"] = observation.battery_pct
    else:
        assert isinstance(observation, DeviceEvent)
        topic = f"emon/v1/devices/{observation.device_id}/event"
        payload = {"ts": observation.ts.isoformat(), "type": observation.type.value,
                   **observation.attributes}
    return json.dumps({"topic": topic, "payload": payload, "received_at": arrival.isoformat()})


def replay(observations: Sequence[Observation], config: CoreConfig) -> list[dict[str, Any]]:
    out = io.StringIO()
    ordered = sorted(observations, key=lambda o: o.ts)
    stats = replay_lines([to_line(o) for o in ordered], config, TICK_SECONDS, out, progress=None)
    assert stats.bad_lines == 0
    assert not stats.rejections
    return [json.loads(line) for line in out.getvalue().splitlines()]


@dataclass(frozen=True)
class Scenario:
    rule: str
    fires: Callable[[], Sequence[Observation]]
    quiet: Callable[[], Sequence[Observation]]


def _noisy_home_night() -> list[Observation]:
    # Indoor drift of 45 m with a stated accuracy of 40 m, all night: a naive fence flaps.
    fixes: list[Observation] = []
    t = local(21)
    k = 0
    while t < local(7, day=DAY + timedelta(days=1)):
        dx = 45.0 if k % 3 == 0 else -30.0
        fixes.append(gps((HOME[0] + dx, HOME[1] + 20.0), t, accuracy_m=40.0))
        t += MINUTE
        k += 1
    return fixes


SCENARIOS = [
    Scenario(
        "boundary_exit",
        lambda: [*every(TOWN, sun(12), sun(12, 5)), *every((2300.0, 0.0), sun(12, 5), sun(12, 15))],
        # 10 m past the edge with 60 m accuracy: never provably outside.
        lambda: [*every(TOWN, sun(12), sun(12, 5)),
                 *every((2010.0, 0.0), sun(12, 5), sun(12, 30), accuracy_m=60.0)],
    ),
    Scenario(
        "curfew_away",
        lambda: [*every(HOME, local(21), local(21, 20)),
                 *every((HOME[0], HOME[1] + 600.0), local(21, 30), local(22, 30))],
        _noisy_home_night,
    ),
    Scenario(
        "inclusion_away",
        lambda: every(HOME, local(8), local(9, 30)),  # Friday: never went to work
        lambda: [*every(HOME, local(8), local(8, 40)),
                 *every(TOWN, local(8, 40), local(9, 10)),
                 *every(WORK_XY, local(9, 10), local(12))],
    ),
    Scenario(
        "exclusion_entry",
        lambda: [*every(TOWN, sun(12), sun(12, 5)), *every(SCHOOL_XY, sun(12, 6), sun(12, 12)),
                 *every(TOWN, sun(12, 20), sun(12, 25))],
        lambda: every((SCHOOL_XY[0] - 250.0, SCHOOL_XY[1]), sun(12), sun(12, 20)),
    ),
    Scenario(
        "exclusion_approach",
        lambda: [*every(TOWN, sun(12), sun(12, 5)),
                 *every((SCHOOL_XY[0] - 110.0, SCHOOL_XY[1]), sun(12, 6), sun(12, 14)),
                 *every(TOWN, sun(12, 20), sun(12, 25))],
        lambda: [*every(TOWN, sun(12), sun(12, 5)),
                 *every((SCHOOL_XY[0] - 110.0, SCHOOL_XY[1]), sun(12, 6), sun(12, 8)),
                 *every(TOWN, sun(12, 15), sun(12, 25))],
    ),
    Scenario(
        "exclusion_crossed",
        lambda: [gps((PARK_XY[0] - 400.0, PARK_XY[1]), sun(11) + k * 5 * MINUTE)
                 for k in range(2)]
        + [gps((PARK_XY[0] + 400.0, PARK_XY[1]), sun(11, 10)),
           gps((PARK_XY[0] + 700.0, PARK_XY[1]), sun(11, 14))],
        # The same, but the line only cuts the zone's corner.
        lambda: [gps((PARK_XY[0] - 300.0, PARK_XY[1] + 221.0), sun(11) + k * 5 * MINUTE)
                 for k in range(2)]
        + [gps((PARK_XY[0] + 221.0, PARK_XY[1] - 300.0), sun(11, 10)),
           gps((PARK_XY[0] + 400.0, PARK_XY[1] - 480.0), sun(11, 14))],
    ),
    Scenario(
        "device_silent",
        lambda: [*every(TOWN, sun(11), sun(12)), gps(TOWN, sun(12, 40))],
        lambda: [*every(TOWN, sun(11), sun(12), 5 * MINUTE),
                 *every(TOWN, sun(12, 7), sun(13), 12 * MINUTE)],
    ),
    Scenario(
        "gnss_lost",
        lambda: [*every(TOWN, sun(11), sun(12)),
                 *every(TOWN, sun(12), sun(12, 40), accuracy_m=400.0, source=FixSource.CELL)],
        lambda: [*every(HOME, sun(11), sun(12)),
                 *every(HOME, sun(12), sun(13), accuracy_m=30.0, source=FixSource.WIFI)],
    ),
    Scenario(
        "strap_open",
        lambda: [gps(TOWN, sun(10)), device_event(DeviceEventType.STRAP_OPEN, sun(10, 5)),
                 device_event(DeviceEventType.STRAP_CLOSED, sun(10, 7))],
        lambda: [gps(TOWN, sun(10)), device_event(DeviceEventType.STRAP_CLOSED, sun(10, 7))],
    ),
    Scenario(
        "case_open",
        lambda: [gps(TOWN, sun(10)), device_event(DeviceEventType.CASE_OPEN, sun(10, 5))],
        lambda: [gps(TOWN, sun(10)), device_event(DeviceEventType.CASE_CLOSED, sun(10, 5))],
    ),
    Scenario(
        "power_off",
        lambda: [gps(TOWN, sun(10)), device_event(DeviceEventType.POWER_OFF, sun(10, 5))],
        lambda: [gps(TOWN, sun(10)), device_event(DeviceEventType.POWER_ON, sun(10, 5))],
    ),
    Scenario(
        "battery_low",
        lambda: [gps(TOWN, sun(10) + k * MINUTE, battery_pct=b)
                 for k, b in enumerate([21, 19, 18])],
        lambda: [gps(TOWN, sun(10) + k * MINUTE, battery_pct=b)
                 for k, b in enumerate([22, 20, 21, 23, 19, 22])],
    ),
    Scenario(
        "battery_critical",
        lambda: [gps(TOWN, sun(10) + k * MINUTE, battery_pct=b) for k, b in enumerate([9, 8])],
        # One reading dips below both thresholds: a glitch, not a flat battery.
        lambda: [gps(TOWN, sun(10) + k * MINUTE, battery_pct=b)
                 for k, b in enumerate([22, 9, 22, 23])],
    ),
]


@pytest.fixture(scope="module")
def config() -> CoreConfig:
    return make_rules_config(with_leave=False)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.rule for s in SCENARIOS])
def test_scenario_opens_its_rule_and_the_control_stays_quiet(
    scenario: Scenario, config: CoreConfig
) -> None:
    records = replay(scenario.fires(), config)
    opened = [r for r in records if r["transition"] == "opened"]
    assert [r["rule"] for r in opened] == [scenario.rule], records
    assert opened[0]["officer_id"] == "off1"
    assert opened[0]["reason"]
    quiet = replay(scenario.quiet(), config)
    assert quiet == [], quiet


def test_tamper_that_closes_again_is_cleared_but_stays_open() -> None:
    records = replay(SCENARIOS[8].fires(), make_rules_config(with_leave=False))
    assert [(r["transition"], r["state"], r["condition_active"]) for r in records] == [
        ("opened", "open", True),
        ("cleared", "open", False),
    ]


def test_silence_recovery_is_noted_on_the_alert() -> None:
    records = replay(SCENARIOS[6].fires(), make_rules_config(with_leave=False))
    assert [r["transition"] for r in records] == ["opened", "cleared"]
    cleared = records[1]
    assert cleared["last_evidence"]["ping"]["ts"] == sun(12, 40).isoformat()
    assert cleared["last_evidence"]["received_at"] == (sun(12, 40) + timedelta(seconds=2)
                                                       ).isoformat()
    assert cleared["state"] == "open"  # a supervision gap is looked at by a person
    assert cleared["cleared_at"] == (sun(12, 40) + timedelta(seconds=2)).isoformat()


# ---------------------------------------------------------------------- the shipped leave


def shipped_leave_day(off_route: bool, late_back: bool) -> list[Observation]:
    """s003 on 2026-12-05: approved leave 08:00-20:00 to Nanshan (config/leaves.yaml),
    one fix every 5 minutes."""
    day = date(2026, 12, 5)
    home = (114.0300, 22.5350)
    route = [(114.0100, 22.5340), (113.9900, 22.5330), (113.9600, 22.5310),
             (113.9450, 22.5305)]
    nanshan = (113.9300, 22.5300)
    luohu = (114.1400, 22.5700)  # east of Futian: neither district nor route
    plan: list[tuple[float, float]] = [home] * 12  # 07:00-07:55
    plan += [p for p in route for _ in range(2)]  # 08:00-08:35
    if off_route:
        plan += [luohu] * 4  # 08:40-08:55
    back_hour = 21 if late_back else 19
    while len(plan) < (back_hour - 7) * 12:
        plan.append(nanshan)
    plan += [p for p in reversed(route) for _ in range(2)]  # the way back
    plan += [home] * 12
    start = local(7, day=day)
    fixes: list[Observation] = []
    for k, (lon, lat) in enumerate(plan):
        ts = start + k * 5 * MINUTE
        fixes.append(LocationFix("tag-s003", ts, lat, lon, 8.0, FixSource.GNSS, ts))
    return fixes


@pytest.fixture(scope="module")
def shipped() -> CoreConfig:
    return load_config(CONFIG_DIR, env={}).core


def test_shipped_leave_covers_the_trip(shipped: CoreConfig) -> None:
    assert replay(shipped_leave_day(off_route=False, late_back=False), shipped) == []


def test_shipped_leave_off_route_raises_leave_area_exit(shipped: CoreConfig) -> None:
    records = replay(shipped_leave_day(off_route=True, late_back=False), shipped)
    opened = [(r["rule"], r["zone_id"]) for r in records if r["transition"] == "opened"]
    assert opened == [("leave_area_exit", "leave:leave-s003-20261205")]


def test_shipped_leave_late_return_raises_boundary_exit_after_the_grace(
    shipped: CoreConfig,
) -> None:
    records = replay(shipped_leave_day(off_route=False, late_back=True), shipped)
    opened = [r for r in records if r["transition"] == "opened"]
    assert [(r["rule"], r["zone_id"]) for r in opened] == [("boundary_exit", "district-futian")]
    # Leave ends 20:00 with 30 minutes' grace: 20:30 local, 12:30 UTC.
    assert opened[0]["opened_at"] == "2026-12-05T12:30:00+00:00"
    assert opened[0]["reason"] == (
        "Outside permitted area district-futian when approved leave ended"
    )
