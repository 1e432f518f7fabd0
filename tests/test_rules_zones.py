"""Issue 4 zone rules in the pure core: scheduled inclusion (workplace), exclusion approach
band, segment crossing, approved leave, late (stored-and-forwarded) fixes, per-rule dwell
and several devices of one subject."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from alerts.model import RuleId, Tier
from geofence.config import CoreConfig, RuleParams, ZoneRuleParams
from geofence.engine import Engine
from geofence.observation import DeviceKind, LocationFix
from geofence.zones import Presence
from tests.core_helpers import DAY, local
from tests.rules_helpers import (
    APPROACH_M,
    CLEARED,
    DEST,
    DEST_XY,
    EXCEPTION_DAY,
    HOME,
    HOME_ZONE,
    LEAVE_DAY,
    LEAVE_ID,
    MINUTE,
    PARK,
    PARK_XY,
    PERMITTED,
    PHONE,
    RAISED,
    SCHOOL,
    SCHOOL_XY,
    SECOND,
    TAG,
    WORK,
    WORK_XY,
    every,
    feed,
    gps,
    leave,
    make_rules_config,
    of_rule,
    run,
    summary,
    zones,
)

FRIDAY = DAY
SUNDAY = DAY + timedelta(days=2)  # no work, no leave: only the rule under test applies


def sun(hour: int, minute: int = 0) -> datetime:
    return local(hour, minute, day=SUNDAY)


def engine(approach_m: float = APPROACH_M, rules: RuleParams | None = None) -> Engine:
    return Engine(make_rules_config(rules=rules, approach_m=approach_m))


# ---------------------------------------------------------------------- workplace in work hours


def test_absent_from_work_raises_when_the_grace_runs_out() -> None:
    e = engine()
    found = run(e, every(HOME, local(8, day=FRIDAY), local(9, 30, day=FRIDAY)),
                until=local(9, 30, day=FRIDAY))
    assert summary(found) == [(RAISED, RuleId.INCLUSION_AWAY, WORK, local(9, 15, day=FRIDAY))]
    assert found[0].tier is Tier.LOW
    assert found[0].reason == f"Not at {WORK} when schedule work-hours began (after its grace)"


def test_late_within_grace_then_at_work_all_day_is_quiet() -> None:
    e = engine()
    fixes = every(HOME, local(8, day=FRIDAY), local(9, 5, day=FRIDAY))
    fixes += every(WORK_XY, local(9, 10, day=FRIDAY), local(18, 30, day=FRIDAY))
    assert run(e, fixes, until=local(18, 30, day=FRIDAY)) == []


def test_leaving_work_early_raises_at_the_first_fix_away_and_clears_at_window_end() -> None:
    e = engine()
    fixes = every(WORK_XY, local(9, day=FRIDAY), local(16, day=FRIDAY))
    fixes += every(HOME, local(16, day=FRIDAY), local(18, 30, day=FRIDAY))
    found = run(e, fixes, until=local(18, 30, day=FRIDAY))
    assert of_rule(found, RuleId.INCLUSION_AWAY) == [
        (RAISED, RuleId.INCLUSION_AWAY, WORK, local(16, day=FRIDAY)),
        (CLEARED, RuleId.INCLUSION_AWAY, WORK, local(18, day=FRIDAY)),
    ]
    assert found[0].reason.startswith(f"Away from {WORK} during schedule work-hours: ")


def test_no_work_rule_on_weekends_or_exception_dates() -> None:
    for day in (SUNDAY, EXCEPTION_DAY):
        e = engine()
        assert run(e, every(HOME, local(8, day=day), local(19, day=day)),
                   until=local(19, day=day)) == []


# ---------------------------------------------------------------------- approach band


def test_lingering_in_the_approach_band_raises_a_low_tier_warning() -> None:
    e = engine()
    near = (SCHOOL_XY[0] - 110.0, SCHOOL_XY[1])  # 60 m outside the school's west edge
    fixes = every((0.0, 0.0), sun(12), sun(12, 5)) + every(near, sun(12, 5), sun(12, 15))
    fixes += every((0.0, 0.0), sun(12, 15), sun(12, 20))
    found = feed(e, fixes)
    assert summary(found) == [
        (RAISED, RuleId.EXCLUSION_APPROACH, SCHOOL, sun(12, 5)),
        (CLEARED, RuleId.EXCLUSION_APPROACH, SCHOOL, sun(12, 15)),
    ]
    assert found[0].tier is Tier.LOW
    assert found[0].reason.startswith(f"Near exclusion zone {SCHOOL} (within its 100 m warning")


def test_passing_the_band_is_not_approaching() -> None:
    e = engine()
    near = (SCHOOL_XY[0] - 110.0, SCHOOL_XY[1])
    fixes = every((0.0, 0.0), sun(12), sun(12, 5)) + every(near, sun(12, 5), sun(12, 7))
    fixes += every((0.0, 0.0), sun(12, 7), sun(12, 12))
    assert feed(e, fixes) == []


def test_a_visit_raises_entry_not_approach_on_the_way_in_or_out() -> None:
    e = engine()
    band = (SCHOOL_XY[0] - 90.0, SCHOOL_XY[1])  # 40 m outside
    fixes = every((0.0, 0.0), sun(12), sun(12, 5)) + every(band, sun(12, 5), sun(12, 6))
    fixes += every(SCHOOL_XY, sun(12, 6), sun(12, 16))
    fixes += every(band, sun(12, 16), sun(12, 18))
    fixes += every((0.0, 0.0), sun(12, 18), sun(12, 25))
    found = feed(e, fixes)
    assert of_rule(found, RuleId.EXCLUSION_APPROACH) == []
    assert [s[:3] for s in summary(found)] == [
        (RAISED, RuleId.EXCLUSION_ENTRY, SCHOOL),
        (CLEARED, RuleId.EXCLUSION_ENTRY, SCHOOL),
    ]
    assert found[0].at == sun(12, 6)


def test_no_band_configured_means_no_approach_track() -> None:
    e = engine(approach_m=0.0)
    near = (SCHOOL_XY[0] - 110.0, SCHOOL_XY[1])
    assert feed(e, every(near, sun(12), sun(12, 30))) == []
    state = e.device_state(TAG)
    assert state is not None
    assert not any(k.endswith("#approach") for k in state.memberships)


def test_scheduled_exclusion_only_in_its_hours() -> None:
    e = engine()
    assert feed(e, every(PARK_XY, sun(19), sun(19, 10))) == []
    e = engine()
    found = feed(e, every(PARK_XY, sun(10), sun(10, 10)))
    assert summary(found) == [(RAISED, RuleId.EXCLUSION_ENTRY, PARK, sun(10))]


# ---------------------------------------------------------------------- segment crossing


def test_zone_crossed_between_two_sparse_fixes_is_detected() -> None:
    e = engine(approach_m=0.0)
    west = (SCHOOL_XY[0] - 400.0, SCHOOL_XY[1])
    east = (SCHOOL_XY[0] + 400.0, SCHOOL_XY[1])
    t0 = sun(12)
    further = (SCHOOL_XY[0] + 600.0, SCHOOL_XY[1])
    assert feed(e, [gps(west, t0), gps(west, t0 + 5 * MINUTE), gps(east, t0 + 10 * MINUTE)]) == []
    # The next fix goes on eastwards: the segment's end was real.
    found = feed(e, [gps(further, t0 + 13 * MINUTE)])
    # The line runs 100 m through the school, entering at 350/800 of the way.
    assert summary(found) == [
        (RAISED, RuleId.EXCLUSION_CROSSED, SCHOOL, t0 + 5 * MINUTE + 5 * MINUTE * 350 / 800),
        (CLEARED, RuleId.EXCLUSION_CROSSED, SCHOOL, t0 + 5 * MINUTE + 5 * MINUTE * 450 / 800),
    ]
    assert found[0].tier is Tier.HIGH
    assert found[0].evidence["crossing"]["chord_m"] == 100.0
    assert "runs 100 m inside it" in found[0].reason
    assert e.stats["exclusion_crossing_inferred"] == 1


def test_cutting_a_corner_or_a_long_gap_is_not_a_crossing() -> None:
    t0 = sun(12)
    # The line x + y = 1921 cuts the school's south-west corner (950, 950): a 30 m chord.
    a = (700.0, 1221.0)
    b = (1221.0, 700.0)
    beyond = (1400.0, 521.0)
    e = engine(approach_m=0.0)
    assert feed(e, [gps(a, t0), gps(a, t0 + MINUTE), gps(b, t0 + 5 * MINUTE),
                    gps(beyond, t0 + 7 * MINUTE)]) == []
    state = e.device_state(TAG)
    assert state is not None
    assert state.last_fix is not None
    assert state.last_fix.ts == t0 + 7 * MINUTE
    # Straight through, but 11 minutes apart: the path is unknown.
    west = (SCHOOL_XY[0] - 400.0, SCHOOL_XY[1])
    east = (SCHOOL_XY[0] + 400.0, SCHOOL_XY[1])
    further = (SCHOOL_XY[0] + 600.0, SCHOOL_XY[1])
    e = engine(approach_m=0.0)
    assert feed(e, [gps(west, t0), gps(west, t0 + MINUTE), gps(east, t0 + 12 * MINUTE),
                    gps(further, t0 + 14 * MINUTE)]) == []


def test_a_single_outlier_is_no_crossing() -> None:
    # An outlier 2 km away and back: both segments cut through the school.
    e = engine(approach_m=0.0)
    t0 = sun(12)
    west = (SCHOOL_XY[0] - 1000.0, SCHOOL_XY[1])
    outlier = (SCHOOL_XY[0] + 1000.0, SCHOOL_XY[1])
    fixes = [gps(west, t0), gps(west, t0 + MINUTE), gps(outlier, t0 + 2 * MINUTE, 20.0),
             gps(west, t0 + 3 * MINUTE), gps(west, t0 + 4 * MINUTE)]
    assert feed(e, fixes) == []
    assert e.stats["crossing_segment_unsupported"] >= 1


def test_crossing_a_scheduled_zone_outside_its_hours_is_not_reported() -> None:
    west = (PARK_XY[0] - 400.0, PARK_XY[1])
    east = (PARK_XY[0] + 400.0, PARK_XY[1])
    e = engine()
    t0 = sun(20)
    further = (PARK_XY[0] + 600.0, PARK_XY[1])
    assert feed(e, [gps(west, t0), gps(west, t0 + MINUTE), gps(east, t0 + 6 * MINUTE),
                    gps(further, t0 + 9 * MINUTE)]) == []
    e = engine()
    t0 = sun(11)
    further = (PARK_XY[0] + 600.0, PARK_XY[1])
    found = feed(e, [gps(west, t0), gps(west, t0 + MINUTE), gps(east, t0 + 6 * MINUTE),
                     gps(further, t0 + 9 * MINUTE)])
    assert [s[:3] for s in summary(found)] == [
        (RAISED, RuleId.EXCLUSION_CROSSED, PARK),
        (CLEARED, RuleId.EXCLUSION_CROSSED, PARK),
    ]


# ---------------------------------------------------------------------- approved leave

TRIP = [(2500.0, 0.0), (3500.0, 0.0), (4500.0, 0.0)]  # along the route corridor


def trip_to_destination(start_hour: int = 9) -> list[LocationFix]:
    day = LEAVE_DAY
    fixes = every(HOME, local(8, day=day), local(start_hour, day=day), 5 * MINUTE)
    t = local(start_hour, 5, day=day)
    for xy in TRIP:
        fixes += every(xy, t, t + 10 * MINUTE, 5 * MINUTE)
        t += 10 * MINUTE
    return fixes + every(DEST_XY, t, local(16, day=day), 5 * MINUTE)


def test_leave_widens_the_permitted_area_to_route_and_destination() -> None:
    e = engine()
    back = every(TRIP[1], local(16, day=LEAVE_DAY), local(16, 30, day=LEAVE_DAY), 5 * MINUTE)
    back += every(HOME, local(16, 30, day=LEAVE_DAY), local(18, day=LEAVE_DAY), 5 * MINUTE)
    found = run(e, trip_to_destination() + back, until=local(18, day=LEAVE_DAY))
    assert found == []
    state = e.device_state(TAG)
    assert state is not None
    assert state.memberships[PERMITTED].confirmed is Presence.INSIDE


def test_leaving_the_approved_area_during_leave_raises_leave_area_exit() -> None:
    e = engine()
    off_route = (3500.0, 1500.0)  # outside district, corridor and destination
    day = LEAVE_DAY
    fixes = every(HOME, local(8, day=day), local(10, day=day), 5 * MINUTE)
    fixes += every(off_route, local(10, day=day), local(10, 30, day=day), 5 * MINUTE)
    fixes += every(DEST_XY, local(10, 30, day=day), local(12, day=day), 5 * MINUTE)
    found = run(e, fixes, until=local(12, day=day))
    assert [s[:3] for s in summary(found)] == [
        (RAISED, RuleId.LEAVE_AREA_EXIT, f"leave:{LEAVE_ID}"),
        (CLEARED, RuleId.LEAVE_AREA_EXIT, f"leave:{LEAVE_ID}"),
    ]
    assert found[0].at == local(10, day=day)
    assert found[0].tier is Tier.HIGH
    assert found[0].reason.startswith(f"Left the approved leave area of {LEAVE_ID}")


def test_boundary_resumes_when_leave_and_its_grace_end() -> None:
    e = engine()
    fixes = trip_to_destination() + every(DEST_XY, local(16, day=LEAVE_DAY),
                                          local(18, day=LEAVE_DAY), 5 * MINUTE)
    found = run(e, fixes, until=local(18, day=LEAVE_DAY))
    # Leave ends 17:00, return grace 30 min: still at the destination then.
    assert summary(found) == [
        (RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, local(17, 30, day=LEAVE_DAY)),
    ]
    assert found[0].reason == f"Outside permitted area {PERMITTED} when approved leave ended"


def test_leaving_before_the_leave_starts_is_a_boundary_exit_until_it_starts() -> None:
    e = engine()
    day = LEAVE_DAY
    fixes = every(HOME, local(7, day=day), local(8, day=day), 5 * MINUTE)
    fixes += every(DEST_XY, local(8, day=day), local(10, day=day), 5 * MINUTE)
    found = run(e, fixes, until=local(10, day=day))
    assert summary(found) == [
        (RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, local(8, day=day)),
        (CLEARED, RuleId.BOUNDARY_EXIT, PERMITTED, local(9, day=day)),
    ]
    assert found[1].reason.startswith("Approved leave began")


def test_overnight_leave_suspends_curfew_too() -> None:
    zone_map = zones()
    night = leave(zone_map, local(20, day=FRIDAY), local(8, day=FRIDAY + timedelta(days=1)))
    config = make_rules_config(with_leave=False)
    subject = config.subjects["s1"]
    config = CoreConfig(config.version, config.projection, config.zones,
                        {"s1": replace(subject, leaves=(night,))}, config.rules)
    e = Engine(config)
    saturday = FRIDAY + timedelta(days=1)
    fixes = every(HOME, local(19, day=FRIDAY), local(20, 30, day=FRIDAY), 5 * MINUTE)
    fixes += every(DEST_XY, local(20, 30, day=FRIDAY), local(9, day=saturday), 10 * MINUTE)
    found = run(e, fixes, until=local(9, day=saturday))
    # Curfew (22:00-06:00) fell inside the leave; the boundary resumed at 08:30.
    assert summary(found) == [(RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, local(8, 30, day=saturday))]


# ---------------------------------------------------------------------- late fixes


def test_late_backlog_reveals_a_visit_the_live_stream_missed() -> None:
    e = engine(approach_m=0.0)
    t0 = sun(12)
    away = (0.0, 0.0)
    assert feed(e, every(away, t0, t0 + 5 * MINUTE)) == []
    # Out of coverage 12:05-12:17; back in coverage the device sends its current fix first,
    # then the backlog.
    now = t0 + 17 * MINUTE
    assert e.observe(gps(away, now), now + 30 * SECOND) == []
    backlog = every(away, t0 + 5 * MINUTE, t0 + 7 * MINUTE)
    backlog += every(SCHOOL_XY, t0 + 7 * MINUTE, t0 + 13 * MINUTE)
    backlog += every(away, t0 + 13 * MINUTE, now)
    # Newest first, as some trackers send a backlog: the visit is judged once it is all in.
    assert [x for f in reversed(backlog) for x in e.observe(f, now + MINUTE)] == []
    # The next live fix settles the backlog.
    found = e.observe(gps(away, now + MINUTE), now + MINUTE + SECOND)
    assert summary(found) == [
        (RAISED, RuleId.EXCLUSION_ENTRY, SCHOOL, t0 + 7 * MINUTE),
        (CLEARED, RuleId.EXCLUSION_ENTRY, SCHOOL, t0 + 13 * MINUTE),
    ]
    assert found[0].evidence["late_fixes"][0]["ts"] == (t0 + 7 * MINUTE).isoformat()
    assert "delivered late" in found[0].reason
    # Late fixes never moved the live state: the device is where its newest fix says.
    state = e.device_state(TAG)
    assert state is not None
    assert SCHOOL not in state.memberships  # the live stream never came near it
    assert e.stats["late_violation_found"] == 1
    # The same backlog again (a redelivery) changes nothing.
    assert [x for f in backlog for x in e.observe(f, now + 3 * MINUTE)] == []


def test_a_backlog_with_nothing_after_it_is_settled_by_the_clock() -> None:
    e = engine(approach_m=0.0)
    t0 = sun(12)
    away = (0.0, 0.0)
    feed(e, every(away, t0, t0 + 5 * MINUTE))
    now = t0 + 12 * MINUTE
    e.observe(gps(away, now), now + 10 * SECOND)
    backlog = [*every(away, t0 + 5 * MINUTE, t0 + 7 * MINUTE),
               *every(SCHOOL_XY, t0 + 7 * MINUTE, t0 + 10 * MINUTE),
               *every(away, t0 + 10 * MINUTE, now)]
    assert [x for f in backlog for x in e.observe(f, now + 20 * SECOND)] == []
    assert e.tick(now + MINUTE) == []
    # Two quiet minutes after the burst, the tick judges it.
    found = e.tick(now + 20 * SECOND + 2 * MINUTE)
    assert [s[:2] for s in summary(found)] == [(RAISED, RuleId.EXCLUSION_ENTRY),
                                               (CLEARED, RuleId.EXCLUSION_ENTRY)]


def test_a_backlog_ending_inside_is_settled_by_the_next_live_fix() -> None:
    e = engine(approach_m=0.0)
    t0 = sun(12)
    away = (0.0, 0.0)
    feed(e, every(away, t0, t0 + 5 * MINUTE))
    now = t0 + 12 * MINUTE
    assert e.observe(gps(away, now), now + 10 * SECOND) == []
    backlog = every(away, t0 + 5 * MINUTE, t0 + 7 * MINUTE)
    backlog += every(SCHOOL_XY, t0 + 7 * MINUTE, now)
    assert [x for f in backlog for x in e.observe(f, now + 20 * SECOND)] == []
    state = e.device_state(TAG)
    assert state is not None
    assert state.late_open == {t0 + 4 * MINUTE}
    found = e.observe(gps(away, now + MINUTE), now + MINUTE + SECOND)
    assert summary(found) == [
        (RAISED, RuleId.EXCLUSION_ENTRY, SCHOOL, t0 + 7 * MINUTE),
        (CLEARED, RuleId.EXCLUSION_ENTRY, SCHOOL, now),
    ]
    assert state.late_open == set()


def test_late_fixes_inside_an_already_reported_violation_are_not_reported_again() -> None:
    e = engine(approach_m=0.0)
    t0 = sun(12)
    fixes = every((0.0, 0.0), t0, t0 + 5 * MINUTE) + every(SCHOOL_XY, t0 + 5 * MINUTE,
                                                            t0 + 20 * MINUTE, 2 * MINUTE)
    found = feed(e, fixes)
    assert [s[:2] for s in summary(found)] == [(RAISED, RuleId.EXCLUSION_ENTRY)]
    late = [gps(SCHOOL_XY, t0 + 6 * MINUTE), gps(SCHOOL_XY, t0 + 8 * MINUTE)]
    assert [x for f in late for x in e.observe(f, t0 + 21 * MINUTE)] == []


def test_one_late_fix_inside_is_not_a_visit() -> None:
    e = engine(approach_m=0.0)
    t0 = sun(12)
    feed(e, every((0.0, 0.0), t0, t0 + 10 * MINUTE, 2 * MINUTE))
    assert e.observe(gps(SCHOOL_XY, t0 + 5 * MINUTE), t0 + 11 * MINUTE) == []
    assert e.stats["fix_late"] == 1


# ---------------------------------------------------------------------- dwell per rule


def test_dwell_can_be_set_per_rule() -> None:
    rules = RuleParams(zone_overrides={RuleId.BOUNDARY_EXIT: {"dwell_fixes": 4,
                                                              "dwell_seconds": 600.0}})
    e = engine(rules=rules)
    out = (2100.0, 0.0)
    t0 = sun(12)
    assert feed(e, every((1900.0, 0.0), t0, t0 + 2 * MINUTE)) == []
    assert feed(e, every(out, t0 + 2 * MINUTE, t0 + 5 * MINUTE)) == []
    assert summary(feed(e, [gps(out, t0 + 5 * MINUTE)])) == [
        (RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t0 + 2 * MINUTE)
    ]
    # The other zone rules keep the shared parameters.
    assert e.config.rules.zone_params(RuleId.EXCLUSION_ENTRY) == ZoneRuleParams()


# ---------------------------------------------------------------------- two devices


def test_a_subject_with_two_devices_has_one_condition_per_rule() -> None:
    e = engine()
    out = (2300.0, 0.0)
    t0 = sun(12)
    found = feed(e, [gps(out, t0), gps(out, t0, device_id=PHONE),
                     gps(out, t0 + MINUTE), gps(out, t0 + MINUTE, device_id=PHONE)])
    assert summary(found) == [(RAISED, RuleId.BOUNDARY_EXIT, PERMITTED, t0)]
    back = (0.0, 0.0)
    # The phone comes back; the tag is still out: the condition stays.
    assert feed(e, every(back, t0 + 2 * MINUTE, t0 + 4 * MINUTE, device_id=PHONE)) == []
    cleared = feed(e, every(back, t0 + 2 * MINUTE, t0 + 4 * MINUTE))
    assert [s[:2] for s in summary(cleared)] == [(CLEARED, RuleId.BOUNDARY_EXIT)]
    assert cleared[0].device_id == TAG
    assert e.config.devices[PHONE].kind is DeviceKind.PHONE
    assert HOME_ZONE in e.config.zones
    assert DEST in e.config.zones
