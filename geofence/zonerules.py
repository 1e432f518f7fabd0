"""Zone rules: where a device is against the zones of its subject, decided without crying
wolf. Pure: fixes and event times in, findings out.

Each zone a subject is held to is a *track*: one `Membership` (confirmed presence with
dwell) fed by every evaluated fix. The rules then read the tracks:

| rule               | track                       | violating | in force                     |
|--------------------|-----------------------------|-----------|------------------------------|
| boundary_exit      | permitted zone              | outside   | always, except during leave  |
| curfew_away        | home                        | outside   | curfew, except during leave  |
| inclusion_away     | scheduled place (work)      | outside   | its windows after grace      |
| leave_area_exit    | permitted+destination+route | outside   | during the leave             |
| exclusion_entry    | exclusion zone              | inside    | always or its schedule       |
| exclusion_approach | exclusion zone + band       | inside    | as its exclusion             |
| exclusion_crossed  | segment between two fixes   | crosses   | as its exclusion             |

Late fixes (older than the newest evaluated one) never move a track; they are audited for a
violation the live stream missed, which is then reported as raised and cleared together.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shapely.geometry.base import BaseGeometry

from alerts.model import Finding, RuleId
from geofence.config import CoreConfig, ExclusionAssignment, SubjectSpec, ZoneRuleParams
from geofence.observation import LocationFix
from geofence.state import EvalContext, Membership, PlacedFix
from geofence.windows import (
    WindowFn,
    boundary_window,
    curfew_window,
    exclusion_window,
    inclusion_window,
    leave_window,
)
from geofence.zones import (
    Presence,
    Zone,
    ZoneIndex,
    exclusion_presence,
    inclusion_presence,
)

APPROACH_SUFFIX = "#approach"
LEAVE_PREFIX = "leave:"
# A leave's widened area is tracked from a day before it starts, so its presence is already
# confirmed when the leave begins.
LEAVE_TRACK_LEAD = timedelta(days=1)
# How many late fixes an audit finding quotes as evidence.
LATE_EVIDENCE_FIXES = 5
# The presence skip (`ZoneRules._update_tracks`): zones farther than this from a fix are not
# looked at for how far it may move, so it never moves farther than this unmeasured.
PRESENCE_SKIP_SEARCH_M = 250.0
# Taken off every skip reach: GEOS distances and the projection are exact to ~1e-9 m, the
# Lipschitz argument needs them exact, and a centimetre costs nothing.
PRESENCE_SKIP_EPSILON_M = 0.01
# A fix reached and left faster than this (~36 km/h), with the next fix back where the
# device came from, is an outlier for the crossing rule.
SPIKE_SPEED_MPS = 10.0


def approach_key(zone_id: str) -> str:
    return zone_id + APPROACH_SUFFIX


def leave_key(leave_id: str) -> str:
    return LEAVE_PREFIX + leave_id


@dataclass(frozen=True, slots=True)
class Track:
    """One zone (or widened area) a device's presence is confirmed against."""

    key: str
    zone: Zone
    rule: RuleId  # whose dwell parameters apply


@dataclass(slots=True)
class PresenceAnchors:
    """Where each zone track of a device (and the subject's exclusions together) was last
    measured, and how far a later fix may be from there (metres moved plus metres of
    accuracy changed) with the same presence and the same exclusion zones measured.
    Signed distance to an edge, and distance to a box, change by at most the distance
    moved (1-Lipschitz), so such a fix would feed the track what it was fed last time,
    which changes nothing (`_settled`); it is not measured.

    Valid for one config and one list of tracks. `slots` holds, per track in order and
    then for the exclusions, x, y, accuracy and reach (a reach <= 0: no anchor): one
    array of floats, since every device keeps one (~200 bytes, not ~700 as objects)."""

    config: CoreConfig
    tracks: list[Track]
    track_keys: tuple[str, ...] | None  # kept only when the list is rebuilt per fix (leave)
    slots: array[float]

    @classmethod
    def fresh(cls, config: CoreConfig, tracks: list[Track], rebuilt: bool) -> PresenceAnchors:
        keys = tuple(t.key for t in tracks) if rebuilt else None
        return cls(config, tracks, keys, array("d", [0.0, 0.0, 0.0, -1.0]) * (len(tracks) + 1))

    def fits(self, config: CoreConfig, tracks: list[Track]) -> bool:
        if self.config is not config:
            return False
        if self.tracks is tracks:
            return True
        return self.track_keys is not None and self.track_keys == tuple(t.key for t in tracks)

    def within(self, index: int, xy: tuple[float, float], accuracy_m: float) -> bool:
        base = 4 * index
        slots = self.slots
        reach = slots[base + 3]
        return reach > 0.0 and (
            math.hypot(xy[0] - slots[base], xy[1] - slots[base + 1])
            + abs(accuracy_m - slots[base + 2])
            < reach
        )

    def set(self, index: int, placed: PlacedFix, reach: float) -> None:
        """Anchor slot `index` at this fix (reach already less the epsilon)."""
        base = 4 * index
        slots = self.slots
        slots[base], slots[base + 1] = placed.xy
        slots[base + 2], slots[base + 3] = placed.fix.accuracy_m, reach


