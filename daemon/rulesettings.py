"""Operator settings of the rules (settings.yaml `rules:`), per-subject device thresholds
(subjects.yaml), and approved leave (leaves.yaml): pydantic models and their compilation
into the core's `RuleParams` and `LeaveSpec`s.

Defaults come from `geofence.config`, where each carries its reason (docs/rules.md).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Annotated, Any

import shapely
from pydantic import AwareDatetime, Field, field_validator, model_validator
from shapely.geometry.base import BaseGeometry

from alerts.model import DEFAULT_TIERS, RuleId, Tier
from daemon.compliancesettings import (
    AuthorisationSettings,
    CheckinSettings,
    SeparationSettings,
    compile_compliance,
)
from daemon.strictmodel import StrictModel
from geofence.config import (
    DEFAULT_BATTERY_DWELL_READINGS,
    DEFAULT_BATTERY_HYSTERESIS_PCT,
    DEFAULT_CROSSING_MAX_GAP_SECONDS,
    DEFAULT_CROSSING_MIN_CHORD_M,
    DEFAULT_CURFEW_GRACE_SECONDS,
    DEFAULT_DEVICE_THRESHOLDS,
    DEFAULT_DWELL_FIXES,
    DEFAULT_DWELL_SECONDS,
    DEFAULT_LATE_HORIZON_SECONDS,
    DEFAULT_MARGIN_M,
    DEFAULT_MAX_ACCURACY_M,
    DEFAULT_MAX_CONSECUTIVE_JUMP_REJECTIONS,
    DEFAULT_MAX_SPEED_MPS,
    DEFAULT_ZONE_OVERRIDES,
    ZONE_RULES,
    CrossingParams,
    DeviceThresholds,
    LeaveSpec,
    RuleParams,
    ZoneRuleParams,
)
from geofence.datum import Datum, convert_geometry_to_wgs84
from geofence.observation import DeviceKind
from geofence.zones import LocalProjection, Zone, ZoneKind

SECONDS_PER_MINUTE = 60.0
# Art. 29 of the Community Corrections Law bounds a monitoring period at three months; no
# single leave can be longer.
MAX_LEAVE_DAYS = 92
MAX_ROUTE_POINTS = 5000

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]




# ---------------------------------------------------------------------- settings.yaml rules


class ZoneRuleSettings(StrictModel):
    margin_m: float = Field(DEFAULT_MARGIN_M, ge=0, le=1000, title="Noise margin at edges")
    dwell_fixes: int = Field(DEFAULT_DWELL_FIXES, ge=1, le=20, title="Fixes to confirm")
    dwell_seconds: float = Field(DEFAULT_DWELL_SECONDS, ge=0, le=3600, title="Time to confirm")
    max_accuracy_m: float = Field(
        DEFAULT_MAX_ACCURACY_M, gt=0, le=5000, title="Least precise fix that can place inside"
    )


class ZoneRuleOverride(StrictModel):
    """The zone parameters one rule uses instead of the shared ones (only those given)."""

    margin_m: float | None = Field(None, ge=0, le=1000, title="Noise margin at edges")
    dwell_fixes: int | None = Field(None, ge=1, le=20, title="Fixes to confirm")
    dwell_seconds: float | None = Field(None, ge=0, le=3600, title="Time to confirm")
    max_accuracy_m: float | None = Field(
        None, gt=0, le=5000, title="Least precise fix that can place inside"
    )


class CrossingSettings(StrictModel):
    min_chord_m: float = Field(
        DEFAULT_CROSSING_MIN_CHORD_M, ge=1, le=5000,
        title="Metres the line between two fixes must run inside an exclusion zone",
    )
    max_gap_minutes: float = Field(
        DEFAULT_CROSSING_MAX_GAP_SECONDS / SECONDS_PER_MINUTE, gt=0, le=120,
        title="Longest gap between two fixes over which a crossing is inferred",
    )


class DeviceThresholdSettings(StrictModel):
    """Thresholds for one device kind. A field left out keeps the kind's default; null
    switches the rule off."""

    silence_minutes: float | None = Field(
        None, ge=1, le=1440, title="Minutes without any message before device_silent"
    )
    gnss_lost_minutes: float | None = Field(
        None, ge=1, le=1440, title="Minutes without a usable GNSS fix before gnss_lost"
    )
    battery_low_pct: float | None = Field(None, ge=1, le=99, title="battery_low at or below")
    battery_critical_pct: float | None = Field(
        None, ge=1, le=99, title="battery_critical at or below"
    )

    @model_validator(mode="after")
    def _critical_below_low(self) -> DeviceThresholdSettings:
        low, critical = self.battery_low_pct, self.battery_critical_pct
        if low is not None and critical is not None and critical >= low:
            raise ValueError("battery_critical_pct must be below battery_low_pct")
        return self


class DeviceKindSettings(StrictModel):
    wearable: DeviceThresholdSettings = Field(
        default_factory=DeviceThresholdSettings, title="Ankle or wrist tags"
    )
    phone: DeviceThresholdSettings = Field(
        default_factory=DeviceThresholdSettings, title="Phones (app or OwnTracks)"
    )

    def for_kind(self, kind: DeviceKind) -> DeviceThresholdSettings:
        return self.wearable if kind is DeviceKind.WEARABLE else self.phone


class RuleSettings(StrictModel):
    zone: ZoneRuleSettings = Field(ZoneRuleSettings(), title="Zone parameters of every rule")
    zone_overrides: dict[RuleId, ZoneRuleOverride] = Field(
        default_factory=dict, title="Zone parameters per zone rule (e.g. exclusion_approach)"
    )
    max_speed_mps: float = Field(
        DEFAULT_MAX_SPEED_MPS, gt=0, le=400, title="Faster jumps are outliers"
    )
    max_consecutive_jump_rejections: int = Field(
        DEFAULT_MAX_CONSECUTIVE_JUMP_REJECTIONS, ge=1, le=50,
        title="Agreeing rejected fixes in a row after which the device is followed again",
    )
    crossing: CrossingSettings = Field(CrossingSettings(), title="Segment crossing")
    late_horizon_minutes: float = Field(
        DEFAULT_LATE_HORIZON_SECONDS / SECONDS_PER_MINUTE, ge=0, le=7 * 24 * 60,
        title="How far back late (stored and forwarded) fixes are audited",
    )
    curfew_grace_minutes: float = Field(
        DEFAULT_CURFEW_GRACE_SECONDS / SECONDS_PER_MINUTE, ge=0, le=120,
        title="Minutes after curfew starts before being away counts",
    )
    devices: DeviceKindSettings = Field(
        default_factory=DeviceKindSettings, title="Liveness and battery thresholds per kind"
    )
    battery_hysteresis_pct: float = Field(
        DEFAULT_BATTERY_HYSTERESIS_PCT, ge=0, le=50,
        title="Points above its threshold at which a battery alert clears",
    )
    battery_dwell_readings: int = Field(
        DEFAULT_BATTERY_DWELL_READINGS, ge=1, le=20,
        title="Readings in a row at or below a threshold to confirm it",
    )
    tiers: dict[RuleId, Tier] = Field(default_factory=dict, title="Tier overrides per rule")
    # Issue 5 part A (daemon.compliancesettings): separation, check-ins, authorisation.
    separation: SeparationSettings = Field(
        SeparationSettings(), title="Person-device separation (人机分离)"
    )
    checkin: CheckinSettings = Field(CheckinSettings(), title="Scheduled check-ins (日常报告)")
    authorisation: AuthorisationSettings = Field(
        AuthorisationSettings(), title="Authorised monitoring periods (Art. 29)"
    )

    @field_validator("zone_overrides")
    @classmethod
    def _zone_rules_only(
        cls, value: dict[RuleId, ZoneRuleOverride]
    ) -> dict[RuleId, ZoneRuleOverride]:
        others = sorted(r.value for r in value if r not in ZONE_RULES)
        if others:
            raise ValueError(f"not zone rules: {', '.join(others)}")
        return value


def compile_thresholds(
    defaults: DeviceThresholds, given: DeviceThresholdSettings
) -> DeviceThresholds:
    """`given`'s explicitly set fields over `defaults` (null stays null: the rule is off)."""
    out = defaults
    fields_set = given.model_fields_set

    def minutes(value: float | None) -> float | None:
        return None if value is None else value * SECONDS_PER_MINUTE

    if "silence_minutes" in fields_set:
        out = replace(out, silence_seconds=minutes(given.silence_minutes))
    if "gnss_lost_minutes" in fields_set:
        out = replace(out, gnss_lost_seconds=minutes(given.gnss_lost_minutes))
    if "battery_low_pct" in fields_set:
        out = replace(out, battery_low_pct=given.battery_low_pct)
    if "battery_critical_pct" in fields_set:
        out = replace(out, battery_critical_pct=given.battery_critical_pct)
    return out


