"""The rule engine: noise discipline (dwell, uncertainty, duplicates, jumps), zone rules,
curfew timing via tick(), tamper events, and determinism."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, time, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.model import Finding, FindingKind, RuleId, Tier
from geofence.config import RuleParams, ZoneRuleParams
from geofence.engine import Engine
from geofence.observation import DeviceEventType, Observation
from geofence.schedule import Schedule, Window
from geofence.zones import Presence
from tests.core_helpers import (
    DAY,
    DEVICE,
    HOME,
    HOME_ZONE,
    MALL,
    MALL_XY,
    OTHER_DEVICE,
    OTHER_SUBJECT,
    PERMITTED,
    SCHOOL,
    SCHOOL_XY,
    SUBJECT,
    TZ,
    curfew_schedule,
    event,
    fix,
    local,
    make_config,
)

MINUTE = timedelta(minutes=1)
NEAR_EDGE = (1900.0, 0.0)  # 100 m inside the permitted square's east edge (x = 2000)
OUT_EAST = (2100.0, 0.0)  # 100 m outside it
OUT_OF_HOME = (HOME[0], HOME[1] + 500.0)  # 450 m north of the home square's edge


@pytest.fixture
def engine() -> Engine:
    return Engine(make_config())


def feed(engine: Engine, observations: Iterable[Observation]) -> list[Finding]:
    out: list[Finding] = []
    for observation in observations:
        out += engine.observe(observation, observation.ts + timedelta(seconds=1))
    return out


def settle_inside(engine: Engine, start: datetime, xy: tuple[float, float] = NEAR_EDGE) -> None:
    """Two fixes at `xy` so every zone's presence is confirmed; asserts nothing fired."""
    assert feed(engine, [fix(*xy, start), fix(*xy, start + MINUTE)]) == []


def summary(findings: Iterable[Finding]) -> list[tuple[FindingKind, RuleId, str | None, datetime]]:
    return [(f.kind, f.rule, f.zone_id, f.at) for f in findings]


# ---------------------------------------------------------------------- boundary exit


def test_one_stray_outside_fix_does_not_raise(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0)
    assert feed(engine, [fix(*OUT_EAST, t0 + 2 * MINUTE)]) == []
    assert feed(engine, [fix(*NEAR_EDGE, t0 + 3 * MINUTE), fix(*NEAR_EDGE, t0 + 4 * MINUTE)]) == []
    state = engine.device_state(DEVICE)
    assert state is not None
    membership = state.memberships[PERMITTED]
    assert membership.confirmed is Presence.INSIDE
    assert membership.pending is None
    assert engine.stats["finding_boundary_exit_raised"] == 0


def test_two_outside_fixes_raise_boundary_exit_once_and_later_clear(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0)
    t_out = t0 + 2 * MINUTE
    assert feed(engine, [fix(*OUT_EAST, t_out)]) == []
    raised = feed(engine, [fix(*OUT_EAST, t_out + MINUTE)])
    # The violation began with the first fix of the run, not the one that confirmed it.
    assert summary(raised) == [(FindingKind.RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t_out)]
    assert raised[0].subject_id == SUBJECT
    assert raised[0].device_id == DEVICE
    assert raised[0].tier is Tier.HIGH
    assert raised[0].reason.startswith(f"Left permitted area {PERMITTED}: 100 m outside")
    assert raised[0].evidence["ping"]["ts"] == (t_out + MINUTE).isoformat()
    # Staying out does not raise again.
    assert feed(engine, [fix(*OUT_EAST, t_out + k * MINUTE) for k in range(2, 10)]) == []
    t_back = t_out + 10 * MINUTE
    assert feed(engine, [fix(*NEAR_EDGE, t_back)]) == []
    cleared = feed(engine, [fix(*NEAR_EDGE, t_back + MINUTE)])
    assert [(f.kind, f.rule, f.zone_id) for f in cleared] == [
        (FindingKind.CLEARED, RuleId.BOUNDARY_EXIT, PERMITTED)
    ]
    assert t_back <= cleared[0].at <= t_back + MINUTE
    assert engine.stats["finding_boundary_exit_raised"] == 1
    assert engine.stats["finding_boundary_exit_cleared"] == 1