@dataclass(frozen=True, slots=True)
class _SubjectZones:
    """A subject's exclusions, looked up by zone id, with their own spatial index."""

    assignments: dict[str, ExclusionAssignment]
    keys: frozenset[str]  # membership keys of entry and approach tracks
    index: ZoneIndex
    max_band_m: float


@dataclass(frozen=True, slots=True)
class _Texts:
    """A zone rule's reasons. The distance to the edge is measured only when it is raised."""

    zone: Zone
    raised_by_fix: str
    raised_by_clock: str
    back: str
    ended: str
    edge_outside: bool = True

    def raised(self, placed: PlacedFix | None) -> str:
        if placed is None:
            return self.raised_by_clock
        return self.raised_by_fix + _edge_text(self.zone, placed, self.edge_outside)


def _ping(fix: LocationFix | None) -> dict[str, Any]:
    return {"ping": fix.to_wire()} if fix is not None else {}


def _edge_text(zone: Zone, placed: PlacedFix | None, outside: bool) -> str:
    if placed is None:
        return ""
    signed = zone.signed_distance_m(*placed.xy, placed.point)
    side = "outside" if outside else "inside"
    return (
        f": {abs(signed):,.0f} m {side} its edge (accuracy {placed.fix.accuracy_m:.0f} m)"
    )


def _point_within(zone: Zone, placed: PlacedFix, cap_m: float) -> BaseGeometry | None:
    """The fix's point if the zone's capped distance may need it (its bounding box is
    within the cap): the point is built only then."""
    return placed.point if zone.box_within(*placed.xy, cap_m) else None


def _inclusion_presence(zone: Zone, placed: PlacedFix, params: ZoneRuleParams) -> Presence:
    accuracy = placed.fix.accuracy_m
    cap = accuracy + params.margin_m
    signed = zone.signed_distance_capped_m(*placed.xy, cap, _point_within(zone, placed, cap))
    return inclusion_presence(signed, accuracy, params.margin_m)


def _exclusion_presences(
    zone: Zone,
    placed: PlacedFix,
    entry: ZoneRuleParams,
    approach: ZoneRuleParams,
    band_m: float,
) -> tuple[Presence, Presence | None]:
    accuracy = placed.fix.accuracy_m
    cap = accuracy + max(entry.margin_m, approach.margin_m) + band_m
    signed = zone.signed_distance_capped_m(*placed.xy, cap, _point_within(zone, placed, cap))
    inside = exclusion_presence(signed, accuracy, entry.margin_m, entry.max_accuracy_m)
    if band_m <= 0.0:
        return inside, None
    near = exclusion_presence(
        signed - band_m, accuracy, approach.margin_m, approach.max_accuracy_m
    )
    return inside, near


def _settled(membership: Membership, presence: Presence) -> bool:
    """Whether feeding `presence` again would leave the membership exactly as it is."""
    return presence is Presence.UNCERTAIN or (
        presence is membership.confirmed and membership.pending is None
    )


def _inclusion_slack(
    presence: Presence, signed: float, accuracy: float, margin: float, exact: bool
) -> float:
    """How far `signed` and `accuracy` may each move (their changes summed) with
    `inclusion_presence` still `presence`; negative if that is not known. `signed` is the
    true signed distance when `exact`, else a bound on it (then only INSIDE/OUTSIDE, where
    the presence is monotone in the distance, can be kept)."""
    if inclusion_presence(signed, accuracy, margin) is not presence:
        return -1.0
    if presence is Presence.OUTSIDE:
        return signed - accuracy - margin
    if presence is Presence.INSIDE:
        return min(-signed, margin - accuracy - signed)
    if not exact:
        return -1.0
    not_outside = margin - (signed - accuracy)
    not_inside = max(signed, accuracy + signed - margin)
    return min(not_outside, not_inside)


def _exclusion_slack(
    presence: Presence, signed: float, accuracy: float, params: ZoneRuleParams, exact: bool
) -> float:
    """As `_inclusion_slack`, for `exclusion_presence`."""
    margin, max_accuracy = params.margin_m, params.max_accuracy_m
    if exclusion_presence(signed, accuracy, margin, max_accuracy) is not presence:
        return -1.0
    if presence is Presence.OUTSIDE:
        return signed - accuracy - margin
    if presence is Presence.INSIDE:
        return min(accuracy - signed - margin, max_accuracy - accuracy)
    if not exact:
        return -1.0
    not_outside = margin - (signed - accuracy)
    not_inside = max(accuracy - max_accuracy, margin - (accuracy - signed))
    return min(not_outside, not_inside)


