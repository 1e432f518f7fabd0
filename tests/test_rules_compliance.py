"""Issue 5 part A in the pure core: person-device separation (with property tests),
scheduled check-ins and face verification, monitoring authorisation (Art. 29)."""

from __future__ import annotations

import dataclasses
import functools
import math
from datetime import datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.model import Finding, FindingKind, RuleId
from geofence.authorisation import AUTHORISATION_RULES
from geofence.compliancespec import (
    AfterAuthorisation,
    AuthorisationParams,
    AuthorisationPeriod,
    AuthorisationSpec,
    CheckinRequirement,
    ComplianceParams,
    SeparationParams,
)
from geofence.config import CoreConfig
from geofence.engine import Engine
from geofence.observation import DeviceEventType, DeviceKind, Observation
from tests.core_helpers import DAY, local
from tests.rules_helpers import (
    CLEARED,
    HOME,
    MINUTE,
    PHONE,
    RAISED,
    SUBJECT,
    TAG,
    device_event,
    every,
    gps,
    make_rules_config,
    of_rule,
    run,
)

SEPARATION = RuleId.PERSON_DEVICE_SEPARATION
R_M = 200.0
T_S = 15 * 60.0
DAILY = CheckinRequirement(time(8), time(20), frozenset(range(7)), grace_seconds=30 * 60.0)


def behaviour_config(
    *,
    separation: SeparationParams | None = None,
    checkins: tuple[CheckinRequirement, ...] = (),
    authorisation: AuthorisationSpec | None = None,
    after: AfterAuthorisation = AfterAuthorisation.SUPPRESS,
    swap_kinds: bool = False,
) -> CoreConfig:
    devices = ((TAG, DeviceKind.PHONE), (PHONE, DeviceKind.WEARABLE)) if swap_kinds else (
        (TAG, DeviceKind.WEARABLE), (PHONE, DeviceKind.PHONE))
    base = make_rules_config(with_leave=False, devices=devices)
    rules = dataclasses.replace(base.rules, compliance=ComplianceParams(
        separation=separation, authorisation=AuthorisationParams(alerts=after),
    ))
    subject = dataclasses.replace(base.subjects[SUBJECT], checkins=checkins,
                                  authorisation=authorisation)
    return CoreConfig(base.version, base.projection, base.zones, {SUBJECT: subject}, rules)


@functools.cache
def sep_config(swap_kinds: bool = False, seconds: float = T_S) -> CoreConfig:
    """Built once per variant (configs are immutable): the property tests run many examples."""
    return behaviour_config(separation=SeparationParams(distance_m=R_M, seconds=seconds),
                            swap_kinds=swap_kinds)


# The symmetry property runs with a short T, so that most examples raise and clear.
SHORT_T_S = 120.0


def both(start: datetime, end: datetime, tag_xy: tuple[float, float],
         phone_xy: tuple[float, float]) -> list[Observation]:
    out: list[Observation] = []
    for tag_fix, phone_fix in zip(every(tag_xy, start, end),
                                  every(phone_xy, start, end, device_id=PHONE), strict=True):
        out += [tag_fix, phone_fix]
    return out


# ---------------------------------------------------------------------- separation


def test_tag_and_phone_apart_for_t_minutes_raises_at_the_start_and_clears_together() -> None:
    engine = Engine(sep_config())
    away = (HOME[0] + 1000.0, HOME[1])  # 1 km from the phone left at home
    stream = (both(local(9), local(10), HOME, HOME) + both(local(10), local(10, 30), away, HOME)
              + both(local(10, 30), local(11), HOME, HOME))
    findings = run(engine, stream, until=local(11))
    assert of_rule(findings, SEPARATION) == [
        (RAISED, SEPARATION, None, local(10)), (CLEARED, SEPARATION, None, local(10, 30)),
    ]
    raised = next(f for f in findings if f.rule is SEPARATION)
    assert raised.device_id == TAG
    assert "apart since 10:00" in raised.reason
    assert "." not in raised.reason.rstrip(")").split("(")[0]  # one sentence, no coordinates


