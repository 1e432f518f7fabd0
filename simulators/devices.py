"""What simulated devices measure and how their messages reach the broker.

Pure and deterministic: every function takes its `random.Random`; nothing reads a clock.
Shared by the fleet (`simulators.fleet`) and the scenarios (`simulators.scenario`).

- `GnssModel`: position error and stated accuracy by environment (open sky, street canyon,
  indoors, underground), indoor drift, urban-canyon outliers, cold starts.
- `Uplink`: publish latency, coverage loss with store-and-forward (late bursts, optionally
  newest first), QoS 1 duplicates.
- `location_message` / `event_message`: the wire formats (emon v1, OwnTracks).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo

from simulators.scripted_day import TOPIC_PREFIX, LonLat, SimMessage, offset_m

OWNTRACKS_PREFIX: Final = "owntracks"

# Stated accuracy (metres) by environment: a uniform range. GNSS receivers report the
# radius that holds the true position about 68 % of the time (Android's definition), so the
# error is drawn from a Rayleigh distribution with sigma = acc / 1.5 (P(error <= acc) = 0.68).
OPEN_SKY_ACCURACY_M: Final = (4.0, 10.0)
URBAN_ACCURACY_M: Final = (8.0, 30.0)
INDOOR_ACCURACY_M: Final = (25.0, 100.0)
COLD_START_CELL_ACCURACY_M: Final = (300.0, 1200.0)
COLD_START_GNSS_ACCURACY_M: Final = ((60.0, 100.0), (20.0, 45.0))
"""Accuracy of the 2nd and 3rd fix after a cold start (the 1st is a cell fix)."""
UNDERGROUND_CELL_FIX_PROBABILITY: Final = 0.3
UNDERGROUND_CELL_ACCURACY_M: Final = (400.0, 1500.0)
RAYLEIGH_SIGMA_PER_ACCURACY: Final = 1 / 1.5
URBAN_OUTLIER_PROBABILITY: Final = 0.004
"""Chance that a street-canyon fix is a multipath outlier that still claims its accuracy."""
URBAN_OUTLIER_DISTANCE_M: Final = (300.0, 3000.0)
INDOOR_DRIFT_STEP_M: Final = 12.0
"""Standard deviation of the indoor drift's random step per fix (mean-reverting)."""
INDOOR_DRIFT_PERSISTENCE: Final = 0.85
INDOOR_WIFI_PROBABILITY: Final = 0.3
COLD_START_FIXES: Final = 3

DEFAULT_LATENCY_S: Final = (0.2, 1.5)
BURST_SPACING_S: Final = 0.05
"""Seconds between two messages of a store-and-forward burst."""
RECONNECT_DELAY_S: Final = (2.0, 8.0)
"""Seconds from coverage back to the first message of the burst."""
DUPLICATE_DELAY_S: Final = (1.0, 20.0)
"""A QoS 1 redelivery arrives this long after the original (PUBACK lost, resent)."""


class Environment(StrEnum):
    OPEN_SKY = "open_sky"
    URBAN = "urban"
    INDOOR = "indoor"
    UNDERGROUND = "underground"


class Protocol(StrEnum):
    EMON = "emon"  # wire contract v1: emon/v1/devices/<id>/location|event
    OWNTRACKS = "owntracks"  # owntracks/<user>/<device>, device id <user>.<device>


class BurstOrder(StrEnum):
    OLDEST_FIRST = "oldest_first"
    NEWEST_FIRST = "newest_first"  # some trackers send the current position first


@dataclass(frozen=True, slots=True)
class Measurement:
    """One fix as the device reports it (its position estimate, not the truth)."""

    position: LonLat
    accuracy_m: float
    source: str  # gnss, cell, wifi


def rayleigh_error_m(rng: random.Random, accuracy_m: float) -> float:
    sigma = accuracy_m * RAYLEIGH_SIGMA_PER_ACCURACY
    return sigma * math.sqrt(-2.0 * math.log(1.0 - rng.random()))


def displaced(true: LonLat, distance_m: float, rng: random.Random) -> LonLat:
    bearing = rng.uniform(0.0, 2.0 * math.pi)
    return offset_m(true, distance_m * math.sin(bearing), distance_m * math.cos(bearing))