def _inclusion_presence_slack(
    zone: Zone, placed: PlacedFix, params: ZoneRuleParams
) -> tuple[Presence, float]:
    """`_inclusion_presence`, and how far the next fix may move with it unchanged."""
    accuracy = placed.fix.accuracy_m
    cap = accuracy + params.margin_m
    value, bound, reach, exact = zone.signed_distance_bounded_m(
        *placed.xy, cap, _point_within(zone, placed, cap)
    )
    presence = inclusion_presence(value, accuracy, params.margin_m)
    slack = _inclusion_slack(presence, bound, accuracy, params.margin_m, exact)
    return presence, min(slack, reach)


def _exclusion_presences_slack(
    zone: Zone,
    placed: PlacedFix,
    entry: ZoneRuleParams,
    approach: ZoneRuleParams,
    band_m: float,
) -> tuple[tuple[Presence, Presence | None], float]:
    """`_exclusion_presences`, and how far the next fix may move with both unchanged."""
    accuracy = placed.fix.accuracy_m
    cap = accuracy + max(entry.margin_m, approach.margin_m) + band_m
    value, bound, reach, exact = zone.signed_distance_bounded_m(
        *placed.xy, cap, _point_within(zone, placed, cap)
    )
    inside = exclusion_presence(value, accuracy, entry.margin_m, entry.max_accuracy_m)
    slack = min(reach, _exclusion_slack(inside, bound, accuracy, entry, exact))
    if band_m <= 0.0:
        return (inside, None), slack
    near = exclusion_presence(
        value - band_m, accuracy, approach.margin_m, approach.max_accuracy_m
    )
    slack = min(slack, _exclusion_slack(near, bound - band_m, accuracy, approach, exact))
    return (inside, near), slack


def _approach_may_raise(entry: Membership | None, band: Membership) -> bool:
    """An approach warning is for someone who came near and stayed out: not while they are
    (or are about to be confirmed) inside, and not for the walk out after a visit."""
    if entry is None:
        return True
    if Presence.INSIDE in (entry.confirmed, entry.pending):
        return False
    left_during_this_stay = (
        entry.previous is Presence.INSIDE
        and entry.confirmed_since is not None
        and band.confirmed_since is not None
        and entry.confirmed_since >= band.confirmed_since
    )
    return not left_during_this_stay


