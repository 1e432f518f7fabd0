"""Typed, validated observations: what the pure core consumes.

Everything here has already passed `daemon.wire` (the only place that trusts nothing):
coordinates are finite and in range, timestamps are timezone-aware UTC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class FixSource(StrEnum):
    """Where a position came from; only GNSS counts as a precise fix."""

    GNSS = "gnss"
    CELL = "cell"
    WIFI = "wifi"


class DeviceKind(StrEnum):
    WEARABLE = "wearable"
    PHONE = "phone"


class DeviceEventType(StrEnum):
    STRAP_OPEN = "strap_open"
    STRAP_CLOSED = "strap_closed"
    CASE_OPEN = "case_open"
    CASE_CLOSED = "case_closed"
    BATTERY_LOW = "battery_low"
    POWER_OFF = "power_off"
    POWER_ON = "power_on"
    CHARGER_CONNECTED = "charger_connected"
    CHARGER_DISCONNECTED = "charger_disconnected"
    CHECKIN = "checkin"


@dataclass(frozen=True, slots=True)
class LocationFix:
    """One location ping. `ts` is the device's event time, `received_at` the arrival time."""

    device_id: str
    ts: datetime
    lat: float
    lon: float
    accuracy_m: float
    source: FixSource
    received_at: datetime
    battery_pct: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_wire(self) -> dict[str, Any]:
        """The ping as it appears in alert payloads (wire contract v1 field names)."""
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "ts": self.ts.isoformat(),
            "lat": self.lat,
            "lon": self.lon,
            "acc": self.accuracy_m,
            "src": self.source.value,
        }
        if self.battery_pct is not None:
            out["batt"] = self.battery_pct
        return out


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A device event (tamper, battery, charger, check-in)."""

    device_id: str
    ts: datetime
    type: DeviceEventType
    received_at: datetime
    attributes: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "ts": self.ts.isoformat(),
            "type": self.type.value,
        }
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out


Observation = LocationFix | DeviceEvent
