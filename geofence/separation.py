"""Person-device separation (人机分离): a subject's wearable and phone apart. Pure.

Two causes hold one `person_device_separation` condition per subject:

- *distance*: a fix of one device and the other kind's latest fix, taken at most
  `pair_seconds` apart (judged once both devices have reported past the older of the two,
  so arrival order does not matter), are farther apart than `distance_m` even after both
  accuracy radii are taken off (so two devices on one body never look apart, whatever the
  noise within their stated accuracies), and every pair for `seconds` says so. Raised at
  the first pair of the run (the alert says when it began), cleared at the first pair that
  is not apart.
  Fixes vaguer than `max_accuracy_m` prove nothing either way.
- *silent device*: a device of one kind has been silent past its own silence threshold while
  a device of the other kind is heard (a fix, an event, a check-in): raised at that arrival,
  cleared when the silent device is heard again. A check-in on the phone while the tag is
  silent is this cause, and the alert says so.

The pairing is symmetric: which device reports first, and which is the tag, change nothing
but the device named on the alert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from alerts.model import Finding, RuleId
from geofence.compliancespec import SeparationParams
from geofence.conditions import SubjectConditions
from geofence.config import CoreConfig, SubjectSpec
from geofence.observation import DeviceEvent, DeviceEventType, DeviceKind, LocationFix, Observation

RULE = RuleId.PERSON_DEVICE_SEPARATION
DISTANCE_CAUSE = "distance"
SILENT_CAUSE_PREFIX = "silent:"


@dataclass(slots=True)
class SeparationState:
    # The newest accepted fix of each device, with its position in the config's projection.
    latest_fix: dict[str, tuple[LocationFix, tuple[float, float]]] = field(default_factory=dict)
    last_pair_ts: datetime | None = None
    apart_since: datetime | None = None
    last_arrival: dict[str, datetime] = field(default_factory=dict)
    # The kinds of the subject's devices, for the subject spec in force (rebuilt on reload),
    # and whether it has both a wearable and a phone (else the rule does not apply).
    kinds_of: tuple[SubjectSpec, dict[str, DeviceKind], bool] | None = None


def _kind_label(kind: DeviceKind) -> str:
    return "tag" if kind is DeviceKind.WEARABLE else "phone"


def _local_hm(at: datetime, subject: SubjectSpec) -> str:
    return at.astimezone(subject.timezone).strftime("%H:%M")


def has_pair(subject: SubjectSpec) -> bool:
    kinds = {d.kind for d in subject.devices}
    return DeviceKind.WEARABLE in kinds and DeviceKind.PHONE in kinds


def on_observation(
    config: CoreConfig,
    params: SeparationParams,
    conditions: SubjectConditions,
    subject: SubjectSpec,
    state: SeparationState,
    observation: Observation,
    now: datetime,
    accepted_fix: bool,
) -> list[Finding]:
    """One (non-duplicate) observation of a device of `subject` that arrived at `now`.
    `accepted_fix`: it is a fix the engine accepted as the device's newest (not late, not
    an outlier)."""
    device_id = observation.device_id
    if state.kinds_of is None or state.kinds_of[0] is not subject:
        state.kinds_of = (subject, {d.device_id: d.kind for d in subject.devices},
                          has_pair(subject))
    _, kinds, paired = state.kinds_of
    if not paired:
        return []
    kind = kinds[device_id]
    findings: list[Finding] = []
    if params.silent_device:
        findings += _silence(config, conditions, subject, state, observation, now, kinds)
    state.last_arrival[device_id] = now
    if accepted_fix and isinstance(observation, LocationFix):
        findings += _distance(config, params, conditions, subject, state, observation, kind,
                              kinds)
    return findings


def _silence(
    config: CoreConfig,
    conditions: SubjectConditions,
    subject: SubjectSpec,
    state: SeparationState,
    observation: Observation,
    now: datetime,
    kinds: dict[str, DeviceKind],
) -> list[Finding]:
    device_id = observation.device_id
    kind = kinds[device_id]
    findings: list[Finding] = []
    heard = f"{SILENT_CAUSE_PREFIX}{device_id}"
    if conditions.active(subject.subject_id, RULE, heard):
        findings += conditions.set(
            config, subject.subject_id, device_id, RULE, heard, False, now,
            {"received_at": now.isoformat(), "device_id": device_id},
            f"{_kind_label(kind).capitalize()} {device_id} of {subject.subject_id} heard "
            "from again",
        )
    checkin = isinstance(observation, DeviceEvent) and observation.type is DeviceEventType.CHECKIN
    for other_id, other_kind in sorted(kinds.items()):
        if other_kind is kind:
            continue
        last = state.last_arrival.get(other_id)
        silence_s = config.thresholds(subject, other_kind).silence_seconds
        if last is None or silence_s is None:
            continue
        if now < last + timedelta(seconds=silence_s):
            continue
        cause = f"{SILENT_CAUSE_PREFIX}{other_id}"
        what = "checked in on" if checkin else "is reporting from"
        findings += conditions.set(
            config, subject.subject_id, other_id, RULE, cause, True, now,
            {"silent_device": other_id, "silent_since": last.isoformat(),
             "reporting_device": device_id, "received_at": now.isoformat(),
             "checkin": checkin},
            f"{subject.subject_id} {what} the {_kind_label(kind)} {device_id} while the "
            f"{_kind_label(other_kind)} {other_id} has been silent since "
            f"{_local_hm(last, subject)}",
        )
    return findings


def _distance(
    config: CoreConfig,
    params: SeparationParams,
    conditions: SubjectConditions,
    subject: SubjectSpec,
    state: SeparationState,
    fix: LocationFix,
    kind: DeviceKind,
    kinds: dict[str, DeviceKind],
) -> list[Finding]:
    if fix.accuracy_m > params.max_accuracy_m:
        state.latest_fix.pop(fix.device_id, None)  # an older, precise fix is not "now" either
        return []
    xy = config.projection.forward(fix.lon, fix.lat)
    state.latest_fix[fix.device_id] = (fix, xy)
    findings: list[Finding] = []
    pair_window = timedelta(seconds=params.pair_seconds)
    for other_id, other_kind in sorted(kinds.items()):
        if other_kind is kind:
            continue
        latest = state.latest_fix.get(other_id)
        if latest is None:
            continue
        other, other_xy = latest
        # A pair is judged when its *older* fix is newer than in any pair judged before,
        # i.e. once both devices have reported past that moment: two fixes taken at the same
        # time give the same pair whichever of them arrives first.
        older_ts = min(fix.ts, other.ts)
        if state.last_pair_ts is not None and older_ts <= state.last_pair_ts:
            continue
        if abs(fix.ts - other.ts) > pair_window:
            continue
        state.last_pair_ts = older_ts
        distance_m = math.hypot(xy[0] - other_xy[0], xy[1] - other_xy[1])
        findings += _judge_pair(config, params, conditions, subject, state, fix, other,
                                distance_m)
    return findings


def _judge_pair(
    config: CoreConfig,
    params: SeparationParams,
    conditions: SubjectConditions,
    subject: SubjectSpec,
    state: SeparationState,
    a: LocationFix,
    b: LocationFix,
    distance_m: float,
) -> list[Finding]:
    pair_ts = max(a.ts, b.ts)
    gap_m = distance_m - a.accuracy_m - b.accuracy_m
    active = conditions.active(subject.subject_id, RULE, DISTANCE_CAUSE)
    apart = gap_m > params.distance_m
    if apart:
        if state.apart_since is None:
            state.apart_since = pair_ts
        if active or (pair_ts - state.apart_since).total_seconds() < params.seconds:
            return []
    else:
        state.apart_since = None
        if not active:
            return []
    # Only now (a finding will be emitted) is the evidence built: most pairs change nothing.
    wearable, phone = (a, b) if _is_wearable(subject, a.device_id) else (b, a)
    evidence: dict[str, Any] = {
        "wearable": wearable.to_wire(), "phone": phone.to_wire(),
        "distance_m": round(distance_m, 1), "beyond_accuracy_m": round(gap_m, 1),
    }
    if apart:
        assert state.apart_since is not None
        return conditions.set(
            config, subject.subject_id, wearable.device_id, RULE, DISTANCE_CAUSE, True,
            state.apart_since, evidence,
            f"The tag {wearable.device_id} and the phone {phone.device_id} of "
            f"{subject.subject_id} have been at least {params.distance_m:.0f} m apart since "
            f"{_local_hm(state.apart_since, subject)} (now {distance_m:.0f} m)",
        )
    return conditions.set(
        config, subject.subject_id, wearable.device_id, RULE, DISTANCE_CAUSE, False, pair_ts,
        evidence,
        f"The tag {wearable.device_id} and the phone {phone.device_id} of "
        f"{subject.subject_id} are together again",
    )


def _is_wearable(subject: SubjectSpec, device_id: str) -> bool:
    return any(d.device_id == device_id and d.kind is DeviceKind.WEARABLE
               for d in subject.devices)
