"""Operator settings of the issue-5 (part A) rules: pydantic models, checks and compilation.

- settings.yaml `rules.separation`, `rules.checkin`, `rules.authorisation`: parameters.
- subjects.yaml, per subject, `checkins` (日常报告 schedule) and `authorisation` (the legal
  basis and periods of electronic monitoring, Community Corrections Law Art. 29).

Months are counted as the Civil Code counts periods (arts. 201-203): a period that starts
on a day ends at the end of the day with the same number three months later, or on the last
day of that month if it has no such day (2026-11-30 + 3 months = 2027-02-28). So a period
given as `start: 2026-11-20` may end at the latest on `end: 2027-02-20` (inclusive). A
renewal starts the day after the previous period's last day.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pydantic import Field, model_validator

from daemon.strictmodel import StrictModel
from geofence.compliancespec import (
    DEFAULT_AUTHORISATION_WARN_DAYS,
    DEFAULT_CHECKIN_GRACE_SECONDS,
    DEFAULT_SEPARATION_DISTANCE_M,
    DEFAULT_SEPARATION_MAX_ACCURACY_M,
    DEFAULT_SEPARATION_PAIR_SECONDS,
    DEFAULT_SEPARATION_SECONDS,
    MAX_AUTHORISATION_MONTHS,
    AfterAuthorisation,
    AuthorisationParams,
    AuthorisationPeriod,
    AuthorisationSpec,
    CheckinParams,
    CheckinRequirement,
    ComplianceParams,
    SeparationParams,
    UnauthorisedPings,
)

SECONDS_PER_MINUTE = 60.0
SECONDS_PER_DAY = 86400.0
ONE_DAY = timedelta(days=1)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")





# ---------------------------------------------------------------------- settings.yaml rules


class SeparationSettings(StrictModel):
    enabled: bool = Field(True, title="Judge person-device separation (subjects with a tag "
                                      "and a phone)")
    distance_m: float = Field(
        DEFAULT_SEPARATION_DISTANCE_M, ge=20, le=5000,
        title="Metres apart, beyond both accuracy radii, that count as separated",
    )
    minutes: float = Field(
        DEFAULT_SEPARATION_SECONDS / SECONDS_PER_MINUTE, ge=0, le=240,
        title="Minutes the two must stay apart before the alert",
    )
    pair_seconds: float = Field(
        DEFAULT_SEPARATION_PAIR_SECONDS, ge=10, le=900,
        title="Two fixes are compared only if taken at most this many seconds apart",
    )
    max_accuracy_m: float = Field(
        DEFAULT_SEPARATION_MAX_ACCURACY_M, gt=0, le=5000,
        title="Fixes vaguer than this prove nothing about separation",
    )
    silent_device: bool = Field(
        True, title="Also alert when one device is silent past its threshold while the other "
                    "reports",
    )


class CheckinSettings(StrictModel):
    grace_minutes: float = Field(
        DEFAULT_CHECKIN_GRACE_SECONDS / SECONDS_PER_MINUTE, ge=0, le=720,
        title="Minutes after the due time before a check-in counts as missed",
    )
    require_verification: bool = Field(
        True, title="Only check-ins with a passed face verification count",
    )


class AuthorisationSettings(StrictModel):
    warn_days: int = Field(
        DEFAULT_AUTHORISATION_WARN_DAYS, ge=1, le=60,
        title="Days before an authorised period ends that the officer is warned",
    )
    alerts: AfterAuthorisation = Field(
        AfterAuthorisation.SUPPRESS,
        title="Outside every authorised period: suppress the subject's alerts, or continue",
    )
    pings: UnauthorisedPings = Field(
        UnauthorisedPings.STORE,
        title="Pings taken outside every authorised period: store (counted) or deadletter",
    )


def compile_compliance(
    separation: SeparationSettings, checkin: CheckinSettings,
    authorisation: AuthorisationSettings,
) -> ComplianceParams:
    return ComplianceParams(
        separation=SeparationParams(
            distance_m=separation.distance_m,
            seconds=separation.minutes * SECONDS_PER_MINUTE,
            pair_seconds=separation.pair_seconds,
            max_accuracy_m=separation.max_accuracy_m,
            silent_device=separation.silent_device,
        ) if separation.enabled else None,
        checkin=CheckinParams(require_verification=checkin.require_verification),
        authorisation=AuthorisationParams(
            warn_seconds=authorisation.warn_days * SECONDS_PER_DAY,
            alerts=authorisation.alerts,
            pings=authorisation.pings,
        ),
    )


# ---------------------------------------------------------------------- subjects.yaml


def _parse_local(value: str) -> time:
    try:
        parsed = time.fromisoformat(value)
    except ValueError:
        raise ValueError(f'a local time "HH:MM", got {value!r}') from None
    if parsed.tzinfo is not None:
        raise ValueError("a local time without offset (check-ins are in the subject's zone)")
    return parsed


class CheckinModel(StrictModel):
    opens: str = Field("00:00", pattern=r"^\d{1,2}:\d{2}$",
                       title='Local time "HH:MM" from which a check-in counts')
    due: str = Field(pattern=r"^\d{1,2}:\d{2}$", title='Local time "HH:MM" it is due by')
    days: list[Weekday] = Field(
        default_factory=lambda: list(WEEKDAYS), min_length=1, max_length=7,
        title="Weekdays it is due on (all: daily)",
    )
    grace_minutes: float | None = Field(
        None, ge=0, le=720, title="Minutes of grace (absent: settings' rules.checkin)"
    )

    @model_validator(mode="after")
    def _window(self) -> CheckinModel:
        opens, due = _parse_local(self.opens), _parse_local(self.due)
        if opens >= due:
            raise ValueError(f"opens {self.opens} must be before due {self.due} (same day)")
        if len(set(self.days)) != len(self.days):
            raise ValueError("a weekday is listed twice")
        return self


class AuthorisationPeriodModel(StrictModel):
    start: date = Field(title="First day of the period (local date)")
    end: date = Field(title="Last day of the period (local date, inclusive)")
    basis: str = Field(
        min_length=1, max_length=200,
        title="Legal basis under Art. 29 (e.g. left the county without approval)",
    )
    reference: str = Field(
        "", max_length=64, title="Approval or renewal decision number (no personal details)"
    )

    @model_validator(mode="after")
    def _at_most_three_months(self) -> AuthorisationPeriodModel:
        if self.end < self.start:
            raise ValueError("end must not be before start")
        latest = add_months(self.start, MAX_AUTHORISATION_MONTHS)
        if self.end > latest:
            raise ValueError(
                f"a period lasts at most {MAX_AUTHORISATION_MONTHS} months (Art. 29): "
                f"starting {self.start} it ends on {latest} at the latest; renew it instead"
            )
        return self


class AuthorisationModel(StrictModel):
    periods: list[AuthorisationPeriodModel] = Field(
        min_length=1, max_length=200,
        title="Authorised periods, the first one and each renewal, in order",
    )


def add_months(day: date, months: int) -> date:
    """`day` plus `months` calendar months; the month's last day if it has no such day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


