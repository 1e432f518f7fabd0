"""Zones in a metric projection, their spatial index, and accuracy-aware presence tests.

All distances are metres in a local equirectangular projection centred on the config's
zones. Over a city or county (tens of km) its scale error stays below 0.1 %, far below GNSS
accuracy; a national deployment shards subjects by region, each with its own centre.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

EARTH_RADIUS_M = 6_371_008.8
# How far past the cap `Zone.signed_distance_capped_m` reports a point it did not measure.
BEYOND_CAP_M = 1.0


class ZoneKind(StrEnum):
    INCLUSION = "inclusion"
    EXCLUSION = "exclusion"


class Presence(Enum):
    """Where a fix is relative to a zone, given its accuracy circle."""

    INSIDE = "inside"
    OUTSIDE = "outside"
    UNCERTAIN = "uncertain"  # uncertain fixes never change state


@dataclass(frozen=True, slots=True)
class LocalProjection:
    """Equirectangular projection around (lon0, lat0), metres east/north."""

    lon0: float
    lat0: float

    @property
    def _kx(self) -> float:
        return math.radians(1.0) * EARTH_RADIUS_M * math.cos(math.radians(self.lat0))

    @property
    def _ky(self) -> float:
        return math.radians(1.0) * EARTH_RADIUS_M

    def forward(self, lon: float, lat: float) -> tuple[float, float]:
        return (lon - self.lon0) * self._kx, (lat - self.lat0) * self._ky

    def forward_array(self, coords: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = np.empty_like(coords)
        out[:, 0] = (coords[:, 0] - self.lon0) * self._kx
        out[:, 1] = (coords[:, 1] - self.lat0) * self._ky
        return out

    def forward_geometry(self, geom: BaseGeometry) -> BaseGeometry:
        return shapely.transform(geom, self.forward_array)

    def inverse_array(self, coords: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = np.empty_like(coords)
        out[:, 0] = coords[:, 0] / self._kx + self.lon0
        out[:, 1] = coords[:, 1] / self._ky + self.lat0
        return out

    def inverse_geometry(self, geom: BaseGeometry) -> BaseGeometry:
        return shapely.transform(geom, self.inverse_array)

    @classmethod
    def centred_on(cls, geoms: Iterable[BaseGeometry]) -> LocalProjection:
        bounds = [g.bounds for g in geoms if not g.is_empty]
        if not bounds:
            return cls(0.0, 0.0)
        min_x = min(b[0] for b in bounds)
        min_y = min(b[1] for b in bounds)
        max_x = max(b[2] for b in bounds)
        max_y = max(b[3] for b in bounds)
        return cls((min_x + max_x) / 2.0, (min_y + max_y) / 2.0)


@dataclass(frozen=True, slots=True)
class Zone:
    """A zone with its WGS-84 geometry and its projected, prepared copy."""

    zone_id: str
    name: str
    kind: ZoneKind
    geometry_wgs84: BaseGeometry
    geometry_m: BaseGeometry = field(compare=False)
    boundary_m: BaseGeometry = field(compare=False)

    @classmethod
    def build(
        cls,
        zone_id: str,
        name: str,
        kind: ZoneKind,
        geometry_wgs84: BaseGeometry,
        projection: LocalProjection,
    ) -> Zone:
        return cls.from_projected(
            zone_id, name, kind, projection.forward_geometry(geometry_wgs84), projection,
            geometry_wgs84,
        )

    @classmethod
    def from_projected(
        cls,
        zone_id: str,
        name: str,
        kind: ZoneKind,
        projected: BaseGeometry,
        projection: LocalProjection,
        geometry_wgs84: BaseGeometry | None = None,
    ) -> Zone:
        """A zone built in metres (e.g. a route corridor buffered by its width)."""
        if geometry_wgs84 is None:
            geometry_wgs84 = projection.inverse_geometry(projected)
        boundary = projected.boundary
        # Prepared geometries make repeated contains/distance tests several times faster.
        shapely.prepare(projected)
        shapely.prepare(boundary)
        return cls(zone_id, name, kind, geometry_wgs84, projected, boundary)

    def signed_distance_m(self, x: float, y: float) -> float:
        """Distance from the point to the zone's edge: negative inside, positive outside."""
        point = shapely.Point(x, y)
        edge_distance = float(shapely.distance(self.boundary_m, point))
        return -edge_distance if self.geometry_m.contains(point) else edge_distance

    def signed_distance_capped_m(self, x: float, y: float, cap_m: float) -> float:
        """`signed_distance_m` when the point is within `cap_m` of the edge; otherwise a value
        beyond the cap with the right sign (the exact figure cannot change a presence test
        whose thresholds are all within the cap).

        A district boundary has thousands of vertices; the prepared within-distance test
        skips the exact distance for the common fix far from every edge."""
        point = shapely.Point(x, y)
        inside = bool(self.geometry_m.contains(point))
        if not shapely.dwithin(self.boundary_m, point, cap_m):
            beyond = cap_m + BEYOND_CAP_M
            return -beyond if inside else beyond
        edge_distance = float(shapely.distance(self.boundary_m, point))
        return -edge_distance if inside else edge_distance

    def chord(self, start: tuple[float, float], end: tuple[float, float]) -> Chord | None:
        """How the straight segment start->end runs through the zone: None if it misses it."""
        line = shapely.LineString([start, end])
        if not self.geometry_m.intersects(line):
            return None
        inside = shapely.intersection(self.geometry_m, line)
        length_m = float(inside.length)
        total_m = float(line.length)
        if length_m <= 0.0 or total_m <= 0.0:
            return None
        points = shapely.get_coordinates(inside)
        fractions = [float(line.project(shapely.Point(p))) / total_m for p in points]
        return Chord(length_m, min(fractions), max(fractions))