def test_first_fixes_outside_raise_after_dwell(engine: Engine) -> None:
    t0 = local(12)
    assert feed(engine, [fix(*OUT_EAST, t0)]) == []
    assert summary(feed(engine, [fix(*OUT_EAST, t0 + MINUTE)])) == [
        (FindingKind.RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t0)
    ]


def test_uncertain_fixes_near_the_edge_change_nothing(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0)
    # 10 m outside the edge with 60 m accuracy: neither provably in nor out.
    vague = [fix(2010.0, 0.0, t0 + k * MINUTE, accuracy_m=60.0) for k in range(2, 12)]
    assert feed(engine, vague) == []
    state = engine.device_state(DEVICE)
    assert state is not None
    assert state.memberships[PERMITTED].confirmed is Presence.INSIDE
    assert state.memberships[PERMITTED].pending is None


def test_uncertain_fix_neither_confirms_nor_breaks_a_pending_change(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0)
    t_out = t0 + 2 * MINUTE
    assert feed(engine, [fix(*OUT_EAST, t_out)]) == []
    assert feed(engine, [fix(2010.0, 0.0, t_out + MINUTE, accuracy_m=60.0)]) == []
    assert summary(feed(engine, [fix(*OUT_EAST, t_out + 2 * MINUTE)])) == [
        (FindingKind.RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t_out)
    ]


def test_imprecise_fix_far_outside_still_proves_outside(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0)
    far = (3000.0, 0.0)  # 1000 m out, accuracy 500 m: the whole circle is clear
    findings = feed(
        engine,
        [fix(*far, t0 + k * MINUTE, accuracy_m=500.0) for k in (2, 3)],
    )
    assert summary(findings) == [
        (FindingKind.RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t0 + 2 * MINUTE)
    ]


def test_dwell_by_time_with_more_fixes_required() -> None:
    rules = RuleParams(zone=ZoneRuleParams(dwell_fixes=5, dwell_seconds=60.0))
    engine = Engine(make_config(rules=rules))
    t0 = local(12)
    settle = [fix(*NEAR_EDGE, t0 + k * MINUTE) for k in range(5)]
    assert feed(engine, settle) == []
    t_out = t0 + 10 * MINUTE
    half = timedelta(seconds=30)
    assert feed(engine, [fix(*OUT_EAST, t_out), fix(*OUT_EAST, t_out + half)]) == []
    # Third fix: only 3 of 5 fixes, but 60 s have passed since the first.
    assert summary(feed(engine, [fix(*OUT_EAST, t_out + 2 * half)])) == [
        (FindingKind.RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t_out)
    ]


# ---------------------------------------------------------------------- duplicates, late, jumps


def test_duplicates_and_late_fixes_are_counted_and_change_nothing(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0)
    t_out = t0 + 2 * MINUTE
    assert feed(engine, [fix(*OUT_EAST, t_out)]) == []
    # A QoS 1 redelivery of the same ping must not count as the confirming second fix.
    assert feed(engine, [fix(*OUT_EAST, t_out)]) == []
    # Neither may an older ping that arrives late.
    assert feed(engine, [fix(*OUT_EAST, t_out - timedelta(seconds=30))]) == []
    assert feed(engine, [fix(*OUT_EAST, t0 - MINUTE)]) == []
    assert engine.stats["fix_duplicate"] == 1
    assert engine.stats["fix_late"] == 2
    assert engine.stats["fix_evaluated"] == 3
    state = engine.device_state(DEVICE)
    assert state is not None
    assert state.last_fix is not None
    assert state.last_fix.ts == t_out
    membership = state.memberships[PERMITTED]
    assert membership.confirmed is Presence.INSIDE
    assert membership.pending is Presence.OUTSIDE
    assert membership.pending_count == 1
    # Back inside: the stray outside fix is forgotten, nothing was ever raised.
    back = [fix(*NEAR_EDGE, t_out + k * MINUTE) for k in (1, 2)]
    assert feed(engine, back) == []
    assert engine.stats["finding_boundary_exit_raised"] == 0


