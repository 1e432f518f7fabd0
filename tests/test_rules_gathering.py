"""Gatherings (issue 5): the grid index against brute force, the rule's properties
(arrival order and subject order do not matter, nothing beyond R + accuracies,
deterministic), and replay scenarios where co-offenders meet and where they do not."""

from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.model import DEFAULT_TIERS, Finding, FindingKind, RuleId
from geofence.behaviour_config import BehaviourParams, GatheringParams
from geofence.gathering import SETTLE, GatheringRule, GridIndex, Position
from tests.behaviour_helpers import at_xy, behaviour_config, opened, replay
from tests.core_helpers import local

GROUPS = {"case-7": frozenset({"a", "b"})}
PARAMS = BehaviourParams(co_offender_groups=GROUPS)
START = local(20)

coordinate = st.floats(-3000.0, 3000.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(st.tuples(coordinate, coordinate), min_size=0, max_size=60),
    moves=st.lists(st.tuples(st.integers(0, 59), coordinate, coordinate), max_size=30),
    centre=st.tuples(coordinate, coordinate),
    radius=st.floats(0.0, 1500.0, allow_nan=False),
    cell=st.floats(10.0, 800.0, allow_nan=False),
)
def test_grid_index_returns_exactly_the_brute_force_neighbours(
    points: list[tuple[float, float]],
    moves: list[tuple[int, float, float]],
    centre: tuple[float, float],
    radius: float,
    cell: float,
) -> None:
    index = GridIndex(cell)
    where: dict[str, tuple[float, float]] = {}
    for n, xy in enumerate(points):
        index.put(f"s{n}", xy)
        where[f"s{n}"] = xy
    for n, x, y in moves:  # re-filed (moved) or removed (stale)
        key = f"s{n}"
        if key not in where:
            continue
        if n % 3 == 0:
            index.remove(key)
            del where[key]
        else:
            index.put(key, (x, y))
            where[key] = (x, y)
    found = dict(index.within(centre, radius))
    expected = {k for k, xy in where.items() if math.dist(centre, xy) <= radius}
    assert set(found) == expected
    assert len(index) == len(where)


def run(
    fixes: list[Position], params: BehaviourParams = PARAMS, until: datetime | None = None
) -> list[Finding]:
    rule = GatheringRule()
    for position in fixes:
        rule.add(position, position.ts + timedelta(seconds=2))
    end = until or max(p.ts for p in fixes) + timedelta(minutes=30)
    tier = DEFAULT_TIERS.__getitem__
    findings: list[Finding] = []
    # Judged in ticks of 15 s like the daemon, settling the arrivals.
    now = min(p.ts for p in fixes)
    while now <= end + SETTLE:
        findings += rule.judge_until(params, now, tier)
        now += timedelta(seconds=15)
    return findings


def summary(findings: list[Finding]) -> list[tuple[str, str, str | None, str, datetime]]:
    return sorted((f.subject_id, f.rule.value, f.zone_id, f.kind.value, f.at) for f in findings)


def track(subject: str, offsets: list[tuple[float, float, float]], phase_s: int) -> list[Position]:
    """One fix a minute (shifted by `phase_s`), at (dx, dy) with accuracy acc."""
    return [
        Position(subject, f"tag-{subject}", START + timedelta(minutes=i, seconds=phase_s),
                 (dx, dy), acc)
        for i, (dx, dy, acc) in enumerate(offsets)
    ]


step = st.tuples(st.floats(-150.0, 150.0, allow_nan=False),
                 st.floats(-150.0, 150.0, allow_nan=False),
                 st.floats(1.0, 60.0, allow_nan=False))


# Close enough that most examples are together for a while and some part again.
close_step = st.tuples(st.floats(-40.0, 40.0, allow_nan=False),
                       st.floats(-40.0, 40.0, allow_nan=False),
                       st.floats(1.0, 20.0, allow_nan=False))


@settings(max_examples=40, deadline=None)
@given(
    a=st.lists(close_step, min_size=12, max_size=40),
    b=st.lists(close_step, min_size=12, max_size=40),
    phase_a=st.integers(0, 59),
    phase_b=st.integers(0, 59),
    order=st.randoms(use_true_random=False),
)
def test_arrival_order_and_subject_order_do_not_change_the_findings(
    a: list[tuple[float, float, float]],
    b: list[tuple[float, float, float]],
    phase_a: int,
    phase_b: int,
    order: Any,
) -> None:
    fixes = track("a", a, phase_a) + track("b", b, phase_b)
    shuffled = list(fixes)
    order.shuffle(shuffled)
    reference = summary(run(fixes))
    assert summary(run(shuffled)) == reference
    # The same tracks with the roles of the two subjects swapped.
    swapped = track("a", b, phase_b) + track("b", a, phase_a)
    mirrored = summary(run(swapped))
    assert [(f[3], f[4]) for f in mirrored] == [(f[3], f[4]) for f in reference]
    # Deterministic.
    assert summary(run(fixes)) == reference


