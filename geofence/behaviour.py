"""The issue-5 behavioural rules behind one small hook in `geofence.engine.Engine`:
trajectory anomaly (`geofence.habits`), gatherings (`geofence.gathering`) and protected
persons' mobile exclusion zones (`geofence.victims`). Pure, like the engine."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from alerts.model import Finding
from geofence.config import CoreConfig, SubjectSpec
from geofence.gathering import GatheringRule, Position
from geofence.habits import HabitRule, LearnedPlaces
from geofence.observation import LocationFix
from geofence.victims import ProtectedPosition, VictimRule


class BehaviourRules:
    def __init__(self, stats: Counter[str]) -> None:
        self._stats = stats
        self.habits = HabitRule()
        self.gathering = GatheringRule(stats)
        self.victims = VictimRule()
        self._projection: object | None = None

    def _check_projection(self, config: CoreConfig) -> None:
        # Positions are kept in the config's metres; a reload that moves the projection
        # (new zones) makes them meaningless: forget them, the next fixes place everyone.
        if self._projection is not None and self._projection != config.projection:
            self.gathering = GatheringRule(self._stats)
            self.victims = VictimRule()
            self._stats["behaviour_positions_reset"] += 1
        self._projection = config.projection

    def on_fix(
        self,
        config: CoreConfig,
        subject: SubjectSpec,
        fix: LocationFix,
        xy: tuple[float, float],
        now: datetime,
    ) -> list[Finding]:
        """An evaluated, in-order fix of one of the subject's devices, arrived at `now`."""
        self._check_projection(config)
        params = config.behaviour
        tier_of = config.rules.tier
        findings: list[Finding] = []
        if params.habits.enabled:
            findings += self.habits.on_fix(
                params.habits, config.projection, subject.timezone, tier_of,
                subject.subject_id, fix, xy,
            )
        if params.gathering_enabled:
            self.gathering.add(
                Position(subject.subject_id, fix.device_id, fix.ts, xy, fix.accuracy_m), now
            )
        if params.protected:
            findings += self.victims.on_fix(params, subject.subject_id, fix, xy, tier_of)
        self._count(findings)
        return findings

    def on_protected(
        self, config: CoreConfig, position: ProtectedPosition
    ) -> list[Finding]:
        self._check_projection(config)
        if position.protected_id not in config.behaviour.protected:
            self._stats["protected_unknown"] += 1
            return []
        self._stats["protected_positions"] += 1
        xy = config.projection.forward(position.lon, position.lat)
        findings = self.victims.on_protected(
            config.behaviour, position, xy, config.rules.tier
        )
        self._count(findings)
        return findings

    def on_tick(self, config: CoreConfig, now: datetime) -> list[Finding]:
        findings = self.gathering.judge_until(config.behaviour, now, config.rules.tier)
        self._count(findings)
        return findings

    def set_frequent_places(self, learned: LearnedPlaces) -> None:
        self.habits.set_places(learned)
        self._stats["frequent_places_learned"] += 1

    def _count(self, findings: list[Finding]) -> None:
        for finding in findings:
            self._stats[f"finding_{finding.rule.value}_{finding.kind.value}"] += 1