class ZoneRules:
    """Stateless apart from per-config caches; all device state lives in `DeviceState`."""

    def __init__(self, skip_unmoved: bool = True) -> None:
        # False only to check the skip against the full measurement (tests, benchmarks).
        self.skip_unmoved = skip_unmoved
        self._cache_for: CoreConfig | None = None
        self._subject_zones: dict[str, _SubjectZones] = {}
        self._fixed_tracks: dict[str, list[Track]] = {}

    def _check_cache(self, config: CoreConfig) -> None:
        if self._cache_for is not config:
            self._cache_for, self._subject_zones, self._fixed_tracks = config, {}, {}

    def _tracks_at(self, config: CoreConfig, subject: SubjectSpec, at: datetime) -> list[Track]:
        """`inclusion_tracks`, kept per subject while it has no leave (then they do not
        depend on the time): every fix asks."""
        if subject.leaves:
            return self.inclusion_tracks(config, subject, at)
        self._check_cache(config)
        tracks = self._fixed_tracks.get(subject.subject_id)
        if tracks is None:
            tracks = self._fixed_tracks[subject.subject_id] = self.inclusion_tracks(
                config, subject, at
            )
        return tracks

    def _zones_of(self, config: CoreConfig, subject: SubjectSpec) -> _SubjectZones:
        self._check_cache(config)
        cached = self._subject_zones.get(subject.subject_id)
        if cached is None:
            assignments = {a.zone_id: a for a in subject.exclusions}
            keys = set(assignments)
            keys.update(approach_key(a.zone_id) for a in subject.exclusions if a.approach_m > 0)
            cached = _SubjectZones(
                assignments,
                frozenset(keys),
                config.subject_exclusion_index.get(subject.subject_id, ZoneIndex([])),
                max((a.approach_m for a in subject.exclusions), default=0.0),
            )
            self._subject_zones[subject.subject_id] = cached
        return cached

    # ------------------------------------------------------------------ tracks

    @staticmethod
    def inclusion_tracks(config: CoreConfig, subject: SubjectSpec, at: datetime) -> list[Track]:
        zones = config.zones
        tracks: list[Track] = []
        if subject.permitted_zone_id is not None:
            zid = subject.permitted_zone_id
            tracks.append(Track(zid, zones[zid], RuleId.BOUNDARY_EXIT))
        if subject.home_zone_id is not None:
            zid = subject.home_zone_id
            tracks.append(Track(zid, zones[zid], RuleId.CURFEW_AWAY))
        for inclusion in subject.inclusions:
            zid = inclusion.zone_id
            tracks.append(Track(zid, zones[zid], RuleId.INCLUSION_AWAY))
        for leave in subject.leaves:
            if leave.start - LEAVE_TRACK_LEAD <= at < leave.exempt_until:
                tracks.append(Track(leave_key(leave.leave_id), leave.area, RuleId.LEAVE_AREA_EXIT))
        return tracks

    def _update_tracks(self, ctx: EvalContext, placed: PlacedFix) -> bool:
        """Feed one in-order fix to every track; True if any confirmed or pending presence
        changed (otherwise no zone rule can change at this fix).

        A track (or the exclusions together) is not measured at a fix too close to the
        fix it was last measured at to change its presence (`PresenceAnchors`): feeding it
        would change nothing."""
        config, subject, state = ctx.config, ctx.subject, ctx.state
        rules = config.rules
        ts = placed.fix.ts
        accuracy = placed.fix.accuracy_m
        xy = placed.xy
        tracks = self._tracks_at(config, subject, ts)
        anchors = state.presence_anchors
        if anchors is None or not self.skip_unmoved or not anchors.fits(config, tracks):
            anchors = PresenceAnchors.fresh(config, tracks, rebuilt=bool(subject.leaves))
            state.presence_anchors = anchors if self.skip_unmoved else None
        changed = False
        memberships = state.memberships
        unmoved = True
        for index, track in enumerate(tracks):
            if anchors.within(index, xy, accuracy):
                continue
            unmoved = False
            params = rules.zone_params(track.rule)
            presence, slack = _inclusion_presence_slack(track.zone, placed, params)
            changed |= _feed(memberships, track.key, presence, ts, params)
            if not _settled(memberships[track.key], presence):
                slack = -1.0
            anchors.set(index, placed,
                        min(slack, PRESENCE_SKIP_SEARCH_M) - PRESENCE_SKIP_EPSILON_M)
        zones = self._zones_of(config, subject)
        if zones.assignments and not anchors.within(len(tracks), xy, accuracy):
            unmoved = False
            changed |= self._update_exclusions(ctx, placed, zones, anchors, len(tracks))
        if unmoved:
            ctx.stats["fix_presence_unmoved"] += 1
        return changed

    @staticmethod
    def _update_exclusions(
        ctx: EvalContext,
        placed: PlacedFix,
        zones: _SubjectZones,
        anchors: PresenceAnchors,
        slot: int,
    ) -> bool:
        rules, memberships = ctx.config.rules, ctx.state.memberships
        ts = placed.fix.ts
        entry = rules.zone_params(RuleId.EXCLUSION_ENTRY)
        approach = rules.zone_params(RuleId.EXCLUSION_APPROACH)
        radius = placed.fix.accuracy_m + max(entry.margin_m, approach.margin_m) + zones.max_band_m
        x, y = placed.xy
        # Bounding-box candidates: a zone left out is clear of the circle, margin and band;
        # one let in is measured exactly below. `reach`: how far the next fix may be from
        # this one with the same candidates and every presence as now.
        candidates, reach = zones.index.candidates_with_reach(
            x - radius, y - radius, x + radius, y + radius, PRESENCE_SKIP_SEARCH_M
        )
        changed = False
        measured: set[str] = set()
        for zone in candidates:
            assignment = zones.assignments[zone.zone_id]
            (inside, near), slack = _exclusion_presences_slack(
                zone, placed, entry, approach, assignment.approach_m
            )
            changed |= _feed(memberships, zone.zone_id, inside, ts, entry)
            measured.add(zone.zone_id)
            settled = _settled(memberships[zone.zone_id], inside)
            if near is not None:
                key = approach_key(zone.zone_id)
                changed |= _feed(memberships, key, near, ts, approach)
                measured.add(key)
                settled = settled and _settled(memberships[key], near)
            reach = min(reach, slack if settled else -1.0)
        # Zones the index did not return are clear of the whole circle, band and margin.
        # Once confirmed clear, with nothing pending or raised, their track is forgotten: it
        # holds nothing a fresh one would not, and a subject with thousands of zones (all
        # the schools of a district) keeps only the few it is near.
        for key in list(memberships):
            if key in zones.keys and key not in measured:
                params = approach if key.endswith(APPROACH_SUFFIX) else entry
                changed |= _feed(memberships, key, Presence.OUTSIDE, ts, params)
                membership = memberships[key]
                zone_id = key.removesuffix(APPROACH_SUFFIX)
                if (
                    membership.confirmed is Presence.OUTSIDE
                    and membership.pending is None
                    and not ctx.active(RuleId.EXCLUSION_ENTRY, zone_id)
                    and not ctx.active(RuleId.EXCLUSION_APPROACH, zone_id)
                ):
                    del memberships[key]
                else:
                    reach = -1.0  # kept: the next fix would be fed to it again
        anchors.set(slot, placed, reach - PRESENCE_SKIP_EPSILON_M)
        return changed

    # ------------------------------------------------------------------ entry points

    def on_fix(
        self,
        ctx: EvalContext,
        placed: PlacedFix,
        previous: PlacedFix | None,
        window_may_have_changed: bool = True,
    ) -> list[Finding]:
        """An in-order, plausible fix: update the tracks, look for a crossing since the
        previous fix, then judge every zone rule at the fix's time.

        The rules are judged only if a presence changed or a schedule/leave boundary passed
        since they were last judged (the caller knows the boundaries): otherwise nothing can
        change, and most fixes of a day are like that."""
        changed = self._update_tracks(ctx, placed)
        findings: list[Finding] = []
        state = ctx.state
        # A crossing is inferred for the segment before this fix, once this fix shows that
        # the segment's end was real: it continues from there rather than returning to the
        # start (a single 1-3 km outlier makes two long segments that cut through anything).
        candidate = state.crossing_candidate
        spike = False
        if candidate is not None and previous is not None and candidate[1] is previous:
            start, end = candidate
            if _spike(start, end, placed):
                # The segment's end was an outlier: no segment into it or out of it is a path.
                ctx.stats["crossing_segment_unsupported"] += 1
                spike = True
            else:
                findings += self._crossings(ctx, start, end)
        state.crossing_candidate = (
            (previous, placed) if previous is not None and not spike else None
        )
        # Never judge earlier than a tick already did (a fix delivered after the tick that
        # opened or closed a window must not undo it).
        at = placed.fix.ts if state.clock is None else max(state.clock, placed.fix.ts)
        state.clock = at
        if changed or window_may_have_changed or state.judge_all:
            state.judge_all = False
            findings += self.evaluate(ctx, at, placed)
        else:
            ctx.stats["fix_rules_unchanged"] += 1
        return findings

    def on_time(self, ctx: EvalContext, at: datetime) -> list[Finding]:
        """A schedule or leave boundary passed (event time `at`): judge the rules again."""
        state = ctx.state
        if state.last_fix is None or state.last_xy is None:
            return []
        if state.clock is not None and at <= state.clock:
            return []
        state.clock = at
        return self.evaluate(ctx, at, None)

    # ------------------------------------------------------------------ rules

    def evaluate(self, ctx: EvalContext, at: datetime, placed: PlacedFix | None) -> list[Finding]:
        config, subject, state = ctx.config, ctx.subject, ctx.state
        last = placed.fix if placed is not None else state.last_fix
        evidence = last  # turned into {"ping": ...} only if a finding is emitted
        zones = config.zones
        findings: list[Finding] = []

        permitted = subject.permitted_zone_id
        if permitted is not None:
            findings += self._windowed(
                ctx, RuleId.BOUNDARY_EXIT, permitted, permitted, boundary_window(subject),
                Presence.OUTSIDE, at, evidence, placed,
                _Texts(
                    zones[permitted],
                    f"Left permitted area {permitted}",
                    f"Outside permitted area {permitted} when approved leave ended",
                    f"Back inside permitted area {permitted}",
                    f"Approved leave began; permitted area {permitted} suspended",
                ),
            )

        home = subject.home_zone_id
        curfew = curfew_window(subject, config.rules.curfew_grace_seconds)
        if home is not None and curfew is not None:
            findings += self._windowed(
                ctx, RuleId.CURFEW_AWAY, home, home, curfew, Presence.OUTSIDE, at, evidence,
                placed,
                _Texts(
                    zones[home],
                    f"Away from home {home} during curfew",
                    f"Away from home {home} when curfew began",
                    f"Back home {home}",
                    "Curfew ended (or approved leave began)",
                ),
            )

        for inclusion in subject.inclusions:
            zid = inclusion.zone_id
            schedule_id = inclusion.schedule.schedule_id
            findings += self._windowed(
                ctx, RuleId.INCLUSION_AWAY, zid, zid, inclusion_window(subject, inclusion),
                Presence.OUTSIDE, at, evidence, placed,
                _Texts(
                    zones[zid],
                    f"Away from {zid} during schedule {schedule_id}",
                    f"Not at {zid} when schedule {schedule_id} began (after its grace)",
                    f"At {zid} again",
                    f"Schedule {schedule_id} ended (or approved leave began)",
                ),
            )

        for leave in subject.leaves:
            key = leave_key(leave.leave_id)
            if key not in state.memberships:
                continue
            findings += self._windowed(
                ctx, RuleId.LEAVE_AREA_EXIT, key, key, leave_window(leave), Presence.OUTSIDE,
                at, evidence, placed,
                _Texts(
                    leave.area,
                    f"Left the approved leave area of {leave.leave_id} (destination "
                    f"{leave.destination_zone_id} and route)",
                    f"Outside the approved leave area of {leave.leave_id} when it began",
                    f"Back inside the approved leave area of {leave.leave_id}",
                    f"Approved leave {leave.leave_id} ended",
                ),
            )

        findings += self._exclusion_rules(ctx, at, placed, evidence)
        return findings

    def _exclusion_rules(
        self, ctx: EvalContext, at: datetime, placed: PlacedFix | None,
        evidence: LocationFix | None,
    ) -> list[Finding]:
        zones = self._zones_of(ctx.config, ctx.subject)
        if not zones.assignments:
            return []
        memberships = ctx.state.memberships
        findings: list[Finding] = []
        # Only zones this device has come near have a membership; the rest cannot be violated.
        for zone_id in [k for k in memberships if k in zones.assignments]:
            assignment = zones.assignments[zone_id]
            zone = ctx.config.zones[zone_id]
            window = exclusion_window(ctx.subject, assignment)
            entry = memberships[zone_id]
            findings += self._windowed(
                ctx, RuleId.EXCLUSION_ENTRY, zone_id, zone_id, window, Presence.INSIDE, at,
                evidence, placed,
                _Texts(
                    zone,
                    f"Entered exclusion zone {zone_id}",
                    f"In exclusion zone {zone_id} when its schedule began",
                    f"Left exclusion zone {zone_id}",
                    f"Schedule of exclusion zone {zone_id} ended",
                    edge_outside=False,
                ),
            )
            band = memberships.get(approach_key(zone_id))
            if band is None:
                continue
            findings += self._windowed(
                ctx, RuleId.EXCLUSION_APPROACH, zone_id, approach_key(zone_id), window,
                Presence.INSIDE, at, evidence, placed,
                _Texts(
                    zone,
                    f"Near exclusion zone {zone_id} (within its "
                    f"{assignment.approach_m:.0f} m warning band)",
                    f"Near exclusion zone {zone_id} when its schedule began",
                    f"Moved away from exclusion zone {zone_id}",
                    f"Schedule of exclusion zone {zone_id} ended",
                ),
                raise_ok=_approach_may_raise(entry, band),
            )
        return findings

    @staticmethod
    def _windowed(
        ctx: EvalContext,
        rule: RuleId,
        zone_id: str,
        track_key: str,
        window_fn: WindowFn,
        violating: Presence,
        at: datetime,
        evidence: LocationFix | None,
        placed: PlacedFix | None,
        texts: _Texts,
        raise_ok: bool = True,
    ) -> list[Finding]:
        """A zone rule in force while `window_fn` says so.

        The violation starts at the later of the window's start and the time the presence was
        confirmed; it ends when the device is confirmed back (the first fix of that run) or
        when the window closes, whichever is first. All are event times, so it does not
        matter when the tick that notices runs."""
        instance = ctx.rules.get(ctx.device_id, rule, zone_id)
        active = instance is not None and instance.active
        membership = ctx.state.memberships.get(track_key)
        window = window_fn(at)
        in_violation = (
            window is not None and membership is not None and membership.confirmed is violating
        )
        if in_violation:
            if active or not raise_ok or window is None or membership is None:
                return []
            started = membership.confirmed_since or at
            return ctx.set(
                rule, zone_id, True, max(window[0], started), _ping(evidence),
                texts.raised(placed),
            )
        if instance is None or not active or instance.since is None:
            return []
        end = at
        why = texts.back
        if (
            membership is not None
            and membership.confirmed is not violating
            and membership.confirmed_since is not None
        ):
            end = min(end, membership.confirmed_since)
        raised_window = window_fn(instance.since)
        if raised_window is not None and raised_window != window and raised_window[1] <= end:
            end, why = raised_window[1], texts.ended
        elif window is None and (membership is None or membership.confirmed is violating):
            why = texts.ended
        return ctx.set(rule, zone_id, False, max(end, instance.since), _ping(evidence), why)

    # ------------------------------------------------------------------ segment crossing

    def _crossings(
        self, ctx: EvalContext, previous: PlacedFix, current: PlacedFix
    ) -> list[Finding]:
        """Exclusion zones passed through between two sparse fixes, both clearly outside.

        Only the subject's own zones that the segment touches are examined (STRtree query
        with the segment), then the straight line must run `min_chord_m` inside the zone.
        Reported one fix later (see `on_fix`), with the times the line entered and left."""
        config = ctx.config
        zones = self._zones_of(config, ctx.subject)
        if not zones.assignments:
            return []
        crossing = config.rules.crossing
        entry = config.rules.zone_params(RuleId.EXCLUSION_ENTRY)
        approach = config.rules.zone_params(RuleId.EXCLUSION_APPROACH)
        gap = current.fix.ts - previous.fix.ts
        gap_s = gap.total_seconds()
        if not 0.0 < gap_s <= crossing.max_gap_seconds:
            return []
        if math.dist(previous.xy, current.xy) < crossing.min_chord_m:
            return []  # too short a segment to run min_chord_m through anything
        if max(previous.fix.accuracy_m, current.fix.accuracy_m) > entry.max_accuracy_m:
            return []
        findings: list[Finding] = []
        for zone in zones.index.crossed_by(previous.xy, current.xy):
            zone_id = zone.zone_id
            if ctx.active(RuleId.EXCLUSION_ENTRY, zone_id):
                continue
            membership = ctx.state.memberships.get(zone_id)
            if membership is not None and Presence.INSIDE in (
                membership.confirmed, membership.pending
            ):
                continue  # the ordinary entry rule is already on it
            ends = [
                _exclusion_presences(zone, p, entry, approach, 0.0)[0]
                for p in (previous, current)
            ]
            if any(p is not Presence.OUTSIDE for p in ends):
                continue
            chord = zone.chord(previous.xy, current.xy)
            if chord is None or chord.length_m < crossing.min_chord_m:
                continue
            entered = previous.fix.ts + gap * chord.enter_fraction
            left = previous.fix.ts + gap * chord.leave_fraction
            if exclusion_window(ctx.subject, zones.assignments[zone_id])(entered) is None:
                continue
            evidence: dict[str, Any] = {
                "crossing": {
                    "from": previous.fix.to_wire(),
                    "to": current.fix.to_wire(),
                    "chord_m": round(chord.length_m, 1),
                }
            }
            ctx.stats["exclusion_crossing_inferred"] += 1
            findings += ctx.pulse(
                RuleId.EXCLUSION_CROSSED, zone_id, entered, left, evidence,
                f"Passed through exclusion zone {zone_id} between two fixes "
                f"{gap_s / 60.0:.0f} min apart: the straight line between them runs "
                f"{chord.length_m:,.0f} m inside it",
                evidence,
                f"Crossing of {zone_id} inferred; the later fix is outside",
            )
        return findings

    # ------------------------------------------------------------------ late fixes

    def on_late_fix(
        self,
        ctx: EvalContext,
        gap_start_ts: datetime,
        gap_end_ts: datetime | None,
        now: datetime,
        final: bool = False,
    ) -> list[Finding]:
        """Audit the late fixes that fell between two evaluated fixes for a violation the
        live stream missed (a visit during a coverage gap). Never moves a track; a violation
        already reported, or overlapping one, is not reported again.

        A backlog arrives in pieces and in any order (oldest or newest first), so the gap is
        only marked (`DeviceState.late_open`) as its fixes come in; it is judged once the
        backlog is complete (`final`): at the next in-order fix, or when the device has been
        quiet for a while (the engine's tick). Judged earlier, a newest-first backlog would
        date the violation at its last minutes."""
        if not final:
            ctx.state.late_open.add(gap_start_ts)
            return []
        state = ctx.state
        late = state.late.get(gap_start_ts, [])
        if not late:
            return []
        config, subject = ctx.config, ctx.subject
        rules = config.rules
        findings: list[Finding] = []
        candidates: list[tuple[Track, Presence, WindowFn]] = []
        for track in self.inclusion_tracks(config, subject, late[0].fix.ts):
            track_window = self._track_window(config, subject, track)
            if track_window is not None:
                candidates.append((track, Presence.OUTSIDE, track_window))
        zones = self._zones_of(config, subject)
        entry = rules.zone_params(RuleId.EXCLUSION_ENTRY)
        seen: set[str] = set()
        for placed in late:
            radius = placed.fix.accuracy_m + entry.margin_m
            for zone in zones.index.near(*placed.xy, radius):
                if zone.zone_id not in seen:
                    seen.add(zone.zone_id)
                    exclusion = exclusion_window(subject, zones.assignments[zone.zone_id])
                    track = Track(zone.zone_id, zone, RuleId.EXCLUSION_ENTRY)
                    candidates.append((track, Presence.INSIDE, exclusion))
        for track, violating, window_fn in candidates:
            if (track.key, gap_start_ts) in state.audited:
                continue
            params = rules.zone_params(track.rule)
            found = _violating_run(late, track, violating, params)
            if found is None:
                continue
            start, end_ts, run = found
            in_force = window_fn(start)
            if in_force is None:
                continue
            end = end_ts or (gap_end_ts if gap_end_ts is not None else run[-1].fix.ts)
            end = min(end, in_force[1])
            zone_id = track.key
            instance = ctx.rules.get(ctx.device_id, track.rule, zone_id)
            if instance is not None and (instance.active or instance.overlaps(start, end)):
                ctx.stats["late_violation_already_reported"] += 1
                continue
            state.audited.add((track.key, gap_start_ts))
            ctx.stats["late_violation_found"] += 1
            evidence: dict[str, Any] = {
                "late_fixes": [p.fix.to_wire() for p in run[:LATE_EVIDENCE_FIXES]],
                "delivered_at": now.isoformat(),
            }
            what = "outside" if violating is Presence.OUTSIDE else "inside"
            findings += ctx.pulse(
                track.rule, zone_id, start, end, evidence,
                f"{track.rule.value} at {zone_id}: {len(run)} fixes {what} it, delivered late "
                "(stored and forwarded by the device)",
                evidence,
                f"{track.rule.value} at {zone_id} had ended by the next fix",
            )
        return findings

    @staticmethod
    def _track_window(config: CoreConfig, subject: SubjectSpec, track: Track) -> WindowFn | None:
        if track.rule is RuleId.BOUNDARY_EXIT:
            return boundary_window(subject)
        if track.rule is RuleId.CURFEW_AWAY:
            return curfew_window(subject, config.rules.curfew_grace_seconds)
        if track.rule is RuleId.INCLUSION_AWAY:
            for inclusion in subject.inclusions:
                if inclusion.zone_id == track.key:
                    return inclusion_window(subject, inclusion)
            return None
        if track.rule is RuleId.LEAVE_AREA_EXIT:
            for leave in subject.leaves:
                if leave_key(leave.leave_id) == track.key:
                    return leave_window(leave)
        return None


