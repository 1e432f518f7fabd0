"""The scripted demo day: three wearables, one local day, every alert rule exercised once.

Pure and deterministic for a seed: `scripted_day` builds the list of MQTT messages that the
tags `tag-s001`..`tag-s003` would publish (wire contract v1) and `expected_alerts` names the
alerts a correct daemon must raise for it, no more and no fewer. `write_jsonl` is the only
function here that touches a file; it writes the replay format.

The day, in the subjects' local time (default Asia/Shanghai); curfew 22:00-06:00 at home:

- s001: home; walks to work 08:30-09:00; at work 09:00-18:00 with a two-minute strap
  open/close blip at 10:15/10:17 (-> strap_open); walks home 18:00-18:30.
- s002: home; errands ~800 m away 10:00-16:00; home 16:00-23:00; walks to a point ~1.5 km
  away at 23:00 and is back by 23:50 (-> curfew_away at home-s002).
- s003: home; cycles to the school 14:30-15:00, inside the exclusion zone 15:00-15:20
  (-> exclusion_entry), back home by 15:45; drives to Nanshan 17:00-17:40, stays until
  18:30, home by 19:15 (-> boundary_exit of district-futian).

Location fixes are GNSS with an accuracy of 5-15 m; the reported position is the true one
displaced by a random offset no larger than the stated accuracy (uniform in the disc), so a
subject at home is never reported more than 15 m from the home centre.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, Final, TextIO
from zoneinfo import ZoneInfo

from alerts.model import DEFAULT_TIERS, RuleId, Tier

TOPIC_PREFIX: Final = "emon/v1/devices"
"""Devices publish on `<TOPIC_PREFIX>/<device_id>/location` and `.../event`."""

LOCAL_TZ: Final = ZoneInfo("Asia/Shanghai")

EARTH_RADIUS_M: Final = 6_371_008.8
"""Mean Earth radius (IUGG); the same sphere a haversine check uses."""


@dataclass(frozen=True, slots=True)
class LonLat:
    """A WGS-84 position in degrees (GeoJSON order: lon, lat)."""

    lon: float
    lat: float


# Zone centres (WGS-84). They are the centroids of the polygons in config/zones/*.geojson;
# tests/test_scripted_day.py checks that they still agree with those files.
HOME_S001: Final = LonLat(114.0400, 22.5480)
WORK_S001: Final = LonLat(114.0550, 22.5370)
HOME_S002: Final = LonLat(114.0600, 22.5400)
HOME_S003: Final = LonLat(114.0300, 22.5350)
SCHOOL_FUTIAN_1: Final = LonLat(114.0700, 22.5520)
SCHOOL_WIDTH_M: Final = 120.0
"""East-west extent of the school exclusion rectangle, metres."""
SCHOOL_HEIGHT_M: Final = 90.0
"""North-south extent of the school exclusion rectangle, metres."""
HOME_RADIUS_M: Final = 75.0

# Other places of the script (not zones).
ERRANDS_S002: Final = LonLat(114.0530, 22.5435)
"""s002's daytime errands: ~0.82 km WNW of home-s002, ~2 km from the school, in Futian."""
NIGHT_OUT_S002: Final = LonLat(114.0460, 22.5450)
"""Where s002 goes during curfew: ~1.54 km W of home-s002, ~2.6 km from the school."""
NANSHAN_POINT: Final = LonLat(113.9300, 22.5300)
"""In Nanshan district, several kilometres west of Futian."""

SUBJECT_OF_DEVICE: Final[dict[str, str]] = {
    "tag-s001": "s001",
    "tag-s002": "s002",
    "tag-s003": "s003",
}
HOME_OF_SUBJECT: Final[dict[str, LonLat]] = {
    "s001": HOME_S001,
    "s002": HOME_S002,
    "s003": HOME_S003,
}

MIN_ACCURACY_M: Final = 5.0
MAX_ACCURACY_M: Final = 15.0
BATTERY_START_MIN_PCT: Final = 86.0
BATTERY_START_MAX_PCT: Final = 100.0
BATTERY_DRAIN_MIN_PCT_PER_H: Final = 0.35
BATTERY_DRAIN_MAX_PCT_PER_H: Final = 0.60
PUBLISH_LATENCY_MIN_S: Final = 0.2
PUBLISH_LATENCY_MAX_S: Final = 1.5
"""Delay between a device's event time (`ts`) and its publish time (`at`), seconds."""

SECONDS_PER_DAY: Final = 86_400


def _hm(hours: int, minutes: int = 0) -> int:
    """Seconds since local midnight."""
    return hours * 3600 + minutes * 60