def test_implausible_jump_is_discarded_then_accepted_after_consistent_fixes() -> None:
    engine = Engine(make_config())
    limit = engine.config.rules.max_consecutive_jump_rejections
    t0 = local(12)
    step = timedelta(seconds=10)
    settle_inside(engine, t0, (0.0, 0.0))
    t1 = t0 + MINUTE
    far = (10_000.0, 0.0)  # 10 km in 10 s: 1000 m/s
    for k in range(1, limit + 1):
        assert feed(engine, [fix(*far, t1 + k * step)]) == []
        assert engine.stats["fix_implausible_jump"] == k
        state = engine.device_state(DEVICE)
        assert state is not None
        assert state.last_fix is not None
        assert state.last_fix.ts == t1  # the outlier did not replace the last good fix
        assert state.jump_rejections_in_row == k
    # One more fix that agrees: the last good fix was the outlier; accept again.
    t_accept = t1 + (limit + 1) * step
    assert feed(engine, [fix(*far, t_accept)]) == []
    assert engine.stats["fix_jump_accepted_after_rejections"] == 1
    assert engine.stats["fix_implausible_jump"] == limit
    state = engine.device_state(DEVICE)
    assert state is not None
    assert state.last_fix is not None
    assert state.last_fix.ts == t_accept
    assert state.jump_rejections_in_row == 0
    # From there on the device is tracked normally: the next fix confirms the exit.
    assert summary(feed(engine, [fix(*far, t_accept + step)])) == [
        (FindingKind.RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t_accept)
    ]


def test_isolated_jumps_do_not_accumulate(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0, (0.0, 0.0))
    t = t0 + MINUTE
    step = timedelta(seconds=10)
    for _ in range(6):
        t += step
        assert feed(engine, [fix(10_000.0, 0.0, t)]) == []
        t += step
        assert feed(engine, [fix(0.0, 0.0, t)]) == []
    assert engine.stats["fix_implausible_jump"] == 6
    assert engine.stats["fix_jump_accepted_after_rejections"] == 0
    assert engine.stats["finding_boundary_exit_raised"] == 0


def test_fast_but_plausible_movement_is_accepted(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0, (0.0, 0.0))
    # 60 m/s (216 km/h) over a minute, below the 70 m/s limit.
    assert feed(engine, [fix(3600.0, 0.0, t0 + 2 * MINUTE)]) == []
    assert engine.stats["fix_implausible_jump"] == 0
    assert summary(feed(engine, [fix(3600.0, 0.0, t0 + 3 * MINUTE)])) == [
        (FindingKind.RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t0 + 2 * MINUTE)
    ]


def test_scattered_outliers_in_a_row_are_all_rejected(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0, (0.0, 0.0))
    t1 = t0 + MINUTE
    step = timedelta(seconds=10)
    outliers = [(10_000.0, 0.0), (0.0, 10_000.0), (-10_000.0, 0.0), (0.0, -10_000.0)]
    for k, xy in enumerate(outliers, start=1):
        feed(engine, [fix(*xy, t1 + k * step)])
    assert engine.stats["fix_jump_accepted_after_rejections"] == 0
    state = engine.device_state(DEVICE)
    assert state is not None
    assert state.last_fix is not None
    assert state.last_fix.ts == t1


# ---------------------------------------------------------------------- exclusion zones


