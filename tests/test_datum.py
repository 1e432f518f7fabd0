"""Tests for geofence.datum, and for the example zone files in config/zones that rely on it."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, Polygon, shape

from geofence.datum import (
    Datum,
    bd09_to_gcj02,
    bd09_to_wgs84,
    convert_geometry_to_wgs84,
    gcj02_to_bd09,
    gcj02_to_wgs84,
    out_of_china,
    to_wgs84,
    wgs84_to_bd09,
    wgs84_to_gcj02,
)

ZONES = Path(__file__).resolve().parents[1] / "config" / "zones"


def metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Haversine distance in metres between two (lon, lat) points."""
    lon1, lat1, lon2, lat2 = map(math.radians, (*a, *b))
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371008.8 * math.asin(math.sqrt(h))


def local_metres(geom: Any, lat0: float = 22.54) -> Any:
    """Project (lon, lat) to a local equirectangular metre grid; fine over a few km."""
    kx = 111320.0 * math.cos(math.radians(lat0))
    ky = 110574.0

    def f(c: np.ndarray[Any, np.dtype[np.float64]]) -> np.ndarray[Any, np.dtype[np.float64]]:
        return np.column_stack([c[:, 0] * kx, c[:, 1] * ky])

    return shapely.transform(geom, f)


# --- Published reference values --------------------------------------------------------

# (wgs lon, wgs lat, gcj lon, gcj lat): test vectors published with the widely used
# eviltransform and coordtransform libraries (same Krasovsky algorithm).
REFERENCE = [
    (121.5272106, 31.1774276, 121.531541859215, 31.17530398364597),  # Shanghai
    (113.912316, 22.543847, 113.9171764808363, 22.540796131694766),  # Shenzhen
    (116.377817, 39.911954, 116.38404722455657, 39.91334545536069),  # Beijing
    (116.404, 39.915, 116.41024449916938, 39.91640428150164),  # Beijing
]


@pytest.mark.parametrize(("wlon", "wlat", "glon", "glat"), REFERENCE)
def test_wgs84_to_gcj02_matches_published_vectors(
    wlon: float, wlat: float, glon: float, glat: float
) -> None:
    lon, lat = wgs84_to_gcj02(wlon, wlat)
    assert lon == pytest.approx(glon, abs=1e-9)
    assert lat == pytest.approx(glat, abs=1e-9)


@pytest.mark.parametrize(("wlon", "wlat", "glon", "glat"), REFERENCE)
def test_gcj02_to_wgs84_inverts_published_vectors(
    wlon: float, wlat: float, glon: float, glat: float
) -> None:
    assert metres(gcj02_to_wgs84(glon, glat), (wlon, wlat)) < 0.01


def test_bd09_matches_published_vectors() -> None:
    lon, lat = gcj02_to_bd09(116.404, 39.915)
    assert lon == pytest.approx(116.41036949371029, abs=1e-9)
    assert lat == pytest.approx(39.92133699351021, abs=1e-9)
    # The published closed-form inverse gives (116.39762729119315, 39.90865673957631); ours
    # refines it to the exact inverse, a few centimetres away.
    assert metres(bd09_to_gcj02(116.404, 39.915), (116.39762729119315, 39.90865673957631)) < 0.1


@pytest.mark.parametrize(
    ("lon", "lat"),
    [
        (114.0579, 22.5431),  # Futian civic centre
        (113.9300, 22.5300),  # Nanshan
        (114.0300, 22.5350),  # home-s003
        (114.1200, 22.5500),  # Luohu
    ],
)
def test_shenzhen_offset_is_hundreds_of_metres(lon: float, lat: float) -> None:
    offset = metres((lon, lat), wgs84_to_gcj02(lon, lat))
    assert 100.0 < offset < 700.0


def test_iterative_inverse_beats_one_step_approximation() -> None:
    # Documents why gcj02_to_wgs84 iterates: w ~ g - delta(g) is metres off.
    w = (114.0579, 22.5431)
    g = wgs84_to_gcj02(*w)
    g2 = wgs84_to_gcj02(*g)
    one_step = (2 * g[0] - g2[0], 2 * g[1] - g2[1])
    assert metres(one_step, w) > 0.5
    assert metres(gcj02_to_wgs84(*g), w) < 0.001


# --- Properties --------------------------------------------------------------------------

