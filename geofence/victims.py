"""Mobile exclusion zones around protected persons (bilateral monitoring). Pure.

A protected person's phone reports its position (`ProtectedPosition`, wire topic
`emon/v1/protected/<protected_id>/location`). Each subject linked to them must keep
`radius_m` away (`victim_proximity`, critical) and is warned inside a band of `warning_m`
beyond it (`victim_approach`, high). Every subject fix and every protected-person position
is a judgement of the pair, so an alert is raised also when the protected person walks
toward the subject.

Accuracy-aware and noise-disciplined like the fences: the distance less both accuracies
(could they be that close?) decides the level, fixes vaguer than `max_accuracy_m` and
positions older than `stale_seconds` are not used, and a level changes after `confirm`
judgements in a row agree (dated at the first of them).

Data minimisation: the protected person's position is kept in memory only (the newest one
per person), is never stored, logged or shown, and never enters an alert: the evidence
names the protected person's id, the subject's own fix, the distance rounded to 10 m and
who moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

from alerts.model import Finding, FindingKind, RuleId, Tier
from geofence.behaviour_config import BehaviourParams, ProtectedLink
from geofence.observation import LocationFix


@dataclass(frozen=True, slots=True)
class ProtectedPosition:
    """The newest position of a protected person's phone. Never stored nor logged."""

    protected_id: str
    ts: datetime
    lat: float
    lon: float
    accuracy_m: float
    received_at: datetime

    def __repr__(self) -> str:  # keep positions out of any log or traceback
        return f"ProtectedPosition({self.protected_id!r}, ts={self.ts.isoformat()})"


class Level(IntEnum):
    AWAY = 0
    BAND = 1
    INSIDE = 2


@dataclass(slots=True)
class _Placed:
    ts: datetime
    xy: tuple[float, float]
    accuracy_m: float


@dataclass(slots=True)
class _LinkState:
    confirmed: Level = Level.AWAY
    pending: Level | None = None
    pending_count: int = 0
    pending_since: datetime | None = None
    pending_moved: str = ""  # who moved at the first judgement of the pending run


