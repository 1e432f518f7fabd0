"""Subject-level rules of issue 5 part A, run by the engine: person-device separation,
scheduled check-ins, monitoring authorisation. Pure: observations, arrival times and a clock
in, findings out.

The engine calls `after_observe` at the end of each (non-duplicate) observation and
`after_tick` at the end of each tick; both return the engine's findings with this module's
added and, where a subject is outside its authorised monitoring (Art. 29, policy
`alerts: suppress`), the subject's other findings dropped.

Time-driven moments (a check-in deadline, an authorisation warning, end or start) are kept
in a heap of per-subject wake-ups, so a tick costs what is due. A subject's moments before
an observation's arrival are judged before the observation itself, so the outcome does not
depend on when ticks run (as for silence in `geofence.devicerules`).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from alerts.model import Finding, FindingKind, RuleId
from geofence import authorisation, checkins, separation
from geofence.checkins import CheckinState, Deadline
from geofence.compliancespec import AfterAuthorisation
from geofence.conditions import ConditionKey, SubjectConditions
from geofence.config import CoreConfig, SubjectSpec
from geofence.observation import DeviceEvent, DeviceEventType, Observation
from geofence.separation import SeparationState

# A moment is a check-in deadline or an authorisation moment.
_Moment = Deadline | authorisation.Moment


@dataclass(slots=True)
class SubjectCompliance:
    first_arrival: datetime  # the subject's first message since this engine started
    judged_until: datetime  # moments up to here have been judged
    checkin: CheckinState = field(default_factory=CheckinState)
    separation: SeparationState = field(default_factory=SeparationState)
    scheduled_at: datetime | None = None
    # The moments after `judged_until` (computed once per `judged_until`: every message of
    # the subject asks, and working out check-in deadlines in local time is not free).
    next_batch: tuple[datetime, list[_Moment]] | None = None


class ComplianceRules:
    def __init__(self, stats: Counter[str]) -> None:
        self._stats = stats
        self._conditions = SubjectConditions(stats)
        self._subjects: dict[str, SubjectCompliance] = {}
        self._wakeups: list[tuple[datetime, str]] = []
        self._suppressed: set[ConditionKey] = set()

    # ------------------------------------------------------------------ queries

    @staticmethod
    def authorised(config: CoreConfig, device_id: str, ts: datetime) -> bool:
        """Whether monitoring of the device's subject was authorised at `ts` (a device
        outside the roster, or a subject without a recorded authorisation: True)."""
        spec = config.devices.get(device_id)
        if spec is None:
            return True
        recorded = config.subjects[spec.subject_id].authorisation
        return recorded is None or recorded.covering(ts) is not None

    # ------------------------------------------------------------------ engine hooks

    def swap_config(self, config: CoreConfig) -> None:
        self._wakeups = []
        for subject_id in list(self._subjects):
            subject = config.subjects.get(subject_id)
            if subject is None:
                del self._subjects[subject_id]
                continue
            state = self._subjects[subject_id]
            state.scheduled_at = None
            state.next_batch = None
            self._reschedule(config, subject, state)

    def after_observe(
        self,
        config: CoreConfig,
        subject: SubjectSpec,
        observation: Observation,
        now: datetime,
        accepted_fix: bool,
        findings: list[Finding],
    ) -> list[Finding]:
        state = self._subjects.get(subject.subject_id)
        mine: list[Finding] = []
        if state is None:
            state = SubjectCompliance(first_arrival=now, judged_until=now)
            self._subjects[subject.subject_id] = state
            mine += authorisation.on_first_seen(config, self._conditions, subject, now)
        else:
            mine += self._advance(config, subject, state, now, inclusive=False)
        if not ComplianceRules.authorised(config, observation.device_id, observation.ts):
            self._stats["observation_outside_authorisation"] += 1
            mine += authorisation.on_observation_time(
                config, self._conditions, subject, observation.ts, now
            )
        params = config.rules.compliance
        if params.separation is not None:
            mine += separation.on_observation(
                config, params.separation, self._conditions, subject, state.separation,
                observation, now, accepted_fix,
            )
        if isinstance(observation, DeviceEvent) and observation.type is DeviceEventType.CHECKIN:
            if observation.attributes.get(checkins.VERIFICATION_ATTRIBUTE) not in (
                checkins.VERIFICATION_PASSED, checkins.VERIFICATION_FAILED
            ):
                self._stats["checkin_unverified"] += 1
            mine += checkins.on_event(
                config, params.checkin, self._conditions, subject, state.checkin, observation,
                now,
            )
        self._reschedule(config, subject, state)
        return self.filter(config, findings + mine)

    def due_by(self, now: datetime) -> bool:
        """Whether a subject's moment (check-in deadline, authorisation) is due by `now`."""
        return bool(self._wakeups and self._wakeups[0][0] <= now)

    def after_tick(
        self, config: CoreConfig, now: datetime, findings: list[Finding]
    ) -> list[Finding]:
        due: list[tuple[datetime, str]] = []
        while self._wakeups and self._wakeups[0][0] <= now:
            at, subject_id = heapq.heappop(self._wakeups)
            state = self._subjects.get(subject_id)
            if state is None or state.scheduled_at != at:
                continue  # superseded
            state.scheduled_at = None
            due.append((at, subject_id))
        mine: list[Finding] = []
        for _, subject_id in sorted(due):
            subject = config.subjects.get(subject_id)
            if subject is None:
                continue
            state = self._subjects[subject_id]
            mine += self._advance(config, subject, state, now, inclusive=True)
            self._reschedule(config, subject, state)
        return self.filter(config, findings + mine)

    # ------------------------------------------------------------------ moments

    def _next_moments(
        self, config: CoreConfig, subject: SubjectSpec, state: SubjectCompliance
    ) -> list[_Moment]:
        """Every moment at the earliest instant after `judged_until`."""
        cached = state.next_batch
        if cached is not None and cached[0] == state.judged_until:
            return cached[1]
        batch = self._compute_next_moments(config, subject, state)
        state.next_batch = (state.judged_until, batch)
        return batch

    @staticmethod
    def _compute_next_moments(
        config: CoreConfig, subject: SubjectSpec, state: SubjectCompliance
    ) -> list[_Moment]:
        candidates: list[_Moment] = []
        if subject.checkins:
            deadline = checkins.next_deadline(subject, state.judged_until, state.first_arrival)
            if deadline is not None:
                candidates.append(deadline)
        if subject.authorisation is not None:
            for moment in authorisation.moments(
                subject.authorisation, config.rules.compliance.authorisation
            ):
                if moment.at > state.judged_until:
                    candidates.append(moment)
        if not candidates:
            return []
        earliest = min(c.at for c in candidates)
        return [c for c in candidates if c.at == earliest]

    def _advance(
        self,
        config: CoreConfig,
        subject: SubjectSpec,
        state: SubjectCompliance,
        until: datetime,
        *,
        inclusive: bool,
    ) -> list[Finding]:
        findings: list[Finding] = []
        while True:
            batch = self._next_moments(config, subject, state)
            if not batch:
                break
            at = batch[0].at
            if at > until or (not inclusive and at >= until):
                break
            for moment in batch:
                if isinstance(moment, Deadline):
                    findings += checkins.judge_deadline(
                        config, self._conditions, subject, state.checkin, moment
                    )
                else:
                    findings += authorisation.at_moment(config, self._conditions, subject,
                                                        moment)
            state.judged_until = at
        if inclusive:
            state.judged_until = max(state.judged_until, until)
        return findings

    def _reschedule(
        self, config: CoreConfig, subject: SubjectSpec, state: SubjectCompliance
    ) -> None:
        batch = self._next_moments(config, subject, state)
        if not batch:
            return
        at = batch[0].at
        if state.scheduled_at is None or at < state.scheduled_at:
            heapq.heappush(self._wakeups, (at, subject.subject_id))
            state.scheduled_at = at

    # ------------------------------------------------------------------ Art. 29 policy

    def filter(self, config: CoreConfig, findings: list[Finding]) -> list[Finding]:
        """Drop the findings of a subject outside its authorised monitoring: a raise dated
        outside every period, and the clear of a raise that was dropped."""
        if config.rules.compliance.authorisation.alerts is AfterAuthorisation.CONTINUE:
            return findings
        kept: list[Finding] = []
        for finding in findings:
            subject = config.subjects.get(finding.subject_id)
            spec = subject.authorisation if subject is not None else None
            if spec is None or finding.rule in authorisation.AUTHORISATION_RULES:
                kept.append(finding)
                continue
            key = finding.key
            if finding.kind is FindingKind.RAISED:
                if spec.covering(finding.at) is None:
                    self._suppressed.add(key)
                    self._stats["finding_suppressed_unauthorised"] += 1
                    continue
                self._suppressed.discard(key)
            elif key in self._suppressed:
                self._suppressed.discard(key)
                self._stats["finding_suppressed_unauthorised"] += 1
                continue
            kept.append(finding)
        return kept


__all__ = ["ComplianceRules", "RuleId"]
