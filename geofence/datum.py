"""Datum conversion from the Chinese map datums GCJ-02 and BD-09 to WGS-84 (pure, no I/O).

Why this exists: GNSS receivers report WGS-84, but Chinese web maps (Amap/Gaode and Tencent
in GCJ-02, Baidu in BD-09) draw in deliberately offset datums. A fence drawn on such a map,
or a boundary downloaded from one, sits 100–700 m away from the true ground position when
read as WGS-84, which is enough to turn a compliant client into an alert (DOMAIN.md §5).
Every zone file therefore states its datum and is converted to WGS-84 on load.

GCJ-02 is the standard published Krasovsky-ellipsoid obfuscation (a = 6378245.0,
ee = 0.00669342162296594323); outside the usual mainland-China bounding box it equals
WGS-84. GCJ-02 has no closed-form inverse; `gcj02_to_wgs84` inverts the forward transform by
fixed-point iteration to well under a millimetre (the common one-step "inverse" is metres
off). BD-09 is Baidu's distortion of GCJ-02; its usual closed-form inverse is refined the same
way.

All coordinates are (lon, lat) in degrees, GeoJSON order. The core works on numpy arrays so
that `convert_geometry_to_wgs84` converts a polygon of thousands of vertices in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import cast

import numpy as np
import numpy.typing as npt
import shapely
from shapely.geometry.base import BaseGeometry

__all__ = [
    "Datum",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "convert_geometry_to_wgs84",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "out_of_china",
    "to_wgs84",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
]

Array = npt.NDArray[np.float64]
_PairFn = Callable[[Array, Array], tuple[Array, Array]]

_A = 6378245.0  # Krasovsky 1940 semi-major axis (m)
_EE = 0.00669342162296594323  # Krasovsky 1940 first eccentricity squared
_X_PI = np.pi * 3000.0 / 180.0  # BD-09 constant
_INV_TOL_DEG = 1e-12  # ~0.1 µm; the fixed point converges ~1000x per step
_INV_MAX_ITER = 30


class Datum(StrEnum):
    """Geodetic datum a zone file's coordinates are expressed in."""

    WGS84 = "WGS-84"
    GCJ02 = "GCJ-02"
    BD09 = "BD-09"


def _out_of_china(lon: Array, lat: Array) -> npt.NDArray[np.bool_]:
    return (lon < 72.004) | (lon > 137.8347) | (lat < 0.8293) | (lat > 55.8271)