def test_a_short_separation_stays_quiet() -> None:
    engine = Engine(sep_config())
    away = (HOME[0] + 1000.0, HOME[1])
    stream = (both(local(9), local(10), HOME, HOME) + both(local(10), local(10, 10), away, HOME)
              + both(local(10, 10), local(11), HOME, HOME))
    assert of_rule(run(engine, stream, until=local(11)), SEPARATION) == []


def test_vague_fixes_cannot_show_a_separation() -> None:
    engine = Engine(sep_config())
    away = (HOME[0] + 300.0, HOME[1])  # 300 m apart, but each fix is +-80 m
    stream: list[Observation] = []
    for tag_fix, phone_fix in zip(every(away, local(10), local(11), accuracy_m=80.0),
                                  every(HOME, local(10), local(11), device_id=PHONE,
                                        accuracy_m=80.0), strict=True):
        stream += [tag_fix, phone_fix]
    assert of_rule(run(engine, stream, until=local(11)), SEPARATION) == []


def test_phone_reporting_while_the_tag_is_silent_is_a_separation() -> None:
    engine = Engine(sep_config())
    stream = both(local(9), local(10), HOME, HOME)
    stream += every(HOME, local(10), local(10, 40), device_id=PHONE)  # the tag says nothing
    stream += both(local(10, 40), local(11), HOME, HOME)
    findings = run(engine, stream, until=local(11))
    # Tag last heard 09:59:01, silent from 10:14:01, when the phone's fix of 10:14 arrives.
    assert of_rule(findings, SEPARATION) == [
        (RAISED, SEPARATION, None, local(10, 14, 1)),
        (CLEARED, SEPARATION, None, local(10, 40, 1)),
    ]
    raised = next(f for f in findings if f.rule is SEPARATION and f.kind is RAISED)
    assert raised.device_id == TAG
    assert "silent since 09:59" in raised.reason


def test_phone_check_in_while_the_tag_is_silent_says_so() -> None:
    engine = Engine(sep_config())
    stream: list[Observation] = [*both(local(9), local(10), HOME, HOME)]
    stream.append(device_event(DeviceEventType.CHECKIN, local(10, 30), device_id=PHONE,
                               verification="passed"))
    findings = run(engine, stream, until=local(10, 31))
    raised = [f for f in findings if f.rule is SEPARATION]
    assert [(f.kind, f.at) for f in raised] == [(RAISED, local(10, 30, 1))]
    assert "checked in on the phone" in raised[0].reason


Track = list[tuple[float, float]]
offsets = st.lists(st.tuples(st.floats(-1.0, 1.0), st.floats(-1.0, 1.0)), min_size=30,
                   max_size=30)
walk = st.lists(st.tuples(st.floats(-300.0, 300.0), st.floats(-300.0, 300.0)), min_size=30,
                max_size=30)


def _stream(tag_track: Track, phone_track: Track, accuracy: tuple[float, float],
            phone_first: list[bool]) -> list[Observation]:
    out: list[Observation] = []
    for minute, (t_xy, p_xy) in enumerate(zip(tag_track, phone_track, strict=True)):
        ts = local(10) + minute * MINUTE
        pair: list[Observation] = [gps(t_xy, ts, accuracy_m=accuracy[0]),
                                   gps(p_xy, ts, accuracy_m=accuracy[1], device_id=PHONE)]
        out += reversed(pair) if phone_first[minute] else pair
    return out


def _decisions(findings: list[Finding]) -> list[tuple[FindingKind, datetime]]:
    return [(f.kind, f.at) for f in findings if f.rule is SEPARATION]


def _feed(config: CoreConfig, stream: list[Observation]) -> list[Finding]:
    engine = Engine(config)
    out: list[Finding] = []
    for observation in stream:
        out += engine.observe(observation, observation.ts + timedelta(seconds=2))
    return out


@settings(max_examples=25, deadline=None)
@given(walk, walk, st.lists(st.booleans(), min_size=30, max_size=30),
       st.lists(st.booleans(), min_size=30, max_size=30),
       st.tuples(st.floats(3.0, 60.0), st.floats(3.0, 60.0)))
