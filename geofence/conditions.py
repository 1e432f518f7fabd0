"""Subject-level conditions of the issue-5 rules: one per (subject, rule, zone), held by one
or more *causes* (e.g. "the two devices are far apart" and "the tag is silent" both hold a
separation). A finding is emitted when the first cause appears and when the last one goes.
Pure data with small transitions, like `geofence.state.RuleStates` for device rules.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alerts.model import Finding, FindingKind, RuleId
from geofence.config import CoreConfig

ConditionKey = tuple[str, RuleId, str | None]  # (subject_id, rule, zone_id)


@dataclass(slots=True)
class Condition:
    causes: set[str] = field(default_factory=set)
    since: datetime | None = None


class SubjectConditions:
    def __init__(self, stats: Counter[str]) -> None:
        self._conditions: dict[ConditionKey, Condition] = {}
        self._stats = stats

    def active(self, subject_id: str, rule: RuleId, cause: str | None = None) -> bool:
        condition = self._conditions.get((subject_id, rule, None))
        if condition is None:
            return False
        return bool(condition.causes) if cause is None else cause in condition.causes

    def since(self, subject_id: str, rule: RuleId) -> datetime | None:
        condition = self._conditions.get((subject_id, rule, None))
        return condition.since if condition is not None and condition.causes else None

    def set(
        self,
        config: CoreConfig,
        subject_id: str,
        device_id: str,
        rule: RuleId,
        cause: str,
        violated: bool,
        at: datetime,
        evidence: dict[str, Any],
        reason: str,
    ) -> list[Finding]:
        condition = self._conditions.setdefault((subject_id, rule, None), Condition())
        at = at.astimezone(UTC)  # alert ids hash UTC
        was_active = bool(condition.causes)
        if violated:
            if cause in condition.causes:
                return []
            condition.causes.add(cause)
            if was_active:
                return []
            condition.since = at
            kind = FindingKind.RAISED
        else:
            if cause not in condition.causes:
                return []
            condition.causes.discard(cause)
            if condition.causes:
                return []
            if condition.since is not None:
                at = max(at, condition.since)  # a clear never precedes its raise
            condition.since = None
            kind = FindingKind.CLEARED
        self._stats[f"finding_{rule.value}_{kind.value}"] += 1
        return [
            Finding(
                subject_id=subject_id,
                device_id=device_id,
                rule=rule,
                zone_id=None,
                tier=config.rules.tier(rule),
                kind=kind,
                at=at,
                evidence=evidence,
                reason=reason,
            )
        ]