# (key relative to the subject, value, reason, severity)
ComplianceProblem = tuple[str, str, str, Literal["error", "warning"]]


def check_authorisation(model: AuthorisationModel) -> list[ComplianceProblem]:
    """Periods in order, not overlapping; a gap between two is reported as a warning
    (monitoring is not authorised then, which may be meant)."""
    problems: list[ComplianceProblem] = []
    periods: Sequence[AuthorisationPeriodModel] = model.periods
    for index in range(1, len(periods)):
        previous, current = periods[index - 1], periods[index]
        key = f"authorisation.periods.{index}.start"
        if current.start <= previous.end:
            problems.append((key, str(current.start),
                             f"overlaps period {index - 1} (ending {previous.end}); a renewal "
                             f"starts the day after, {previous.end + ONE_DAY}", "error"))
        elif current.start > previous.end + ONE_DAY:
            problems.append((key, str(current.start),
                             f"gap after period {index - 1}: monitoring is not authorised from "
                             f"{previous.end + ONE_DAY} to {current.start - ONE_DAY}",
                             "warning"))
    return problems


def compile_checkins(
    models: Sequence[CheckinModel], default_grace_minutes: float
) -> tuple[CheckinRequirement, ...]:
    return tuple(
        CheckinRequirement(
            opens=_parse_local(m.opens),
            due=_parse_local(m.due),
            weekdays=frozenset(WEEKDAYS.index(d) for d in m.days),
            grace_seconds=(
                m.grace_minutes if m.grace_minutes is not None else default_grace_minutes
            ) * SECONDS_PER_MINUTE,
        )
        for m in models
    )


def compile_authorisation(
    model: AuthorisationModel | None, timezone: ZoneInfo
) -> AuthorisationSpec | None:
    """Dates become the subject's local midnights: [start 00:00, day after end 00:00)."""
    if model is None:
        return None

    def midnight(day: date) -> datetime:
        return datetime.combine(day, time(0), tzinfo=timezone)

    return AuthorisationSpec(tuple(
        AuthorisationPeriod(midnight(p.start), midnight(p.end + ONE_DAY), p.basis, p.reference)
        for p in sorted(model.periods, key=lambda p: p.start)
    ))
