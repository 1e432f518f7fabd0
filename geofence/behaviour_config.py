"""Compiled parameters of the issue-5 behavioural rules: frequent places and trajectory
anomaly (`geofence.habits`), gatherings (`geofence.gathering`) and protected persons'
mobile exclusion zones (`geofence.victims`).

Plain frozen data, built by `daemon.behavioursettings` from settings.yaml and subjects.yaml;
a bare `BehaviourParams()` switches every one of these rules off (code that builds a config
by hand opts in). Every default carries its reason; docs/rules.md repeats them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# ---------------------------------------------------------------------- frequent places
# - 4 weeks of history: long enough to hold a month's routine (a weekly visit shows four
#   times), short enough that a move of home is learnt within a month.
DEFAULT_HISTORY_DAYS = 28
# - Armed after 14 days with fixes: two weeks show both weekday and weekend routines; a new
#   subject's first days would make every place unusual.
DEFAULT_MIN_HISTORY_DAYS = 14
# - 150 m grid: a residential block; a home fix with 15-60 m indoor drift stays in one cell
#   or its neighbour, which the clustering joins.
DEFAULT_CELL_M = 150.0
# - A cell holding at least 1 % of the subject's time (about 7 hours over four weeks) is
#   part of a frequent place; passing through a street never adds up to that.
DEFAULT_MIN_CELL_SHARE = 0.01
# - At most 8 places: residence, workplace and a few usual areas (shop, family, clinic).
DEFAULT_MAX_PLACES = 8
# - Each fix stands for the time until the next one, at most 10 minutes: a gap in the data
#   is not time spent where the last fix was.
DEFAULT_MAX_DWELL_SECONDS = 600.0
# - One fix per 5 minutes is used for learning (the first of each 5-minute bucket): a month
#   of one fix a minute would cost five times more for the same places.
DEFAULT_SAMPLE_SECONDS = 300.0
# - Far means more than 1 km beyond the edge of every frequent place (after the fix's own
#   accuracy): a walk around the neighbourhood or a detour is not unusual.
DEFAULT_FAR_M = 1000.0
# - 3 hours far away in one local day: an afternoon somewhere new. An errand across town
#   takes less; a day trip or a night elsewhere takes more.
DEFAULT_FAR_SECONDS_PER_DAY = 3 * 3600.0
# - Fixes vaguer than 200 m say nothing about being far from a place 150 m across.
DEFAULT_HABIT_MAX_ACCURACY_M = 200.0
# - The places are learnt again daily at 20:00 UTC (04:00 in China, the quietest hour).
DEFAULT_LEARN_HOUR_UTC = 20

# ---------------------------------------------------------------------- gathering
# - 50 m: the same building entrance, table or car park; two people in one street block
#   60 m apart are not meeting.
DEFAULT_GATHERING_RADIUS_M = 50.0
# - 10 minutes together: passing each other in a street or on a bus stop takes less.
DEFAULT_GATHERING_SECONDS = 600.0
# - A position older than 5 minutes leaves the index: at one fix a minute, five missed
#   fixes; older positions would put people together who have left.
DEFAULT_GATHERING_STALE_SECONDS = 300.0
# - Fixes vaguer than 50 m cannot show two people within 50 m of each other.
DEFAULT_GATHERING_MAX_ACCURACY_M = 50.0

# ---------------------------------------------------------------------- protected persons
# - The protected person's phone position is used for 10 minutes: phones report every
#   1-5 minutes while moving and are throttled when still.
DEFAULT_VICTIM_STALE_SECONDS = 600.0
# - Fixes vaguer than 150 m (cell positions) are not used: they would put the subject near
#   anyone within a kilometre.
DEFAULT_VICTIM_MAX_ACCURACY_M = 150.0
# - 2 evaluations in a row confirm proximity (a subject's fix or the protected person's):
#   one stray fix never raises, and at one fix a minute the next confirms within a minute.
DEFAULT_VICTIM_CONFIRM = 2


@dataclass(frozen=True, slots=True)
class HabitParams:
    enabled: bool = False
    history_days: int = DEFAULT_HISTORY_DAYS
    min_history_days: int = DEFAULT_MIN_HISTORY_DAYS
    cell_m: float = DEFAULT_CELL_M
    min_cell_share: float = DEFAULT_MIN_CELL_SHARE
    max_places: int = DEFAULT_MAX_PLACES
    max_dwell_seconds: float = DEFAULT_MAX_DWELL_SECONDS
    sample_seconds: float = DEFAULT_SAMPLE_SECONDS
    far_m: float = DEFAULT_FAR_M
    far_seconds_per_day: float = DEFAULT_FAR_SECONDS_PER_DAY
    max_accuracy_m: float = DEFAULT_HABIT_MAX_ACCURACY_M
    learn_hour_utc: int = DEFAULT_LEARN_HOUR_UTC


@dataclass(frozen=True, slots=True)
class GatheringParams:
    radius_m: float = DEFAULT_GATHERING_RADIUS_M
    min_seconds: float = DEFAULT_GATHERING_SECONDS
    stale_seconds: float = DEFAULT_GATHERING_STALE_SECONDS
    max_accuracy_m: float = DEFAULT_GATHERING_MAX_ACCURACY_M
    any_subjects: bool = False  # any two subjects (rule `gathering`), not only co-offenders


@dataclass(frozen=True, slots=True)
class VictimParams:
    stale_seconds: float = DEFAULT_VICTIM_STALE_SECONDS
    max_accuracy_m: float = DEFAULT_VICTIM_MAX_ACCURACY_M
    confirm: int = DEFAULT_VICTIM_CONFIRM


@dataclass(frozen=True, slots=True)
class ProtectedLink:
    """A subject who must keep `radius_m` from a protected person, with a warning band of
    `warning_m` beyond it (0: none)."""

    protected_id: str
    subject_id: str
    radius_m: float
    warning_m: float = 0.0


@dataclass(frozen=True, slots=True)
class BehaviourParams:
    habits: HabitParams = HabitParams()
    gathering: GatheringParams = GatheringParams()
    victims: VictimParams = VictimParams()
    # Co-offender groups: group id -> its subject ids (a subject may be in several groups).
    co_offender_groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Protected persons: protected id -> the subjects kept away from them.
    protected: Mapping[str, tuple[ProtectedLink, ...]] = field(default_factory=dict)
    groups_of: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)
    links_of: Mapping[str, tuple[ProtectedLink, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        groups_of: dict[str, set[str]] = {}
        for group_id, members in self.co_offender_groups.items():
            for subject_id in members:
                groups_of.setdefault(subject_id, set()).add(group_id)
        object.__setattr__(
            self, "groups_of", {s: frozenset(g) for s, g in groups_of.items()}
        )
        links_of: dict[str, list[ProtectedLink]] = {}
        for links in self.protected.values():
            for link in links:
                links_of.setdefault(link.subject_id, []).append(link)
        object.__setattr__(self, "links_of", {s: tuple(v) for s, v in links_of.items()})

    @property
    def gathering_enabled(self) -> bool:
        return bool(self.co_offender_groups) or self.gathering.any_subjects

    def shared_groups(self, a: str, b: str) -> frozenset[str]:
        return self.groups_of.get(a, frozenset()) & self.groups_of.get(b, frozenset())
