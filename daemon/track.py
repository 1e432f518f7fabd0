"""A subject's track as GeoJSON, with its stops. Pure: points in, a FeatureCollection out.

Stop detection (stay points): walking the fixes of one device in time order, a cluster
grows while each next fix lies within `radius_m` of the cluster's centroid; when a fix
falls outside, the cluster closes and is a stop if it lasted at least `min_duration`
(first to last fix). Fixes vaguer than `max_accuracy_m` are left out of stops (they
still draw the track): an indoor cell fix with 800 m accuracy says nothing about
staying put. Defaults, and why:

* radius 50 m: a house or a shop with GNSS noise indoors (typically 10-30 m, NIJ-1004's
  open-sky 10 m at best) stays inside it; two neighbouring buildings do not merge.
* 5 minutes: longer than a traffic light or a bus stop at one fix a minute (≥ 6 fixes),
  short enough to catch a brief visit, the thing an officer asks about.
* 100 m accuracy: the same bound the rules use to place someone inside a small zone.

A stop reports its longest silence between fixes (`max_gap_s`): a stop that spans a
five-hour gap says "seen here before and after", not "seen here throughout".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

STOP_RADIUS_M: Final = 50.0
STOP_MIN_DURATION: Final = timedelta(minutes=5)
STOP_MAX_ACCURACY_M: Final = 100.0
EARTH_RADIUS_M: Final = 6_371_008.8


@dataclass(frozen=True, slots=True)
class TrackPoint:
    device_id: str
    ts: datetime
    lat: float
    lon: float
    accuracy_m: float
    source: str


@dataclass(frozen=True, slots=True)
class Stop:
    device_id: str
    start: datetime
    end: datetime
    lat: float
    lon: float
    points: int
    radius_m: float  # farthest fix of the stop from its centre
    max_gap_s: float

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _close(cluster: list[TrackPoint], min_duration: timedelta) -> Stop | None:
    if len(cluster) < 2 or cluster[-1].ts - cluster[0].ts < min_duration:
        return None
    lat = sum(p.lat for p in cluster) / len(cluster)
    lon = sum(p.lon for p in cluster) / len(cluster)
    gaps = [(b.ts - a.ts).total_seconds() for a, b in itertools.pairwise(cluster)]
    return Stop(
        device_id=cluster[0].device_id,
        start=cluster[0].ts,
        end=cluster[-1].ts,
        lat=lat,
        lon=lon,
        points=len(cluster),
        radius_m=max(distance_m(lat, lon, p.lat, p.lon) for p in cluster),
        max_gap_s=max(gaps),
    )


def detect_stops(
    points: Iterable[TrackPoint],
    *,
    radius_m: float = STOP_RADIUS_M,
    min_duration: timedelta = STOP_MIN_DURATION,
    max_accuracy_m: float = STOP_MAX_ACCURACY_M,
) -> list[Stop]:
    """Stops of one device's fixes (sorted by ts here); see the module docstring."""
    usable = sorted((p for p in points if p.accuracy_m <= max_accuracy_m), key=lambda p: p.ts)
    stops: list[Stop] = []
    cluster: list[TrackPoint] = []
    sum_lat = sum_lon = 0.0
    for point in usable:
        if cluster:
            c_lat, c_lon = sum_lat / len(cluster), sum_lon / len(cluster)
            if distance_m(c_lat, c_lon, point.lat, point.lon) > radius_m:
                stop = _close(cluster, min_duration)
                if stop is not None:
                    stops.append(stop)
                cluster, sum_lat, sum_lon = [], 0.0, 0.0
        cluster.append(point)
        sum_lat += point.lat
        sum_lon += point.lon
    stop = _close(cluster, min_duration)
    if stop is not None:
        stops.append(stop)
    return stops


def feature_collection(
    subject_id: str,
    start: datetime,
    end: datetime,
    points: Sequence[TrackPoint],
    *,
    radius_m: float = STOP_RADIUS_M,
    min_duration: timedelta = STOP_MIN_DURATION,
    max_accuracy_m: float = STOP_MAX_ACCURACY_M,
) -> dict[str, Any]:
    """RFC 7946 FeatureCollection: per device a LineString of its fixes (a Point when it
    has one), then its stops as Points; the query and parameters as a foreign member."""
    features: list[dict[str, Any]] = []
    by_device: dict[str, list[TrackPoint]] = {}
    for point in sorted(points, key=lambda p: (p.device_id, p.ts)):
        by_device.setdefault(point.device_id, []).append(point)
    for device_id, track in by_device.items():
        coordinates = [[p.lon, p.lat] for p in track]
        geometry: dict[str, Any] = (
            {"type": "LineString", "coordinates": coordinates}
            if len(track) > 1
            else {"type": "Point", "coordinates": coordinates[0]}
        )
        features.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "kind": "track",
                    "subject_id": subject_id,
                    "device_id": device_id,
                    "points": len(track),
                    "start": track[0].ts.isoformat(),
                    "end": track[-1].ts.isoformat(),
                    # Per vertex, in the order of the coordinates.
                    "times": [p.ts.isoformat() for p in track],
                    "accuracy_m": [p.accuracy_m for p in track],
                    "sources": [p.source for p in track],
                },
            }
        )
        for stop in detect_stops(
            track, radius_m=radius_m, min_duration=min_duration, max_accuracy_m=max_accuracy_m
        ):
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Point", "coordinates": [stop.lon, stop.lat]},
                    "properties": {
                        "kind": "stop",
                        "subject_id": subject_id,
                        "device_id": device_id,
                        "start": stop.start.isoformat(),
                        "end": stop.end.isoformat(),
                        "duration_s": stop.duration_s,
                        "points": stop.points,
                        "radius_m": round(stop.radius_m, 1),
                        "max_gap_s": stop.max_gap_s,
                    },
                }
            )
    return {
        "type": "FeatureCollection",
        "features": features,
        "emon": {
            "subject_id": subject_id,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "points": len(points),
            "stop_parameters": {
                "radius_m": radius_m,
                "min_duration_s": min_duration.total_seconds(),
                "max_accuracy_m": max_accuracy_m,
            },
        },
    }
