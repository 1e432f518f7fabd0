"""The compiled, immutable configuration the pure core evaluates against.

The daemon loads and validates operator files (`daemon.configfiles`) and compiles them into
these plain objects; the core never reads a file. A reload builds a new `CoreConfig` beside
the old one and the shell swaps one reference, so no ping sees a half-loaded config.

Every default below carries its reason; docs/rules.md repeats them for operators.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from alerts.model import DEFAULT_TIERS, RuleId, Tier
from alerts.policy import AlertingConfig
from geofence.behaviour_config import BehaviourParams
from geofence.observation import DeviceKind
from geofence.schedule import Schedule
from geofence.zones import LocalProjection, Zone, ZoneIndex, ZoneKind

# ---------------------------------------------------------------------- zone rules
# - 20 m margin: NIJ-1004 asks 10 m accuracy 90 % of the time in open sky; twice that keeps
#   a fence edge from flapping on ordinary jitter.
DEFAULT_MARGIN_M = 20.0
# - 2 fixes or 60 s dwell: one stray fix never changes state; at one fix a minute a real
#   violation is confirmed by the next fix.
DEFAULT_DWELL_FIXES = 2
DEFAULT_DWELL_SECONDS = 60.0
# - 100 m: a fix less precise than this cannot place someone inside a small exclusion zone
#   (a school is ~100 m across); it can still prove they are outside an inclusion zone.
DEFAULT_MAX_ACCURACY_M = 100.0
# - 70 m/s (~250 km/h): faster than any road journey; such jumps are GNSS outliers.
DEFAULT_MAX_SPEED_MPS = 70.0
# - After 3 rejected fixes in a row that agree with each other, the last accepted fix was
#   probably the outlier: accept again rather than ignore the device for ever.
DEFAULT_MAX_CONSECUTIVE_JUMP_REJECTIONS = 3
# - Approach warning: 3 fixes or 120 s in the band. Walking or cycling past a school along
#   its street crosses a 100 m band in well under two minutes; lingering there does not.
DEFAULT_APPROACH_DWELL_FIXES = 3
DEFAULT_APPROACH_DWELL_SECONDS = 120.0
# - Segment crossing: the straight line between two fixes must run at least 50 m through
#   the zone. A line that only cuts a corner from the streets around a zone runs a few tens
#   of metres through it; a real passage through a school-sized zone (>= 90 m) runs more.
DEFAULT_CROSSING_MIN_CHORD_M = 50.0
# - ... and the two fixes must be at most 10 minutes apart: over a longer gap the straight
#   line says little about the path taken.
DEFAULT_CROSSING_MAX_GAP_SECONDS = 600.0
# - Late fixes (stored and forwarded) up to 6 hours older than the newest evaluated fix are
#   audited for violations the live stream missed; older ones are stored only.
DEFAULT_LATE_HORIZON_SECONDS = 6 * 3600.0
# - Curfew starts without grace: someone outside when it begins is in breach (issue 4 item 4).
DEFAULT_CURFEW_GRACE_SECONDS = 0.0

# ---------------------------------------------------------------------- device rules
# Silence (脱管): tags upload every 1-5 min (DOMAIN.md §3), so 15 min is three missed uploads
# at the slowest rate; phones are throttled by their OS when still and get 60 min.
DEFAULT_SILENCE_SECONDS_WEARABLE = 15 * 60.0
DEFAULT_SILENCE_SECONDS_PHONE = 60 * 60.0
# GNSS lost: vendors alert after 10 min of motion without a fix; without a motion sensor we
# wait 20 min, and not while the last fixes place the person at home or at work (indoors
# GNSS is lost there every day). Phones report fused positions, so the rule is off for them.
DEFAULT_GNSS_LOST_SECONDS_WEARABLE = 20 * 60.0
# Battery: a tag at 20 % has several hours left (vendors' own low-battery level); at 10 %
# it may die before the officer can reach the person. Phones warn their users at 15 %/5 %.
DEFAULT_BATTERY_LOW_PCT_WEARABLE = 20.0
DEFAULT_BATTERY_CRITICAL_PCT_WEARABLE = 10.0
DEFAULT_BATTERY_LOW_PCT_PHONE = 15.0
DEFAULT_BATTERY_CRITICAL_PCT_PHONE = 5.0
# - A battery alert clears 5 points above its threshold (readings jitter by 1-2 points) or
#   when the charger is connected; two readings in a row confirm a level from fixes.
DEFAULT_BATTERY_HYSTERESIS_PCT = 5.0
DEFAULT_BATTERY_DWELL_READINGS = 2


@dataclass(frozen=True, slots=True)
class ZoneRuleParams:
    margin_m: float = DEFAULT_MARGIN_M
    dwell_fixes: int = DEFAULT_DWELL_FIXES
    dwell_seconds: float = DEFAULT_DWELL_SECONDS
    max_accuracy_m: float = DEFAULT_MAX_ACCURACY_M


@dataclass(frozen=True, slots=True)
class CrossingParams:
    min_chord_m: float = DEFAULT_CROSSING_MIN_CHORD_M
    max_gap_seconds: float = DEFAULT_CROSSING_MAX_GAP_SECONDS


@dataclass(frozen=True, slots=True)
class DeviceThresholds:
    """Per device kind (and per subject, when overridden). None switches a rule off."""

    silence_seconds: float | None = None
    gnss_lost_seconds: float | None = None
    battery_low_pct: float | None = None
    battery_critical_pct: float | None = None


# What an operator gets unless settings.yaml says otherwise (daemon.configfiles applies it).
# A bare `RuleParams()` has no device thresholds: code that builds a config by hand opts in.
DEFAULT_DEVICE_THRESHOLDS: Mapping[DeviceKind, DeviceThresholds] = {
    DeviceKind.WEARABLE: DeviceThresholds(
        silence_seconds=DEFAULT_SILENCE_SECONDS_WEARABLE,
        gnss_lost_seconds=DEFAULT_GNSS_LOST_SECONDS_WEARABLE,
        battery_low_pct=DEFAULT_BATTERY_LOW_PCT_WEARABLE,
        battery_critical_pct=DEFAULT_BATTERY_CRITICAL_PCT_WEARABLE,
    ),
    DeviceKind.PHONE: DeviceThresholds(
        silence_seconds=DEFAULT_SILENCE_SECONDS_PHONE,
        gnss_lost_seconds=None,
        battery_low_pct=DEFAULT_BATTERY_LOW_PCT_PHONE,
        battery_critical_pct=DEFAULT_BATTERY_CRITICAL_PCT_PHONE,
    ),
}

# Rules whose zone parameters differ from the shared ones by default (only these fields).
DEFAULT_ZONE_OVERRIDES: Mapping[RuleId, Mapping[str, float]] = {
    RuleId.EXCLUSION_APPROACH: {
        "dwell_fixes": DEFAULT_APPROACH_DWELL_FIXES,
        "dwell_seconds": DEFAULT_APPROACH_DWELL_SECONDS,
    },
}
# The rules that judge presence in a zone, and so take zone parameters.
ZONE_RULES: frozenset[RuleId] = frozenset(
    {
        RuleId.BOUNDARY_EXIT,
        RuleId.CURFEW_AWAY,
        RuleId.INCLUSION_AWAY,
        RuleId.LEAVE_AREA_EXIT,
        RuleId.EXCLUSION_ENTRY,
        RuleId.EXCLUSION_APPROACH,
    }
)

_NO_THRESHOLDS = DeviceThresholds()


@dataclass(frozen=True, slots=True)
class RuleParams:
    zone: ZoneRuleParams = ZoneRuleParams()
    # Per zone rule, the fields of `zone` it replaces (e.g. a longer dwell for approach).
    zone_overrides: Mapping[RuleId, Mapping[str, float]] = field(
        default_factory=lambda: {r: dict(f) for r, f in DEFAULT_ZONE_OVERRIDES.items()}
    )
    max_speed_mps: float = DEFAULT_MAX_SPEED_MPS
    max_consecutive_jump_rejections: int = DEFAULT_MAX_CONSECUTIVE_JUMP_REJECTIONS
    crossing: CrossingParams = CrossingParams()
    late_horizon_seconds: float = DEFAULT_LATE_HORIZON_SECONDS
    curfew_grace_seconds: float = DEFAULT_CURFEW_GRACE_SECONDS
    devices: Mapping[DeviceKind, DeviceThresholds] = field(default_factory=dict)
    battery_hysteresis_pct: float = DEFAULT_BATTERY_HYSTERESIS_PCT
    battery_dwell_readings: int = DEFAULT_BATTERY_DWELL_READINGS
    tiers: Mapping[RuleId, Tier] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    _resolved: Mapping[RuleId, ZoneRuleParams] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        resolved: dict[RuleId, ZoneRuleParams] = {}
        for rule, given in self.zone_overrides.items():
            base = self.zone
            resolved[rule] = ZoneRuleParams(
                margin_m=float(given.get("margin_m", base.margin_m)),
                dwell_fixes=int(given.get("dwell_fixes", base.dwell_fixes)),
                dwell_seconds=float(given.get("dwell_seconds", base.dwell_seconds)),
                max_accuracy_m=float(given.get("max_accuracy_m", base.max_accuracy_m)),
            )
        object.__setattr__(self, "_resolved", resolved)

    def tier(self, rule: RuleId) -> Tier:
        return self.tiers.get(rule, DEFAULT_TIERS[rule])

    def zone_params(self, rule: RuleId) -> ZoneRuleParams:
        return self._resolved.get(rule, self.zone)

    def thresholds(self, kind: DeviceKind) -> DeviceThresholds:
        return self.devices.get(kind, _NO_THRESHOLDS)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    device_id: str
    kind: DeviceKind
    subject_id: str


@dataclass(frozen=True, slots=True)
class ExclusionAssignment:
    zone_id: str
    schedule: Schedule | None = None  # None: always in force
    approach_m: float = 0.0  # width of the warning band outside the zone; 0: no band


@dataclass(frozen=True, slots=True)
class InclusionAssignment:
    """A place the subject must be while its schedule is active (a workplace in work hours).

    `grace_seconds` after each window start the rule comes into force (late for work is
    not yet absent from work)."""

    zone_id: str
    schedule: Schedule
    grace_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class LeaveSpec:
    """Approved leave (请假): from `start` to `end` the permitted area is widened to `area`
    (the permitted zone, the destination and the route corridor); boundary, curfew and
    scheduled-inclusion rules are suspended until `end + return_grace_seconds`."""

    leave_id: str
    start: datetime
    end: datetime
    area: Zone
    destination_zone_id: str
    return_grace_seconds: float = 0.0

    @property
    def exempt_until(self) -> datetime:
        return self.end + timedelta(seconds=self.return_grace_seconds)


@dataclass(frozen=True, slots=True)
class SubjectSpec:
    subject_id: str
    timezone: ZoneInfo
    officer_id: str | None
    devices: tuple[DeviceSpec, ...]
    home_zone_id: str | None = None
    permitted_zone_id: str | None = None
    exclusions: tuple[ExclusionAssignment, ...] = ()
    curfew: Schedule | None = None
    inclusions: tuple[InclusionAssignment, ...] = ()
    leaves: tuple[LeaveSpec, ...] = ()
    # Per device kind, complete thresholds that replace the rule defaults for this subject.
    device_thresholds: Mapping[DeviceKind, DeviceThresholds] = field(default_factory=dict)

    @property
    def exclusion_zone_ids(self) -> frozenset[str]:
        return frozenset(a.zone_id for a in self.exclusions)

    @property
    def has_time_rules(self) -> bool:
        """Whether any rule of this subject changes with the clock alone."""
        return bool(
            self.curfew
            or self.inclusions
            or self.leaves
            or any(a.schedule is not None for a in self.exclusions)
        )


@dataclass(frozen=True)
class CoreConfig:
    version: str
    projection: LocalProjection
    zones: Mapping[str, Zone]
    subjects: Mapping[str, SubjectSpec]
    rules: RuleParams = RuleParams()
    alerting: AlertingConfig = field(default_factory=AlertingConfig)  # policies.yaml
    # Issue 5 part B: habits, gatherings, protected persons (off unless configured).
    behaviour: BehaviourParams = field(default_factory=BehaviourParams)
    devices: Mapping[str, DeviceSpec] = field(init=False)
    exclusion_index: ZoneIndex = field(init=False)
    # One small index per subject over that subject's own exclusion zones, so the cost of a
    # ping does not grow with other subjects' zones (tile38#491: every fence for every fix).
    subject_exclusion_index: Mapping[str, ZoneIndex] = field(init=False)

    def __post_init__(self) -> None:
        devices = {d.device_id: d for s in self.subjects.values() for d in s.devices}
        object.__setattr__(self, "devices", devices)
        exclusions = [z for z in self.zones.values() if z.kind is ZoneKind.EXCLUSION]
        object.__setattr__(self, "exclusion_index", ZoneIndex(exclusions))
        per_subject = {
            s.subject_id: ZoneIndex([self.zones[a.zone_id] for a in s.exclusions])
            for s in self.subjects.values()
            if s.exclusions
        }
        object.__setattr__(self, "subject_exclusion_index", per_subject)

    def thresholds(self, subject: SubjectSpec, kind: DeviceKind) -> DeviceThresholds:
        own = subject.device_thresholds.get(kind)
        return own if own is not None else self.rules.thresholds(kind)
