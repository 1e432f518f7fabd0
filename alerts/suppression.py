"""Inhibition, approved leave and silences: why a due notification is muted. Pure.

A muted alert is still opened, updated, recorded and published on the alerts topic (the
record is never muted); only notifying people, escalating and reminding wait until the mute
ends, and each muted step is recorded once as a `suppressed` transition with the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from alerts.escalation import Mute
from alerts.model import Alert, AlertState
from alerts.policy import AlertingConfig, InhibitScope

MAX_SILENCE_SECONDS = 30 * 24 * 3600.0  # a silence is a decision with an end, not a setting


class LeaveCalendar(Protocol):
    """Approved leave (请假): the hook the leave rules (issue 4) implement."""

    def on_leave(self, subject_id: str, at: datetime) -> bool: ...


class NoLeave:
    def on_leave(self, subject_id: str, at: datetime) -> bool:
        return False


NO_LEAVE = NoLeave()


@dataclass(frozen=True, slots=True)
class Silence:
    silence_id: str
    subject_id: str | None  # None: every subject (only with a rule)
    rule: str | None  # None: every rule (only with a subject)
    reason: str
    author: str
    starts_at: datetime
    expires_at: datetime
    ended_at: datetime | None = None
    ended_by: str | None = None

    def active(self, now: datetime) -> bool:
        end = self.expires_at if self.ended_at is None else min(self.expires_at, self.ended_at)
        return self.starts_at <= now < end

    def matches(self, alert: Alert) -> bool:
        return (self.subject_id is None or self.subject_id == alert.subject_id) and (
            self.rule is None or self.rule == alert.rule.value
        )


def mute_for(
    alert: Alert,
    now: datetime,
    *,
    config: AlertingConfig,
    unresolved: Iterable[Alert],
    silences: Iterable[Silence],
    leave: LeaveCalendar = NO_LEAVE,
) -> Mute | None:
    """The first reason `alert` is muted at `now`, or None.

    `unresolved` must hold the unresolved alerts of the alert's subject (more does no harm).
    """
    rule = alert.rule.value
    for inhibition in config.inhibitions:
        if rule not in inhibition.target_rules:
            continue
        for other in unresolved:
            if (
                other.alert_id != alert.alert_id
                and other.state is not AlertState.RESOLVED
                and other.rule.value in inhibition.source_rules
                and other.opened_at <= now
                and (
                    other.device_id == alert.device_id
                    if inhibition.scope is InhibitScope.DEVICE
                    else other.subject_id == alert.subject_id
                )
            ):
                return Mute(f"inhibited by {other.rule.value} alert {other.alert_id}")
    if rule in config.leave_muted_rules and leave.on_leave(alert.subject_id, now):
        return Mute("subject on approved leave")
    matching = [s for s in silences if s.active(now) and s.matches(alert)]
    if matching:
        silence = max(matching, key=lambda s: s.expires_at)
        return Mute(
            f"silence {silence.silence_id} by {silence.author}: {silence.reason}",
            silence.expires_at if silence.ended_at is None else min(
                silence.expires_at, silence.ended_at
            ),
        )
    return None