def _violating_run(
    fixes: Iterable[PlacedFix], track: Track, violating: Presence, params: ZoneRuleParams
) -> tuple[datetime, datetime | None, list[PlacedFix]] | None:
    """The first run of fixes that would confirm the violating presence under the track's
    dwell: (its first fix's ts, the ts of the first fix after it that is not violating or
    None, the run), or None."""
    count = 0
    since: datetime | None = None
    run: list[PlacedFix] = []
    confirmed = False
    for placed in fixes:
        if track.rule is RuleId.EXCLUSION_ENTRY:
            presence = exclusion_presence(
                track.zone.signed_distance_m(*placed.xy, placed.point), placed.fix.accuracy_m,
                params.margin_m, params.max_accuracy_m,
            )
        else:
            presence = _inclusion_presence(track.zone, placed, params)
        if presence is Presence.UNCERTAIN:
            continue
        if presence is violating:
            if count == 0:
                since, run = placed.fix.ts, []
            count += 1
            run.append(placed)
            assert since is not None
            dwelt_s = (placed.fix.ts - since).total_seconds()
            if count >= params.dwell_fixes or (count > 1 and dwelt_s >= params.dwell_seconds):
                confirmed = True
        elif confirmed:
            assert since is not None
            return since, placed.fix.ts, run
        else:
            count = 0
    if confirmed and since is not None:
        return since, None, run
    return None