@dataclass(slots=True)
class GnssModel:
    """Per-device receiver state: indoor drift and cold start."""

    rng: random.Random
    drift_east_m: float = 0.0
    drift_north_m: float = 0.0
    cold_fixes_left: int = 0

    def cold_start(self) -> None:
        """After power-on: a cell fix first, then GNSS converging over a few fixes."""
        self.cold_fixes_left = COLD_START_FIXES

    def measure(self, true: LonLat, environment: Environment) -> Measurement | None:
        """The fix the device reports at `true`, or None when it gets no fix at all."""
        rng = self.rng
        if environment is Environment.UNDERGROUND:
            if rng.random() >= UNDERGROUND_CELL_FIX_PROBABILITY:
                return None
            acc = rng.uniform(*UNDERGROUND_CELL_ACCURACY_M)
            return Measurement(displaced(true, rayleigh_error_m(rng, acc), rng), acc, "cell")
        if self.cold_fixes_left > 0:
            step = COLD_START_FIXES - self.cold_fixes_left
            self.cold_fixes_left -= 1
            if step == 0:
                acc = rng.uniform(*COLD_START_CELL_ACCURACY_M)
                return Measurement(displaced(true, rayleigh_error_m(rng, acc), rng), acc, "cell")
            acc = rng.uniform(*COLD_START_GNSS_ACCURACY_M[min(step - 1, 1)])
            return Measurement(displaced(true, rayleigh_error_m(rng, acc), rng), acc, "gnss")
        if environment is Environment.INDOOR:
            # Mean-reverting random walk: indoors the estimate wanders slowly around the truth.
            self.drift_east_m = (
                INDOOR_DRIFT_PERSISTENCE * self.drift_east_m + rng.gauss(0, INDOOR_DRIFT_STEP_M)
            )
            self.drift_north_m = (
                INDOOR_DRIFT_PERSISTENCE * self.drift_north_m + rng.gauss(0, INDOOR_DRIFT_STEP_M)
            )
            acc = rng.uniform(*INDOOR_ACCURACY_M)
            source = "wifi" if rng.random() < INDOOR_WIFI_PROBABILITY else "gnss"
            centre = offset_m(true, self.drift_east_m, self.drift_north_m)
            return Measurement(displaced(centre, rayleigh_error_m(rng, acc / 2), rng), acc, source)
        self.drift_east_m = self.drift_north_m = 0.0
        if environment is Environment.URBAN:
            acc = rng.uniform(*URBAN_ACCURACY_M)
            if rng.random() < URBAN_OUTLIER_PROBABILITY:
                # Multipath in a street canyon: far off, yet the receiver claims its accuracy.
                jump = rng.uniform(*URBAN_OUTLIER_DISTANCE_M)
                return Measurement(displaced(true, jump, rng), acc, "gnss")
        else:
            acc = rng.uniform(*OPEN_SKY_ACCURACY_M)
        return Measurement(displaced(true, rayleigh_error_m(rng, acc), rng), acc, "gnss")


def bounded_measurement(
    true: LonLat, accuracy_m: float, source: str, rng: random.Random
) -> Measurement:
    """Noise that never exceeds the stated accuracy (uniform in the disc): for scenarios,
    whose expectations must not depend on a rare unlucky draw."""
    error_m = accuracy_m * math.sqrt(rng.random())
    return Measurement(displaced(true, error_m, rng), accuracy_m, source)


# ---------------------------------------------------------------------- wire formats


def owntracks_user_device(device_id: str) -> tuple[str, str]:
    """`s001.phone` -> ("s001", "phone"): the inverse of daemon.owntracks' mapping."""
    user, sep, device = device_id.partition(".")
    if not sep or not user or not device:
        raise ValueError(f"an OwnTracks device id is <user>.<device>, got {device_id!r}")
    return user, device


def _local_ts(ts: datetime, tz: ZoneInfo) -> str:
    return ts.astimezone(tz).isoformat(timespec="seconds")


def location_message(
    device_id: str,
    protocol: Protocol,
    ts: datetime,
    fix: Measurement,
    battery_pct: float | None,
    tz: ZoneInfo,
    *,
    connection: str = "m",
    charging: bool = False,
) -> tuple[str, dict[str, Any]]:
    """(topic, payload) of one fix; `ts` is the device's (possibly skewed) clock."""
    if protocol is Protocol.OWNTRACKS:
        user, device = owntracks_user_device(device_id)
        payload: dict[str, Any] = {
            "_type": "location",
            "lat": round(fix.position.lat, 6),
            "lon": round(fix.position.lon, 6),
            "tst": int(ts.timestamp()),
            "acc": round(fix.accuracy_m),
            "conn": connection,
            "tid": device_id[-2:],
        }
        if battery_pct is not None:
            payload["batt"] = round(battery_pct)
            payload["bs"] = 2 if charging else 1
        return f"{OWNTRACKS_PREFIX}/{user}/{device}", payload
    payload = {
        "ts": _local_ts(ts, tz),
        "lat": round(fix.position.lat, 6),
        "lon": round(fix.position.lon, 6),
        "acc": round(fix.accuracy_m, 1),
        "src": fix.source,
    }
    if battery_pct is not None:
        payload["batt"] = round(battery_pct)
    return f"{TOPIC_PREFIX}/{device_id}/location", payload


