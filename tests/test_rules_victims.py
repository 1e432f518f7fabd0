"""Protected persons' mobile exclusion zones (issue 5): replay scenarios through
`emon replay`'s own path (the protected topic included), the control, and data
minimisation: the protected person's position appears in no alert and no rejection."""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.pipeline import Pipeline
from daemon.protectedwire import protected_topic
from geofence.behaviour_config import BehaviourParams
from geofence.engine import Engine
from tests.behaviour_helpers import (
    at_xy,
    behaviour_config,
    links,
    opened,
    protected_at,
    replay,
)
from tests.core_helpers import local, lonlat

RADIUS_M, WARNING_M = 500.0, 500.0
CONFIG = behaviour_config(["a", "b"], BehaviourParams(protected=links("v1", "a", RADIUS_M,
                                                                      WARNING_M)))


def scenario(subject_path: Any, victim_path: Any, subject: str = "a") -> list[Any]:
    items: list[Any] = []
    for i in range(40):
        ts = local(10, i)
        items.append(at_xy(subject, subject_path(i), ts))
        items.append(protected_at("v1", victim_path(i), ts + timedelta(seconds=20)))
    return items


def victim_home(i: int) -> tuple[float, float]:
    return (0.0, 3000.0)


def walking_in(i: int) -> tuple[float, float]:
    return (0.0, max(3200.0, 6000.0 - 100.0 * i))  # from 3 km away to 200 m


def test_subject_walking_to_the_protected_person_raises_approach_then_proximity() -> None:
    transitions = replay(scenario(walking_in, victim_home), CONFIG, until=local(11))
    approach = opened(transitions, "victim_approach")
    proximity = opened(transitions, "victim_proximity")
    assert len(approach) == 1
    assert approach[0]["tier"] == "high"
    assert len(proximity) == 1
    assert proximity[0]["tier"] == "critical"
    assert proximity[0]["zone_id"] == "protected:v1"
    assert proximity[0]["trigger"]["moved"] == "subject"
    assert "protected person v1" in proximity[0]["reason"]
    # Within 1000 m (after 15 m of accuracies) from the fix of 10:20, confirmed by the
    # protected person's next position; within 500 m from 10:25.
    assert approach[0]["opened_at"] == local(10, 20).isoformat()
    assert proximity[0]["opened_at"] == local(10, 25).isoformat()


def test_protected_person_walking_toward_the_subject_raises_too() -> None:
    def subject_still(i: int) -> tuple[float, float]:
        return (0.0, 0.0)

    def victim_walks(i: int) -> tuple[float, float]:
        return (0.0, max(300.0, 3000.0 - 100.0 * i))

    transitions = replay(scenario(subject_still, victim_walks), CONFIG, until=local(11))
    proximity = opened(transitions, "victim_proximity")
    assert len(proximity) == 1
    assert proximity[0]["trigger"]["moved"] == "protected_person"
    assert proximity[0]["reason"].startswith("The protected person moved toward the subject")


def test_control_subject_keeps_away_and_unlinked_subject_is_ignored() -> None:
    def passing(i: int) -> tuple[float, float]:
        return (-2000.0 + 100.0 * i, 1500.0)  # 1.5 km south of the protected person

    assert not [t for t in replay(scenario(passing, victim_home), CONFIG, until=local(11))
                if t["rule"].startswith("victim")]
    assert not [t for t in replay(scenario(walking_in, victim_home, subject="b"), CONFIG,
                                  until=local(11))
                if t["rule"].startswith("victim")]


def test_the_protected_persons_position_is_in_no_alert_and_no_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    transitions = replay(scenario(walking_in, victim_home), CONFIG, until=local(11))
    assert opened(transitions, "victim_proximity")
    lon, lat = lonlat(*victim_home(0))
    text = json.dumps(transitions) + caplog.text
    assert f"{lat:.4f}"[:7] not in text
    assert f"{lon:.4f}"[:8] not in text


def test_a_bad_protected_message_is_rejected_without_its_content() -> None:
    pipeline = Pipeline(CONFIG)
    now = local(10)
    lon, lat = lonlat(0.0, 3000.0)
    bad = json.dumps({"ts": now.isoformat(), "lat": lat, "lon": 1000.0 + lon, "acc": 10})
    outcome = pipeline.handle(protected_topic("v1"), bad.encode(), now)
    assert outcome.protected
    assert outcome.rejection is not None
    assert outcome.observation is None
    assert str(lat)[:6] not in str(outcome.rejection)
    assert str(1000.0 + lon)[:6] not in str(outcome.rejection)
    good = json.dumps({"ts": now.isoformat(), "lat": lat, "lon": lon, "acc": 10})
    outcome = pipeline.handle(protected_topic("v1"), good.encode(), now)
    assert outcome.protected
    assert outcome.rejection is None
    assert outcome.observation is None
    assert pipeline.engine.stats["protected_positions"] == 1
    outcome = pipeline.handle(protected_topic("nobody"), good.encode(), now)
    assert pipeline.engine.stats["protected_unknown"] == 1


@settings(max_examples=40, deadline=None)
@given(
    subject_track=st.lists(st.tuples(st.floats(-400.0, 400.0), st.floats(-400.0, 400.0),
                                     st.floats(1.0, 150.0)), min_size=2, max_size=30),
    victim_track=st.lists(st.tuples(st.floats(-400.0, 400.0), st.floats(-400.0, 400.0),
                                    st.floats(1.0, 150.0)), min_size=2, max_size=30),
)
def test_never_raised_beyond_the_band_plus_both_accuracies(
    subject_track: list[tuple[float, float, float]],
    victim_track: list[tuple[float, float, float]],
) -> None:
    # The protected person stays 2,800 m or more away: beyond 500 + 500 m + 2 x 150 m.
    engine = Engine(CONFIG)
    findings = []
    for i, ((sx, sy, sacc), (vx, vy, vacc)) in enumerate(
        zip(subject_track, victim_track, strict=False)
    ):
        ts = local(10, i)
        fix = at_xy("a", (sx, sy), ts, sacc)
        findings += engine.observe(fix, fix.received_at)
        position = protected_at("v1", (vx, vy + 3600.0), ts + timedelta(seconds=20), vacc)
        findings += engine.observe_protected(position, position.received_at)
    assert not [f for f in findings if f.rule.value.startswith("victim")]
    assert engine.stats["protected_positions"] == min(len(subject_track), len(victim_track))