def test_separation_is_symmetric_in_arrival_order_and_device_roles(
    tag_walk: Track, phone_walk: Track, order_a: list[bool], order_b: list[bool],
    accuracy: tuple[float, float],
) -> None:
    # Two walks that may drift apart: the decisions must not depend on which device's fix
    # of a minute arrives first, nor on which of the two is the tag.
    tag_track = [(HOME[0] + x * k / 10, HOME[1] + y * k / 10) for k, (x, y) in enumerate(tag_walk)]
    phone_track = [(HOME[0] + x, HOME[1] + y) for x, y in phone_walk]
    config = sep_config(seconds=SHORT_T_S)
    first = _decisions(_feed(config, _stream(tag_track, phone_track, accuracy, order_a)))
    reordered = _feed(config, _stream(tag_track, phone_track, accuracy, order_b))
    swapped = _feed(sep_config(swap_kinds=True, seconds=SHORT_T_S),
                    _stream(tag_track, phone_track, accuracy, order_a))
    assert _decisions(reordered) == first
    assert _decisions(swapped) == first
    # Deterministic: the same input gives the same decisions.
    assert _decisions(_feed(config, _stream(tag_track, phone_track, accuracy,
                                            order_a))) == first


@settings(max_examples=30, deadline=None)
@given(offsets, st.tuples(st.floats(3.0, 90.0), st.floats(3.0, 90.0)),
       st.lists(st.booleans(), min_size=30, max_size=30))
def test_never_separated_while_the_two_are_within_r_allowing_for_accuracy(
    errors: list[tuple[float, float]], accuracy: tuple[float, float], order: list[bool],
) -> None:
    # True positions at most R apart; each fix off by at most its own accuracy: the
    # distance minus both accuracies never exceeds R, so no alert, whatever the noise.
    tag_track, phone_track = [], []
    for minute, (ex, ey) in enumerate(errors):
        true_tag = (HOME[0] + 10.0 * minute, HOME[1])
        true_phone = (true_tag[0] + R_M * math.cos(minute), true_tag[1] + R_M * math.sin(minute))
        norm = max(1.0, math.hypot(ex, ey))
        tag_track.append((true_tag[0] + accuracy[0] * ex / norm,
                          true_tag[1] + accuracy[0] * ey / norm))
        phone_track.append((true_phone[0] - accuracy[1] * ex / norm,
                            true_phone[1] - accuracy[1] * ey / norm))
    findings = _feed(sep_config(), _stream(tag_track, phone_track, accuracy, order))
    assert _decisions(findings) == []


# ---------------------------------------------------------------------- check-ins


@pytest.mark.parametrize("tick_s", [5, 15, 60])
def test_missed_check_in_is_raised_at_the_deadline_and_cleared_by_the_late_report(
    tick_s: int,
) -> None:
    engine = Engine(behaviour_config(checkins=(DAILY,)))
    stream: list[Observation] = [*every(HOME, local(7), local(21, 30), step=10 * MINUTE)]
    stream.append(device_event(DeviceEventType.CHECKIN, local(21, 30), device_id=PHONE,
                               verification="passed"))
    findings = run(engine, stream, until=local(21, 31), tick=timedelta(seconds=tick_s))
    assert of_rule(findings, RuleId.CHECKIN_MISSED) == [
        (RAISED, RuleId.CHECKIN_MISSED, None, local(20, 30)),
        (CLEARED, RuleId.CHECKIN_MISSED, None, local(21, 30)),
    ]
    raised = next(f for f in findings if f.rule is RuleId.CHECKIN_MISSED)
    assert raised.reason == (f"{SUBJECT} did not check in between 08:00 and 20:00 on "
                             "Fri 20 Nov (grace until 20:30)")
    assert raised.device_id == PHONE


def test_check_in_on_time_stays_quiet_and_ticks_do_not_matter() -> None:
    stream: list[Observation] = [*every(HOME, local(7), local(21), step=10 * MINUTE)]
    stream.insert(20, device_event(DeviceEventType.CHECKIN, local(10, 5), device_id=PHONE,
                                   verification="passed"))
    for tick_s in (5, 15, 60):
        engine = Engine(behaviour_config(checkins=(DAILY,)))
        findings = run(engine, sorted(stream, key=lambda o: o.ts), until=local(22),
                       tick=timedelta(seconds=tick_s))
        assert of_rule(findings, RuleId.CHECKIN_MISSED) == []