class VictimRule:
    def __init__(self) -> None:
        self._protected: dict[str, _Placed] = {}
        self._subjects: dict[str, tuple[_Placed, LocationFix]] = {}
        self._links: dict[tuple[str, str], _LinkState] = {}

    def on_protected(
        self,
        params: BehaviourParams,
        position: ProtectedPosition,
        xy: tuple[float, float],
        tier_of: Callable[[RuleId], Tier],
    ) -> list[Finding]:
        held = self._protected.get(position.protected_id)
        if held is not None and position.ts <= held.ts:
            return []  # older than the newest known position
        if position.accuracy_m > params.victims.max_accuracy_m:
            return []
        placed = _Placed(position.ts, xy, position.accuracy_m)
        self._protected[position.protected_id] = placed
        findings: list[Finding] = []
        for link in params.protected.get(position.protected_id, ()):
            subject = self._subjects.get(link.subject_id)
            if subject is not None:
                findings += self._judge(params, link, subject[0], subject[1], placed,
                                        "protected_person", tier_of)
        return findings

    def on_fix(
        self,
        params: BehaviourParams,
        subject_id: str,
        fix: LocationFix,
        xy: tuple[float, float],
        tier_of: Callable[[RuleId], Tier],
    ) -> list[Finding]:
        links = params.links_of.get(subject_id)
        if not links or fix.accuracy_m > params.victims.max_accuracy_m:
            return []
        held = self._subjects.get(subject_id)
        if held is not None and fix.ts <= held[0].ts:
            return []  # an older fix of the subject's other device
        placed = _Placed(fix.ts, xy, fix.accuracy_m)
        self._subjects[subject_id] = (placed, fix)
        findings: list[Finding] = []
        for link in links:
            protected = self._protected.get(link.protected_id)
            if protected is not None:
                findings += self._judge(params, link, placed, fix, protected, "subject",
                                        tier_of)
        return findings

    def _judge(
        self,
        params: BehaviourParams,
        link: ProtectedLink,
        subject: _Placed,
        fix: LocationFix,
        protected: _Placed,
        moved: str,
        tier_of: Callable[[RuleId], Tier],
    ) -> list[Finding]:
        stale = timedelta(seconds=params.victims.stale_seconds)
        if abs(subject.ts - protected.ts) > stale:
            return []  # one of the two positions says nothing about now
        at = max(subject.ts, protected.ts)
        distance = math.dist(subject.xy, protected.xy)
        closest = max(0.0, distance - subject.accuracy_m - protected.accuracy_m)
        if closest <= link.radius_m:
            level = Level.INSIDE
        elif link.warning_m > 0 and closest <= link.radius_m + link.warning_m:
            level = Level.BAND
        else:
            level = Level.AWAY
        state = self._links.setdefault((link.subject_id, link.protected_id), _LinkState())
        if level is state.confirmed:
            state.pending, state.pending_count, state.pending_since = None, 0, None
            return []
        if level is not state.pending or state.pending_since is None:
            state.pending, state.pending_count, state.pending_since = level, 0, at
            state.pending_moved = moved
        state.pending_count += 1
        if state.pending_count < params.victims.confirm:
            return []
        since, moved = state.pending_since, state.pending_moved
        # Rounded to 10 m: the alert carries no finer geometry of the protected person.
        shown = round(closest, -1)
        before, state.confirmed = state.confirmed, level
        state.pending, state.pending_count, state.pending_since = None, 0, None
        evidence: dict[str, Any] = {
            "protected_id": link.protected_id,
            "distance_m": shown,
            "radius_m": link.radius_m,
            "warning_m": link.warning_m,
            "moved": moved,
            "fix": fix.to_wire(),  # the subject's own fix; never the protected person's
        }
        findings: list[Finding] = []
        who = (
            "The protected person moved toward the subject: "
            if moved == "protected_person" else ""
        )

        def finding(rule: RuleId, kind: FindingKind, reason: str) -> Finding:
            return Finding(
                subject_id=link.subject_id, device_id=fix.device_id, rule=rule,
                zone_id=f"protected:{link.protected_id}", tier=tier_of(rule), kind=kind,
                at=since.astimezone(UTC), evidence=evidence, reason=reason,
            )

        if before is Level.INSIDE:
            findings.append(finding(
                RuleId.VICTIM_PROXIMITY, FindingKind.CLEARED,
                f"Now about {shown:.0f} m from protected person {link.protected_id}, "
                f"beyond the {link.radius_m:g} m limit.",
            ))
        if before is Level.BAND:
            findings.append(finding(
                RuleId.VICTIM_APPROACH, FindingKind.CLEARED,
                f"No longer in the warning band around protected person {link.protected_id}.",
            ))
        if level is Level.INSIDE:
            findings.append(finding(
                RuleId.VICTIM_PROXIMITY, FindingKind.RAISED,
                f"{who}within about {shown:.0f} m of protected person "
                f"{link.protected_id}, who must be kept {link.radius_m:g} m away."
                if who else
                f"Came within about {shown:.0f} m of protected person "
                f"{link.protected_id}, who must be kept {link.radius_m:g} m away.",
            ))
        elif level is Level.BAND:
            findings.append(finding(
                RuleId.VICTIM_APPROACH, FindingKind.RAISED,
                f"{who}about {shown:.0f} m from protected person {link.protected_id}, "
                f"inside the warning band ({link.radius_m:g} m limit)."
                if who else
                f"About {shown:.0f} m from protected person {link.protected_id}, inside "
                f"the warning band ({link.radius_m:g} m limit).",
            ))
        return findings

    def forget_protected(self, protected_id: str) -> None:
        self._protected.pop(protected_id, None)
