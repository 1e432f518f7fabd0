"""When each zone rule is in force: schedule windows, grace, and approved-leave suspensions.

Every function returns the in-force interval (start, end) that contains `at`, or None when
the rule is not in force then. Intervals are half-open and their bounds are event times, so
a rule raised "when the curfew began" is raised at the window's start whatever the moment a
tick noticed it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from geofence.config import (
    CoreConfig,
    ExclusionAssignment,
    InclusionAssignment,
    LeaveSpec,
    SubjectSpec,
)
from geofence.schedule import Schedule

Interval = tuple[datetime, datetime]
WindowFn = Callable[[datetime], Interval | None]

# Stand-ins for "for ever" that still allow arithmetic and comparison with aware datetimes.
FAR_PAST = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)
ALWAYS: Interval = (FAR_PAST, FAR_FUTURE)
# With no boundary found within the schedules' look-ahead (a long run of exception dates),
# wake up anyway after this long and look again.
RECHECK_AFTER = timedelta(days=7)


def leave_at(subject: SubjectSpec, at: datetime) -> LeaveSpec | None:
    """The approved leave in progress at `at` (start <= at < end), if any."""
    for leave in subject.leaves:
        if leave.start <= at < leave.end:
            return leave
    return None


def _suspended(subject: SubjectSpec, at: datetime) -> bool:
    return any(leave.start <= at < leave.exempt_until for leave in subject.leaves)


class ConfigLeaveCalendar:
    """Approved leave of the config in force, as the alert lifecycle asks for it
    (`alerts.suppression.LeaveCalendar`: its `leave_mutes` hold back notifications while a
    subject is on leave, return grace included). Reads the config at each call, so a reload
    that adds or cancels a leave takes effect at once."""

    def __init__(self, config_of: Callable[[], CoreConfig]) -> None:
        self._config_of = config_of

    def on_leave(self, subject_id: str, at: datetime) -> bool:
        subject = self._config_of().subjects.get(subject_id)
        return subject is not None and _suspended(subject, at)


def _clip_by_leaves(subject: SubjectSpec, at: datetime, window: Interval) -> Interval | None:
    """Cut the suspensions of approved leave out of a window; None if `at` is suspended."""
    if _suspended(subject, at):
        return None
    start, end = window
    for leave in subject.leaves:
        if leave.exempt_until <= at:
            start = max(start, leave.exempt_until)
        elif leave.start > at:
            end = min(end, leave.start)
    return start, end


def boundary_window(subject: SubjectSpec) -> WindowFn:
    """The permitted area is in force always, except during approved leave (and its return
    grace): then the leave's own rule watches the widened area."""

    def window(at: datetime) -> Interval | None:
        return _clip_by_leaves(subject, at, ALWAYS)

    return window


def scheduled_window(subject: SubjectSpec, schedule: Schedule, grace_seconds: float) -> WindowFn:
    """A scheduled inclusion (curfew at home, workplace in work hours): in force from each
    window's start plus the grace to its end, suspended during approved leave."""
    grace = timedelta(seconds=grace_seconds)

    def window(at: datetime) -> Interval | None:
        active = schedule.active_interval(at, subject.timezone)
        if active is None or at < active[0] + grace:
            return None
        return _clip_by_leaves(subject, at, (active[0] + grace, active[1]))

    return window


def curfew_window(subject: SubjectSpec, grace_seconds: float) -> WindowFn | None:
    if subject.curfew is None:
        return None
    return scheduled_window(subject, subject.curfew, grace_seconds)


def inclusion_window(subject: SubjectSpec, assignment: InclusionAssignment) -> WindowFn:
    return scheduled_window(subject, assignment.schedule, assignment.grace_seconds)


def exclusion_window(subject: SubjectSpec, assignment: ExclusionAssignment) -> WindowFn:
    """Exclusions stay in force during approved leave: a prohibition order has no holiday."""
    schedule = assignment.schedule

    def window(at: datetime) -> Interval | None:
        if schedule is None:
            return ALWAYS
        return schedule.active_interval(at, subject.timezone)

    return window


def leave_window(leave: LeaveSpec) -> WindowFn:
    def window(at: datetime) -> Interval | None:
        return (leave.start, leave.end) if leave.start <= at < leave.end else None

    return window


def next_boundary(subject: SubjectSpec, after: datetime, curfew_grace_seconds: float) -> datetime:
    """The first moment after `after` at which any time-driven zone rule of the subject may
    change (a window opening or closing, leave starting, ending or its grace running out).
    Without any time-driven rule: FAR_FUTURE; with rules but no boundary in the schedules'
    look-ahead: a week later, to look again."""
    if not subject.has_time_rules:
        return FAR_FUTURE
    candidates: list[datetime] = []
    if subject.curfew is not None:
        found = subject.curfew.next_boundary_after(
            after, subject.timezone, timedelta(seconds=curfew_grace_seconds)
        )
        if found is not None:
            candidates.append(found)
    for inclusion in subject.inclusions:
        found = inclusion.schedule.next_boundary_after(
            after, subject.timezone, timedelta(seconds=inclusion.grace_seconds)
        )
        if found is not None:
            candidates.append(found)
    for exclusion in subject.exclusions:
        if exclusion.schedule is not None:
            found = exclusion.schedule.next_boundary_after(after, subject.timezone)
            if found is not None:
                candidates.append(found)
    for leave in subject.leaves:
        candidates.extend(t for t in (leave.start, leave.end, leave.exempt_until) if t > after)
    return min(candidates, default=after + RECHECK_AFTER)
