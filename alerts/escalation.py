"""Escalation until a person owns the alert. Pure: state and a clock in, actions out.

The state of one alert's escalation is a small immutable value (`EscalationState`). Two
functions move it:

    on_transition(state, transition, policy)   an alert opened, reopened, was acknowledged or
                                               resolved: start, pause or stop the ladder
    advance(state, policy, now, ...)           time passed: the due steps, reminders and
                                               re-notifications, each as an EscalationAction

The daemon keeps the state in PostgreSQL and runs `advance` on rows it has claimed with
`FOR UPDATE SKIP LOCKED` (so two daemons never escalate the same step twice); `emon replay`
and the tests keep it in memory with `Escalator`. Both call exactly these functions, so they
decide alike.

Timing: step n is due `steps[n-1].timeout_seconds` after step n-1 was notified; the first step
is due when the alert opens. Every action's `at` is the time it was due, not the time a sweep
happened to run, unless a mute deferred it (then it happens when the mute is found over).
Missed reminders (a daemon that was down) collapse into one; missed ladder steps do not: a
supervisor who should have been told is told.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from alerts.model import Alert, AlertState, AlertTransition, Tier, TransitionKind
from alerts.policy import AlertingConfig, Directory, EscalationPolicy

# A muted alert whose mute has no known end (an inhibiting alert not yet resolved) is looked
# at again this often, so escalation resumes within this long of the mute ending.
MUTE_RECHECK_SECONDS = 60.0


class Phase(StrEnum):
    LADDER = "ladder"  # unacknowledged: walking the steps; `step` = last step notified
    REMINDING = "reminding"  # unacknowledged after the last step: reminders
    ACKNOWLEDGED = "acknowledged"  # owned by a person: re-notify if not resolved in time
    DONE = "done"  # resolved


class ActionKind(StrEnum):
    NOTIFY = "notify"  # the first step
    ESCALATE = "escalate"  # a later step
    REMIND = "remind"
    RENOTIFY = "renotify"  # acknowledged, not resolved within the ack timeout
    SUPPRESS = "suppress"  # a due action was muted (recorded once per mute)


TRANSITION_OF_ACTION: Mapping[ActionKind, TransitionKind] = {
    ActionKind.NOTIFY: TransitionKind.NOTIFIED,
    ActionKind.ESCALATE: TransitionKind.ESCALATED,
    ActionKind.REMIND: TransitionKind.REMINDED,
    ActionKind.RENOTIFY: TransitionKind.RENOTIFIED,
    ActionKind.SUPPRESS: TransitionKind.SUPPRESSED,
}


@dataclass(frozen=True, slots=True)
class EscalationState:
    alert_id: str
    tier: Tier
    phase: Phase
    step: int  # index of the last step notified; -1: none yet
    started_at: datetime  # when the current ladder started (opened or reopened)
    next_due_at: datetime | None  # when the next action is due (None: nothing more)
    wake_at: datetime | None  # when to look again: next_due_at, or a mute re-check
    repeats: int = 0  # reminders (REMINDING) or re-notifications (ACKNOWLEDGED) sent
    acknowledged_by: str | None = None
    muted: str | None = None  # why the action due now was suppressed; None: not muted


@dataclass(frozen=True, slots=True)
class Mute:
    reason: str  # e.g. "silence 5c0e... by sup-wang: hospital visit"
    until: datetime | None = None  # known end (a silence's expiry), else re-checked


@dataclass(frozen=True, slots=True)
class EscalationAction:
    alert_id: str
    kind: ActionKind
    at: datetime
    step: int
    recipients: tuple[str, ...]  # officer ids
    reason: str

    @property
    def transition_kind(self) -> TransitionKind:
        return TRANSITION_OF_ACTION[self.kind]

    def detail(self) -> dict[str, object]:
        """The transition's `notification` object on the wire and in the history."""
        return {
            "action": self.kind.value,
            "step": self.step,
            "recipients": list(self.recipients),
            "reason": self.reason,
        }

    def transition(self, alert: Alert) -> AlertTransition:
        return AlertTransition(
            self.transition_kind, self.at, alert, "emon", self.reason, self.detail()
        )


def start(alert_id: str, tier: Tier, at: datetime) -> EscalationState:
    return EscalationState(alert_id, tier, Phase.LADDER, -1, at, at, at)