def test_deadline_of_a_window_opened_before_the_subject_was_first_heard_is_not_judged() -> None:
    engine = Engine(behaviour_config(checkins=(DAILY,)))
    findings = run(engine, every(HOME, local(12), local(21), step=10 * MINUTE), until=local(21))
    assert of_rule(findings, RuleId.CHECKIN_MISSED) == []


def test_failed_face_verification_is_its_own_alert_until_a_verified_check_in() -> None:
    engine = Engine(behaviour_config(checkins=(DAILY,)))
    stream: list[Observation] = [*every(HOME, local(7), local(9), step=10 * MINUTE)]
    stream += [
        device_event(DeviceEventType.CHECKIN, local(9), device_id=PHONE, verification="failed"),
        device_event(DeviceEventType.CHECKIN, local(9, 5), device_id=PHONE,
                     verification="passed"),
    ]
    findings = run(engine, stream, until=local(9, 10))
    rule = RuleId.CHECKIN_VERIFICATION_FAILED
    assert of_rule(findings, rule) == [(RAISED, rule, None, local(9)),
                                       (CLEARED, rule, None, local(9, 5))]
    assert next(f for f in findings if f.rule is rule).tier.value == "high"


def test_unverified_check_in_does_not_count_and_is_counted() -> None:
    engine = Engine(behaviour_config(checkins=(DAILY,)))
    stream: list[Observation] = [*every(HOME, local(7), local(21), step=10 * MINUTE)]
    stream.insert(20, device_event(DeviceEventType.CHECKIN, local(10, 5), device_id=PHONE))
    findings = run(engine, sorted(stream, key=lambda o: o.ts), until=local(21))
    assert [s[0] for s in of_rule(findings, RuleId.CHECKIN_MISSED)] == [RAISED]
    assert engine.stats["checkin_unverified"] == 1


# ---------------------------------------------------------------------- authorisation

PERIOD = AuthorisationPeriod(local(0, day=DAY), local(0, day=DAY + timedelta(days=20)),
                             "left the county without approval", "2026-007")


def test_officer_is_warned_before_the_end_then_alerts_stop_after_it() -> None:
    engine = Engine(behaviour_config(authorisation=AuthorisationSpec((PERIOD,))))
    end = PERIOD.end
    stream: list[Observation] = [*every(HOME, local(12), local(13), step=10 * MINUTE)]
    # After the end: out of the district, and the strap opened: nothing but the Art. 29 alert.
    stream += every((5000.0, 5000.0), end + timedelta(hours=1), end + timedelta(hours=2),
                    step=5 * MINUTE)
    stream.append(device_event(DeviceEventType.STRAP_OPEN, end + timedelta(hours=2)))
    findings = run(engine, stream, until=end + timedelta(hours=3), tick=timedelta(minutes=30))
    assert [(f.kind, f.rule, f.at) for f in findings if f.rule in AUTHORISATION_RULES] == [
        (RAISED, RuleId.AUTHORISATION_EXPIRING, end - timedelta(days=14)),
        (CLEARED, RuleId.AUTHORISATION_EXPIRING, end),
        (RAISED, RuleId.MONITORING_UNAUTHORISED, end),
    ]
    expiring = next(f for f in findings if f.rule is RuleId.AUTHORISATION_EXPIRING)
    assert expiring.reason == (
        f"Electronic monitoring of {SUBJECT} is authorised until the end of 2026-12-09 "
        "(14 days left): renew it (Art. 29) or plan its end"
    )
    # Before the end the rules alerted as usual (work hours away from work, curfew); after
    # it, the boundary exit and the opened strap are held back. Conditions raised before the
    # end may still clear after it (no alert is left hanging).
    raised = [f for f in findings if f.rule not in AUTHORISATION_RULES and f.kind is RAISED]
    assert raised
    assert all(f.at < end for f in raised)
    assert engine.stats["finding_suppressed_unauthorised"] >= 2
    assert not engine.authorised(TAG, end + timedelta(hours=1))
    assert engine.authorised(TAG, end - timedelta(hours=1))