def kind_thresholds(rules: RuleSettings) -> dict[DeviceKind, DeviceThresholds]:
    return {
        kind: compile_thresholds(DEFAULT_DEVICE_THRESHOLDS[kind], rules.devices.for_kind(kind))
        for kind in DeviceKind
    }


def compile_rule_params(rules: RuleSettings) -> RuleParams:
    overrides: dict[RuleId, dict[str, float]] = {
        rule: dict(fields) for rule, fields in DEFAULT_ZONE_OVERRIDES.items()
    }
    for rule, override in rules.zone_overrides.items():
        given = override.model_dump(exclude_none=True)
        overrides.setdefault(rule, {}).update(given)
    return RuleParams(
        zone=ZoneRuleParams(
            margin_m=rules.zone.margin_m,
            dwell_fixes=rules.zone.dwell_fixes,
            dwell_seconds=rules.zone.dwell_seconds,
            max_accuracy_m=rules.zone.max_accuracy_m,
        ),
        zone_overrides=overrides,
        max_speed_mps=rules.max_speed_mps,
        max_consecutive_jump_rejections=rules.max_consecutive_jump_rejections,
        crossing=CrossingParams(
            min_chord_m=rules.crossing.min_chord_m,
            max_gap_seconds=rules.crossing.max_gap_minutes * SECONDS_PER_MINUTE,
        ),
        late_horizon_seconds=rules.late_horizon_minutes * SECONDS_PER_MINUTE,
        curfew_grace_seconds=rules.curfew_grace_minutes * SECONDS_PER_MINUTE,
        devices=kind_thresholds(rules),
        battery_hysteresis_pct=rules.battery_hysteresis_pct,
        battery_dwell_readings=rules.battery_dwell_readings,
        tiers={**DEFAULT_TIERS, **rules.tiers},
        compliance=compile_compliance(rules.separation, rules.checkin, rules.authorisation),
    )