# Each itinerary is a list of keyframes (seconds since local midnight, true position): the
# subject moves in a straight line at constant speed between consecutive keyframes and stands
# still where two consecutive keyframes share a position. Before the first / after the last
# keyframe the subject is at that keyframe's position.
_ITINERARIES: Final[dict[str, tuple[tuple[int, LonLat], ...]]] = {
    "tag-s001": (
        (_hm(0), HOME_S001),
        (_hm(8, 30), HOME_S001),
        (_hm(9), WORK_S001),  # ~1.97 km walk, ~1.1 m/s
        (_hm(18), WORK_S001),
        (_hm(18, 30), HOME_S001),
        (_hm(24), HOME_S001),
    ),
    "tag-s002": (
        (_hm(0), HOME_S002),
        (_hm(10), HOME_S002),
        (_hm(10, 10), ERRANDS_S002),  # ~0.82 km walk, ~1.4 m/s
        (_hm(15, 50), ERRANDS_S002),
        (_hm(16), HOME_S002),
        (_hm(23), HOME_S002),
        (_hm(23, 18), NIGHT_OUT_S002),  # ~1.54 km walk, ~1.4 m/s: curfew breach begins
        (_hm(23, 32), NIGHT_OUT_S002),
        (_hm(23, 50), HOME_S002),  # home again: breach ~50 min
        (_hm(24), HOME_S002),
    ),
    "tag-s003": (
        (_hm(0), HOME_S003),
        (_hm(14, 30), HOME_S003),
        (_hm(15), SCHOOL_FUTIAN_1),  # ~4.5 km by (shared) bicycle, ~2.5 m/s
        (_hm(15, 20), SCHOOL_FUTIAN_1),  # well inside the exclusion rectangle
        (_hm(15, 45), HOME_S003),  # ~3.0 m/s
        (_hm(17), HOME_S003),
        (_hm(17, 40), NANSHAN_POINT),  # ~10.3 km drive, ~4.3 m/s (rush hour)
        (_hm(18, 30), NANSHAN_POINT),
        (_hm(19, 15), HOME_S003),
        (_hm(24), HOME_S003),
    ),
}

# Device events: (device_id, seconds since local midnight, type).
_EVENTS: Final[tuple[tuple[str, int, str], ...]] = (
    ("tag-s001", _hm(10, 15), "strap_open"),
    ("tag-s001", _hm(10, 17), "strap_closed"),
)


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT message of the simulation. `at` is the (UTC) publish time."""

    topic: str
    payload: dict[str, Any]
    at: datetime


@dataclass(frozen=True, slots=True)
class ExpectedAlert:
    """An alert the daemon must raise for the scripted day."""

    subject_id: str
    rule: RuleId
    tier: Tier
    zone_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "subject_id": self.subject_id,
            "rule": self.rule.value,
            "tier": self.tier.value,
            "zone_id": self.zone_id,
        }


def expected_alerts() -> list[ExpectedAlert]:
    """Exactly the alerts a correct daemon raises for `scripted_day` (any date, any seed)."""
    wanted: list[tuple[str, RuleId, str | None]] = [
        ("s001", RuleId.STRAP_OPEN, None),
        ("s002", RuleId.CURFEW_AWAY, "home-s002"),
        ("s003", RuleId.EXCLUSION_ENTRY, "school-futian-1"),
        ("s003", RuleId.BOUNDARY_EXIT, "district-futian"),
    ]
    return [ExpectedAlert(s, rule, DEFAULT_TIERS[rule], zone) for s, rule, zone in wanted]


def offset_m(origin: LonLat, east_m: float, north_m: float) -> LonLat:
    """The point `east_m`/`north_m` metres from `origin` (local tangent plane; fine < 10 km)."""
    lat = origin.lat + math.degrees(north_m / EARTH_RADIUS_M)
    lon = origin.lon + math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return LonLat(lon, lat)


def _position_at(itinerary: Sequence[tuple[int, LonLat]], second_of_day: float) -> LonLat:
    if second_of_day <= itinerary[0][0]:
        return itinerary[0][1]
    for (t0, p0), (t1, p1) in pairwise(itinerary):
        if t0 <= second_of_day < t1:
            f = (second_of_day - t0) / (t1 - t0)
            return LonLat(p0.lon + f * (p1.lon - p0.lon), p0.lat + f * (p1.lat - p0.lat))
    return itinerary[-1][1]


def _second_of_day(local: datetime) -> int:
    """Wall-clock seconds since local midnight (so the script follows the wall clock)."""
    return local.hour * 3600 + local.minute * 60 + local.second


def _ts(at: datetime, tz: ZoneInfo) -> str:
    """RFC 3339 with the subject's local offset, whole seconds."""
    return at.astimezone(tz).isoformat(timespec="seconds")