def test_renewal_clears_the_warning_at_the_old_end_and_monitoring_goes_on() -> None:
    renewal = AuthorisationPeriod(PERIOD.end, PERIOD.end + timedelta(days=80), "renewed")
    engine = Engine(behaviour_config(authorisation=AuthorisationSpec((PERIOD, renewal))))
    stream: list[Observation] = [*every(HOME, local(12), local(13), step=10 * MINUTE)]
    stream += every((5000.0, 5000.0), PERIOD.end + timedelta(hours=1),
                    PERIOD.end + timedelta(hours=2), step=5 * MINUTE)
    findings = run(engine, stream, until=PERIOD.end + timedelta(hours=2),
                   tick=timedelta(minutes=30))
    rules = {f.rule for f in findings}
    assert RuleId.AUTHORISATION_EXPIRING not in rules  # the run ends 100 days out
    assert RuleId.BOUNDARY_EXIT in rules  # alerts continue under the renewal


def test_warning_due_before_the_first_message_is_given_at_once() -> None:
    engine = Engine(behaviour_config(authorisation=AuthorisationSpec((PERIOD,))))
    first = PERIOD.end - timedelta(days=3)
    findings = run(engine, every(HOME, first, first + MINUTE), until=first + MINUTE)
    assert of_rule(findings, RuleId.AUTHORISATION_EXPIRING) == [
        (RAISED, RuleId.AUTHORISATION_EXPIRING, None, first + timedelta(seconds=1)),
    ]
    assert "(3 days left)" in findings[0].reason


def test_before_the_start_alerts_are_held_and_released_at_the_start() -> None:
    later = AuthorisationPeriod(local(12), local(0, day=DAY + timedelta(days=30)), "order")
    engine = Engine(behaviour_config(authorisation=AuthorisationSpec((later,))))
    stream = every((5000.0, 5000.0), local(10), local(13), step=5 * MINUTE)  # out of district
    findings = run(engine, stream, until=local(13), tick=timedelta(minutes=1))
    assert [(f.kind, f.rule, f.at) for f in findings] == [
        (RAISED, RuleId.MONITORING_UNAUTHORISED, local(10)),
        (CLEARED, RuleId.MONITORING_UNAUTHORISED, local(12)),
    ]
    # Boundary exit and absence from work began before the period: held back, and not
    # alerted in the middle of the condition either (docs/rules.md, known limits).
    assert engine.stats["finding_suppressed_unauthorised"] == 2


def test_policy_continue_keeps_alerting_after_the_end() -> None:
    engine = Engine(behaviour_config(authorisation=AuthorisationSpec((PERIOD,)),
                                     after=AfterAuthorisation.CONTINUE))
    stream = every((5000.0, 5000.0), PERIOD.end + timedelta(hours=1),
                   PERIOD.end + timedelta(hours=2), step=5 * MINUTE)
    findings = run(engine, stream, until=PERIOD.end + timedelta(hours=2))
    assert {RuleId.BOUNDARY_EXIT, RuleId.MONITORING_UNAUTHORISED} <= {f.rule for f in findings}


def test_a_renewal_loaded_before_the_end_is_noted_and_monitoring_goes_on() -> None:
    # The warning is raised under the first config; the renewal arrives by a reload.
    engine = Engine(behaviour_config(authorisation=AuthorisationSpec((PERIOD,))))
    warn_at = PERIOD.end - timedelta(days=14)
    findings = run(engine, every(HOME, warn_at - MINUTE, warn_at + MINUTE),
                   until=warn_at + MINUTE)
    assert of_rule(findings, RuleId.AUTHORISATION_EXPIRING) == [
        (RAISED, RuleId.AUTHORISATION_EXPIRING, None, warn_at),
    ]
    renewal = AuthorisationPeriod(PERIOD.end, PERIOD.end + timedelta(days=80), "renewed")
    engine.swap_config(behaviour_config(authorisation=AuthorisationSpec((PERIOD, renewal))))
    findings = engine.tick(PERIOD.end + MINUTE)  # the tag's silence etc. come too: ignored
    assert [(f.kind, f.rule, f.at, f.reason) for f in findings
            if f.rule in AUTHORISATION_RULES] == [
        (CLEARED, RuleId.AUTHORISATION_EXPIRING, PERIOD.end,
         f"Electronic monitoring of {SUBJECT} renewed until the end of 2027-02-27"),
    ]
    assert engine.authorised(TAG, PERIOD.end + timedelta(days=1))