def _gcj_delta(lon: Array, lat: Array) -> tuple[Array, Array]:
    """GCJ-02 minus WGS-84 offset (dlon, dlat) in degrees at WGS-84 (lon, lat); no China test."""
    # Far outside China (even non-finite input) the offset is computed, then masked out by
    # the callers; numpy's warnings about it would only be noise.
    with np.errstate(all="ignore"):
        x = lon - 105.0
        y = lat - 35.0
        sq = np.sqrt(np.abs(x))
        common = (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
        dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sq + common
        dlat += (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
        dlat += (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0
        dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sq + common
        dlon += (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
        dlon += (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0
        radlat = lat / 180.0 * np.pi
        magic = 1.0 - _EE * np.sin(radlat) ** 2
        sqrtmagic = np.sqrt(magic)
        dlat = (dlat * 180.0) / ((_A * (1.0 - _EE)) / (magic * sqrtmagic) * np.pi)
        dlon = (dlon * 180.0) / (_A / sqrtmagic * np.cos(radlat) * np.pi)
    return dlon, dlat


def _wgs_to_gcj(lon: Array, lat: Array) -> tuple[Array, Array]:
    dlon, dlat = _gcj_delta(lon, lat)
    out = _out_of_china(lon, lat)
    return np.where(out, lon, lon + dlon), np.where(out, lat, lat + dlat)


def _invert(fwd: _PairFn, lon: Array, lat: Array, lon0: Array, lat0: Array) -> tuple[Array, Array]:
    """Solve fwd(x) = (lon, lat) by fixed-point iteration x <- x - (fwd(x) - target) from x0.

    Both forward maps are identity plus a small, slowly varying offset, so each step shrinks
    the error by about three orders of magnitude; 2-4 steps reach the tolerance.
    """
    xlon, xlat = lon0.copy(), lat0.copy()
    for _ in range(_INV_MAX_ITER):
        flon, flat = fwd(xlon, xlat)
        elon, elat = flon - lon, flat - lat
        xlon -= elon
        xlat -= elat
        err = np.maximum(np.abs(elon), np.abs(elat))
        if float(np.max(err, initial=0.0)) < _INV_TOL_DEG:
            break
    return xlon, xlat


def _gcj_raw(lon: Array, lat: Array) -> tuple[Array, Array]:
    dlon, dlat = _gcj_delta(lon, lat)
    return lon + dlon, lat + dlat


def _gcj_to_wgs(lon: Array, lat: Array) -> tuple[Array, Array]:
    # Iterate on the raw transform (as if in China) and keep identity where the GCJ-02 input
    # is outside the box, so points near the box edge cannot oscillate.
    wlon, wlat = _invert(_gcj_raw, lon, lat, lon, lat)
    out = _out_of_china(lon, lat)
    return np.where(out, lon, wlon), np.where(out, lat, wlat)


def _gcj_to_bd(lon: Array, lat: Array) -> tuple[Array, Array]:
    z = np.hypot(lon, lat) + 0.00002 * np.sin(lat * _X_PI)
    theta = np.arctan2(lat, lon) + 0.000003 * np.cos(lon * _X_PI)
    return z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006


def _bd_to_gcj(lon: Array, lat: Array) -> tuple[Array, Array]:
    # The widely published closed-form inverse (a few cm off), refined to exact.
    x = lon - 0.0065
    y = lat - 0.006
    z = np.hypot(x, y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    return _invert(_gcj_to_bd, lon, lat, z * np.cos(theta), z * np.sin(theta))


def _bd_to_wgs(lon: Array, lat: Array) -> tuple[Array, Array]:
    return _gcj_to_wgs(*_bd_to_gcj(lon, lat))


def _identity(lon: Array, lat: Array) -> tuple[Array, Array]:
    return lon, lat


_TO_WGS84: dict[Datum, _PairFn] = {
    Datum.WGS84: _identity,
    Datum.GCJ02: _gcj_to_wgs,
    Datum.BD09: _bd_to_wgs,
}


def _call(fn: _PairFn, lon: float, lat: float) -> tuple[float, float]:
    rlon, rlat = fn(np.array([lon], dtype=np.float64), np.array([lat], dtype=np.float64))
    return float(rlon[0]), float(rlat[0])


def out_of_china(lon: float, lat: float) -> bool:
    """True where GCJ-02 is defined to equal WGS-84 (outside the mainland bounding box)."""
    return bool(_out_of_china(np.array([lon]), np.array([lat]))[0])


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """WGS-84 (lon, lat) to GCJ-02 (lon, lat); identity outside China."""
    return _call(_wgs_to_gcj, lon, lat)


def gcj02_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """GCJ-02 to WGS-84 by iterative inversion of the forward transform (error << 1 mm)."""
    return _call(_gcj_to_wgs, lon, lat)


def gcj02_to_bd09(lon: float, lat: float) -> tuple[float, float]:
    """GCJ-02 to Baidu BD-09."""
    return _call(_gcj_to_bd, lon, lat)


def bd09_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """Baidu BD-09 to GCJ-02, inverting `gcj02_to_bd09` exactly (the usual formula is cm off)."""
    return _call(_bd_to_gcj, lon, lat)


def bd09_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """Baidu BD-09 to WGS-84 (via GCJ-02)."""
    return _call(_bd_to_wgs, lon, lat)


def wgs84_to_bd09(lon: float, lat: float) -> tuple[float, float]:
    """WGS-84 to Baidu BD-09 (via GCJ-02); for tests and simulators."""
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def to_wgs84(datum: Datum | str, lon: float, lat: float) -> tuple[float, float]:
    """Convert one (lon, lat) in `datum` to WGS-84. A str must be a Datum value ("GCJ-02")."""
    return _call(_TO_WGS84[Datum(datum)], lon, lat)


def convert_geometry_to_wgs84(datum: Datum | str, geom: BaseGeometry) -> BaseGeometry:
    """Convert every vertex of a shapely geometry from `datum` to WGS-84 in one vectorised pass.

    Structure (parts, rings, vertex count, Z values) is preserved; WGS-84 input is returned
    as is. Raises ValueError for an unknown datum string.
    """
    fn = _TO_WGS84[Datum(datum)]
    if fn is _identity:
        return geom
    return cast(BaseGeometry, shapely.transform(geom, _vertex_converter(fn), include_z=None))


def convert_geometries_to_wgs84(
    datum: Datum | str, geoms: Sequence[BaseGeometry]
) -> list[BaseGeometry]:
    """`convert_geometry_to_wgs84` for many geometries (a zone file) in one vectorised pass.

    The per-call cost of the numpy pipeline dwarfs the per-vertex cost for a zone of a few
    dozen vertices: converting a file's zones together is ~50x faster than one by one."""
    fn = _TO_WGS84[Datum(datum)]
    if fn is _identity or not geoms:
        return list(geoms)
    array = np.empty(len(geoms), dtype=object)
    array[:] = list(geoms)
    converted = shapely.transform(array, _vertex_converter(fn), include_z=None)
    return [cast(BaseGeometry, g) for g in converted]


def _vertex_converter(fn: _PairFn) -> Callable[[Array], Array]:
    def _xy(coords: Array) -> Array:
        out = np.array(coords, dtype=np.float64, copy=True)
        out[:, 0], out[:, 1] = fn(out[:, 0].copy(), out[:, 1].copy())
        return out

    return _xy
