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
# Zones with more vertices than this get shrunk/grown copies SHORTCUT_M inside and outside
# their edge: fixes with accuracy plus margin under 200 m then never measure the edge.
SHORTCUT_MIN_VERTICES = 64
SHORTCUT_M = 200.0
# How far inside SHORTCUT_M a shrunk/grown copy is known to be exact: GEOS approximates
# the buffer's round joins with 8 chords per quarter circle, whose sagitta at 200 m is
# 0.96 m, so a point in the shrunk copy is at least ~199 m inside the edge and every point
# within ~199 m of the zone is in the grown copy. 5 m leaves room to spare.
SHORTCUT_SURE_M = SHORTCUT_M - 5.0
# Up to this many zones, a linear scan of bounding boxes beats an STRtree query (whose
# fixed cost is tens of microseconds); above it the tree keeps the cost logarithmic.
LINEAR_SCAN_MAX_ZONES = 32


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
    bounds_m: tuple[float, float, float, float] = field(compare=False, default=(0, 0, 0, 0))
    # For zones with long boundaries (districts): the zone shrunk and grown by SHORTCUT_M,
    # prepared. A point in the first, or outside the second, is that far from the edge
    # without measuring the distance to thousands of vertices.
    inner_m: BaseGeometry | None = field(compare=False, default=None)
    outer_m: BaseGeometry | None = field(compare=False, default=None)

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
        inner = outer = None
        if shapely.get_num_coordinates(projected) > SHORTCUT_MIN_VERTICES:
            inner = shapely.buffer(projected, -SHORTCUT_M)
            outer = shapely.buffer(projected, SHORTCUT_M)
            shapely.prepare(inner)
            shapely.prepare(outer)
        bounds = tuple(float(b) for b in projected.bounds)
        return cls(
            zone_id, name, kind, geometry_wgs84, projected, boundary,
            (bounds[0], bounds[1], bounds[2], bounds[3]), inner, outer,
        )

    def signed_distance_m(self, x: float, y: float, point: BaseGeometry | None = None) -> float:
        """Distance from the point to the zone's edge: negative inside, positive outside."""
        if point is None:
            point = shapely.Point(x, y)
        edge_distance = float(self.boundary_m.distance(point))
        return -edge_distance if self.geometry_m.contains(point) else edge_distance

    def box_within(self, x: float, y: float, cap_m: float) -> bool:
        """Whether the bounding box is within `cap_m` of the point (if not, the capped
        distance is answered without geometry)."""
        min_x, min_y, max_x, max_y = self.bounds_m
        dx = max(min_x - x, 0.0, x - max_x)
        dy = max(min_y - y, 0.0, y - max_y)
        return dx * dx + dy * dy <= cap_m * cap_m

    def signed_distance_capped_m(
        self, x: float, y: float, cap_m: float, point: BaseGeometry | None = None
    ) -> float:
        """`signed_distance_m` when the point is within `cap_m` of the edge; otherwise a value
        beyond the cap with the right sign (the exact figure cannot change a presence test
        whose thresholds are all within the cap).

        Cheap answers first: a point whose distance to the bounding box exceeds the cap is
        outside by more than the cap (plain arithmetic); for a district, the prepared shrunk
        and grown copies answer for points far from the edge."""
        min_x, min_y, max_x, max_y = self.bounds_m
        dx = max(min_x - x, 0.0, x - max_x)
        dy = max(min_y - y, 0.0, y - max_y)
        beyond = cap_m + BEYOND_CAP_M
        if dx * dx + dy * dy > cap_m * cap_m:
            return beyond
        if point is None:
            point = shapely.Point(x, y)
        inside = bool(self.geometry_m.contains(point))
        if cap_m < SHORTCUT_M and self.inner_m is not None and self.outer_m is not None:
            if inside and self.inner_m.contains(point):
                return -beyond
            if not inside and not self.outer_m.contains(point):
                return beyond
        edge_distance = float(self.boundary_m.distance(point))
        return -edge_distance if inside else edge_distance

    def signed_distance_bounded_m(
        self, x: float, y: float, cap_m: float, point: BaseGeometry | None = None
    ) -> tuple[float, float, float, bool]:
        """`signed_distance_capped_m` (first), with what it proves about the true signed
        distance for the presence skip of `geofence.zonerules`:

        * a bound (second): the true signed distance is on the same side as the bound and at
          least as far from the edge (equal to the first value when it was measured);
        * a reach in metres (third): a point closer than that to this one takes a path of
          the capped test that agrees with the true distance (for a district, one that is
          not answered by its approximate shrunk/grown copies unless this one was);
        * whether the distance was measured (fourth: the bound is then the true distance).

        Same branches as `signed_distance_capped_m`, so the first value is always equal."""
        min_x, min_y, max_x, max_y = self.bounds_m
        dx = max(min_x - x, 0.0, x - max_x)
        dy = max(min_y - y, 0.0, y - max_y)
        beyond = cap_m + BEYOND_CAP_M
        box_sq = dx * dx + dy * dy
        if box_sq > cap_m * cap_m:
            return beyond, math.sqrt(box_sq), math.inf, False
        if point is None:
            point = shapely.Point(x, y)
        inside = bool(self.geometry_m.contains(point))
        if self.inner_m is None or self.outer_m is None:
            edge_distance = float(self.boundary_m.distance(point))
            signed = -edge_distance if inside else edge_distance
            return signed, signed, math.inf, True
        if cap_m < SHORTCUT_M:
            if inside and self.inner_m.contains(point):
                return -beyond, -SHORTCUT_SURE_M, math.inf, False
            if not inside and not self.outer_m.contains(point):
                return beyond, SHORTCUT_SURE_M, math.inf, False
        edge_distance = float(self.boundary_m.distance(point))
        signed = -edge_distance if inside else edge_distance
        return signed, signed, SHORTCUT_SURE_M - edge_distance, True

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

    def candidates(
        self, min_x: float, min_y: float, max_x: float, max_y: float
    ) -> list[Zone]:
        """Zones whose bounding box meets the box: a superset of the zones that can matter
        there, found by a linear scan for few zones and by the STRtree for many."""
        if len(self._zones) <= LINEAR_SCAN_MAX_ZONES:
            return [
                z for z in self._zones
                if z.bounds_m[0] <= max_x and min_x <= z.bounds_m[2]
                and z.bounds_m[1] <= max_y and min_y <= z.bounds_m[3]
            ]
        hits = self._tree.query(shapely.box(min_x, min_y, max_x, max_y))
        return [self._zones[int(i)] for i in sorted(hits)]

    def candidates_with_reach(
        self, min_x: float, min_y: float, max_x: float, max_y: float, search_m: float
    ) -> tuple[list[Zone], float]:
        """`candidates` of the box, and how far (metres, at most `search_m`) the box may
        move or grow before that list could change: its L-infinity distance to the nearest
        zone box left out, and to the nearest edge of a candidate's box it could leave."""
        reach = search_m
        if len(self._zones) <= LINEAR_SCAN_MAX_ZONES:
            pool: Iterable[Zone] = self._zones
        else:
            hits = self._tree.query(
                shapely.box(min_x - search_m, min_y - search_m, max_x + search_m,
                            max_y + search_m)
            )
            pool = [self._zones[int(i)] for i in sorted(hits)]
        found: list[Zone] = []
        for zone in pool:
            z_min_x, z_min_y, z_max_x, z_max_y = zone.bounds_m
            # Positive when the boxes overlap by that much on every axis; minus the gap else.
            overlap = min(z_max_x - min_x, max_x - z_min_x, z_max_y - min_y, max_y - z_min_y)
            if overlap >= 0.0:
                found.append(zone)
                reach = min(reach, overlap)
            else:
                reach = min(reach, -overlap)
        return found, reach

    def __len__(self) -> int:
        return len(self._zones)

    def near(self, x: float, y: float, radius_m: float) -> list[Zone]:
        """Zones within `radius_m` of the point (including those containing it)."""
        if not self._zones:
            return []
        hits = self._tree.query(shapely.Point(x, y), predicate="dwithin", distance=radius_m)
        return [self._zones[int(i)] for i in sorted(hits)]

    def crossed_by(self, start: tuple[float, float], end: tuple[float, float]) -> list[Zone]:
        """Zones the straight segment start->end may run through: the STRtree queried with
        the segment itself (for few zones, their bounding boxes; `Zone.chord` decides)."""
        boxed = self.candidates(
            min(start[0], end[0]), min(start[1], end[1]),
            max(start[0], end[0]), max(start[1], end[1]),
        )
        if len(self._zones) <= LINEAR_SCAN_MAX_ZONES or not boxed:
            return boxed
        hits = self._tree.query(shapely.LineString([start, end]), predicate="intersects")
        return [self._zones[int(i)] for i in sorted(hits)]