china_lon = st.floats(min_value=73.5, max_value=135.0, allow_nan=False)
china_lat = st.floats(min_value=18.0, max_value=53.5, allow_nan=False)
any_lon = st.floats(min_value=-180.0, max_value=180.0, allow_nan=False)
any_lat = st.floats(min_value=-90.0, max_value=90.0, allow_nan=False)


@given(china_lon, china_lat)
def test_gcj_round_trip_inside_china(lon: float, lat: float) -> None:
    assert metres(gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat)), (lon, lat)) < 0.01
    assert metres(wgs84_to_gcj02(*gcj02_to_wgs84(lon, lat)), (lon, lat)) < 0.01


@given(china_lon, china_lat)
def test_bd09_round_trip(lon: float, lat: float) -> None:
    assert metres(bd09_to_wgs84(*wgs84_to_bd09(lon, lat)), (lon, lat)) < 0.1
    assert metres(bd09_to_gcj02(*gcj02_to_bd09(lon, lat)), (lon, lat)) < 0.1
    assert metres(to_wgs84(Datum.BD09, *wgs84_to_bd09(lon, lat)), (lon, lat)) < 0.1


@given(any_lon, any_lat)
def test_identity_outside_china(lon: float, lat: float) -> None:
    if not out_of_china(lon, lat):
        return
    assert wgs84_to_gcj02(lon, lat) == (lon, lat)
    assert gcj02_to_wgs84(lon, lat) == (lon, lat)
    assert to_wgs84("GCJ-02", lon, lat) == (lon, lat)


@pytest.mark.parametrize(
    ("lon", "lat"),
    [(0.0, 51.48), (-74.0, 40.7), (139.69, 35.69), (151.2, -33.87), (2.35, 48.86)],
)
def test_known_places_outside_china(lon: float, lat: float) -> None:
    assert out_of_china(lon, lat)
    assert wgs84_to_gcj02(lon, lat) == (lon, lat)


def test_to_wgs84_dispatch() -> None:
    w = (114.0579, 22.5431)
    assert to_wgs84(Datum.WGS84, *w) == w
    assert to_wgs84("WGS-84", *w) == w
    assert metres(to_wgs84(Datum.GCJ02, *wgs84_to_gcj02(*w)), w) < 0.01
    assert metres(to_wgs84("BD-09", *wgs84_to_bd09(*w)), w) < 0.01
    assert [d.value for d in Datum] == ["WGS-84", "GCJ-02", "BD-09"]
    with pytest.raises(ValueError, match="WGS84"):
        to_wgs84("WGS84", *w)


# --- Geometry conversion ---------------------------------------------------------------


def _ring_counts(geom: Any) -> list[int]:
    polys = list(getattr(geom, "geoms", [geom]))
    return [len(r.coords) for p in polys for r in [p.exterior, *p.interiors]]


@pytest.mark.parametrize("datum", [Datum.GCJ02, Datum.BD09])
def test_geometry_conversion_keeps_structure_and_matches_scalar(datum: Datum) -> None:
    outer = Point(114.05, 22.54).buffer(0.02, quad_segs=64)
    hole = Point(114.05, 22.54).buffer(0.005, quad_segs=16)
    poly = Polygon(outer.exterior.coords, [hole.exterior.coords])
    multi = shapely.MultiPolygon([poly, Point(114.2, 22.6).buffer(0.01)])
    out = convert_geometry_to_wgs84(datum, multi)
    assert out.geom_type == "MultiPolygon"
    assert out.is_valid
    assert _ring_counts(out) == _ring_counts(multi)
    src = shapely.get_coordinates(multi)
    dst = shapely.get_coordinates(out)
    for i in (0, 17, len(src) - 1):
        assert metres(tuple(dst[i]), to_wgs84(datum, *src[i])) < 1e-6
    # Moved by the datum offset: ~600 m for GCJ-02 in Shenzhen, ~1.2 km for BD-09.
    assert 100.0 < metres(tuple(src[0]), tuple(dst[0])) < 1500.0


def test_geometry_wgs84_is_unchanged_and_z_is_kept() -> None:
    p = Point(114.05, 22.54).buffer(0.01)
    assert convert_geometry_to_wgs84(Datum.WGS84, p) is p
    line = LineString([(114.0, 22.5, 10.0), (114.1, 22.6, 20.0)])
    out = convert_geometry_to_wgs84("GCJ-02", line)
    assert out.has_z
    assert [c[2] for c in out.coords] == [10.0, 20.0]