def test_exclusion_entry_raised_when_inside_and_cleared_on_leaving(engine: Engine) -> None:
    t0 = local(12)
    approach = (SCHOOL_XY[0] - 200.0, SCHOOL_XY[1])
    settle_inside(engine, t0, approach)
    t_in = t0 + 2 * MINUTE
    assert feed(engine, [fix(*SCHOOL_XY, t_in)]) == []
    raised = feed(engine, [fix(*SCHOOL_XY, t_in + MINUTE)])
    assert summary(raised) == [(FindingKind.RAISED, RuleId.EXCLUSION_ENTRY, SCHOOL, t_in)]
    assert raised[0].tier is Tier.CRITICAL
    assert raised[0].reason.startswith(f"Entered exclusion zone {SCHOOL}: 50 m inside")
    assert feed(engine, [fix(*SCHOOL_XY, t_in + k * MINUTE) for k in range(2, 6)]) == []
    t_out = t_in + 6 * MINUTE
    assert feed(engine, [fix(*approach, t_out)]) == []
    cleared = feed(engine, [fix(*approach, t_out + MINUTE)])
    assert [(f.kind, f.rule, f.zone_id) for f in cleared] == [
        (FindingKind.CLEARED, RuleId.EXCLUSION_ENTRY, SCHOOL)
    ]


def test_exclusion_entry_needs_a_precise_fix(engine: Engine) -> None:
    t0 = local(12)
    settle_inside(engine, t0, (SCHOOL_XY[0] - 200.0, SCHOOL_XY[1]))
    vague = [fix(*SCHOOL_XY, t0 + k * MINUTE, accuracy_m=150.0) for k in range(2, 8)]
    assert feed(engine, vague) == []
    state = engine.device_state(DEVICE)
    assert state is not None
    assert state.memberships[SCHOOL].confirmed is Presence.UNCERTAIN


def test_unassigned_exclusion_zone_is_ignored(engine: Engine) -> None:
    t0 = local(12)
    findings = feed(engine, [fix(*MALL_XY, t0 + k * MINUTE) for k in range(4)])
    assert findings == []
    state = engine.device_state(DEVICE)
    assert state is not None
    assert MALL not in state.memberships
    # A subject without exclusions is not held to the school.
    other = [fix(*SCHOOL_XY, t0 + k * MINUTE, device_id=OTHER_DEVICE) for k in range(4)]
    assert feed(engine, other) == []
    other_state = engine.device_state(OTHER_DEVICE)
    assert other_state is not None
    assert set(other_state.memberships) == {PERMITTED}


def test_scheduled_exclusion_applies_only_in_its_window() -> None:
    school_hours = Schedule("school", (Window(time(7), time(18)),))
    engine = Engine(make_config(school_schedule=school_hours))
    # Inside the school from 06:50: nothing until the window opens at 07:00.
    t0 = local(6, 50)
    assert feed(engine, [fix(*SCHOOL_XY, t0), fix(*SCHOOL_XY, t0 + MINUTE)]) == []
    assert engine.tick(local(6, 59, 50)) == []
    assert summary(engine.tick(local(7, 0, 5))) == [
        (FindingKind.RAISED, RuleId.EXCLUSION_ENTRY, SCHOOL, local(7))
    ]
    # Still there when the window closes: cleared at 18:00, however late the tick runs.
    assert feed(engine, [fix(*SCHOOL_XY, local(17, 50))]) == []
    assert summary(engine.tick(local(18, 0, 40))) == [
        (FindingKind.CLEARED, RuleId.EXCLUSION_ENTRY, SCHOOL, local(18))
    ]
    assert engine.tick(local(18, 1)) == []


# ---------------------------------------------------------------------- curfew


def leave_home_at_2130(engine: Engine) -> None:
    at_home = [fix(*HOME, local(21)), fix(*HOME, local(21, 15))]
    away = [
        fix(*OUT_OF_HOME, local(21, 30)),
        fix(*OUT_OF_HOME, local(21, 31)),
        fix(*OUT_OF_HOME, local(21, 45)),
    ]
    assert feed(engine, at_home + away) == []  # away, but curfew has not begun
    state = engine.device_state(DEVICE)
    assert state is not None
    assert state.memberships[HOME_ZONE].confirmed is Presence.OUTSIDE


