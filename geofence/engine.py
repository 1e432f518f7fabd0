"""The rule engine: observations and a clock in, findings out. Pure: no I/O, no clock reads.

State is small and explicit: per device, the last accepted fix and the confirmed presence
in each zone that matters; per rule instance, whether it is currently violated. Findings are
emitted only on a change of a rule's state, so a violation that goes on produces one
`raised` finding, not one per ping.

Every finding's `at` is an event time (a fix's `ts`, a window's start or end), never the
time a tick happened to run, so the live daemon and `emon replay` decide identically.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alerts.model import Finding, FindingKind, RuleId
from geofence.config import CoreConfig, SubjectSpec, ZoneRuleParams
from geofence.observation import DeviceEvent, DeviceEventType, LocationFix, Observation
from geofence.schedule import Schedule
from geofence.zones import Presence, Zone, ZoneKind, exclusion_presence, inclusion_presence

RuleKey = tuple[str, RuleId, str | None]  # (device_id, rule, zone_id)


@dataclass(slots=True)
class Membership:
    """Confirmed presence of one device in one zone, with the dwell counter for a change."""

    confirmed: Presence = Presence.UNCERTAIN  # UNCERTAIN here means "not known yet"
    confirmed_since: datetime | None = None
    pending: Presence | None = None
    pending_count: int = 0
    pending_since: datetime | None = None

    def observe(self, presence: Presence, ts: datetime, params: ZoneRuleParams) -> bool:
        """Feed one fix's presence; return True when the confirmed presence changed."""
        if presence is Presence.UNCERTAIN:
            return False  # uncertain fixes neither confirm nor break a pending change
        if presence is self.confirmed:
            self.pending, self.pending_count, self.pending_since = None, 0, None
            return False
        if presence is not self.pending or self.pending_since is None:
            self.pending, self.pending_count, self.pending_since = presence, 0, ts
        self.pending_count += 1
        dwelt_s = (ts - self.pending_since).total_seconds()
        if self.pending_count >= params.dwell_fixes or (
            self.pending_count > 1 and dwelt_s >= params.dwell_seconds
        ):
            # The change happened when the first fix of the run was taken.
            self.confirmed, self.confirmed_since = presence, self.pending_since
            self.pending, self.pending_count, self.pending_since = None, 0, None
            return True
        return False


@dataclass(slots=True)
class DeviceState:
    last_fix: LocationFix | None = None
    last_xy: tuple[float, float] | None = None
    last_seen: datetime | None = None
    jump_rejections_in_row: int = 0
    last_rejected: tuple[LocationFix, tuple[float, float]] | None = None
    memberships: dict[str, Membership] = field(default_factory=dict)


@dataclass(slots=True)
class _RuleInstance:
    active: bool = False
    since: datetime | None = None