@settings(max_examples=30, deadline=None)
@given(
    st.floats(min_value=73.5, max_value=134.0),
    st.floats(min_value=18.0, max_value=53.0),
    st.floats(min_value=0.0005, max_value=0.2),
    st.integers(min_value=1, max_value=64),
)
def test_geometry_conversion_keeps_validity(lon: float, lat: float, r: float, q: int) -> None:
    poly = Point(lon, lat).buffer(r, quad_segs=q)
    out = convert_geometry_to_wgs84(Datum.GCJ02, poly)
    assert out.is_valid
    assert len(out.exterior.coords) == len(poly.exterior.coords)


def test_large_polygon_converts_fast() -> None:
    poly = Point(114.05, 22.54).buffer(0.05, quad_segs=2500)  # 10,001 vertices
    start = time.perf_counter()
    out = convert_geometry_to_wgs84(Datum.GCJ02, poly)
    assert time.perf_counter() - start < 2.0  # ~15 ms in practice
    assert out.is_valid
    assert len(out.exterior.coords) == 10001


# --- Example zone files (config/zones) ---------------------------------------------------


def _load_zones() -> dict[str, tuple[dict[str, Any], Any]]:
    zones: dict[str, tuple[dict[str, Any], Any]] = {}
    for path in sorted(ZONES.glob("*.geojson")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        assert doc["type"] == "FeatureCollection"
        datum = Datum(doc["datum"])
        for feat in doc["features"]:
            props = feat["properties"]
            assert props["id"] not in zones, f"duplicate zone id {props['id']}"
            assert props["kind"] in ("inclusion", "exclusion")
            assert isinstance(props["name"], str)
            assert feat["geometry"]["type"] in ("Polygon", "MultiPolygon")
            geom = convert_geometry_to_wgs84(datum, shape(feat["geometry"]))
            assert geom.is_valid
            zones[props["id"]] = (props, geom)
    return zones


EXPECTED_CENTRES = {
    "home-s001": (114.0400, 22.5480),
    "home-s002": (114.0600, 22.5400),
    "home-s003": (114.0300, 22.5350),
    "work-s001": (114.0550, 22.5370),
    "school-futian-1": (114.0700, 22.5520),
}


def test_example_zones_sit_well_inside_futian() -> None:
    zones = _load_zones()
    assert set(zones) >= {*EXPECTED_CENTRES, "district-futian", "district-nanshan"}
    futian = local_metres(zones["district-futian"][1])
    for zid, centre in EXPECTED_CENTRES.items():
        geom = zones[zid][1]
        assert metres((geom.centroid.x, geom.centroid.y), centre) < 1.0
        assert futian.contains(local_metres(geom))
        assert futian.boundary.distance(local_metres(Point(centre))) >= 500.0, zid
    assert zones["school-futian-1"][0]["kind"] == "exclusion"


def test_nanshan_target_and_paths() -> None:
    zones = _load_zones()
    futian = zones["district-futian"][1]
    nanshan = zones["district-nanshan"][1]
    school = zones["school-futian-1"][1]
    target = Point(113.9300, 22.5300)
    assert nanshan.contains(target)
    assert not futian.contains(target)
    assert local_metres(futian).distance(local_metres(target)) > 1000.0
    home = Point(EXPECTED_CENTRES["home-s003"])
    to_school = LineString([home, Point(EXPECTED_CENTRES["school-futian-1"])])
    assert futian.contains(to_school)
    assert to_school.intersects(school)
    to_nanshan = LineString([home, target])
    assert not to_nanshan.intersects(school)
    exit_point = to_nanshan.intersection(futian.boundary)
    assert exit_point.geom_type == "Point"
    assert metres((exit_point.x, exit_point.y), (113.9892, 22.5330)) < 50.0


def test_gcj02_district_moves_by_the_expected_offset() -> None:
    doc = json.loads((ZONES / "district-futian.gcj02.geojson").read_text(encoding="utf-8"))
    assert doc["datum"] == "GCJ-02"
    raw = shape(doc["features"][0]["geometry"])
    wgs = convert_geometry_to_wgs84(doc["datum"], raw)
    shift = metres((raw.centroid.x, raw.centroid.y), (wgs.centroid.x, wgs.centroid.y))
    assert 100.0 < shift < 700.0
