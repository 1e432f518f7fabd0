"""Monitoring authorisation (Community Corrections Law Art. 29). Pure.

Each subject's monitoring has authorised periods (`AuthorisationSpec`), each at most three
months, renewable. Two rules, both on the config's own instants (data times):

- `authorisation_expiring`: raised `warn` before the end of the last period of a run of
  contiguous periods (the moment monitoring would stop), once; cleared at that end: either
  "renewed until ..." (a renewal was recorded in time) or "ended".
- `monitoring_unauthorised`: the subject's devices are monitored outside every authorised
  period: raised at the end of the run (or, before the first period or after a restart, at
  the event time of the first observation outside), cleared at the start of the next
  period. While it holds, the engine drops every other finding of the subject (policy
  `alerts: suppress`) and the shell stores or dead-letters its pings (policy `pings`).

Subjects without a recorded authorisation are treated as authorised without end (the
config check does not require one yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum

from alerts.model import Finding, RuleId
from geofence.compliancespec import AuthorisationParams, AuthorisationSpec
from geofence.conditions import SubjectConditions
from geofence.config import CoreConfig, SubjectSpec

EXPIRING_CAUSE = "expiring"
UNAUTHORISED_CAUSE = "unauthorised"
AUTHORISATION_RULES = frozenset({RuleId.AUTHORISATION_EXPIRING, RuleId.MONITORING_UNAUTHORISED})


class MomentKind(StrEnum):
    # Order at one instant: a period starting where another ends is handled by END (renewed).
    WARN = "warn"
    END = "end"
    START = "start"


@dataclass(frozen=True, slots=True, order=True)
class Moment:
    at: datetime
    kind: MomentKind


def moments(spec: AuthorisationSpec, params: AuthorisationParams) -> list[Moment]:
    """The instants at which the authorisation rules change, in order."""
    out: list[Moment] = []
    starts = {p.start for p in spec.periods}
    ends = {p.end for p in spec.periods}
    warn = timedelta(seconds=params.warn_seconds)
    for period in spec.periods:
        if period.end not in starts:  # the end of a run: monitoring would stop here
            out.append(Moment(period.end - warn, MomentKind.WARN))
        # Every end: a warning given before a renewal was recorded (by a reload) is
        # answered "renewed" at the old end.
        out.append(Moment(period.end, MomentKind.END))
        if period.start not in ends:
            out.append(Moment(period.start, MomentKind.START))
    return sorted(out, key=lambda m: (m.at, list(MomentKind).index(m.kind)))


def _day(at: datetime, subject: SubjectSpec) -> str:
    return f"{at.astimezone(subject.timezone):%Y-%m-%d %H:%M}"


def _until(end: datetime, subject: SubjectSpec) -> str:
    """An end as an officer reads the decision: "the end of <last day>" for a midnight."""
    local = end.astimezone(subject.timezone)
    if local.time() == time(0):
        return f"the end of {local.date() - timedelta(days=1)}"
    return f"{local:%Y-%m-%d %H:%M}"


def _device(subject: SubjectSpec) -> str:
    return subject.devices[0].device_id


def _expiring(
    config: CoreConfig, conditions: SubjectConditions, subject: SubjectSpec,
    spec: AuthorisationSpec, at: datetime,
) -> list[Finding]:
    period = spec.covering(at)
    if period is None:
        return []
    end = spec.chain_end(period)
    if at >= end or conditions.active(subject.subject_id, RuleId.AUTHORISATION_EXPIRING):
        return []
    days = round((end - at).total_seconds() / 86400)
    return conditions.set(
        config, subject.subject_id, _device(subject), RuleId.AUTHORISATION_EXPIRING,
        EXPIRING_CAUSE, True, at,
        {"basis": period.basis, "reference": period.reference, "ends": end.isoformat()},
        f"Electronic monitoring of {subject.subject_id} is authorised until "
        f"{_until(end, subject)} ({days} days left): renew it (Art. 29) or plan its end",
    )


def _unauthorised(
    config: CoreConfig, conditions: SubjectConditions, subject: SubjectSpec,
    spec: AuthorisationSpec, at: datetime, why: str,
) -> list[Finding]:
    later = [p for p in spec.periods if p.start > at]
    evidence = {"next_period_start": later[0].start.isoformat() if later else None}
    return conditions.set(
        config, subject.subject_id, _device(subject), RuleId.MONITORING_UNAUTHORISED,
        UNAUTHORISED_CAUSE, True, at, evidence,
        f"{subject.subject_id}'s devices are monitored {why}: their alerts are held back; "
        "remove the devices or record a renewal",
    )


def at_moment(
    config: CoreConfig,
    conditions: SubjectConditions,
    subject: SubjectSpec,
    moment: Moment,
) -> list[Finding]:
    spec = subject.authorisation
    assert spec is not None
    sid = subject.subject_id
    if moment.kind is MomentKind.WARN:
        return _expiring(config, conditions, subject, spec, moment.at)
    if moment.kind is MomentKind.START:
        return conditions.set(
            config, sid, _device(subject), RuleId.MONITORING_UNAUTHORISED, UNAUTHORISED_CAUSE,
            False, moment.at, {},
            f"Electronic monitoring of {sid} is authorised again from {_day(moment.at, subject)}",
        )
    findings: list[Finding] = []
    renewal = spec.covering(moment.at)
    if renewal is not None:
        until = spec.chain_end(renewal)
        return conditions.set(
            config, sid, _device(subject), RuleId.AUTHORISATION_EXPIRING, EXPIRING_CAUSE,
            False, moment.at, {"renewed_until": until.isoformat()},
            f"Electronic monitoring of {sid} renewed until {_until(until, subject)}",
        )
    findings += conditions.set(
        config, sid, _device(subject), RuleId.AUTHORISATION_EXPIRING, EXPIRING_CAUSE, False,
        moment.at, {}, f"Authorised electronic monitoring of {sid} ended",
    )
    findings += _unauthorised(
        config, conditions, subject, spec, moment.at,
        f"past the end of their authorisation ({_until(moment.at, subject)})",
    )
    return findings


def on_first_seen(
    config: CoreConfig, conditions: SubjectConditions, subject: SubjectSpec, now: datetime,
) -> list[Finding]:
    """The subject's first message since start-up: a warning already due is given now."""
    spec = subject.authorisation
    if spec is None:
        return []
    return _expiring_if_due(config, conditions, subject, spec, now)


