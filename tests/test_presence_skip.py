"""The presence skip of `geofence.zonerules` (a fix too close to the last fully measured one
to change any presence is not measured) against the full measurement: hypothesis walks a
device along zone edges, with jittering accuracy, and the skipping engine must give the
same findings and the same memberships as `Engine(presence_skip=False)` after every step.

Zones: the rules-test squares (home, work, a school with an approach band, a park, the
permitted square, a leave area), plus a variant whose permitted area and school are
round polygons of > 64 vertices, so the shrunk/grown shortcut copies of `Zone` are used.
"""

from __future__ import annotations

from dataclasses import astuple
from datetime import timedelta
from typing import Any

import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.model import Finding
from geofence.config import CoreConfig
from geofence.engine import Engine
from geofence.observation import FixSource
from geofence.zones import Zone, ZoneKind
from tests.core_helpers import DAY, PROJECTION, local
from tests.rules_helpers import (
    HALF_SMALL_M,
    HOME,
    PERMITTED,
    PHONE,
    SCHOOL,
    SCHOOL_XY,
    TAG,
    WORK_XY,
    gps,
    make_rules_config,
    zones,
)

# Points on or near an edge: home's, work's, the school's and its band's, the permitted
# square's (2,000 m half side), and the round district's (radius 2,000 m).
EDGES = [
    (HOME[0] + HALF_SMALL_M, HOME[1]),
    (HOME[0], HOME[1] - HALF_SMALL_M - 10.0),
    (WORK_XY[0] - 60.0, WORK_XY[1]),
    (SCHOOL_XY[0] - HALF_SMALL_M, SCHOOL_XY[1]),
    (SCHOOL_XY[0] - HALF_SMALL_M - 100.0, SCHOOL_XY[1]),
    (2000.0, 0.0),
    (1414.2, 1414.2),
    (1750.0, 0.0),  # 250 m inside: around the shortcut copies' 200 m
    HOME,
]


def _round_config() -> CoreConfig:
    zone_map = zones()
    zone_map[PERMITTED] = Zone.from_projected(
        PERMITTED, PERMITTED, ZoneKind.INCLUSION, shapely.Point(0.0, 0.0).buffer(2000.0, 32),
        PROJECTION,
    )
    zone_map[SCHOOL] = Zone.from_projected(
        SCHOOL, SCHOOL, ZoneKind.EXCLUSION, shapely.Point(*SCHOOL_XY).buffer(300.0, 32),
        PROJECTION,
    )
    return make_rules_config(zone_map=zone_map)


CONFIGS = {"squares": make_rules_config(), "round": _round_config()}

step_st = st.tuples(
    st.sampled_from([5, 20, 60, 60, 120, 600]),  # seconds since the previous fix
    st.floats(-40.0, 40.0),  # metres east
    st.floats(-40.0, 40.0),  # metres north
    st.sampled_from([3.0, 5.0, 8.0, 15.0, 25.0, 60.0, 150.0, 210.0]),  # accuracy
    st.sampled_from([TAG, TAG, PHONE]),
    st.booleans(),  # back to the start of the walk (a jump to a far edge otherwise)
)


def _key(f: Finding) -> tuple[Any, ...]:
    return (f.subject_id, f.device_id, f.rule, f.zone_id, f.kind, f.at, f.reason, f.evidence)


def _memberships(engine: Engine) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for device_id in (TAG, PHONE):
        state = engine.device_state(device_id)
        if state is not None:
            out[device_id] = [(k, astuple(m)) for k, m in state.memberships.items()]
    return out


@settings(max_examples=80, deadline=None)
@given(
    config_name=st.sampled_from(sorted(CONFIGS)),
    start=st.sampled_from(EDGES),
    far=st.sampled_from(EDGES),
    start_hour=st.sampled_from([8, 12, 21]),
    steps=st.lists(step_st, min_size=1, max_size=60),
)
def test_skipping_engine_decides_as_the_measuring_one(
    config_name: str,
    start: tuple[float, float],
    far: tuple[float, float],
    start_hour: int,
    steps: list[tuple[int, float, float, float, str, bool]],
) -> None:
    config = CONFIGS[config_name]
    skipping, measuring = Engine(config), Engine(config, presence_skip=False)
    ts = local(start_hour, day=DAY + timedelta(days=1))  # Saturday: the leave day
    position = {TAG: start, PHONE: start}
    for gap_s, dx, dy, accuracy, device, stay in steps:
        ts += timedelta(seconds=gap_s)
        x, y = position[device] if stay else far
        position[device] = (x + dx, y + dy)
        fix = gps(position[device], ts, accuracy_m=accuracy, device_id=device,
                  source=FixSource.GNSS)
        arrival = ts + timedelta(seconds=1)
        got = [_key(f) for f in skipping.tick(arrival) + skipping.observe(fix, arrival)]
        want = [_key(f) for f in measuring.tick(arrival) + measuring.observe(fix, arrival)]
        assert got == want
        assert _memberships(skipping) == _memberships(measuring)
    assert measuring.stats["fix_presence_unmoved"] == 0


def test_a_device_sitting_at_home_is_not_measured_again() -> None:
    """The skip's reason to exist: a tag at home, fixes a metre apart, 5 m accuracy."""
    engine = Engine(make_rules_config())
    ts = local(12)
    for index in range(20):
        fix = gps((HOME[0] + index % 2, HOME[1]), ts + timedelta(minutes=index))
        engine.observe(fix, fix.ts + timedelta(seconds=1))
    # The first fix starts the dwell, the second confirms every presence and is the anchor.
    assert engine.stats["fix_presence_unmoved"] == 18
