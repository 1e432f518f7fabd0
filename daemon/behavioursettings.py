"""Operator settings of the issue-5 behavioural rules: settings.yaml `behaviour:` (habits,
gathering, protected-person tunables) and subjects.yaml `co_offender_groups:` and
`protected_persons:`; their cross-file checks and their compilation into the core's
`BehaviourParams`. Defaults and their reasons are in `geofence.behaviour_config`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field, model_validator

from daemon.strictmodel import StrictModel
from geofence.behaviour_config import (
    DEFAULT_CELL_M,
    DEFAULT_FAR_M,
    DEFAULT_FAR_SECONDS_PER_DAY,
    DEFAULT_GATHERING_MAX_ACCURACY_M,
    DEFAULT_GATHERING_RADIUS_M,
    DEFAULT_GATHERING_SECONDS,
    DEFAULT_GATHERING_STALE_SECONDS,
    DEFAULT_HABIT_MAX_ACCURACY_M,
    DEFAULT_HISTORY_DAYS,
    DEFAULT_LEARN_HOUR_UTC,
    DEFAULT_MAX_DWELL_SECONDS,
    DEFAULT_MAX_PLACES,
    DEFAULT_MIN_CELL_SHARE,
    DEFAULT_MIN_HISTORY_DAYS,
    DEFAULT_SAMPLE_SECONDS,
    DEFAULT_VICTIM_CONFIRM,
    DEFAULT_VICTIM_MAX_ACCURACY_M,
    DEFAULT_VICTIM_STALE_SECONDS,
    BehaviourParams,
    GatheringParams,
    HabitParams,
    ProtectedLink,
    VictimParams,
)

SECONDS_PER_MINUTE = 60.0
SECONDS_PER_HOUR = 3600.0
DAYS_PER_WEEK = 7
PERCENT = 100.0
# A gathering of more people than this in one configured group is a register, not a case.
MAX_GROUP_SUBJECTS = 50
MAX_LINKED_SUBJECTS = 20

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]




# ---------------------------------------------------------------------- settings.yaml


class HabitSettings(StrictModel):
    enabled: bool = Field(False, title="Learn frequent places and warn on days far from them")
    history_weeks: int = Field(
        DEFAULT_HISTORY_DAYS // DAYS_PER_WEEK, ge=1, le=12,
        title="Weeks of stored pings the places are learnt from",
    )
    min_history_days: int = Field(
        DEFAULT_MIN_HISTORY_DAYS, ge=1, le=84,
        title="Days with fixes needed before the rule is armed for a subject",
    )
    cell_m: float = Field(DEFAULT_CELL_M, ge=25, le=1000, title="Grid cell of the learner, metres")
    min_cell_share_pct: float = Field(
        DEFAULT_MIN_CELL_SHARE * PERCENT, ge=0.1, le=20,
        title="Share of the subject's time a cell needs to be part of a place, percent",
    )
    max_places: int = Field(DEFAULT_MAX_PLACES, ge=1, le=32, title="Most places kept per subject")
    far_m: float = Field(
        DEFAULT_FAR_M, ge=100, le=50_000,
        title="Beyond this many metres from every place's edge a fix is far",
    )
    far_hours_per_day: float = Field(
        DEFAULT_FAR_SECONDS_PER_DAY / SECONDS_PER_HOUR, ge=0.25, le=24,
        title="Hours far away in one local day that raise trajectory_anomaly",
    )
    max_accuracy_m: float = Field(
        DEFAULT_HABIT_MAX_ACCURACY_M, ge=5, le=5000,
        title="Fixes less precise than this are neither learnt nor counted",
    )
    learn_hour_utc: int = Field(
        DEFAULT_LEARN_HOUR_UTC, ge=0, le=23, title="Hour (UTC) at which places are relearnt daily"
    )

    @model_validator(mode="after")
    def _history_holds_minimum(self) -> HabitSettings:
        if self.min_history_days > self.history_weeks * DAYS_PER_WEEK:
            raise ValueError(
                f"min_history_days {self.min_history_days} exceeds the "
                f"{self.history_weeks * DAYS_PER_WEEK} days of history_weeks"
            )
        return self


class GatheringSettings(StrictModel):
    radius_m: float = Field(
        DEFAULT_GATHERING_RADIUS_M, ge=5, le=1000, title="Together within this many metres"
    )
    minutes: float = Field(
        DEFAULT_GATHERING_SECONDS / SECONDS_PER_MINUTE, ge=1, le=240,
        title="Minutes together before a gathering is raised",
    )
    stale_minutes: float = Field(
        DEFAULT_GATHERING_STALE_SECONDS / SECONDS_PER_MINUTE, ge=1, le=60,
        title="A position older than this no longer places the subject",
    )
    max_accuracy_m: float = Field(
        DEFAULT_GATHERING_MAX_ACCURACY_M, ge=5, le=1000,
        title="Fixes less precise than this cannot place two subjects together",
    )
    any_subjects: bool = Field(
        False, title="Also any two subjects, not only co-offender groups (rule gathering)"
    )

    @model_validator(mode="after")
    def _stale_within_meeting(self) -> GatheringSettings:
        if self.stale_minutes > self.minutes:
            raise ValueError(
                "stale_minutes must not exceed minutes: a position older than the meeting "
                "itself would keep two people together after they left"
            )
        return self


class VictimSettings(StrictModel):
    stale_minutes: float = Field(
        DEFAULT_VICTIM_STALE_SECONDS / SECONDS_PER_MINUTE, ge=1, le=120,
        title="A protected person's position is used for this many minutes",
    )
    max_accuracy_m: float = Field(
        DEFAULT_VICTIM_MAX_ACCURACY_M, ge=5, le=2000,
        title="Positions less precise than this are not used",
    )
    confirm: int = Field(
        DEFAULT_VICTIM_CONFIRM, ge=1, le=10, title="Judgements in a row that confirm a change"
    )


class BehaviourSettings(StrictModel):
    habits: HabitSettings = Field(HabitSettings(), title="Frequent places, trajectory anomaly")
    gathering: GatheringSettings = Field(GatheringSettings(), title="Gatherings (同案犯聚集)")
    victims: VictimSettings = Field(VictimSettings(), title="Protected persons' mobile zones")


# ---------------------------------------------------------------------- subjects.yaml


class CoOffenderGroupModel(StrictModel):
    id: Identifier = Field(title="Group id (e.g. the case number, no names)")
    subjects: list[Identifier] = Field(
        min_length=2, max_length=MAX_GROUP_SUBJECTS, title="Subject ids of the co-offenders"
    )


class ProtectedLinkModel(StrictModel):
    subject: Identifier = Field(title="Subject id who must keep away")
    radius_m: float = Field(ge=10, le=20_000, title="Distance the subject must keep, metres")
    warning_m: float = Field(
        0.0, ge=0, le=20_000, title="Warning band beyond radius_m, metres (0: none)"
    )


class ProtectedPersonModel(StrictModel):
    id: Identifier = Field(title="Protected person id (topic emon/v1/protected/<id>/location)")
    subjects: list[ProtectedLinkModel] = Field(
        min_length=1, max_length=MAX_LINKED_SUBJECTS, title="Subjects kept away from them"
    )


Problem = tuple[str, str, str]  # (key, value, reason), in subjects.yaml


def check_behaviour(
    groups: Iterable[CoOffenderGroupModel],
    protected: Iterable[ProtectedPersonModel],
    subject_ids: set[str],
) -> list[Problem]:
    """Unique ids; every subject defined, and listed once per group or protected person."""
    problems: list[Problem] = []
    seen_groups: set[str] = set()
    for index, group in enumerate(groups):
        where = f"co_offender_groups.{index}"
        if group.id in seen_groups:
            problems.append((f"{where}.id", group.id, "duplicate group id"))
        seen_groups.add(group.id)
        members: set[str] = set()
        for s_index, subject in enumerate(group.subjects):
            if subject not in subject_ids:
                problems.append((f"{where}.subjects.{s_index}", subject, "subject not defined"))
            if subject in members:
                problems.append((f"{where}.subjects.{s_index}", subject, "listed twice"))
            members.add(subject)
    seen_protected: set[str] = set()
    for index, person in enumerate(protected):
        where = f"protected_persons.{index}"
        if person.id in seen_protected:
            problems.append((f"{where}.id", person.id, "duplicate protected person id"))
        if person.id in subject_ids:
            problems.append((f"{where}.id", person.id, "id already used by a subject"))
        seen_protected.add(person.id)
        linked: set[str] = set()
        for l_index, link in enumerate(person.subjects):
            key = f"{where}.subjects.{l_index}.subject"
            if link.subject not in subject_ids:
                problems.append((key, link.subject, "subject not defined"))
            if link.subject in linked:
                problems.append((key, link.subject, "listed twice"))
            linked.add(link.subject)
    return problems


def compile_behaviour(
    settings: BehaviourSettings,
    groups: Iterable[CoOffenderGroupModel],
    protected: Iterable[ProtectedPersonModel],
) -> BehaviourParams:
    habits, gathering, victims = settings.habits, settings.gathering, settings.victims
    return BehaviourParams(
        habits=HabitParams(
            enabled=habits.enabled,
            history_days=habits.history_weeks * DAYS_PER_WEEK,
            min_history_days=habits.min_history_days,
            cell_m=habits.cell_m,
            min_cell_share=habits.min_cell_share_pct / PERCENT,
            max_places=habits.max_places,
            max_dwell_seconds=DEFAULT_MAX_DWELL_SECONDS,
            sample_seconds=DEFAULT_SAMPLE_SECONDS,
            far_m=habits.far_m,
            far_seconds_per_day=habits.far_hours_per_day * SECONDS_PER_HOUR,
            max_accuracy_m=habits.max_accuracy_m,
            learn_hour_utc=habits.learn_hour_utc,
        ),
        gathering=GatheringParams(
            radius_m=gathering.radius_m,
            min_seconds=gathering.minutes * SECONDS_PER_MINUTE,
            stale_seconds=gathering.stale_minutes * SECONDS_PER_MINUTE,
            max_accuracy_m=gathering.max_accuracy_m,
            any_subjects=gathering.any_subjects,
        ),
        victims=VictimParams(
            stale_seconds=victims.stale_minutes * SECONDS_PER_MINUTE,
            max_accuracy_m=victims.max_accuracy_m,
            confirm=victims.confirm,
        ),
        co_offender_groups={g.id: frozenset(g.subjects) for g in groups},
        protected={
            p.id: tuple(
                ProtectedLink(p.id, link.subject, link.radius_m, link.warning_m)
                for link in p.subjects
            )
            for p in protected
        },
    )