# ---------------------------------------------------------------------- leaves.yaml


class RouteModel(StrictModel):
    datum: Datum = Field(Datum.WGS84, title="Datum of the path's coordinates")
    width_m: float = Field(ge=10, le=20000, title="Corridor width in metres around the path")
    path: list[tuple[float, float]] = Field(
        min_length=2, max_length=MAX_ROUTE_POINTS, title="[lon, lat] points along the route"
    )

    @field_validator("path")
    @classmethod
    def _in_range(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for lon, lat in value:
            if not (-180.0 <= lon <= 180.0 and -90.0 <= lat <= 90.0):
                raise ValueError(f"point [{lon}, {lat}] out of range (order is [lon, lat])")
        return value


class LeaveModel(StrictModel):
    id: Identifier = Field(title="Leave id (unique)")
    subject: Identifier = Field(title="Subject id")
    start: AwareDatetime = Field(title="Start, RFC 3339 with offset")
    end: AwareDatetime = Field(title="End, RFC 3339 with offset")
    destination_zone: Identifier = Field(title="Inclusion zone id of the destination region")
    route: RouteModel | None = Field(None, title="Travel corridor to and from the destination")
    return_grace_minutes: float = Field(
        0.0, ge=0, le=1440, title="Minutes after the end before boundary rules resume"
    )
    approved_by: Identifier = Field(title="Officer id who approved the leave")
    reference: str | None = Field(
        None, max_length=64, title="Approval document number (no personal details)"
    )

    @model_validator(mode="after")
    def _period(self) -> LeaveModel:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end - self.start > timedelta(days=MAX_LEAVE_DAYS):
            raise ValueError(f"a leave lasts at most {MAX_LEAVE_DAYS} days")
        return self


class LeavesFile(StrictModel):
    leaves: list[LeaveModel] = Field(default_factory=list)


LeaveProblem = tuple[str, str, str]  # (key, value, reason)


def check_leaves(
    leaves: LeavesFile,
    subject_ids: set[str],
    officer_ids: set[str],
    zone_kinds: Mapping[str, ZoneKind],
    in_region: Any,
) -> list[LeaveProblem]:
    """Cross-file checks: known subject, officer and inclusion zone; unique ids; no two
    leaves of one subject overlapping; route inside the region (`in_region(lon, lat)`)."""
    problems: list[LeaveProblem] = []
    seen: set[str] = set()
    by_subject: dict[str, list[tuple[int, LeaveModel]]] = {}
    for index, leave in enumerate(leaves.leaves):
        where = f"leaves.{index}"
        if leave.id in seen:
            problems.append((f"{where}.id", leave.id, "duplicate leave id"))
        seen.add(leave.id)
        if leave.subject not in subject_ids:
            problems.append((f"{where}.subject", leave.subject, "subject not defined"))
        if leave.approved_by not in officer_ids:
            problems.append((f"{where}.approved_by", leave.approved_by, "officer not defined"))
        kind = zone_kinds.get(leave.destination_zone)
        if kind is None:
            problems.append((f"{where}.destination_zone", leave.destination_zone,
                             "zone not defined"))
        elif kind is not ZoneKind.INCLUSION:
            problems.append((f"{where}.destination_zone", leave.destination_zone,
                             f"zone is {kind.value}, expected inclusion"))
        if leave.route is not None:
            for p_index, (lon, lat) in enumerate(leave.route.path):
                if not in_region(lon, lat):
                    problems.append((f"{where}.route.path.{p_index}", f"[{lon}, {lat}]",
                                     "outside the region (order is [lon, lat])"))
                    break
        by_subject.setdefault(leave.subject, []).append((index, leave))
    for entries in by_subject.values():
        entries.sort(key=lambda e: e[1].start)
        for (_, first), (index, second) in itertools.pairwise(entries):
            if second.start < first.end + timedelta(minutes=first.return_grace_minutes):
                problems.append((f"leaves.{index}.start", second.start.isoformat(),
                                 f"overlaps leave {first.id} of the same subject"))
    return problems


def compile_leaves(
    leaves: LeavesFile,
    zones: Mapping[str, Zone],
    permitted_of: Mapping[str, str | None],
    projection: LocalProjection,
) -> dict[str, tuple[LeaveSpec, ...]]:
    """Per subject, its leaves with the widened area: permitted zone, destination and the
    route corridor (buffered in metres), merged into one prepared zone."""
    out: dict[str, list[LeaveSpec]] = {}
    for leave in leaves.leaves:
        parts: list[BaseGeometry] = [zones[leave.destination_zone].geometry_m]
        permitted = permitted_of.get(leave.subject)
        if permitted is not None:
            parts.append(zones[permitted].geometry_m)
        if leave.route is not None:
            line_wgs84 = convert_geometry_to_wgs84(
                leave.route.datum, shapely.LineString(leave.route.path)
            )
            line_m = projection.forward_geometry(line_wgs84)
            parts.append(shapely.buffer(line_m, leave.route.width_m / 2.0))
        area = Zone.from_projected(
            f"leave:{leave.id}", f"Approved leave {leave.id}", ZoneKind.INCLUSION,
            shapely.union_all(parts), projection,
        )
        out.setdefault(leave.subject, []).append(
            LeaveSpec(
                leave_id=leave.id,
                start=leave.start,
                end=leave.end,
                area=area,
                destination_zone_id=leave.destination_zone,
                return_grace_seconds=leave.return_grace_minutes * SECONDS_PER_MINUTE,
            )
        )
    return {subject: tuple(sorted(specs, key=lambda s: s.start)) for subject, specs in
            out.items()}