def test_curfew_raised_by_tick_at_window_start(engine: Engine) -> None:
    leave_home_at_2130(engine)
    assert engine.tick(local(21, 59, 50)) == []
    raised = engine.tick(local(22, 0, 10))
    assert summary(raised) == [(FindingKind.RAISED, RuleId.CURFEW_AWAY, HOME_ZONE, local(22))]
    assert raised[0].at.astimezone(TZ).time().isoformat() == "22:00:00"
    assert raised[0].tier is Tier.HIGH
    # Later ticks and fixes do not raise it again.
    assert engine.tick(local(22, 0, 25)) == []
    assert feed(engine, [fix(*OUT_OF_HOME, local(22, 5))]) == []


def test_curfew_raised_by_next_fix_with_the_same_time_without_tick(engine: Engine) -> None:
    leave_home_at_2130(engine)
    raised = feed(engine, [fix(*OUT_OF_HOME, local(22, 5))])
    assert summary(raised) == [(FindingKind.RAISED, RuleId.CURFEW_AWAY, HOME_ZONE, local(22))]


def test_tick_and_fix_paths_agree_on_the_raise(engine: Engine) -> None:
    ticked = Engine(make_config())
    leave_home_at_2130(engine)
    leave_home_at_2130(ticked)
    by_fix = feed(engine, [fix(*OUT_OF_HOME, local(22, 5))])
    by_tick = ticked.tick(local(22, 3))
    assert summary(by_fix) == summary(by_tick)


def test_returning_home_clears_curfew(engine: Engine) -> None:
    leave_home_at_2130(engine)
    assert len(engine.tick(local(22, 0, 10))) == 1
    assert feed(engine, [fix(*HOME, local(22, 30))]) == []
    cleared = feed(engine, [fix(*HOME, local(22, 31))])
    assert [(f.kind, f.rule, f.zone_id) for f in cleared] == [
        (FindingKind.CLEARED, RuleId.CURFEW_AWAY, HOME_ZONE)
    ]
    assert local(22, 30) <= cleared[0].at <= local(22, 31)
    assert engine.tick(local(22, 45)) == []


def test_leaving_during_curfew_raises_at_the_first_outside_fix(engine: Engine) -> None:
    assert feed(engine, [fix(*HOME, local(22, 10)), fix(*HOME, local(22, 11))]) == []
    assert feed(engine, [fix(*OUT_OF_HOME, local(23))]) == []
    assert summary(feed(engine, [fix(*OUT_OF_HOME, local(23, 1))])) == [
        (FindingKind.RAISED, RuleId.CURFEW_AWAY, HOME_ZONE, local(23))
    ]


def test_curfew_cleared_at_window_end_when_still_away(engine: Engine) -> None:
    leave_home_at_2130(engine)
    assert len(engine.tick(local(22, 0, 10))) == 1
    saturday = DAY + timedelta(days=1)
    assert feed(engine, [fix(*OUT_OF_HOME, local(5, 50, day=saturday))]) == []
    cleared = engine.tick(local(6, 0, 40, day=saturday))
    assert summary(cleared) == [
        (FindingKind.CLEARED, RuleId.CURFEW_AWAY, HOME_ZONE, local(6, day=saturday))
    ]


def test_at_home_all_night_raises_nothing(engine: Engine) -> None:
    assert feed(engine, [fix(*HOME, local(21)), fix(*HOME, local(21, 1))]) == []
    t = local(21, 30)
    found: list[Finding] = []
    while t < local(7, day=DAY + timedelta(days=1)):
        found += engine.tick(t)
        t += timedelta(minutes=15)
    assert found == []