@settings(max_examples=40, deadline=None)
@given(
    a=st.lists(step, min_size=5, max_size=40),
    b=st.lists(step, min_size=5, max_size=40),
    phase_b=st.integers(0, 59),
)
def test_never_together_when_always_farther_than_radius_plus_accuracies(
    a: list[tuple[float, float, float]],
    b: list[tuple[float, float, float]],
    phase_b: int,
) -> None:
    radius = PARAMS.gathering.radius_m
    # b is placed beyond R + both accuracies of every fix of a at any time.
    gap = radius + 60.0 + 60.0 + 300.0 + 1.0
    far_b = [(dx + gap, dy, acc) for dx, dy, acc in b]
    assert run(track("a", a, 0) + track("b", far_b, phase_b)) == []


def test_together_for_the_duration_raises_once_per_subject_and_clears_when_apart() -> None:
    near = [(0.0, 0.0, 5.0)] * 20 + [(900.0, 0.0, 5.0)] * 5
    findings = run(track("a", near, 0) + track("b", [(20.0, 0.0, 5.0)] * 25, 10))
    raised = [f for f in findings if f.kind is FindingKind.RAISED]
    assert {(f.subject_id, f.zone_id) for f in raised} == {("a", "with:b"), ("b", "with:a")}
    assert all(f.rule is RuleId.CO_OFFENDER_GATHERING and f.at == START + timedelta(minutes=1)
               for f in raised)
    assert "co-offender b" in raised[0].reason
    assert "10 min" in raised[0].reason
    cleared = [f for f in findings if f.kind is FindingKind.CLEARED]
    assert len(cleared) == 2
    assert cleared[0].at == START + timedelta(minutes=20)


def test_a_stale_position_leaves_the_index() -> None:
    # b stops reporting after 3 minutes next to a: not together for 10 minutes.
    findings = run(track("a", [(0.0, 0.0, 5.0)] * 20, 0) + track("b", [(10.0, 0.0, 5.0)] * 3, 5))
    assert findings == []


def test_any_two_subjects_only_when_switched_on() -> None:
    together = track("c", [(0.0, 0.0, 5.0)] * 15, 0) + track("d", [(5.0, 0.0, 5.0)] * 15, 3)
    assert run(together) == []
    params = BehaviourParams(gathering=GatheringParams(any_subjects=True))
    findings = run(together, params)
    assert {(f.rule, f.tier) for f in findings if f.kind is FindingKind.RAISED} == {
        (RuleId.GATHERING, DEFAULT_TIERS[RuleId.GATHERING])
    }


# ---------------------------------------------------------------------- replay scenarios

CONFIG = behaviour_config(["a", "b", "c"], PARAMS)


def meeting(partner: str, distance_m: float) -> list[Any]:
    fixes = []
    for i in range(60):
        ts = local(20, i)
        meets = 10 <= i < 30
        fixes.append(at_xy("a", (0.0, 0.0), ts))
        fixes.append(at_xy(partner, (distance_m, 0.0) if meets else (2000.0, 0.0),
                           ts + timedelta(seconds=7)))
    return fixes


def test_replay_co_offenders_meeting_raise_high_alerts_naming_each_other() -> None:
    transitions = replay(meeting("b", 20.0), CONFIG, until=local(21, 30))
    alerts = opened(transitions, "co_offender_gathering")
    assert sorted((t["subject_id"], t["zone_id"]) for t in alerts) == [
        ("a", "with:b"), ("b", "with:a")]
    assert all(t["tier"] == "high" for t in alerts)
    assert all("lat" not in str(t["trigger"]) for t in alerts)  # no partner position


def test_replay_control_not_co_offenders_or_not_close_stays_quiet() -> None:
    assert not [t for t in replay(meeting("c", 20.0), CONFIG, until=local(21, 30))
                if "gathering" in t["rule"]]
    assert not [t for t in replay(meeting("b", 150.0), CONFIG, until=local(21, 30))
                if "gathering" in t["rule"]]


def test_a_fix_older_than_the_judged_instants_is_dropped_and_counted() -> None:
    stats: Counter[str] = Counter()
    rule = GatheringRule(stats)
    for position in track("a", [(0.0, 0.0, 5.0)] * 10, 0):
        rule.add(position, position.ts)
    rule.judge_until(PARAMS, START + timedelta(minutes=20), DEFAULT_TIERS.__getitem__)
    late = Position("b", "tag-b", START + timedelta(minutes=2), (0.0, 0.0), 5.0)
    rule.add(late, START + timedelta(minutes=20))
    assert stats["gathering_fix_late"] == 1
