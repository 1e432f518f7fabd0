"""Alert lifecycle: one alert per (subject, rule, zone), clear vs resolve, officer actions,
reopen window, deterministic ids, restore after restart."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from alerts.lifecycle import (
    DEFAULT_REOPEN_WINDOW_SECONDS,
    SYSTEM_ACTOR,
    AlertBook,
    AlertError,
    TierPolicy,
)
from alerts.model import (
    Alert,
    AlertState,
    FindingKind,
    RuleId,
    Tier,
    TransitionKind,
    alert_id_for,
)
from tests.core_helpers import OFFICER, PERMITTED, SCHOOL, SUBJECT, finding

T0 = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
REOPEN = timedelta(seconds=DEFAULT_REOPEN_WINDOW_SECONDS)
RAISED, CLEARED = FindingKind.RAISED, FindingKind.CLEARED


def officer_of(subject_id: str) -> str | None:
    return OFFICER if subject_id == SUBJECT else None


@pytest.fixture
def book() -> AlertBook:
    return AlertBook(officer_of=officer_of)


def open_alert(book: AlertBook, at: datetime = T0) -> Alert:
    (transition,) = book.apply(finding(RAISED, at))
    assert transition.kind is TransitionKind.OPENED
    return transition.alert


def test_raise_opens_an_alert_with_the_finding_details(book: AlertBook) -> None:
    f = finding(RAISED, T0, evidence={"ping": {"lat": 22.5}})
    (transition,) = book.apply(f)
    alert = transition.alert
    assert transition.kind is TransitionKind.OPENED
    assert transition.at == T0
    assert alert.alert_id == alert_id_for(SUBJECT, RuleId.BOUNDARY_EXIT, PERMITTED, T0)
    assert (alert.subject_id, alert.rule, alert.zone_id, alert.tier) == (
        SUBJECT,
        RuleId.BOUNDARY_EXIT,
        PERMITTED,
        Tier.HIGH,
    )
    assert alert.state is AlertState.OPEN
    assert alert.officer_id == OFFICER
    assert alert.opened_at == alert.updated_at == T0
    assert alert.trigger == alert.last_evidence == {"ping": {"lat": 22.5}}
    assert alert.count == 1
    assert alert.condition_active
    assert book.get(alert.alert_id) is not None
    assert [a.alert_id for a in book.unresolved()] == [alert.alert_id]


def test_second_raise_updates_the_same_alert(book: AlertBook) -> None:
    first = open_alert(book)
    (transition,) = book.apply(finding(RAISED, T0 + 5 * MIN, evidence={"n": 2}))
    assert transition.kind is TransitionKind.UPDATED
    assert transition.alert.alert_id == first.alert_id
    assert transition.alert.count == 2
    assert transition.alert.updated_at == T0 + 5 * MIN
    assert transition.alert.last_evidence == {"n": 2}
    assert transition.alert.trigger == first.trigger  # the trigger is kept
    assert len(book.unresolved()) == 1


def test_other_rule_or_zone_or_subject_opens_its_own_alert(book: AlertBook) -> None:
    open_alert(book)
    kinds = [
        book.apply(finding(RAISED, T0, rule=RuleId.EXCLUSION_ENTRY, zone_id=SCHOOL))[0].kind,
        book.apply(finding(RAISED, T0, rule=RuleId.STRAP_OPEN, zone_id=None))[0].kind,
        book.apply(finding(RAISED, T0, subject_id="s9"))[0].kind,
    ]
    assert kinds == [TransitionKind.OPENED] * 3
    assert len(book.unresolved()) == 4
    assert len({a.alert_id for a in book.unresolved()}) == 4


def test_transition_snapshots_do_not_change_afterwards(book: AlertBook) -> None:
    first = open_alert(book)
    book.apply(finding(RAISED, T0 + MIN))
    book.acknowledge(first.alert_id, "off1", T0 + 2 * MIN)
    assert first.count == 1
    assert first.state is AlertState.OPEN


def test_clear_records_cleared_at_and_keeps_the_alert_open(book: AlertBook) -> None:
    alert = open_alert(book)
    (transition,) = book.apply(finding(CLEARED, T0 + 10 * MIN))
    assert transition.kind is TransitionKind.CLEARED
    assert transition.alert.state is AlertState.OPEN
    assert not transition.alert.condition_active
    assert transition.alert.cleared_at == T0 + 10 * MIN
    assert [a.alert_id for a in book.unresolved()] == [alert.alert_id]
    # A second clear, or a clear with no alert, produces nothing.
    assert book.apply(finding(CLEARED, T0 + 11 * MIN)) == []
    assert book.apply(finding(CLEARED, T0, rule=RuleId.STRAP_OPEN, zone_id=None)) == []


def test_raise_after_clear_reactivates_the_condition(book: AlertBook) -> None:
    alert = open_alert(book)
    book.apply(finding(CLEARED, T0 + MIN))
    (transition,) = book.apply(finding(RAISED, T0 + 2 * MIN))
    assert transition.kind is TransitionKind.UPDATED
    assert transition.alert.alert_id == alert.alert_id
    assert transition.alert.condition_active
    assert transition.alert.cleared_at is None
    assert transition.alert.count == 2


def test_auto_resolve_policy_resolves_on_clear() -> None:
    book = AlertBook(officer_of, policies={Tier.HIGH: TierPolicy(auto_resolve_on_clear=True)})
    alert = open_alert(book)
    transitions = book.apply(finding(CLEARED, T0 + MIN))
    assert [t.kind for t in transitions] == [TransitionKind.CLEARED, TransitionKind.RESOLVED]
    resolved = transitions[1].alert
    assert resolved.state is AlertState.RESOLVED
    assert resolved.resolved_by == SYSTEM_ACTOR
    assert resolved.disposition == "condition_cleared"
    assert book.unresolved() == []
    assert book.get(alert.alert_id) is not None


def test_acknowledge_then_resolve(book: AlertBook) -> None:
    alert = open_alert(book)
    (ack,) = book.acknowledge(alert.alert_id, "off1", T0 + MIN, note="calling")
    assert ack.kind is TransitionKind.ACKNOWLEDGED
    assert (ack.actor, ack.note) == ("off1", "calling")
    assert ack.alert.state is AlertState.ACKNOWLEDGED
    assert ack.alert.acknowledged_at == T0 + MIN
    assert ack.alert.acknowledged_by == "off1"
    # A raise while acknowledged updates the alert but keeps the acknowledgement.
    (upd,) = book.apply(finding(RAISED, T0 + 2 * MIN))
    assert upd.kind is TransitionKind.UPDATED
    assert upd.alert.state is AlertState.ACKNOWLEDGED
    (res,) = book.resolve(alert.alert_id, "off1", "false_alarm", T0 + 3 * MIN)
    assert res.kind is TransitionKind.RESOLVED
    assert res.alert.state is AlertState.RESOLVED
    assert (res.alert.resolved_at, res.alert.resolved_by, res.alert.disposition) == (
        T0 + 3 * MIN,
        "off1",
        "false_alarm",
    )
    assert book.unresolved() == []
    wire = res.to_wire()
    assert wire["transition"] == "resolved"
    assert wire["state"] == "resolved"
    assert wire["acknowledged_by"] == "off1"


def test_resolve_without_acknowledge_is_allowed(book: AlertBook) -> None:
    alert = open_alert(book)
    (res,) = book.resolve(alert.alert_id, "off1", "verified", T0 + MIN)
    assert res.alert.state is AlertState.RESOLVED
    assert res.alert.acknowledged_at is None


def test_officer_actions_in_the_wrong_state_raise_alert_error(book: AlertBook) -> None:
    alert = open_alert(book)
    book.acknowledge(alert.alert_id, "off1", T0 + MIN)
    with pytest.raises(AlertError, match="acknowledged, not open"):
        book.acknowledge(alert.alert_id, "off1", T0 + 2 * MIN)
    book.resolve(alert.alert_id, "off1", "ok", T0 + 3 * MIN)
    with pytest.raises(AlertError, match="resolved, not open"):
        book.acknowledge(alert.alert_id, "off1", T0 + 4 * MIN)
    with pytest.raises(AlertError, match="already resolved"):
        book.resolve(alert.alert_id, "off1", "ok", T0 + 4 * MIN)
    with pytest.raises(AlertError, match="unknown alert"):
        book.acknowledge("no-such-alert", "off1", T0)
    with pytest.raises(AlertError, match="unknown alert"):
        book.resolve("no-such-alert", "off1", "ok", T0)
    # The failed actions changed nothing.
    stored = book.get(alert.alert_id)
    assert stored is not None
    assert stored.resolved_at == T0 + 3 * MIN


def test_raise_within_reopen_window_reopens_the_same_alert(book: AlertBook) -> None:
    alert = open_alert(book)
    book.acknowledge(alert.alert_id, "off1", T0 + MIN)
    resolved_at = T0 + 2 * MIN
    book.resolve(alert.alert_id, "off1", "ok", resolved_at)
    (transition,) = book.apply(finding(RAISED, resolved_at + REOPEN))  # window is inclusive
    assert transition.kind is TransitionKind.REOPENED
    reopened = transition.alert
    assert reopened.alert_id == alert.alert_id
    assert reopened.state is AlertState.OPEN
    assert reopened.count == 2
    assert reopened.opened_at == T0
    assert reopened.acknowledged_at is None
    assert reopened.acknowledged_by is None
    assert reopened.resolved_at is None
    assert reopened.resolved_by is None
    assert reopened.disposition is None
    assert [a.alert_id for a in book.unresolved()] == [alert.alert_id]


def test_raise_after_reopen_window_opens_a_new_alert(book: AlertBook) -> None:
    alert = open_alert(book)
    resolved_at = T0 + MIN
    book.resolve(alert.alert_id, "off1", "ok", resolved_at)
    later = resolved_at + REOPEN + timedelta(seconds=1)
    (transition,) = book.apply(finding(RAISED, later))
    assert transition.kind is TransitionKind.OPENED
    assert transition.alert.alert_id != alert.alert_id
    assert transition.alert.alert_id == alert_id_for(
        SUBJECT, RuleId.BOUNDARY_EXIT, PERMITTED, later
    )
    assert transition.alert.count == 1
    old = book.get(alert.alert_id)
    assert old is not None
    assert old.state is AlertState.RESOLVED


def test_reopen_window_follows_the_tier_policy() -> None:
    book = AlertBook(officer_of, policies={Tier.HIGH: TierPolicy(reopen_window_seconds=60.0)})
    alert = open_alert(book)
    book.resolve(alert.alert_id, "off1", "ok", T0 + MIN)
    (transition,) = book.apply(finding(RAISED, T0 + 2 * MIN + timedelta(seconds=1)))
    assert transition.kind is TransitionKind.OPENED


def test_alert_id_is_deterministic() -> None:
    a = alert_id_for(SUBJECT, RuleId.CURFEW_AWAY, "home", T0)
    assert a == alert_id_for(SUBJECT, RuleId.CURFEW_AWAY, "home", T0)
    assert a != alert_id_for(SUBJECT, RuleId.CURFEW_AWAY, "home", T0 + timedelta(seconds=1))
    assert a != alert_id_for(SUBJECT, RuleId.CURFEW_AWAY, None, T0)
    assert a != alert_id_for("s2", RuleId.CURFEW_AWAY, "home", T0)
    assert a != alert_id_for(SUBJECT, RuleId.BOUNDARY_EXIT, "home", T0)
    # Two books fed the same finding open alerts with the same id.
    one = AlertBook(officer_of).apply(finding(RAISED, T0))[0].alert.alert_id
    two = AlertBook(officer_of).apply(finding(RAISED, T0))[0].alert.alert_id
    assert one == two


def test_restore_unresolved_alert_is_updated_not_duplicated(book: AlertBook) -> None:
    alert = open_alert(book)
    book.acknowledge(alert.alert_id, "off1", T0 + MIN)
    saved = [dataclasses.replace(a) for a in book.unresolved()]

    restarted = AlertBook(officer_of)
    restarted.restore(saved)
    assert [a.alert_id for a in restarted.unresolved()] == [alert.alert_id]
    (transition,) = restarted.apply(finding(RAISED, T0 + 5 * MIN))
    assert transition.kind is TransitionKind.UPDATED
    assert transition.alert.alert_id == alert.alert_id
    assert transition.alert.state is AlertState.ACKNOWLEDGED
    (res,) = restarted.resolve(alert.alert_id, "off1", "ok", T0 + 6 * MIN)
    assert res.alert.state is AlertState.RESOLVED


def test_restore_resolved_alerts_reopen_the_latest(book: AlertBook) -> None:
    first = open_alert(book)
    book.resolve(first.alert_id, "off1", "ok", T0 + MIN)
    second_at = T0 + 3 * REOPEN
    (opened,) = book.apply(finding(RAISED, second_at))
    second = opened.alert
    book.resolve(second.alert_id, "off1", "ok", second_at + MIN)
    snapshots = [
        dataclasses.replace(a)
        for a in (book.get(second.alert_id), book.get(first.alert_id))
        if a is not None
    ]
    assert len(snapshots) == 2

    restarted = AlertBook(officer_of)
    restarted.restore(snapshots)  # newest first: order must not matter
    assert restarted.unresolved() == []
    assert restarted.get(first.alert_id) is not None
    (transition,) = restarted.apply(finding(RAISED, second_at + 10 * MIN))
    assert transition.kind is TransitionKind.REOPENED
    assert transition.alert.alert_id == second.alert_id
    # The officer can act on restored alerts.
    restarted.acknowledge(second.alert_id, "off1", second_at + 11 * MIN)
    with pytest.raises(AlertError):
        restarted.acknowledge(first.alert_id, "off1", second_at + 11 * MIN)


def test_unresolved_is_sorted_by_opening_time(book: AlertBook) -> None:
    book.apply(finding(RAISED, T0 + 2 * MIN, rule=RuleId.STRAP_OPEN, zone_id=None))
    book.apply(finding(RAISED, T0))
    book.apply(finding(RAISED, T0 + MIN, rule=RuleId.EXCLUSION_ENTRY, zone_id=SCHOOL))
    assert [a.opened_at for a in book.unresolved()] == [T0, T0 + MIN, T0 + 2 * MIN]