def _device_messages(
    device_id: str,
    start: datetime,
    end: datetime,
    ping_interval_seconds: int,
    phase_seconds: int,
    rng: random.Random,
    tz: ZoneInfo,
) -> list[SimMessage]:
    itinerary = _ITINERARIES[device_id]
    battery_pct = rng.uniform(BATTERY_START_MIN_PCT, BATTERY_START_MAX_PCT)
    drain_pct_per_s = rng.uniform(BATTERY_DRAIN_MIN_PCT_PER_H, BATTERY_DRAIN_MAX_PCT_PER_H) / 3600
    location_topic = f"{TOPIC_PREFIX}/{device_id}/location"
    out: list[SimMessage] = []

    ts = start + timedelta(seconds=phase_seconds)
    step = timedelta(seconds=ping_interval_seconds)
    while ts < end:
        true_pos = _position_at(itinerary, _second_of_day(ts.astimezone(tz)))
        acc_m = round(rng.uniform(MIN_ACCURACY_M, MAX_ACCURACY_M), 1)
        # Uniform in the disc of radius acc_m: the error never exceeds the stated accuracy.
        error_m = acc_m * math.sqrt(rng.random())
        bearing = rng.uniform(0.0, 2.0 * math.pi)
        fix = offset_m(true_pos, error_m * math.sin(bearing), error_m * math.cos(bearing))
        batt = battery_pct - drain_pct_per_s * (ts - start).total_seconds()
        payload: dict[str, Any] = {
            "ts": _ts(ts, tz),
            "lat": round(fix.lat, 6),
            "lon": round(fix.lon, 6),
            "acc": acc_m,
            "src": "gnss",
            "batt": round(batt),
        }
        at = ts + timedelta(seconds=rng.uniform(PUBLISH_LATENCY_MIN_S, PUBLISH_LATENCY_MAX_S))
        out.append(SimMessage(location_topic, payload, _utc_ms(at)))
        ts += step

    for event_device, second_of_day, event_type in _EVENTS:
        if event_device != device_id:
            continue
        wall = time(second_of_day // 3600, second_of_day % 3600 // 60, second_of_day % 60)
        event_ts = datetime.combine(start.astimezone(tz).date(), wall, tzinfo=tz).astimezone(UTC)
        at = event_ts + timedelta(seconds=rng.uniform(PUBLISH_LATENCY_MIN_S, PUBLISH_LATENCY_MAX_S))
        out.append(
            SimMessage(
                f"{TOPIC_PREFIX}/{device_id}/event",
                {"ts": _ts(event_ts, tz), "type": event_type},
                _utc_ms(at),
            )
        )
    return out


def _utc_ms(at: datetime) -> datetime:
    """UTC, truncated to whole milliseconds (what the replay file can carry exactly)."""
    at = at.astimezone(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def scripted_day(
    day: date,
    *,
    seed: int = 1,
    ping_interval_seconds: int = 60,
    tz: ZoneInfo = LOCAL_TZ,
) -> list[SimMessage]:
    """All messages of the scripted `day` (local 00:00-24:00 in `tz`), sorted by `at`.

    Each tag sends one GNSS fix per `ping_interval_seconds`; the tags are phase-shifted by a
    third of the interval so they do not all publish in the same instant. The same arguments
    always give the same list.
    """
    if ping_interval_seconds <= 0:
        raise ValueError(f"ping_interval_seconds must be positive, got {ping_interval_seconds}")
    start = datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz).astimezone(UTC)
    messages: list[SimMessage] = []
    for index, device_id in enumerate(SUBJECT_OF_DEVICE):
        # One stream per device (str seeds are hashed deterministically by `random`).
        rng = random.Random(f"emon-scripted-day:{seed}:{device_id}")
        phase_seconds = index * ping_interval_seconds // len(SUBJECT_OF_DEVICE)
        messages.extend(
            _device_messages(device_id, start, end, ping_interval_seconds, phase_seconds, rng, tz)
        )
    messages.sort(key=lambda m: (m.at, m.topic))
    return messages


def replay_record(message: SimMessage) -> dict[str, Any]:
    """One line of the replay file (received_at = publish time)."""
    return {
        "topic": message.topic,
        "payload": message.payload,
        "received_at": message.at.astimezone(UTC).isoformat(timespec="milliseconds"),
    }


def write_jsonl(
    messages: Iterable[SimMessage], path_or_stream: str | os.PathLike[str] | TextIO
) -> int:
    """Write `messages` in the replay format (JSONL, arrival order); `"-"` means stdout.

    Returns the number of lines written.
    """
    if isinstance(path_or_stream, str | os.PathLike):
        if os.fspath(path_or_stream) == "-":
            return _write_lines(messages, sys.stdout)
        with Path(path_or_stream).open("w", encoding="utf-8", newline="\n") as stream:
            return _write_lines(messages, stream)
    return _write_lines(messages, path_or_stream)


def _write_lines(messages: Iterable[SimMessage], stream: TextIO) -> int:
    count = 0
    for message in messages:
        stream.write(json.dumps(replay_record(message), separators=(",", ":"), ensure_ascii=False))
        stream.write("\n")
        count += 1
    stream.flush()
    return count