def event_message(
    device_id: str, ts: datetime, event_type: str, attributes: dict[str, Any], tz: ZoneInfo
) -> tuple[str, dict[str, Any]]:
    payload: dict[str, Any] = {"ts": _local_ts(ts, tz), "type": event_type, **attributes}
    return f"{TOPIC_PREFIX}/{device_id}/event", payload


def utc_ms(at: datetime) -> datetime:
    """UTC truncated to whole milliseconds (what a replay file carries exactly)."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


# ---------------------------------------------------------------------- delivery


@dataclass(slots=True)
class Uplink:
    """Turns a device's messages (in event-time order) into broker arrivals.

    Online, a message arrives after a small latency; with `duplicate_rate` it arrives a
    second time (a QoS 1 redelivery). Offline (no coverage), messages are stored and sent as
    one burst when coverage returns, oldest or newest first. Messages are handed out through
    `due(until)` in arrival order, so a device stream can be merged with others lazily.
    """

    rng: random.Random
    latency_s: tuple[float, float] = DEFAULT_LATENCY_S
    duplicate_rate: float = 0.0
    burst_order: BurstOrder = BurstOrder.OLDEST_FIRST
    offline: bool = False
    stored: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    stats: dict[str, int] = field(
        default_factory=lambda: {"sent": 0, "duplicates": 0, "stored": 0, "bursts": 0}
    )
    _pending: list[tuple[datetime, int, SimMessage]] = field(default_factory=list)
    _sequence: int = 0
    _burst_ends: datetime | None = None

    def _push(self, at: datetime, topic: str, payload: dict[str, Any]) -> None:
        self._sequence += 1
        arrival = utc_ms(at)
        heapq.heappush(self._pending, (arrival, self._sequence, SimMessage(topic, payload,
                                                                           arrival)))

    def send(self, now: datetime, topic: str, payload: dict[str, Any]) -> None:
        """The device emits a message at (true) time `now`."""
        if self.offline:
            self.stored.append((topic, payload))
            self.stats["stored"] += 1
            return
        at = now + timedelta(seconds=self.rng.uniform(*self.latency_s))
        if self._burst_ends is not None and at <= self._burst_ends:
            # One connection, one queue: a new message waits behind the burst being sent.
            at = self._burst_ends + timedelta(seconds=BURST_SPACING_S)
        self._push(at, topic, payload)
        self.stats["sent"] += 1
        if self.duplicate_rate > 0 and self.rng.random() < self.duplicate_rate:
            self._push(at + timedelta(seconds=self.rng.uniform(*DUPLICATE_DELAY_S)), topic,
                       payload)
            self.stats["duplicates"] += 1

    def lose_coverage(self) -> None:
        self.offline = True

    def regain_coverage(self, now: datetime) -> None:
        """Coverage is back at `now`: the stored messages go out as one burst."""
        self.offline = False
        if not self.stored:
            return
        stored = self.stored if self.burst_order is BurstOrder.OLDEST_FIRST else self.stored[::-1]
        at = now + timedelta(seconds=self.rng.uniform(*RECONNECT_DELAY_S))
        for index, (topic, payload) in enumerate(stored):
            self._push(at + timedelta(seconds=index * BURST_SPACING_S), topic, payload)
        self._burst_ends = at + timedelta(seconds=len(stored) * BURST_SPACING_S)
        self.stats["sent"] += len(stored)
        self.stats["bursts"] += 1
        self.stored = []

    def drop_stored(self) -> int:
        """The device lost its buffer (power loss): how many messages were lost."""
        lost = len(self.stored)
        self.stored = []
        return lost

    def due(self, until: datetime | None) -> Iterator[SimMessage]:
        """Messages arriving at or before `until` (all of them when None), in arrival order."""
        pending = self._pending
        while pending and (until is None or pending[0][0] <= until):
            yield heapq.heappop(pending)[2]