def _expiring_if_due(
    config: CoreConfig, conditions: SubjectConditions, subject: SubjectSpec,
    spec: AuthorisationSpec, now: datetime,
) -> list[Finding]:
    period = spec.covering(now)
    if period is None:
        return []
    warn = timedelta(seconds=config.rules.compliance.authorisation.warn_seconds)
    if now < spec.chain_end(period) - warn:
        return []
    return _expiring(config, conditions, subject, spec, now)


def on_observation_time(
    config: CoreConfig, conditions: SubjectConditions, subject: SubjectSpec, ts: datetime,
    now: datetime,
) -> list[Finding]:
    """An observation taken at `ts` arrived at `now`: taken and received outside every
    period, monitoring is unauthorised (late data from before a period that is in force now
    is only counted by the caller: the start of the period has already been judged)."""
    spec = subject.authorisation
    if spec is None or spec.covering(ts) is not None or spec.covering(now) is not None:
        return []
    if conditions.active(subject.subject_id, RuleId.MONITORING_UNAUTHORISED):
        return []
    ended = [p.end for p in spec.periods if p.end <= ts]
    later = [p.start for p in spec.periods if p.start > ts]
    if ended:
        why = f"past the end of their authorisation ({_until(max(ended), subject)})"
    elif later:
        why = f"before their authorisation begins ({_day(min(later), subject)})"
    else:
        why = "without any authorised period"
    return _unauthorised(config, conditions, subject, spec, ts, why)
