"""Alert lifecycle: findings in, alert transitions out. Pure: no I/O, time passed in.

One alert per (subject, rule, zone) while it is not resolved: a repeated violation updates
it (count, last evidence) instead of spawning another, so an officer sees one line per
problem. "Condition cleared" is recorded but does not close the alert unless the tier's
policy auto-resolves: a strap opened and closed within minutes still needs a person.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from alerts.model import (
    Alert,
    AlertState,
    AlertTransition,
    Disposition,
    Finding,
    FindingKind,
    RuleId,
    Tier,
    TransitionKind,
    alert_id_for,
)

AlertKey = tuple[str, RuleId, str | None]

DEFAULT_REOPEN_WINDOW_SECONDS = 3600.0  # a recurrence within an hour of resolution reopens


@dataclass(frozen=True, slots=True)
class TierPolicy:
    auto_resolve_on_clear: bool = False
    reopen_window_seconds: float = DEFAULT_REOPEN_WINDOW_SECONDS


DEFAULT_TIER_POLICIES: Mapping[Tier, TierPolicy] = {
    Tier.CRITICAL: TierPolicy(),
    Tier.HIGH: TierPolicy(),
    Tier.LOW: TierPolicy(),
}

SYSTEM_ACTOR = "emon"


class AlertError(Exception):
    """An officer action that cannot apply (unknown alert, wrong state)."""


def snapshot(alert: Alert) -> Alert:
    return dataclasses.replace(alert)


class AlertBook:
    def __init__(
        self,
        officer_of: Callable[[str], str | None],
        policies: Mapping[Tier, TierPolicy] = DEFAULT_TIER_POLICIES,
    ) -> None:
        self._officer_of = officer_of
        self._policies = policies
        self._by_id: dict[str, Alert] = {}
        self._unresolved: dict[AlertKey, Alert] = {}
        self._last_resolved: dict[AlertKey, Alert] = {}

    def restore(self, alerts: Iterable[Alert]) -> None:
        """Load alerts (e.g. from the database after a restart)."""
        for alert in alerts:
            self._by_id[alert.alert_id] = alert
            if alert.state is AlertState.RESOLVED:
                previous = self._last_resolved.get(alert.key)
                if previous is None or (previous.resolved_at or previous.opened_at) < (
                    alert.resolved_at or alert.opened_at
                ):
                    self._last_resolved[alert.key] = alert
            else:
                self._unresolved[alert.key] = alert

    def swap_policies(self, policies: Mapping[Tier, TierPolicy]) -> None:
        """Adopt new tier policies (config reload); alerts already open keep their state."""
        self._policies = policies

    def all_alerts(self) -> list[Alert]:
        return sorted(self._by_id.values(), key=lambda a: (a.opened_at, a.alert_id))

    def get(self, alert_id: str) -> Alert | None:
        return self._by_id.get(alert_id)

    def unresolved(self) -> list[Alert]:
        return sorted(self._unresolved.values(), key=lambda a: (a.opened_at, a.alert_id))

    def _policy(self, tier: Tier) -> TierPolicy:
        return self._policies.get(tier, TierPolicy())

    def apply(self, finding: Finding) -> list[AlertTransition]:
        if finding.kind is FindingKind.RAISED:
            return self._raise(finding)
        return self._clear(finding)

    def _raise(self, finding: Finding) -> list[AlertTransition]:
        key = finding.key
        current = self._unresolved.get(key)
        if current is not None:
            current.count += 1
            current.updated_at = max(current.updated_at, finding.at)
            current.last_evidence = finding.evidence
            current.condition_active = True
            current.cleared_at = None
            current.reason = finding.reason or current.reason
            return [AlertTransition(TransitionKind.UPDATED, finding.at, snapshot(current))]

        resolved = self._last_resolved.get(key)
        window = timedelta(seconds=self._policy(finding.tier).reopen_window_seconds)
        if (
            resolved is not None
            and resolved.resolved_at is not None
            and timedelta(0) <= finding.at - resolved.resolved_at <= window
        ):
            resolved.state = AlertState.OPEN
            resolved.count += 1
            resolved.updated_at = finding.at
            resolved.last_evidence = finding.evidence
            resolved.condition_active = True
            resolved.cleared_at = None
            resolved.acknowledged_at = resolved.acknowledged_by = None
            resolved.resolved_at = resolved.resolved_by = resolved.disposition = None
            del self._last_resolved[key]
            self._unresolved[key] = resolved
            return [AlertTransition(TransitionKind.REOPENED, finding.at, snapshot(resolved))]

        alert = Alert(
            alert_id=alert_id_for(finding.subject_id, finding.rule, finding.zone_id, finding.at),
            subject_id=finding.subject_id,
            device_id=finding.device_id,
            rule=finding.rule,
            zone_id=finding.zone_id,
            tier=finding.tier,
            state=AlertState.OPEN,
            opened_at=finding.at,
            updated_at=finding.at,
            officer_id=self._officer_of(finding.subject_id),
            trigger=finding.evidence,
            last_evidence=finding.evidence,
            reason=finding.reason,
        )
        self._by_id[alert.alert_id] = alert
        self._unresolved[key] = alert
        return [AlertTransition(TransitionKind.OPENED, finding.at, snapshot(alert))]

    def _clear(self, finding: Finding) -> list[AlertTransition]:
        current = self._unresolved.get(finding.key)
        if current is None or not current.condition_active:
            return []
        current.condition_active = False
        current.cleared_at = finding.at
        current.updated_at = max(current.updated_at, finding.at)
        current.last_evidence = finding.evidence
        transitions = [AlertTransition(TransitionKind.CLEARED, finding.at, snapshot(current))]
        if self._policy(current.tier).auto_resolve_on_clear:
            transitions += self._resolve(
                current, SYSTEM_ACTOR, Disposition.CONDITION_CLEARED.value, finding.at
            )
        return transitions

    # ------------------------------------------------------------------ officer actions

    def acknowledge(
        self, alert_id: str, actor: str, now: datetime, note: str | None = None
    ) -> list[AlertTransition]:
        alert = self._require(alert_id)
        if alert.state is not AlertState.OPEN:
            raise AlertError(f"alert {alert_id} is {alert.state.value}, not open")
        alert.state = AlertState.ACKNOWLEDGED
        alert.acknowledged_at, alert.acknowledged_by = now, actor
        alert.updated_at = max(alert.updated_at, now)
        return [AlertTransition(TransitionKind.ACKNOWLEDGED, now, snapshot(alert), actor, note)]

    def resolve(
        self, alert_id: str, actor: str, disposition: str, now: datetime, note: str | None = None
    ) -> list[AlertTransition]:
        alert = self._require(alert_id)
        if alert.state is AlertState.RESOLVED:
            raise AlertError(f"alert {alert_id} is already resolved")
        return self._resolve(alert, actor, disposition, now, note)

    def note(self, alert_id: str, actor: str, note: str, now: datetime) -> list[AlertTransition]:
        """An officer's note on an alert in any state (the audit trail of what was done)."""
        alert = self._require(alert_id)
        return [AlertTransition(TransitionKind.NOTED, now, snapshot(alert), actor, note)]

    def _resolve(
        self, alert: Alert, actor: str, disposition: str, now: datetime, note: str | None = None
    ) -> list[AlertTransition]:
        alert.state = AlertState.RESOLVED
        alert.resolved_at, alert.resolved_by, alert.disposition = now, actor, disposition
        alert.updated_at = max(alert.updated_at, now)
        self._unresolved.pop(alert.key, None)
        self._last_resolved[alert.key] = alert
        return [AlertTransition(TransitionKind.RESOLVED, now, snapshot(alert), actor, note)]

    def _require(self, alert_id: str) -> Alert:
        alert = self._by_id.get(alert_id)
        if alert is None:
            raise AlertError(f"unknown alert {alert_id}")
        return alert
