"""Alert vocabulary shared by the core and the shell: rules, tiers, findings, transitions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Tier(StrEnum):
    """Alert tiers, most urgent first. Each rule documents its default tier."""

    CRITICAL = "critical"
    HIGH = "high"
    LOW = "low"


class RuleId(StrEnum):
    """Stable rule names; they appear on the wire and in the database."""

    BOUNDARY_EXIT = "boundary_exit"  # 越界: left the permitted district/county
    EXCLUSION_ENTRY = "exclusion_entry"  # entered an exclusion zone (prohibition order)
    CURFEW_AWAY = "curfew_away"  # 夜间活动: away from home during curfew
    STRAP_OPEN = "strap_open"  # tamper: strap opened
    # Issue 4 (docs/rules.md gives each rule's meaning, tier and thresholds).
    INCLUSION_AWAY = "inclusion_away"  # away from a scheduled place (workplace in work hours)
    EXCLUSION_APPROACH = "exclusion_approach"  # lingering in the warning band of an exclusion
    EXCLUSION_CROSSED = "exclusion_crossed"  # passed through an exclusion zone between fixes
    LEAVE_AREA_EXIT = "leave_area_exit"  # outside the approved destination/route during leave
    DEVICE_SILENT = "device_silent"  # 脱管: nothing received from the device for N minutes
    GNSS_LOST = "gnss_lost"  # the device talks but has had no usable GNSS fix for M minutes
    CASE_OPEN = "case_open"  # tamper: device case opened
    POWER_OFF = "power_off"  # the device reported being switched off
    BATTERY_LOW = "battery_low"  # battery at or below the low threshold
    BATTERY_CRITICAL = "battery_critical"  # battery at or below the critical threshold
    # Issue 5 part B: habits, gatherings, victims (docs/rules.md).
    TRAJECTORY_ANOMALY = "trajectory_anomaly"  # 日常轨迹异常: a day far from the usual places
    CO_OFFENDER_GATHERING = "co_offender_gathering"  # 同案犯聚集: a co-offender group met
    GATHERING = "gathering"  # any two subjects together (off unless settings enable it)
    VICTIM_PROXIMITY = "victim_proximity"  # within a protected person's mobile exclusion zone
    VICTIM_APPROACH = "victim_approach"  # in the warning band around a protected person


DEFAULT_TIERS: dict[RuleId, Tier] = {
    RuleId.STRAP_OPEN: Tier.CRITICAL,
    RuleId.EXCLUSION_ENTRY: Tier.CRITICAL,
    RuleId.BOUNDARY_EXIT: Tier.HIGH,
    RuleId.CURFEW_AWAY: Tier.HIGH,
    RuleId.CASE_OPEN: Tier.CRITICAL,
    RuleId.EXCLUSION_CROSSED: Tier.HIGH,
    RuleId.LEAVE_AREA_EXIT: Tier.HIGH,
    RuleId.DEVICE_SILENT: Tier.HIGH,
    RuleId.POWER_OFF: Tier.HIGH,
    RuleId.BATTERY_CRITICAL: Tier.HIGH,
    RuleId.INCLUSION_AWAY: Tier.LOW,
    RuleId.EXCLUSION_APPROACH: Tier.LOW,
    RuleId.GNSS_LOST: Tier.LOW,
    RuleId.BATTERY_LOW: Tier.LOW,
    # Issue 5 part B (docs/rules.md says why each tier).
    RuleId.TRAJECTORY_ANOMALY: Tier.LOW,
    RuleId.CO_OFFENDER_GATHERING: Tier.HIGH,
    RuleId.GATHERING: Tier.LOW,
    RuleId.VICTIM_PROXIMITY: Tier.CRITICAL,
    RuleId.VICTIM_APPROACH: Tier.HIGH,
}


class FindingKind(StrEnum):
    RAISED = "raised"  # the violation condition began (after noise discipline)
    CLEARED = "cleared"  # the condition ended; does not close the alert by itself


@dataclass(frozen=True, slots=True)
class Finding:
    """A decision of the rule engine about one subject at one event time."""

    subject_id: str
    device_id: str
    rule: RuleId
    zone_id: str | None
    tier: Tier
    kind: FindingKind
    at: datetime
    evidence: dict[str, Any] = field(compare=False, hash=False)
    reason: str = ""

    @property
    def key(self) -> tuple[str, RuleId, str | None]:
        return (self.subject_id, self.rule, self.zone_id)


class Disposition(StrEnum):
    """What the person who resolved an alert decided (the alert-yield measure counts these)."""

    CONFIRMED_VIOLATION = "confirmed_violation"
    FALSE_ALARM = "false_alarm"
    DEVICE_FAULT = "device_fault"
    APPROVED = "approved"  # e.g. an absence that was approved after the fact
    CONDITION_CLEARED = "condition_cleared"  # set by emon when a tier auto-resolves


class AlertState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class TransitionKind(StrEnum):
    OPENED = "opened"
    UPDATED = "updated"
    CLEARED = "cleared"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    REOPENED = "reopened"
    ESCALATED = "escalated"  # a later step of the escalation policy was notified
    # Issue 6: the rest of the escalation ladder and officer notes (wire v1 extensions).
    NOTIFIED = "notified"  # the first step of the escalation policy was notified
    REMINDED = "reminded"  # still unacknowledged after the last step: everyone reminded
    RENOTIFIED = "renotified"  # acknowledged but not resolved in time: re-notified
    SUPPRESSED = "suppressed"  # a due notification was muted (silence, inhibition, leave)
    NOTED = "noted"  # an officer added a note


_ALERT_ID_NAMESPACE = uuid.UUID("6f1c1a52-7d0e-4b8e-9a53-0d6c2e1f6a10")


def alert_id_for(subject_id: str, rule: RuleId, zone_id: str | None, opened_at: datetime) -> str:
    """Deterministic id: the same trigger gives the same id live, in replay and after restart."""
    name = f"{subject_id}|{rule.value}|{zone_id or ''}|{opened_at.isoformat()}"
    return str(uuid.uuid5(_ALERT_ID_NAMESPACE, name))


@dataclass(slots=True)
class Alert:
    """One alert per (subject, rule, zone) while it is not resolved. Owned by the lifecycle."""

    alert_id: str
    subject_id: str
    device_id: str
    rule: RuleId
    zone_id: str | None
    tier: Tier
    state: AlertState
    opened_at: datetime
    updated_at: datetime
    officer_id: str | None
    trigger: dict[str, Any]
    last_evidence: dict[str, Any]
    reason: str = ""
    count: int = 1
    condition_active: bool = True
    cleared_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    resolved_at: datetime | None = None
    resolved_by: str | None = None
    disposition: str | None = None

    @property
    def key(self) -> tuple[str, RuleId, str | None]:
        return (self.subject_id, self.rule, self.zone_id)

    def to_wire(self) -> dict[str, Any]:
        """The alert as published on `emon/v1/alerts/<subject_id>` (wire contract v1)."""

        def iso(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "alert_id": self.alert_id,
            "subject_id": self.subject_id,
            "device_id": self.device_id,
            "rule": self.rule.value,
            "tier": self.tier.value,
            "state": self.state.value,
            "zone_id": self.zone_id,
            "officer_id": self.officer_id,
            "opened_at": iso(self.opened_at),
            "updated_at": iso(self.updated_at),
            "count": self.count,
            "condition_active": self.condition_active,
            "cleared_at": iso(self.cleared_at),
            "acknowledged_at": iso(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "resolved_at": iso(self.resolved_at),
            "resolved_by": self.resolved_by,
            "disposition": self.disposition,
            "reason": self.reason,
            "trigger": self.trigger,
            "last_evidence": self.last_evidence,
        }


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """A change of an alert. `alert` is a snapshot taken after the change."""

    kind: TransitionKind
    at: datetime
    alert: Alert
    actor: str | None = None
    note: str | None = None
    # Escalation transitions: step, targets, reason (published as "notification").
    detail: dict[str, Any] | None = None

    def to_wire(self) -> dict[str, Any]:
        out = self.alert.to_wire()
        out["transition"] = self.kind.value
        out["transition_at"] = self.at.isoformat()
        if self.actor is not None:
            out["actor"] = self.actor
        if self.note is not None:
            out["note"] = self.note
        if self.detail is not None:
            out["notification"] = self.detail
        return out