def _spike(before: PlacedFix, fix: PlacedFix, after: PlacedFix) -> bool:
    """Whether `fix` looks like an outlier between its neighbours: the next fix went back
    at least half-way to where the device came from, and getting there and back would
    have taken more than SPIKE_SPEED_MPS both ways (people do not dart through a school
    and back at city-driving speed between two fixes; multipath outliers do)."""
    out_m = math.dist(before.xy, fix.xy)
    if out_m <= 0.0 or math.dist(before.xy, after.xy) >= out_m / 2.0:
        return False
    out_s = (fix.fix.ts - before.fix.ts).total_seconds()
    back_s = (after.fix.ts - fix.fix.ts).total_seconds()
    back_m = math.dist(fix.xy, after.xy)
    return out_m > SPIKE_SPEED_MPS * out_s and back_m > SPIKE_SPEED_MPS * back_s


def _feed(
    memberships: dict[str, Membership],
    key: str,
    presence: Presence,
    ts: datetime,
    params: ZoneRuleParams,
) -> bool:
    """One presence into a track; True if its confirmed or pending presence changed."""
    membership = memberships.get(key)
    if membership is None:
        membership = memberships[key] = Membership()
        membership.observe(presence, ts, params)
        return True
    before = (membership.confirmed, membership.pending)
    membership.observe(presence, ts, params)
    return (membership.confirmed, membership.pending) != before


def insert_late(late: list[PlacedFix], placed: PlacedFix) -> None:
    """Keep a gap's late fixes sorted by event time."""
    keys = [p.fix.ts for p in late]
    late.insert(bisect.bisect(keys, placed.fix.ts), placed)