def test_curfew_exception_date_suppresses_the_night() -> None:
    engine = Engine(make_config(curfew=curfew_schedule([DAY])))
    leave_home_at_2130(engine)
    assert engine.tick(local(22, 0, 10)) == []
    assert feed(engine, [fix(*OUT_OF_HOME, local(1, day=DAY + timedelta(days=1)))]) == []
    # The next night is not an exception.
    raised = engine.tick(local(22, 0, 10, day=DAY + timedelta(days=1)))
    assert summary(raised) == [
        (FindingKind.RAISED, RuleId.CURFEW_AWAY, HOME_ZONE, local(22, day=DAY + timedelta(days=1)))
    ]


def test_delayed_fix_from_before_window_start_does_not_clear_curfew(engine: Engine) -> None:
    leave_home_at_2130(engine)
    assert len(engine.tick(local(22, 0, 0))) == 1
    # Taken at 21:59:50 (still away), delivered after the 22:00 tick.
    assert engine.observe(fix(*OUT_OF_HOME, local(21, 59, 50)), local(22, 0, 5)) == []
    assert engine.observe(fix(*OUT_OF_HOME, local(22, 0, 50)), local(22, 0, 55)) == []


def test_delayed_fix_from_before_window_end_does_not_reraise_curfew(engine: Engine) -> None:
    leave_home_at_2130(engine)
    assert len(engine.tick(local(22, 0, 10))) == 1
    saturday = DAY + timedelta(days=1)
    assert len(engine.tick(local(6, 0, 0, day=saturday))) == 1  # cleared at 06:00
    late = fix(*OUT_OF_HOME, local(5, 59, 50, day=saturday))
    assert engine.observe(late, local(6, 0, 5, day=saturday)) == []


# ---------------------------------------------------------------------- device events


def test_strap_open_raises_and_strap_closed_clears(engine: Engine) -> None:
    t_open, t_close = local(10, 15), local(10, 17)
    raised = feed(engine, [event(DeviceEventType.STRAP_OPEN, t_open)])
    assert summary(raised) == [(FindingKind.RAISED, RuleId.STRAP_OPEN, None, t_open)]
    assert raised[0].tier is Tier.CRITICAL
    assert raised[0].evidence["event"]["type"] == "strap_open"
    # A redelivered open changes nothing.
    assert feed(engine, [event(DeviceEventType.STRAP_OPEN, t_open)]) == []
    cleared = feed(engine, [event(DeviceEventType.STRAP_CLOSED, t_close)])
    assert summary(cleared) == [(FindingKind.CLEARED, RuleId.STRAP_OPEN, None, t_close)]
    assert feed(engine, [event(DeviceEventType.STRAP_CLOSED, t_close)]) == []
    assert engine.stats["events"] == 4


def test_strap_closed_without_open_and_other_events_raise_nothing(engine: Engine) -> None:
    t = local(10)
    kinds = [
        DeviceEventType.STRAP_CLOSED,
        DeviceEventType.BATTERY_LOW,
        DeviceEventType.CHARGER_CONNECTED,
        DeviceEventType.CHECKIN,
    ]
    assert feed(engine, [event(k, t + i * MINUTE) for i, k in enumerate(kinds)]) == []
    assert engine.stats["events"] == len(kinds)


def test_unknown_device_is_counted_and_ignored(engine: Engine) -> None:
    t = local(12)
    assert (
        feed(
            engine,
            [fix(*OUT_EAST, t, device_id="ghost"), fix(*OUT_EAST, t + MINUTE, device_id="ghost")],
        )
        == []
    )
    assert engine.stats["unknown_device"] == 2
    assert engine.device_state("ghost") is None


def test_devices_are_independent(engine: Engine) -> None:
    t0 = local(12)
    assert feed(engine, [fix(*OUT_EAST, t0)]) == []
    # The other subject's outside fix must not confirm this one's pending exit.
    assert feed(engine, [fix(*OUT_EAST, t0 + MINUTE, device_id=OTHER_DEVICE)]) == []
    findings = feed(engine, [fix(*OUT_EAST, t0 + 2 * MINUTE, device_id=OTHER_DEVICE)])
    assert [(f.subject_id, f.kind, f.rule) for f in findings] == [
        (OTHER_SUBJECT, FindingKind.RAISED, RuleId.BOUNDARY_EXIT)
    ]


