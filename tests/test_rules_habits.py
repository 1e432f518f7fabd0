"""Frequent places and the trajectory-anomaly rule (issue 5): the pure learner, and replay
scenarios through `emon replay`'s own path that learn from the replayed weeks themselves."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from geofence.behaviour_config import BehaviourParams, HabitParams
from geofence.habits import HistoryFix, learn_frequent_places, sample_history
from tests.behaviour_helpers import at_xy, behaviour_config, opened, replay
from tests.core_helpers import DAY, TZ, local, lonlat

HOME_XY = (0.0, 0.0)
WORK_XY = (3000.0, 0.0)
AWAY_XY = (10_000.0, 5000.0)
STEP = timedelta(minutes=5)
HISTORY_DAYS = 16
PARAMS = HabitParams(enabled=True)


def where(day: date, hour: int, away_hours: range | None) -> tuple[float, float]:
    if away_hours is not None and hour in away_hours:
        return AWAY_XY
    if 9 <= hour < 17 and day.weekday() < 5:
        return WORK_XY
    return HOME_XY


def routine(first: date, days: int, away_on_last: range | None = None,
            jitter_m: float = 20.0, seed: int = 5) -> list[Any]:
    rng = random.Random(seed)
    fixes = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        away = away_on_last if offset == days - 1 else None
        ts = local(0, day=day)
        end = ts + timedelta(days=1)
        while ts < end:
            x, y = where(day, ts.astimezone(TZ).hour, away)
            fixes.append(at_xy("a", (x + rng.uniform(-jitter_m, jitter_m),
                                     y + rng.uniform(-jitter_m, jitter_m)), ts, 15.0))
            ts += STEP
    return fixes


def history(fixes: list[Any]) -> list[HistoryFix]:
    return [HistoryFix(f.ts, f.lat, f.lon, f.accuracy_m, f.device_id) for f in fixes]


def test_learner_finds_residence_and_workplace_and_ignores_outliers() -> None:
    fixes = history(routine(DAY - timedelta(days=HISTORY_DAYS), HISTORY_DAYS))
    # Ten single outliers kilometres away, as GNSS makes them.
    for k in range(10):
        lon, lat = lonlat(-8000.0 + 700 * k, 9000.0)
        fixes.append(HistoryFix(local(3, k, 30, day=DAY - timedelta(days=3)), lat, lon, 10.0))
    learned = learn_frequent_places("a", fixes, TZ, PARAMS, local(4, day=DAY))
    labels = {p.label: p for p in learned.places}
    assert set(labels) == {"residence", "workplace"}
    home_lonlat, work_lonlat = lonlat(*HOME_XY), lonlat(*WORK_XY)
    assert abs(labels["residence"].lon - home_lonlat[0]) < 0.0005
    assert abs(labels["workplace"].lon - work_lonlat[0]) < 0.0005
    assert labels["residence"].share > labels["workplace"].share > 0.15
    assert 2 in labels["residence"].hours
    assert 11 in labels["workplace"].hours
    assert learned.history_days == HISTORY_DAYS
    assert learned.armed(PARAMS)


def test_learner_is_independent_of_the_order_of_the_fixes() -> None:
    fixes = history(routine(DAY - timedelta(days=HISTORY_DAYS), HISTORY_DAYS))
    shuffled = list(fixes)
    random.Random(1).shuffle(shuffled)
    moment = local(4, day=DAY)
    assert learn_frequent_places("a", fixes, TZ, PARAMS, moment) == learn_frequent_places(
        "a", shuffled, TZ, PARAMS, moment
    )


def test_learner_samples_the_first_fix_of_each_bucket() -> None:
    base = datetime.fromisoformat("2026-11-20T00:00:00+00:00")
    fixes = [HistoryFix(base + timedelta(seconds=s), 22.5, 114.0, 5.0, d)
             for s, d in ((60, "b"), (0, "z"), (0, "a"), (301, "a"))]
    assert [(f.ts.second, f.device_id) for f in sample_history(fixes, 300.0)] == [
        (0, "a"), (1, "a")]


def test_a_new_subject_is_not_armed() -> None:
    fixes = history(routine(DAY - timedelta(days=5), 5))
    learned = learn_frequent_places("a", fixes, TZ, PARAMS, local(4, day=DAY))
    assert learned.places
    assert learned.history_days == 5
    assert not learned.armed(PARAMS)


# Replays learn from a week and arm after five days (defaults: four weeks, fourteen days),
# so the scenarios stay short; the learner and the arming are the same code.
REPLAY_DAYS = 7
REPLAY_PARAMS = HabitParams(enabled=True, history_days=REPLAY_DAYS, min_history_days=5)
CONFIG = behaviour_config(["a"], BehaviourParams(habits=REPLAY_PARAMS))
FIRST = DAY - timedelta(days=REPLAY_DAYS)


@pytest.fixture(scope="module")
def anomalous_day() -> list[dict[str, Any]]:
    # A routine week, then a day with five hours (11:00-16:00) 10 km away.
    fixes = routine(FIRST, REPLAY_DAYS + 1, away_on_last=range(11, 16))
    return replay(fixes, CONFIG, until=local(23, day=DAY))


def test_replay_learns_the_places_and_raises_on_a_day_far_from_them(
    anomalous_day: list[dict[str, Any]],
) -> None:
    alerts = opened(anomalous_day, "trajectory_anomaly")
    assert len(alerts) == 1
    alert = alerts[0]
    # Three hours counted from 11:00 local (fixes every 5 min, the first away fix at 11:00).
    assert alert["opened_at"] == local(14, 0, day=DAY).isoformat()
    assert alert["tier"] == "low"
    evidence = alert["trigger"]
    assert {p["label"] for p in evidence["places"]} == {"residence", "workplace"}
    assert evidence["far_minutes"] == 180
    assert "nearest: workplace" in alert["reason"]
    assert "3 h 00 min" in alert["reason"]


def test_replay_of_ordinary_days_stays_quiet() -> None:
    fixes = routine(FIRST, REPLAY_DAYS + 1)
    assert not opened(replay(fixes, CONFIG, until=local(23, day=DAY)), "trajectory_anomaly")


def test_without_enough_history_the_rule_is_not_armed() -> None:
    fixes = routine(DAY - timedelta(days=3), 4, away_on_last=range(8, 20))
    assert not opened(replay(fixes, CONFIG, until=local(23, day=DAY)), "trajectory_anomaly")
