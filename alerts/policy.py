"""Alerting policy, compiled from `config/policies.yaml`: escalation ladders per tier, who is
who (officers, supervisors, the command centre), inhibition rules. Pure and immutable.

Targets of a step are keywords resolved per alert, or officer ids:
    officer       the subject's officer (recorded on the alert when it opened)
    supervisor    that officer's supervisor
    command       the first officer with role `command` up that officer's supervisor chain,
                  or every command officer when the chain has none
    acknowledger  the officer who acknowledged (only meaningful after an acknowledgement)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from alerts.lifecycle import DEFAULT_REOPEN_WINDOW_SECONDS, TierPolicy
from alerts.model import Tier

TARGET_OFFICER = "officer"
TARGET_SUPERVISOR = "supervisor"
TARGET_COMMAND = "command"
TARGET_ACKNOWLEDGER = "acknowledger"
TARGET_KEYWORDS = frozenset(
    {TARGET_OFFICER, TARGET_SUPERVISOR, TARGET_COMMAND, TARGET_ACKNOWLEDGER}
)

# Defaults (config/policies.yaml repeats them with reasons). NIJ-1004 wants an alert at the
# officer within 4 minutes of the event; if the officer has not taken it 5 minutes later a
# supervisor must, and the command centre 10 minutes after that.
DEFAULT_STEP_TIMEOUT_SECONDS = 300.0
DEFAULT_REMINDER_INTERVAL_SECONDS = 900.0
DEFAULT_ACK_TIMEOUT_SECONDS = 4 * 3600.0
SUPERVISOR_CHAIN_MAX_DEPTH = 16  # guards a cyclic supervisor chain in a bad config


class Role(StrEnum):
    OFFICER = "officer"
    SUPERVISOR = "supervisor"
    COMMAND = "command"
    # Not in subjects.yaml and never a notification target: roles of API tokens that carry
    # no caseload (daemon/access.py has the permission matrix).
    OPERATOR = "operator"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class OfficerInfo:
    officer_id: str
    role: Role
    supervisor_id: str | None = None


@dataclass(frozen=True)
class Directory:
    """Officers and who supervises whom; answers 'who is told' and 'who may see what'."""

    officers: Mapping[str, OfficerInfo] = field(default_factory=dict)

    def supervisor_of(self, officer_id: str | None) -> str | None:
        info = self.officers.get(officer_id) if officer_id is not None else None
        return info.supervisor_id if info is not None else None

    def command_for(self, officer_id: str | None) -> tuple[str, ...]:
        current = self.supervisor_of(officer_id)
        for _ in range(SUPERVISOR_CHAIN_MAX_DEPTH):
            if current is None:
                break
            info = self.officers.get(current)
            if info is not None and info.role is Role.COMMAND:
                return (current,)
            current = self.supervisor_of(current)
        return tuple(sorted(o.officer_id for o in self.officers.values() if o.role is Role.COMMAND))

    def team_of(self, supervisor_id: str) -> frozenset[str]:
        """Officers whose supervisor this is, and the supervisor."""
        team = {o.officer_id for o in self.officers.values() if o.supervisor_id == supervisor_id}
        return frozenset(team | {supervisor_id})

    def resolve(
        self, targets: Iterable[str], officer_id: str | None, acknowledger: str | None = None
    ) -> tuple[str, ...]:
        """Officer ids for step targets, in order, without duplicates or unknown people."""
        out: list[str] = []
        for target in targets:
            if target == TARGET_OFFICER:
                found: tuple[str | None, ...] = (officer_id,)
            elif target == TARGET_SUPERVISOR:
                found = (self.supervisor_of(officer_id),)
            elif target == TARGET_COMMAND:
                found = self.command_for(officer_id)
            elif target == TARGET_ACKNOWLEDGER:
                found = (acknowledger,)
            else:
                found = (target,)
            out.extend(f for f in found if f is not None and f in self.officers and f not in out)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class EscalationStep:
    targets: tuple[str, ...]
    # How long the step's targets have to acknowledge before the next step is notified.
    timeout_seconds: float = DEFAULT_STEP_TIMEOUT_SECONDS


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    steps: tuple[EscalationStep, ...]
    # After the last step's timeout, everyone notified so far is reminded this often until
    # someone acknowledges (None: no reminders), at most `max_reminders` times (None: no cap).
    reminder_interval_seconds: float | None = DEFAULT_REMINDER_INTERVAL_SECONDS
    max_reminders: int | None = None
    # Acknowledged but not resolved after this long: re-notify (None: never), repeating at the
    # same interval at most `max_ack_renotifications` times (None: no cap).
    ack_timeout_seconds: float | None = DEFAULT_ACK_TIMEOUT_SECONDS
    ack_timeout_targets: tuple[str, ...] = (TARGET_ACKNOWLEDGER, TARGET_SUPERVISOR)
    max_ack_renotifications: int | None = None
    auto_resolve_on_clear: bool = False
    reopen_window_seconds: float = DEFAULT_REOPEN_WINDOW_SECONDS

    @property
    def lifecycle(self) -> TierPolicy:
        return TierPolicy(self.auto_resolve_on_clear, self.reopen_window_seconds)


DEFAULT_LADDER = (
    EscalationStep((TARGET_OFFICER,), DEFAULT_STEP_TIMEOUT_SECONDS),
    EscalationStep((TARGET_SUPERVISOR,), 2 * DEFAULT_STEP_TIMEOUT_SECONDS),
    EscalationStep((TARGET_COMMAND,), DEFAULT_STEP_TIMEOUT_SECONDS),
)
DEFAULT_POLICY = EscalationPolicy(DEFAULT_LADDER)


class InhibitScope(StrEnum):
    DEVICE = "device"  # only alerts of the same device
    SUBJECT = "subject"  # any alert of the same subject


@dataclass(frozen=True, slots=True)
class InhibitionRule:
    """While an unresolved alert of a source rule exists, alerts of the target rules with the
    same device (or subject) are muted: a cut strap explains a lost GNSS fix."""

    source_rules: frozenset[str]
    target_rules: frozenset[str]
    scope: InhibitScope = InhibitScope.DEVICE


@dataclass(frozen=True)
class AlertingConfig:
    policies: Mapping[Tier, EscalationPolicy] = field(default_factory=dict)
    inhibitions: tuple[InhibitionRule, ...] = ()
    # Rules muted while the subject is on approved leave (the leave calendar: issue 4).
    leave_muted_rules: frozenset[str] = frozenset()
    directory: Directory = field(default_factory=Directory)

    def policy(self, tier: Tier) -> EscalationPolicy:
        return self.policies.get(tier, DEFAULT_POLICY)

    def tier_policies(self) -> dict[Tier, TierPolicy]:
        return {tier: self.policy(tier).lifecycle for tier in Tier}
