"""Compiled parameters of the issue-5 (part A) rules: person-device separation, scheduled
check-ins, monitoring authorisation (Community Corrections Law Art. 29).

Plain immutable data, built by `daemon.compliancesettings` from the operator files; the rules
live in `geofence.separation`, `geofence.checkins` and `geofence.authorisation`, run by
`geofence.compliance`. Every default carries its reason (docs/rules.md repeats them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum

# ---------------------------------------------------------------------- separation (人机分离)
# - 200 m beyond both accuracy circles: a phone left in a flat while the person is in the
#   courtyard is not a separation; a phone left at home while the person is at work is. A
#   tag and a phone on one body agree within their accuracies (NIJ-1004: 10 m open sky).
DEFAULT_SEPARATION_DISTANCE_M = 200.0
# - 15 minutes apart: the wearable's silence threshold; shorter separations (the phone on a
#   desk while the person fetches lunch) are the daily life of everyone with a phone.
DEFAULT_SEPARATION_SECONDS = 15 * 60.0
# - Two fixes are compared only if taken within 2 minutes of each other: at one fix a minute
#   both devices have a fix that recent; older pairs say nothing about "now".
DEFAULT_SEPARATION_PAIR_SECONDS = 120.0
# - A fix vaguer than 100 m (a cell fix) can neither prove nor disprove a 200 m separation.
DEFAULT_SEPARATION_MAX_ACCURACY_M = 100.0

# ---------------------------------------------------------------------- check-ins (日常报告)
# - 30 minutes' grace after the due time: the app's face check may need a second try, and an
#   officer acts on a missed report the next working morning anyway.
DEFAULT_CHECKIN_GRACE_SECONDS = 30 * 60.0
# Check-ins remembered per subject: a week of several a day.
RECENT_CHECKINS = 64

# ---------------------------------------------------------------------- authorisation (Art. 29)
# - Warn 14 days before the authorised period ends: a renewal needs an assessment and a
#   county-level approval, which takes days (Art. 29).
DEFAULT_AUTHORISATION_WARN_DAYS = 14
# Art. 29: one period lasts at most three months.
MAX_AUTHORISATION_MONTHS = 3


@dataclass(frozen=True, slots=True)
class SeparationParams:
    distance_m: float = DEFAULT_SEPARATION_DISTANCE_M
    seconds: float = DEFAULT_SEPARATION_SECONDS
    pair_seconds: float = DEFAULT_SEPARATION_PAIR_SECONDS
    max_accuracy_m: float = DEFAULT_SEPARATION_MAX_ACCURACY_M
    silent_device: bool = True  # one device silent past its threshold while the other reports


@dataclass(frozen=True, slots=True)
class CheckinParams:
    # A check-in event without a verification result counts only if this is False.
    require_verification: bool = True


class AfterAuthorisation(StrEnum):
    """What happens to alerts outside every authorised period."""

    SUPPRESS = "suppress"  # rules evaluate (state stays true) but their findings are dropped
    CONTINUE = "continue"  # alerts go on (the officer is told by monitoring_unauthorised)


class UnauthorisedPings(StrEnum):
    """What happens to pings taken outside every authorised period (applied by the shell)."""

    STORE = "store"  # stored as usual and counted (emon_pings_outside_authorisation_total)
    DEADLETTER = "deadletter"  # not stored: counted and dead-lettered (outside_authorisation)


@dataclass(frozen=True, slots=True)
class AuthorisationParams:
    warn_seconds: float = DEFAULT_AUTHORISATION_WARN_DAYS * 86400.0
    alerts: AfterAuthorisation = AfterAuthorisation.SUPPRESS
    pings: UnauthorisedPings = UnauthorisedPings.STORE


@dataclass(frozen=True, slots=True)
class ComplianceParams:
    """None switches a rule family off (a bare `RuleParams()` built in code has none of
    them; the operator config always has separation and authorisation parameters)."""

    separation: SeparationParams | None = None
    checkin: CheckinParams = CheckinParams()
    authorisation: AuthorisationParams = AuthorisationParams()


@dataclass(frozen=True, slots=True)
class CheckinRequirement:
    """Report between `opens` and `due` (local times, same day) on the given weekdays
    (Monday = 0); missed when no check-in arrived by `due + grace`."""

    opens: time
    due: time
    weekdays: frozenset[int]
    grace_seconds: float = DEFAULT_CHECKIN_GRACE_SECONDS

    @property
    def grace(self) -> timedelta:
        return timedelta(seconds=self.grace_seconds)


@dataclass(frozen=True, slots=True)
class AuthorisationPeriod:
    """One authorised monitoring period: [start, end) as instants (the loader turns the
    decision's dates into the subject's local midnights)."""

    start: datetime
    end: datetime
    basis: str
    reference: str = ""

    def __post_init__(self) -> None:
        # Held in UTC: every observation asks `covering`, and comparing datetimes of two
        # different zones costs a zone lookup each time.
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))


@dataclass(frozen=True, slots=True)
class AuthorisationSpec:
    periods: tuple[AuthorisationPeriod, ...]  # sorted, not overlapping

    def covering(self, at: datetime) -> AuthorisationPeriod | None:
        for period in self.periods:
            if period.start <= at < period.end:
                return period
        return None

    def chain_end(self, period: AuthorisationPeriod) -> datetime:
        """Where monitoring stops if nothing more is renewed: the end of the run of
        contiguous periods that `period` belongs to."""
        end = period.end
        for later in self.periods:
            if later.start == end:
                end = later.end
        return end
