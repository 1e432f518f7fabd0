"""The engine's per-device and per-rule state. Plain data with small pure transitions.

Kept apart from the rules so each rule module reads the same explicit state, and so a test
can look at exactly what the engine believes (confirmed presence, pending dwell, latches).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import MutableSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from alerts.model import Finding, FindingKind, RuleId
from geofence.config import CoreConfig, DeviceThresholds, SubjectSpec, ZoneRuleParams
from geofence.history import FixHistory, LazySet, RecentItems, RecentTimes
from geofence.observation import DeviceEventType, DeviceKind, LocationFix
from geofence.zones import Presence

if TYPE_CHECKING:
    from geofence.zonerules import PresenceAnchors

# Evaluated fixes remembered per device to place late fixes between their neighbours: two
# hours at one fix a minute. Older late fixes are stored by the shell but not audited.
HISTORY_FIXES = 128
# Violation intervals remembered per rule instance, so a late audit never repeats a
# violation the live stream already reported.
RECENT_INTERVALS = 16
# Fixes and events remembered per device to recognise a redelivery.
RECENT_FIXES = 256
RECENT_EVENTS = 64


@dataclass(slots=True)
class Membership:
    """Confirmed presence of one device in one zone (or band), with the dwell counter for a
    change. `confirmed_since` is the event time of the first fix of the run that confirmed it."""

    confirmed: Presence = Presence.UNCERTAIN  # UNCERTAIN here means "not known yet"
    confirmed_since: datetime | None = None
    previous: Presence = Presence.UNCERTAIN  # what was confirmed before the last change
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
            self.previous = self.confirmed
            self.confirmed, self.confirmed_since = presence, self.pending_since
            self.pending, self.pending_count, self.pending_since = None, 0, None
            return True
        return False


@dataclass(slots=True)
class Latch:
    """An open/closed device condition (strap, case, power) in event time."""

    last_open: datetime | None = None
    last_close: datetime | None = None


@dataclass(slots=True)
class LevelRun:
    """Consecutive battery readings at or below one threshold."""

    count: int = 0
    since: datetime | None = None


@dataclass(slots=True)
class BatteryState:
    last_ts: datetime | None = None
    level: float | None = None
    charging: bool = False
    charging_ts: datetime | None = None
    runs: dict[RuleId, LevelRun] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlacedFix:
    """A fix with its projected position (metres in the config's projection) and that
    position as a shapely point, built when a zone test first needs it and reused by the
    fix's other zone tests. The engine drops the point once the fix is judged (the
    history keeps HISTORY_FIXES fixes per device: points there would cost memory for the
    rare late-fix audit, which builds them again)."""

    fix: LocationFix
    xy: tuple[float, float]
    _point: BaseGeometry | None = field(default=None, init=False, compare=False, repr=False)

    @property
    def point(self) -> BaseGeometry:
        point = self._point
        if point is None:
            point = shapely.points(np.asarray(self.xy, dtype=float))
            object.__setattr__(self, "_point", point)  # a cache, not state
        return point

    def drop_point(self) -> None:
        object.__setattr__(self, "_point", None)


@dataclass(slots=True)
class DeviceState:
    # Zone state: the newest evaluated fix and the confirmed presence per track.
    last_fix: LocationFix | None = None
    last_xy: tuple[float, float] | None = None
    memberships: dict[str, Membership] = field(default_factory=dict)
    # Where each zone track was last measured (`geofence.zonerules`): a fix too near to
    # change its presence is not measured again.
    presence_anchors: PresenceAnchors | None = None
    # The last segment between two evaluated fixes, waiting for the next fix to show its
    # end was real before a crossing is inferred along it.
    crossing_candidate: tuple[PlacedFix, PlacedFix] | None = None
    # Jump filter: how many rejected fixes in a row agree with each other, and the newest.
    jump_rejections_in_row: int = 0
    last_rejected: PlacedFix | None = None
    # Event time: the newest observation's ts, and when it arrived (the device's clock).
    last_seen: datetime | None = None
    anchor_arrival: datetime | None = None
    # Time-driven zone rules have been evaluated up to this event time (never backwards).
    clock: datetime | None = None
    next_boundary: datetime | None = None
    judge_all: bool = True  # judge every zone rule at the next fix (new device or config)
    # Arrival clock (liveness): when we last heard anything, and the GNSS reference.
    last_arrival: datetime | None = None
    gnss_ref_arrival: datetime | None = None
    talked_since_gnss: bool = False
    gnss_checked: bool = False  # the tick judged the current GNSS deadline already
    # Late fixes: the recent evaluated fixes (compact, geofence.history), and late ones
    # grouped by the gap they fell in (keyed by the ts of the evaluated fix before them).
    history: FixHistory = field(default_factory=lambda: FixHistory(HISTORY_FIXES))
    late: dict[datetime, list[PlacedFix]] = field(default_factory=dict)
    audited: LazySet[tuple[str, datetime]] = field(default_factory=LazySet)
    late_open: MutableSet[datetime] = field(default_factory=LazySet)  # gaps not yet judged
    # Event times of the recent fixes of any kind (judged, rejected, late): a redelivery.
    recent_fix_ts: RecentTimes = field(default_factory=lambda: RecentTimes(RECENT_FIXES))
    newest_fix_ts: datetime | None = None
    # Device events (the recent ones, to know a redelivery).
    recent_events: RecentItems[tuple[datetime, DeviceEventType]] = field(
        default_factory=lambda: RecentItems(RECENT_EVENTS)
    )
    strap: Latch = field(default_factory=Latch)
    case: Latch = field(default_factory=Latch)
    power: Latch = field(default_factory=Latch)
    battery: BatteryState = field(default_factory=BatteryState)
    # The earliest pending wake-up in the engine's deadline heap (arrival clock).
    scheduled_at: datetime | None = None


@dataclass(slots=True)
class RuleInstance:
    """One rule for one device (and zone): violated or not, since when, and recent
    violation intervals (start, end or None while it lasts)."""

    active: bool = False
    since: datetime | None = None
    intervals: RecentItems[list[datetime | None]] = field(
        default_factory=lambda: RecentItems(RECENT_INTERVALS)
    )

    def overlaps(self, start: datetime, end: datetime | None) -> bool:
        for began, ended in self.intervals:
            assert began is not None
            if (end is None or began <= end) and (ended is None or start <= ended):
                return True
        return False


InstanceKey = tuple[str, RuleId, str | None]  # (device_id, rule, zone_id)
SubjectKey = tuple[str, RuleId, str | None]  # (subject_id, rule, zone_id)


class RuleStates:
    """Rule instances per device, folded into one condition per (subject, rule, zone).

    Alerts are keyed by subject, so with two devices (a tag and a phone) the subject's
    condition is raised when the first device violates and cleared when the last stops;
    findings are emitted only on those changes."""

    def __init__(self, stats: Counter[str]) -> None:
        self._instances: dict[InstanceKey, RuleInstance] = {}
        self._holders: dict[SubjectKey, set[str]] = {}
        self._stats = stats

    def get(self, device_id: str, rule: RuleId, zone_id: str | None) -> RuleInstance | None:
        return self._instances.get((device_id, rule, zone_id))

    def is_active(self, device_id: str, rule: RuleId, zone_id: str | None = None) -> bool:
        instance = self._instances.get((device_id, rule, zone_id))
        return instance is not None and instance.active

    def set(
        self,
        config: CoreConfig,
        subject: SubjectSpec,
        device_id: str,
        rule: RuleId,
        zone_id: str | None,
        violated: bool,
        at: datetime,
        evidence: dict[str, Any],
        reason: str,
    ) -> list[Finding]:
        instance = self._instances.setdefault((device_id, rule, zone_id), RuleInstance())
        if instance.active is violated:
            return []
        at = at.astimezone(UTC)  # window starts carry the subject's zone; alert ids hash UTC
        instance.active, instance.since = violated, at
        if violated:
            instance.intervals.append([at, None])
        elif instance.intervals and instance.intervals[-1][1] is None:
            instance.intervals[-1][1] = at
        holders = self._holders.setdefault((subject.subject_id, rule, zone_id), set())
        if violated:
            first = not holders
            holders.add(device_id)
            if not first:
                return []  # another device of the subject already holds this condition
        else:
            holders.discard(device_id)
            if holders:
                return []
        kind = FindingKind.RAISED if violated else FindingKind.CLEARED
        self._stats[f"finding_{rule.value}_{kind.value}"] += 1
        return [
            Finding(
                subject_id=subject.subject_id,
                device_id=device_id,
                rule=rule,
                zone_id=zone_id,
                tier=config.rules.tier(rule),
                kind=kind,
                at=at,
                evidence=evidence,
                reason=reason,
            )
        ]

    def pulse(
        self,
        config: CoreConfig,
        subject: SubjectSpec,
        device_id: str,
        rule: RuleId,
        zone_id: str | None,
        start: datetime,
        end: datetime,
        evidence: dict[str, Any],
        reason: str,
        clear_evidence: dict[str, Any],
        clear_reason: str,
    ) -> list[Finding]:
        """A violation learnt after it ended (between two fixes, from late fixes, or a
        silence no tick saw): raised at its start and cleared at its end, together. Nothing
        if the condition is already raised: the open alert covers it."""
        if self.is_active(device_id, rule, zone_id):
            return []
        findings = self.set(config, subject, device_id, rule, zone_id, True, start, evidence,
                            reason)
        findings += self.set(
            config, subject, device_id, rule, zone_id, False, max(start, end), clear_evidence,
            clear_reason,
        )
        return findings


@dataclass(slots=True)
class EvalContext:
    """What a rule module needs to judge one device: the config in force, the subject and
    device, its state, the rule instances and the engine's counters."""

    config: CoreConfig
    subject: SubjectSpec
    device_id: str
    kind: DeviceKind
    state: DeviceState
    rules: RuleStates
    stats: Counter[str]

    def set(
        self,
        rule: RuleId,
        zone_id: str | None,
        violated: bool,
        at: datetime,
        evidence: dict[str, Any],
        reason: str,
    ) -> list[Finding]:
        return self.rules.set(
            self.config, self.subject, self.device_id, rule, zone_id, violated, at, evidence,
            reason,
        )

    def pulse(
        self,
        rule: RuleId,
        zone_id: str | None,
        start: datetime,
        end: datetime,
        evidence: dict[str, Any],
        reason: str,
        clear_evidence: dict[str, Any],
        clear_reason: str,
    ) -> list[Finding]:
        return self.rules.pulse(
            self.config, self.subject, self.device_id, rule, zone_id, start, end, evidence,
            reason, clear_evidence, clear_reason,
        )

    def active(self, rule: RuleId, zone_id: str | None = None) -> bool:
        return self.rules.is_active(self.device_id, rule, zone_id)

    @property
    def thresholds(self) -> DeviceThresholds:
        return self.config.thresholds(self.subject, self.kind)