class Engine:
    """Applies a `CoreConfig` to observations. One instance per daemon (or replay run)."""

    def __init__(self, config: CoreConfig) -> None:
        self._config = config
        self._devices: dict[str, DeviceState] = {}
        self._rules: dict[RuleKey, _RuleInstance] = {}
        self.stats: Counter[str] = Counter()

    @property
    def config(self) -> CoreConfig:
        return self._config

    def swap_config(self, config: CoreConfig) -> None:
        """Adopt a new config between two observations; per-device state is kept."""
        self._config = config

    def device_state(self, device_id: str) -> DeviceState | None:
        return self._devices.get(device_id)

    # ------------------------------------------------------------------ observations

    def observe(self, observation: Observation, now: datetime) -> list[Finding]:
        spec = self._config.devices.get(observation.device_id)
        if spec is None:
            self.stats["unknown_device"] += 1
            return []
        subject = self._config.subjects[spec.subject_id]
        state = self._devices.setdefault(observation.device_id, DeviceState())
        if state.last_seen is None or observation.ts > state.last_seen:
            state.last_seen = observation.ts
        if isinstance(observation, LocationFix):
            return self._observe_fix(subject, state, observation)
        return self._observe_event(subject, observation)

    def _observe_event(self, subject: SubjectSpec, event: DeviceEvent) -> list[Finding]:
        self.stats["events"] += 1
        evidence = {"event": event.to_wire()}
        if event.type is DeviceEventType.STRAP_OPEN:
            return self._set(
                subject, event.device_id, RuleId.STRAP_OPEN, None, True, event.ts, evidence,
                "Strap opened on device " + event.device_id,
            )
        if event.type is DeviceEventType.STRAP_CLOSED:
            # Closing the strap clears the condition; the alert itself stays open for a
            # person to resolve (a taped strap looks exactly like this).
            return self._set(
                subject, event.device_id, RuleId.STRAP_OPEN, None, False, event.ts, evidence,
                "Strap closed again on device " + event.device_id,
            )
        return []

    def _observe_fix(
        self, subject: SubjectSpec, state: DeviceState, fix: LocationFix
    ) -> list[Finding]:
        last = state.last_fix
        if last is not None and fix.ts <= last.ts:
            # Same timestamp: a QoS 1 redelivery. Older: stored by the shell, but it must not
            # move the state backwards in time.
            self.stats["fix_duplicate" if fix.ts == last.ts else "fix_late"] += 1
            return []
        xy = self._config.projection.forward(fix.lon, fix.lat)
        if last is not None and self._implausible(fix, last, xy, state):
            return []
        state.last_fix, state.last_xy = fix, xy
        self.stats["fix_evaluated"] += 1

        params = self._config.rules.zone
        distances: dict[str, float] = {}
        for zone in self._zones_to_test(subject, state, xy, fix.accuracy_m):
            signed = zone.signed_distance_m(*xy)
            distances[zone.zone_id] = signed
            if zone.kind is ZoneKind.INCLUSION:
                presence = inclusion_presence(signed, fix.accuracy_m, params.margin_m)
            else:
                presence = exclusion_presence(
                    signed, fix.accuracy_m, params.margin_m, params.max_accuracy_m
                )
            state.memberships.setdefault(zone.zone_id, Membership()).observe(
                presence, fix.ts, params
            )
        # Exclusion zones the index did not return are certainly clear of the whole circle.
        for zone_id in subject.exclusion_zone_ids & state.memberships.keys() - distances.keys():
            state.memberships[zone_id].observe(Presence.OUTSIDE, fix.ts, params)
        return self._evaluate_zone_rules(subject, fix.device_id, state, fix.ts, fix, distances)

    def _implausible(
        self, fix: LocationFix, last: LocationFix, xy: tuple[float, float], state: DeviceState
    ) -> bool:
        assert state.last_xy is not None
        if self._plausible(fix, xy, last, state.last_xy):
            state.jump_rejections_in_row = 0
            state.last_rejected = None
            return False
        # Several rejected fixes that agree with each other mean the last accepted fix was
        # the outlier (or the device really moved while silent): accept again. Scattered
        # outliers never agree, so they stay rejected.
        previous = state.last_rejected
        agrees = previous is not None and self._plausible(fix, xy, previous[0], previous[1])
        state.jump_rejections_in_row = state.jump_rejections_in_row + 1 if agrees else 1
        state.last_rejected = (fix, xy)
        if state.jump_rejections_in_row > self._config.rules.max_consecutive_jump_rejections:
            self.stats["fix_jump_accepted_after_rejections"] += 1
            state.jump_rejections_in_row = 0
            state.last_rejected = None
            return False
        self.stats["fix_implausible_jump"] += 1
        return True

    def _plausible(
        self, fix: LocationFix, xy: tuple[float, float], other: LocationFix,
        other_xy: tuple[float, float],
    ) -> bool:
        elapsed_s = abs((fix.ts - other.ts).total_seconds())
        distance_m = math.dist(xy, other_xy) - fix.accuracy_m - other.accuracy_m
        return distance_m <= self._config.rules.max_speed_mps * elapsed_s

    def _zones_to_test(
        self, subject: SubjectSpec, state: DeviceState, xy: tuple[float, float], accuracy_m: float
    ) -> list[Zone]:
        zones = self._config.zones
        out: list[Zone] = []
        for zone_id in (subject.permitted_zone_id, subject.home_zone_id):
            if zone_id is not None:
                out.append(zones[zone_id])
        if subject.exclusions:
            radius_m = accuracy_m + self._config.rules.zone.margin_m
            own = subject.exclusion_zone_ids
            out.extend(
                z for z in self._config.exclusion_index.near(*xy, radius_m) if z.zone_id in own
            )
        return out

    # ------------------------------------------------------------------ rules

    def _evaluate_zone_rules(
        self,
        subject: SubjectSpec,
        device_id: str,
        state: DeviceState,
        ts: datetime,
        fix: LocationFix | None,
        distances: dict[str, float],
    ) -> list[Finding]:
        findings: list[Finding] = []
        evidence: dict[str, Any] = {"ping": fix.to_wire()} if fix is not None else {}
        accuracy = f" (accuracy {fix.accuracy_m:.0f} m)" if fix is not None else ""

        def distance_text(zone_id: str, outside: bool) -> str:
            signed = distances.get(zone_id)
            if signed is None:
                return ""
            side = "outside" if outside else "inside"
            return f": {abs(signed):,.0f} m {side} its edge{accuracy}"

        permitted = subject.permitted_zone_id
        if permitted is not None:
            membership = state.memberships.get(permitted)
            violated = membership is not None and membership.confirmed is Presence.OUTSIDE
            at = membership.confirmed_since if violated and membership else ts
            findings += self._set(
                subject, device_id, RuleId.BOUNDARY_EXIT, permitted, violated, at or ts,
                evidence, f"Left permitted area {permitted}" + distance_text(permitted, True),
            )

        home = subject.home_zone_id
        if home is not None and subject.curfew is not None:
            findings += self._scheduled(
                subject, device_id, RuleId.CURFEW_AWAY, home, subject.curfew,
                state.memberships.get(home), Presence.OUTSIDE, ts, evidence,
                f"Away from home {home} during curfew" + distance_text(home, True),
            )

        for assignment in subject.exclusions:
            membership = state.memberships.get(assignment.zone_id)
            key = (device_id, RuleId.EXCLUSION_ENTRY, assignment.zone_id)
            if membership is None and key not in self._rules:
                continue
            reason = f"Entered exclusion zone {assignment.zone_id}" + distance_text(
                assignment.zone_id, False
            )
            if assignment.schedule is None:
                violated = membership is not None and membership.confirmed is Presence.INSIDE
                at = membership.confirmed_since if violated and membership else ts
                findings += self._set(
                    subject, device_id, RuleId.EXCLUSION_ENTRY, assignment.zone_id, violated,
                    at or ts, evidence, reason,
                )
            else:
                findings += self._scheduled(
                    subject, device_id, RuleId.EXCLUSION_ENTRY, assignment.zone_id,
                    assignment.schedule, membership, Presence.INSIDE, ts, evidence, reason,
                )
        return findings

    def _scheduled(
        self,
        subject: SubjectSpec,
        device_id: str,
        rule: RuleId,
        zone_id: str,
        schedule: Schedule,
        membership: Membership | None,
        violating_presence: Presence,
        ts: datetime,
        evidence: dict[str, Any],
        reason: str,
    ) -> list[Finding]:
        """A zone rule in force only while a schedule window is active.

        The violation starts at the later of the window's start and the time the presence
        was confirmed; it ends at the earlier of the window's end and `ts`. Both are event
        times, so it does not matter when the tick that notices runs."""
        instance = self._rules.get((device_id, rule, zone_id))
        if instance is not None and instance.since is not None and ts < instance.since:
            # A fix taken before the last decision (uploaded late, after the tick that
            # opened or closed the window) must not undo it: that would flap the alert.
            return []
        window = schedule.active_interval(ts, subject.timezone)
        in_violation = (
            window is not None
            and membership is not None
            and membership.confirmed is violating_presence
        )
        if in_violation and window is not None and membership is not None:
            started = membership.confirmed_since or ts
            return self._set(
                subject, device_id, rule, zone_id, True, max(window[0], started), evidence, reason
            )
        at = ts
        if instance is not None and instance.active and instance.since is not None:
            raised_window = schedule.active_interval(instance.since, subject.timezone)
            if raised_window is not None and window != raised_window:
                at = min(ts, raised_window[1])
        return self._set(subject, device_id, rule, zone_id, False, at, evidence, reason)

    def _set(
        self,
        subject: SubjectSpec,
        device_id: str,
        rule: RuleId,
        zone_id: str | None,
        violated: bool,
        at: datetime,
        evidence: dict[str, Any],
        reason: str,
    ) -> list[Finding]:
        instance = self._rules.setdefault((device_id, rule, zone_id), _RuleInstance())
        if instance.active is violated:
            return []
        at = at.astimezone(UTC)  # window starts carry the subject's zone; ids hash UTC
        instance.active, instance.since = violated, at
        kind = FindingKind.RAISED if violated else FindingKind.CLEARED
        self.stats[f"finding_{rule.value}_{kind.value}"] += 1
        return [
            Finding(
                subject_id=subject.subject_id,
                device_id=device_id,
                rule=rule,
                zone_id=zone_id,
                tier=self._config.rules.tier(rule),
                kind=kind,
                at=at,
                evidence=evidence,
                reason=reason,
            )
        ]

    # ------------------------------------------------------------------ clock

    def tick(self, now: datetime) -> list[Finding]:
        """Re-evaluate time-driven rules (schedule windows opening and closing)."""
        findings: list[Finding] = []
        for device_id, state in self._devices.items():
            spec = self._config.devices.get(device_id)
            if spec is None or state.last_fix is None:
                continue
            subject = self._config.subjects[spec.subject_id]
            if not (subject.curfew or any(a.schedule for a in subject.exclusions)):
                continue
            evidence = {"ping": state.last_fix.to_wire()}
            if subject.home_zone_id is not None and subject.curfew is not None:
                findings += self._scheduled(
                    subject, device_id, RuleId.CURFEW_AWAY, subject.home_zone_id,
                    subject.curfew, state.memberships.get(subject.home_zone_id),
                    Presence.OUTSIDE, now, evidence,
                    f"Away from home {subject.home_zone_id} when curfew began",
                )
            for assignment in subject.exclusions:
                if assignment.schedule is not None:
                    findings += self._scheduled(
                        subject, device_id, RuleId.EXCLUSION_ENTRY, assignment.zone_id,
                        assignment.schedule, state.memberships.get(assignment.zone_id),
                        Presence.INSIDE, now, evidence,
                        f"In exclusion zone {assignment.zone_id} when its schedule began",
                    )
        return findings