def state_for_alert(alert: Alert, policy: EscalationPolicy) -> EscalationState | None:
    """The state for an alert that has none (opened before escalation existed): start now."""
    if alert.state is AlertState.RESOLVED:
        return None
    if alert.state is AlertState.ACKNOWLEDGED and alert.acknowledged_at is not None:
        return _acknowledged(
            start(alert.alert_id, alert.tier, alert.opened_at),
            alert.acknowledged_at, alert.acknowledged_by, policy,
        )
    return start(alert.alert_id, alert.tier, alert.updated_at)


def _acknowledged(
    state: EscalationState, at: datetime, by: str | None, policy: EscalationPolicy
) -> EscalationState:
    due = _after(at, policy.ack_timeout_seconds)
    return dataclasses.replace(
        state, phase=Phase.ACKNOWLEDGED, next_due_at=due, wake_at=due, repeats=0,
        acknowledged_by=by, muted=None,
    )


def _after(at: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else at + timedelta(seconds=seconds)


def on_transition(
    state: EscalationState | None,
    transition: AlertTransition,
    policy: EscalationPolicy,
    now: datetime | None = None,
) -> EscalationState | None:
    """The escalation state after an alert transition (None: no escalation for it).

    `now` is when emon learned of it. The ladder's timeouts are the time people had to
    respond, which starts when emon could first tell them: an alert found in pings that a
    device stored and uploaded three hours late starts at its upload, not three hours ago
    (else it would reach the command centre before its officer ever saw it).
    """
    alert = transition.alert
    kind = transition.kind
    if kind in (TransitionKind.OPENED, TransitionKind.REOPENED):
        at = transition.at if now is None else max(transition.at, now)
        return start(alert.alert_id, alert.tier, at)
    if state is None:
        return state_for_alert(alert, policy)
    if kind is TransitionKind.ACKNOWLEDGED:
        return _acknowledged(state, transition.at, transition.actor, policy)
    if kind is TransitionKind.RESOLVED or alert.state is AlertState.RESOLVED:
        return dataclasses.replace(
            state, phase=Phase.DONE, next_due_at=None, wake_at=None, muted=None
        )
    return state


def _latest_repeat(due: datetime, interval_s: float, now: datetime) -> datetime:
    """The latest repeat due at or before `now`, counting from `due` (missed ones collapse)."""
    if due > now:
        return due
    missed = int((now - due).total_seconds() // interval_s)
    return due + timedelta(seconds=missed * interval_s)


def advance(
    state: EscalationState,
    policy: EscalationPolicy,
    now: datetime,
    *,
    officer_id: str | None,
    directory: Directory,
    mute: Mute | None = None,
    mute_recheck_seconds: float = MUTE_RECHECK_SECONDS,
) -> tuple[EscalationState, list[EscalationAction]]:
    """Every action due by `now`, and the state after them."""
    actions: list[EscalationAction] = []
    for _ in range(len(policy.steps) + 2):  # bounded: each pass moves the state forward
        due = state.next_due_at
        if due is None or due > now or state.phase is Phase.DONE:
            break
        if mute is not None:
            if state.muted != mute.reason:
                actions.append(
                    EscalationAction(state.alert_id, ActionKind.SUPPRESS, due, state.step, (),
                                     f"muted: {mute.reason}")
                )
            recheck = now + timedelta(seconds=mute_recheck_seconds)
            wake = min(mute.until, recheck) if mute.until is not None else recheck
            return dataclasses.replace(state, muted=mute.reason, wake_at=max(wake, now)), actions
        # A mute that deferred this action: it happens now, and the ladder goes on from now.
        at = now if state.muted is not None else due
        state = dataclasses.replace(state, muted=None)
        state, action = _step(state, policy, at, now, officer_id, directory)
        if action is not None:
            actions.append(action)
    return dataclasses.replace(state, wake_at=state.next_due_at), actions


def _step(
    state: EscalationState,
    policy: EscalationPolicy,
    at: datetime,
    now: datetime,
    officer_id: str | None,
    directory: Directory,
) -> tuple[EscalationState, EscalationAction | None]:
    steps = policy.steps
    if state.phase is Phase.LADDER:
        index = state.step + 1
        # Steps whose targets resolve to nobody (an officer without a supervisor) are
        # passed over at once: the next step is told now rather than one timeout later.
        while index < len(steps) and not directory.resolve(steps[index].targets, officer_id):
            index += 1
        if index < len(steps):
            step = steps[index]
            recipients = directory.resolve(step.targets, officer_id)
            kind = ActionKind.NOTIFY if index == 0 else ActionKind.ESCALATE
            reason = f"step {index + 1} of {len(steps)}: {', '.join(step.targets)}"
            if state.step >= 0:
                reason += (
                    f"; step {state.step + 1} did not acknowledge within "
                    f"{_duration(steps[state.step].timeout_seconds)}"
                )
            due = at + timedelta(seconds=step.timeout_seconds)
            new = dataclasses.replace(state, step=index, next_due_at=due)
            return new, EscalationAction(state.alert_id, kind, at, index, recipients, reason)
        # Past the last step: reminders. The first is due now (the last step timed out).
        state = dataclasses.replace(state, phase=Phase.REMINDING, repeats=0)
    if state.phase is Phase.REMINDING:
        interval = policy.reminder_interval_seconds
        if interval is None or (
            policy.max_reminders is not None and state.repeats >= policy.max_reminders
        ):
            return dataclasses.replace(state, next_due_at=None), None
        at = _latest_repeat(at, interval, now)
        recipients = directory.resolve(
            [t for s in steps for t in s.targets], officer_id
        )
        repeats = state.repeats + 1  # collapsed, never-sent repeats do not count
        action = EscalationAction(
            state.alert_id, ActionKind.REMIND, at, state.step, recipients,
            f"reminder {repeats}: still not acknowledged after every step",
        )
        return dataclasses.replace(state, repeats=repeats, next_due_at=_after(at, interval)), action
    if state.phase is Phase.ACKNOWLEDGED:
        interval = policy.ack_timeout_seconds
        if interval is None or (
            policy.max_ack_renotifications is not None
            and state.repeats >= policy.max_ack_renotifications
        ):
            return dataclasses.replace(state, next_due_at=None), None
        at = _latest_repeat(at, interval, now)
        recipients = directory.resolve(policy.ack_timeout_targets, officer_id,
                                       state.acknowledged_by)
        repeats = state.repeats + 1  # collapsed, never-sent repeats do not count
        action = EscalationAction(
            state.alert_id, ActionKind.RENOTIFY, at, state.step, recipients,
            f"acknowledged by {state.acknowledged_by or 'someone'} but not resolved within "
            f"{_duration(interval)} (re-notification {repeats})",
        )
        return dataclasses.replace(state, repeats=repeats, next_due_at=_after(at, interval)), action
    return dataclasses.replace(state, next_due_at=None), None


def _duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    if seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


class Escalator:
    """Escalation states in memory, for `emon replay` and tests (the daemon uses the database).

    Feed it every alert transition (`observe`); `tick(now)` returns the escalation transitions
    due by `now`, each carrying a snapshot of the alert from `alert_of`.
    """

    def __init__(
        self,
        config: AlertingConfig,
        alert_of: Callable[[str], Alert | None],
        mute_of: Callable[[Alert, datetime], Mute | None] = lambda _alert, _now: None,
    ) -> None:
        self._config = config
        self._alert_of = alert_of
        self._mute_of = mute_of
        self._states: dict[str, EscalationState] = {}

    def swap_config(self, config: AlertingConfig) -> None:
        self._config = config

    def state(self, alert_id: str) -> EscalationState | None:
        return self._states.get(alert_id)

    def observe(
        self, transitions: Iterable[AlertTransition], now: datetime | None = None
    ) -> None:
        for transition in transitions:
            alert_id = transition.alert.alert_id
            policy = self._config.policy(transition.alert.tier)
            new = on_transition(self._states.get(alert_id), transition, policy, now)
            if new is None or new.phase is Phase.DONE:
                self._states.pop(alert_id, None)
            else:
                self._states[alert_id] = new

    def due(self, now: datetime) -> list[str]:
        """Alert ids whose escalation must be looked at by `now`, earliest first."""
        ready = [s for s in self._states.values() if s.wake_at is not None and s.wake_at <= now]
        return [s.alert_id for s in sorted(ready, key=lambda s: (s.wake_at, s.alert_id))]

    def tick(self, now: datetime) -> list[AlertTransition]:
        out: list[AlertTransition] = []
        for alert_id in self.due(now):
            alert = self._alert_of(alert_id)
            state = self._states[alert_id]
            if alert is None:
                del self._states[alert_id]
                continue
            new, actions = advance(
                state, self._config.policy(state.tier), now,
                officer_id=alert.officer_id, directory=self._config.directory,
                mute=self._mute_of(alert, now),
            )
            self._states[alert_id] = new
            out.extend(a.transition(dataclasses.replace(alert)) for a in actions)
        out.sort(key=lambda t: (t.at, t.alert.alert_id))
        return out
