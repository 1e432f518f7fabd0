"""Scheduled check-ins (日常报告) and their face verification. Pure.

A subject reports on a schedule (`CheckinRequirement`: between `opens` and `due`, local
time, on given weekdays). At `due + grace` (the *deadline*, on the arrival clock like
liveness) the rule asks: did a verified check-in taken in the window arrive by then? If
not, `checkin_missed` is raised at the deadline; the next verified check-in clears it (the
late report is noted on the alert). A check-in whose face verification failed is its own
alert, `checkin_verification_failed`, raised at the event's time and cleared by the next
verified check-in: someone other than the subject may be holding the phone.

Only deadlines of windows that opened after the subject was first heard from (since this
engine started) are judged: a check-in made while emon was not running is not known to be
missing. Approved leave does not exempt a check-in: the app works anywhere, and reporting
while away is exactly what leave conditions ask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from alerts.model import Finding, RuleId
from geofence.compliancespec import RECENT_CHECKINS, CheckinParams, CheckinRequirement
from geofence.conditions import SubjectConditions
from geofence.config import CoreConfig, SubjectSpec
from geofence.history import RecentItems
from geofence.observation import DeviceEvent, DeviceEventType, DeviceKind

VERIFICATION_ATTRIBUTE = "verification"  # wire contract: "verification": "passed" | "failed"
VERIFICATION_PASSED = "passed"
VERIFICATION_FAILED = "failed"
# A weekly requirement repeats within 7 days; one more day covers the day in progress.
LOOKAHEAD_DAYS = 8
MISSED_CAUSE = "missed"
FAILED_CAUSE = "failed"


@dataclass(frozen=True, slots=True)
class Deadline:
    at: datetime  # due + grace
    opens: datetime
    due: datetime


@dataclass(slots=True)
class CheckinState:
    # Verified check-ins: (event time, arrival), newest last.
    verified: RecentItems[tuple[datetime, datetime]] = field(
        default_factory=lambda: RecentItems(RECENT_CHECKINS)
    )
    newest_verified_ts: datetime | None = None


def next_deadline(subject: SubjectSpec, after: datetime, not_before: datetime) -> Deadline | None:
    """The earliest deadline later than `after` whose window opens at or after
    `not_before`, over all of the subject's requirements."""
    best: Deadline | None = None
    first_day = after.astimezone(subject.timezone).date() - timedelta(days=1)
    for offset in range(LOOKAHEAD_DAYS + 1):
        day = first_day + timedelta(days=offset)
        for requirement in subject.checkins:
            deadline = _deadline_on(requirement, day, subject)
            if deadline is None or deadline.at <= after or deadline.opens < not_before:
                continue
            if best is None or deadline.at < best.at:
                best = deadline
        if best is not None and best.at.astimezone(subject.timezone).date() < day:
            break
    return best


def _deadline_on(
    requirement: CheckinRequirement, day: date, subject: SubjectSpec
) -> Deadline | None:
    if day.weekday() not in requirement.weekdays:
        return None
    # In UTC, like the arrival times they are compared with (cheaper than across zones).
    opens = datetime.combine(day, requirement.opens, tzinfo=subject.timezone).astimezone(UTC)
    due = datetime.combine(day, requirement.due, tzinfo=subject.timezone).astimezone(UTC)
    return Deadline(due + requirement.grace, opens, due)


def _reporting_device(subject: SubjectSpec) -> str:
    phones = [d.device_id for d in subject.devices if d.kind is DeviceKind.PHONE]
    return phones[0] if phones else subject.devices[0].device_id


def judge_deadline(
    config: CoreConfig,
    conditions: SubjectConditions,
    subject: SubjectSpec,
    state: CheckinState,
    deadline: Deadline,
) -> list[Finding]:
    for ts, arrival in state.verified:
        if deadline.opens <= ts <= deadline.at and arrival <= deadline.at:
            return []
    local_due = deadline.due.astimezone(subject.timezone)
    opens = deadline.opens.astimezone(subject.timezone)
    return conditions.set(
        config, subject.subject_id, _reporting_device(subject), RuleId.CHECKIN_MISSED,
        MISSED_CAUSE, True, deadline.at,
        {"window_opens": deadline.opens.isoformat(), "due": deadline.due.isoformat(),
         "deadline": deadline.at.isoformat()},
        f"{subject.subject_id} did not check in between {opens:%H:%M} and {local_due:%H:%M} "
        f"on {local_due:%a %d %b} (grace until {deadline.at.astimezone(subject.timezone):%H:%M})",
    )


def on_event(
    config: CoreConfig,
    params: CheckinParams,
    conditions: SubjectConditions,
    subject: SubjectSpec,
    state: CheckinState,
    event: DeviceEvent,
    now: datetime,
) -> list[Finding]:
    """A check-in event (any other event is not for this rule)."""
    if event.type is not DeviceEventType.CHECKIN:
        return []
    result = event.attributes.get(VERIFICATION_ATTRIBUTE)
    local_ts = event.ts.astimezone(subject.timezone)
    evidence = {"event": event.to_wire(), "received_at": now.isoformat()}
    if result == VERIFICATION_FAILED:
        newest = state.newest_verified_ts
        findings = conditions.set(
            config, subject.subject_id, event.device_id, RuleId.CHECKIN_VERIFICATION_FAILED,
            FAILED_CAUSE, True, event.ts, evidence,
            f"Face verification failed when {subject.subject_id} checked in on "
            f"{event.device_id} at {local_ts:%H:%M}",
        )
        if findings and newest is not None and newest > event.ts:
            # A verified check-in taken later arrived first: the failure is already over.
            findings += conditions.set(
                config, subject.subject_id, event.device_id,
                RuleId.CHECKIN_VERIFICATION_FAILED, FAILED_CAUSE, False, newest, evidence,
                f"{subject.subject_id} checked in with face verification passed at "
                f"{newest.astimezone(subject.timezone):%H:%M}",
            )
        return findings
    if result != VERIFICATION_PASSED and params.require_verification:
        return []  # the caller counts it (checkin_unverified)
    state.verified.append((event.ts, now))
    if state.newest_verified_ts is None or event.ts > state.newest_verified_ts:
        state.newest_verified_ts = event.ts
    cleared: list[Finding] = []
    for rule, cause in ((RuleId.CHECKIN_MISSED, MISSED_CAUSE),
                        (RuleId.CHECKIN_VERIFICATION_FAILED, FAILED_CAUSE)):
        since = conditions.since(subject.subject_id, rule)
        if since is None or (rule is RuleId.CHECKIN_VERIFICATION_FAILED and event.ts < since):
            continue  # an older success does not answer a later failure
        late = " (late)" if rule is RuleId.CHECKIN_MISSED else ""
        cleared += conditions.set(
            config, subject.subject_id, event.device_id, rule, cause, False, event.ts, evidence,
            f"{subject.subject_id} checked in on {event.device_id} at {local_ts:%H:%M}{late}",
        )
    return cleared
