"""Zone transitions: where a subject went and what the zone rules decided, as stored rows.

Pure (part of the decision core, like daemon/pipeline.py): the pipeline snapshots a
device's confirmed zone presence before the engine judges a fix and compares afterwards;
every confirmed change becomes a `presence` transition, and every finding of a zone rule
(curfew_away, exclusion_entry, boundary_exit, ...) a rule transition. Both carry event
times chosen by the core (the first fix of the dwell run, a curfew window's start), so
the stored log is the same live and in `emon replay`, and the compliance rollups
(minutes away from home during curfew, minutes in exclusion zones) are computed from
exactly what the core decided.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Protocol

from alerts.model import Finding, FindingKind
from geofence.config import SubjectSpec
from geofence.zones import Presence

PRESENCE_KIND: Final = "presence"


class ZoneRole(StrEnum):
    """What a zone is for this subject (a zone may be an exclusion for one, nothing to another)."""

    HOME = "home"
    PERMITTED = "permitted"
    EXCLUSION = "exclusion"
    OTHER = "other"


class TransitionState(StrEnum):
    INSIDE = "inside"  # presence: entered (confirmed inside)
    OUTSIDE = "outside"  # presence: left (confirmed outside)
    VIOLATED = "violated"  # rule: the condition began
    CLEARED = "cleared"  # rule: the condition ended


@dataclass(frozen=True, slots=True)
class ZoneTransition:
    """One row of `zone_transitions`; (device_id, zone_id, kind, ts) is its key."""

    device_id: str
    subject_id: str
    zone_id: str
    kind: str  # "presence", or the rule id for a rule transition
    state: TransitionState
    ts: datetime  # event time, UTC
    received_at: datetime  # arrival of the message that revealed it (or the tick time)
    role: ZoneRole
    previous: TransitionState | None = None  # presence before; None when not known


class _MembershipLike(Protocol):
    @property
    def confirmed(self) -> Presence: ...
    @property
    def confirmed_since(self) -> datetime | None: ...


# zone id -> (confirmed presence, since)
PresenceSnapshot = dict[str, tuple[Presence, datetime | None]]

_PRESENCE_STATE: Final = {
    Presence.INSIDE: TransitionState.INSIDE,
    Presence.OUTSIDE: TransitionState.OUTSIDE,
}


def snapshot(memberships: Mapping[str, _MembershipLike] | None) -> PresenceSnapshot:
    """The confirmed presence per zone of one device (empty for an unknown device)."""
    if not memberships:
        return {}
    return {zone_id: (m.confirmed, m.confirmed_since) for zone_id, m in memberships.items()}


def role_of(subject: SubjectSpec | None, zone_id: str) -> ZoneRole:
    if subject is None:
        return ZoneRole.OTHER
    if zone_id == subject.home_zone_id:
        return ZoneRole.HOME
    if zone_id == subject.permitted_zone_id:
        return ZoneRole.PERMITTED
    if zone_id in subject.exclusion_zone_ids:
        return ZoneRole.EXCLUSION
    return ZoneRole.OTHER


def presence_changes(
    device_id: str,
    subject: SubjectSpec | None,
    before: Mapping[str, tuple[Presence, datetime | None]],
    after: Mapping[str, tuple[Presence, datetime | None]],
    received_at: datetime,
    *,
    zone_ids: Collection[str] | None = None,
    observed_at: datetime | None = None,
) -> list[ZoneTransition]:
    """Confirmed presence changes between two snapshots, in zone id order (deterministic).

    Only keys that are zone ids (`zone_ids`, when given) count: the engine also tracks
    warning bands and leave areas under other keys. The engine forgets the track of a
    far-away zone once it is confirmed outside; a zone the subject was inside that
    vanishes from the snapshot was therefore left, at the latest at `observed_at` (the
    fix that made the engine forget it), which is the time recorded.
    """
    if subject is None or before == after:
        return []  # equal snapshots: no key can differ (most fixes change no presence)
    out: list[ZoneTransition] = []

    def add(zone_id: str, state: TransitionState, ts: datetime, previous: Presence | None) -> None:
        out.append(
            ZoneTransition(
                device_id=device_id,
                subject_id=subject.subject_id,
                zone_id=zone_id,
                kind=PRESENCE_KIND,
                state=state,
                ts=ts.astimezone(UTC),
                received_at=received_at,
                role=role_of(subject, zone_id),
                previous=_PRESENCE_STATE.get(previous) if previous is not None else None,
            )
        )

    for zone_id in sorted(after.keys() | before.keys()):
        if zone_ids is not None and zone_id not in zone_ids:
            continue
        old = before.get(zone_id)
        new = after.get(zone_id)
        if new is None:
            if old is not None and old[0] is Presence.INSIDE and observed_at is not None:
                add(zone_id, TransitionState.OUTSIDE, observed_at, Presence.INSIDE)
            continue
        presence, since = new
        state = _PRESENCE_STATE.get(presence)
        if state is None or since is None or (old is not None and old == new):
            continue
        add(zone_id, state, since, old[0] if old is not None else None)
    return out


def rule_changes(
    findings: Iterable[Finding],
    subjects: Mapping[str, SubjectSpec],
    received_at: datetime,
) -> list[ZoneTransition]:
    """A transition for every finding of a rule about a zone (device rules have none)."""
    out: list[ZoneTransition] = []
    for finding in findings:
        if finding.zone_id is None:
            continue
        out.append(
            ZoneTransition(
                device_id=finding.device_id,
                subject_id=finding.subject_id,
                zone_id=finding.zone_id,
                kind=finding.rule.value,
                state=(
                    TransitionState.VIOLATED
                    if finding.kind is FindingKind.RAISED
                    else TransitionState.CLEARED
                ),
                ts=finding.at.astimezone(UTC),
                received_at=received_at,
                role=role_of(subjects.get(finding.subject_id), finding.zone_id),
            )
        )
    return out


def to_row_dict(transition: ZoneTransition) -> dict[str, Any]:
    """JSON-friendly form (tests, debugging)."""
    return {
        "device_id": transition.device_id,
        "subject_id": transition.subject_id,
        "zone_id": transition.zone_id,
        "kind": transition.kind,
        "state": transition.state.value,
        "ts": transition.ts.isoformat(),
        "role": transition.role.value,
        "previous": transition.previous.value if transition.previous else None,
    }