# ---------------------------------------------------------------------- determinism

_ANCHORS = [
    HOME,
    OUT_OF_HOME,
    NEAR_EDGE,
    OUT_EAST,
    SCHOOL_XY,
    (SCHOOL_XY[0] - 80.0, SCHOOL_XY[1]),
    (0.0, 0.0),
    (2010.0, 0.0),
    (10_000.0, 0.0),
]

Step = tuple[str, int, int, float, float, int]

step_st: st.SearchStrategy[Step] = st.one_of(
    # `repeat` fixes near one anchor, `dt` apart (negative: late, zero: duplicates).
    st.tuples(
        st.just("fix"),
        st.sampled_from([-90, 0, 20, 60, 60, 120, 1800]),
        st.integers(0, len(_ANCHORS) - 1),
        st.floats(-30.0, 30.0),
        st.sampled_from([5.0, 5.0, 12.0, 60.0, 150.0]),
        st.integers(1, 4),
    ),
    st.tuples(
        st.just("event"),
        st.integers(0, 1800),
        st.integers(0, 3),
        st.just(0.0),
        st.just(0.0),
        st.just(1),
    ),
    st.tuples(
        st.just("tick"), st.integers(0, 3600), st.just(0), st.just(0.0), st.just(0.0), st.just(1)
    ),
)
_EVENT_KINDS = [
    DeviceEventType.STRAP_OPEN,
    DeviceEventType.STRAP_CLOSED,
    DeviceEventType.BATTERY_LOW,
    DeviceEventType.CHECKIN,
]


def run_script(steps: list[Step]) -> tuple[list[Any], Engine]:
    engine = Engine(make_config())
    clock = local(20)
    ts = clock
    newest_ts = ts
    last_tick = clock
    out: list[Any] = []
    for kind, dt, which, jitter, accuracy, repeat in steps:
        for _ in range(repeat):
            if kind == "tick":
                clock += timedelta(seconds=dt)
                produced = engine.tick(clock)
                last_tick = clock
                bound = clock
            else:
                ts += timedelta(seconds=dt)
                clock = max(clock, ts)
                if kind == "fix":
                    x, y = _ANCHORS[which]
                    obs: Observation = fix(x + jitter, y - jitter, ts, accuracy_m=accuracy)
                else:
                    obs = event(_EVENT_KINDS[which], ts)
                produced = engine.observe(obs, clock)
                newest_ts = max(newest_ts, ts)
                # A late fix can reveal a violation that ended at a fix already seen, and a
                # backlog fix judged after a tick passed a window start is judged then.
                bound = max(newest_ts, last_tick)
            for f in produced:
                # Findings carry data (or window) times, never later than the data or the
                # ticks the engine has been given: no wall-clock leaks into decisions.
                assert f.at <= bound
                out.append(
                    (
                        f.subject_id,
                        f.device_id,
                        f.rule,
                        f.zone_id,
                        f.tier,
                        f.kind,
                        f.at.isoformat(),
                        f.reason,
                        f.evidence,
                    )
                )
    return out, engine


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(step_st, max_size=60))
def test_same_observations_give_identical_findings(steps: list[Step]) -> None:
    first, engine_a = run_script(steps)
    second, engine_b = run_script(steps)
    assert first == second
    assert engine_a.stats == engine_b.stats
    # Per rule instance, findings alternate raised/cleared, starting with raised.
    last: dict[tuple[Any, ...], FindingKind] = {}
    for subject_id, device_id, rule, zone_id, _tier, kind, *_ in first:
        key = (subject_id, device_id, rule, zone_id)
        was_raised = last.get(key) is FindingKind.RAISED
        assert kind is (FindingKind.CLEARED if was_raised else FindingKind.RAISED)
        last[key] = kind
