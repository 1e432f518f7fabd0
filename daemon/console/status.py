"""What the console shows about a subject, decided from alerts and the newest fix (pure).

Colours on the map follow one order, most urgent first, so the worst thing about a subject
is what an officer sees at a glance:

    alert         an unresolved alert that nobody has acknowledged (nobody owns it)
    acknowledged  unresolved alerts, every one owned by an officer
    stale         no unresolved alert, but no fix within `stale_after` (or none at all)
    ok            no unresolved alert and a recent fix

Staleness moves with the clock; the page re-applies the same rule every few seconds with
`stale_after_seconds` from /console/api/me, so the server need not push it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from alerts.model import Alert, AlertState, Tier
from geofence.observation import LocationFix

# Most urgent first (Tier's own order).
TIER_ORDER: tuple[Tier, ...] = tuple(Tier)


class SubjectStatus(StrEnum):
    ALERT = "alert"
    ACKNOWLEDGED = "acknowledged"
    STALE = "stale"
    OK = "ok"


@dataclass(frozen=True, slots=True)
class LastFix:
    """A subject's newest location fix (event time), as the map draws it."""

    subject_id: str
    device_id: str
    ts: datetime
    lat: float
    lon: float
    accuracy_m: float
    source: str
    battery_pct: float | None = None

    @classmethod
    def of(cls, fix: LocationFix, subject_id: str) -> LastFix:
        return cls(
            subject_id, fix.device_id, fix.ts, fix.lat, fix.lon, fix.accuracy_m,
            fix.source.value, fix.battery_pct,
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id, "device_id": self.device_id,
            "ts": self.ts.isoformat(), "lat": self.lat, "lon": self.lon,
            "acc": self.accuracy_m, "src": self.source, "batt": self.battery_pct,
        }


@dataclass(frozen=True, slots=True)
class AlertSummary:
    """A subject's unresolved alerts, counted for the map and the subject list."""

    open: int = 0
    acknowledged: int = 0
    top_tier: Tier | None = None

    @classmethod
    def of(cls, alerts: Iterable[Alert]) -> AlertSummary:
        unresolved = [a for a in alerts if a.state is not AlertState.RESOLVED]
        tiers = {a.tier for a in unresolved}
        return cls(
            open=sum(a.state is AlertState.OPEN for a in unresolved),
            acknowledged=sum(a.state is AlertState.ACKNOWLEDGED for a in unresolved),
            top_tier=next((t for t in TIER_ORDER if t in tiers), None),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "open": self.open, "acknowledged": self.acknowledged,
            "top_tier": self.top_tier.value if self.top_tier is not None else None,
        }


def subject_status(
    summary: AlertSummary, last_fix_ts: datetime | None, now: datetime, stale_after: timedelta
) -> SubjectStatus:
    if summary.open:
        return SubjectStatus.ALERT
    if summary.acknowledged:
        return SubjectStatus.ACKNOWLEDGED
    if last_fix_ts is None or now - last_fix_ts > stale_after:
        return SubjectStatus.STALE
    return SubjectStatus.OK


def newer(candidate: LastFix, current: LastFix | None) -> bool:
    """A late upload (older event time) never moves a subject's marker backwards."""
    return current is None or candidate.ts > current.ts
