"""The labelled corpus (tests/rules_corpus.py): emon's core over 56 subject-days of noisy
tracks with known true violations. Every true violation lasting at least 2 minutes is
alerted within one ping interval plus the configured dwell (plus one tick for the clock-
driven rules), and no subject gets more than one false alert in its week.

bench/bench_corpus.py prints the same run's precision and recall beside a naive per-ping
point-in-polygon baseline."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter
from datetime import timedelta

import pytest

from alerts.model import RuleId
from geofence.observation import FixSource, LocationFix
from tests.rules_corpus import (
    MIN_VIOLATION,
    PING_S,
    Alert,
    Corpus,
    allowed_latency,
    generate,
    run_emon,
    score,
)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate()


@pytest.fixture(scope="module")
def alerts(corpus: Corpus) -> list[Alert]:
    return run_emon(corpus)


def test_the_corpus_is_large_and_noisy_enough(corpus: Corpus) -> None:
    assert corpus.subject_days >= 50
    fixes = [m for m in corpus.messages if isinstance(m.observation, LocationFix)]
    accuracy = [m.observation.accuracy_m for m in fixes if isinstance(m.observation,
                                                                        LocationFix)]
    assert min(accuracy) <= 6.0
    assert max(a for a in accuracy if a <= 100.0) >= 55.0  # indoor fixes
    assert sum(a > 15.0 for a in accuracy) > len(accuracy) // 5  # a lot of indoor time
    sources = Counter(m.observation.source for m in fixes if isinstance(m.observation,
                                                                         LocationFix))
    assert sources[FixSource.WIFI] > 100
    assert sources[FixSource.CELL] > 20
    late = [m for m in fixes if m.arrival - m.observation.ts > timedelta(minutes=2)]
    assert len(late) > 10  # store-and-forward bursts
    per_device: dict[str, list[LocationFix]] = {}
    for m in fixes:
        assert isinstance(m.observation, LocationFix)
        per_device.setdefault(m.observation.device_id, []).append(m.observation)
    gaps = jumps = 0
    for track in per_device.values():
        track.sort(key=lambda f: f.ts)
        for a, b in itertools.pairwise(track):
            if b.ts - a.ts > timedelta(seconds=2 * PING_S):
                gaps += 1
            ax, ay = corpus.config.projection.forward(a.lon, a.lat)
            bx, by = corpus.config.projection.forward(b.lon, b.lat)
            if ((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5 > 1000.0 and b.ts - a.ts <= timedelta(
                seconds=PING_S
            ):
                jumps += 1
    assert gaps > 50
    assert jumps > 50  # 1-3 km outliers (each makes a jump out and one back)
    long_enough = Counter(v.rule for v in corpus.violations if v.duration >= MIN_VIOLATION)
    for rule in (RuleId.BOUNDARY_EXIT, RuleId.CURFEW_AWAY, RuleId.INCLUSION_AWAY,
                 RuleId.EXCLUSION_ENTRY, RuleId.EXCLUSION_APPROACH, RuleId.DEVICE_SILENT,
                 RuleId.GNSS_LOST, RuleId.STRAP_OPEN, RuleId.BATTERY_LOW):
        assert long_enough[rule] >= 2, rule
    assert sum(long_enough.values()) >= 25


def test_every_true_violation_is_alerted_in_time(corpus: Corpus, alerts: list[Alert]) -> None:
    result = score(corpus, alerts, list(RuleId))
    assert result.missed == []
    assert result.late == [], [
        (v.subject_id, v.rule.value, v.start.isoformat(), latency, allowed_latency(v.rule))
        for v, latency in result.late
    ]
    assert result.detected == result.violations
    assert statistics.median(result.latencies_s) <= PING_S


def test_at_most_one_false_alert_per_subject_week(corpus: Corpus, alerts: list[Alert]) -> None:
    result = score(corpus, alerts, list(RuleId))
    weeks = corpus.subject_days / 7
    assert weeks >= 7
    assert all(count <= 1 for count in result.false_by_subject.values()), result.false
    assert len(result.false) <= weeks
    assert result.precision >= 0.9