@dataclass(frozen=True, slots=True)
class Chord:
    """The part of a straight segment inside a zone: its length, and where along the segment
    (0 = start, 1 = end) it enters first and leaves last."""

    length_m: float
    enter_fraction: float
    leave_fraction: float


def inclusion_presence(signed_m: float, accuracy_m: float, margin_m: float) -> Presence:
    """Outside only when the whole accuracy circle is outside by more than the margin;
    inside when the circle pokes out of the zone by at most the margin."""
    if signed_m - accuracy_m > margin_m:
        return Presence.OUTSIDE
    if signed_m <= 0.0 and accuracy_m + signed_m <= margin_m:
        return Presence.INSIDE
    return Presence.UNCERTAIN


def exclusion_presence(
    signed_m: float, accuracy_m: float, margin_m: float, max_accuracy_m: float
) -> Presence:
    """Inside when the accuracy circle reaches into the zone by at least the margin (and the
    fix is precise enough to say so); outside when the whole circle is clear by the margin."""
    if signed_m - accuracy_m > margin_m:
        return Presence.OUTSIDE
    if accuracy_m <= max_accuracy_m and accuracy_m - signed_m >= margin_m:
        return Presence.INSIDE
    return Presence.UNCERTAIN


class ZoneIndex:
    """STRtree over projected zones: candidates near a point, independent of zone count."""

    def __init__(self, zones: Sequence[Zone]) -> None:
        self._zones = tuple(zones)
        self._tree = shapely.STRtree([z.geometry_m for z in self._zones])

    def __len__(self) -> int:
        return len(self._zones)

    def near(self, x: float, y: float, radius_m: float) -> list[Zone]:
        """Zones within `radius_m` of the point (including those containing it)."""
        if not self._zones:
            return []
        hits = self._tree.query(shapely.Point(x, y), predicate="dwithin", distance=radius_m)
        return [self._zones[int(i)] for i in sorted(hits)]

    def crossed_by(self, start: tuple[float, float], end: tuple[float, float]) -> list[Zone]:
        """Zones the straight segment start->end touches (candidates for segment crossing)."""
        if not self._zones:
            return []
        hits = self._tree.query(shapely.LineString([start, end]), predicate="intersects")
        return [self._zones[int(i)] for i in sorted(hits)]
