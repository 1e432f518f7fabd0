"""Zones: accuracy-aware presence at the margins, signed distance, spatial index, projection."""

from __future__ import annotations

import math

import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from geofence.zones import (
    EARTH_RADIUS_M,
    LocalProjection,
    Presence,
    Zone,
    ZoneIndex,
    ZoneKind,
    exclusion_presence,
    inclusion_presence,
)
from tests.core_helpers import PROJECTION, lonlat, square_zone

MARGIN = 20.0
MAX_ACC = 100.0

INSIDE, OUTSIDE, UNCERTAIN = Presence.INSIDE, Presence.OUTSIDE, Presence.UNCERTAIN

# ---------------------------------------------------------------------- truth tables


@pytest.mark.parametrize(
    ("signed", "accuracy", "expected"),
    [
        (-50.0, 10.0, INSIDE),  # circle wholly inside
        (-5.0, 25.0, INSIDE),  # circle pokes out by exactly the margin
        (-5.0, 25.01, UNCERTAIN),  # ... by a hair more than the margin
        (0.0, 20.0, INSIDE),  # on the edge, circle out by exactly the margin
        (0.0, 0.0, INSIDE),  # on the edge, perfect fix
        (0.01, 0.0, UNCERTAIN),  # just outside, but not by the margin
        (20.0, 0.0, UNCERTAIN),  # outside by exactly the margin: not more
        (20.01, 0.0, OUTSIDE),
        (30.0, 10.0, UNCERTAIN),  # circle clear by exactly the margin
        (30.01, 10.0, OUTSIDE),
        (1000.0, 500.0, OUTSIDE),  # imprecise but far: still proves outside
        (-500.0, 600.0, UNCERTAIN),  # centre inside, circle far out
    ],
)
def test_inclusion_presence_truth_table(signed: float, accuracy: float, expected: Presence) -> None:
    assert inclusion_presence(signed, accuracy, MARGIN) is expected


@pytest.mark.parametrize(
    ("signed", "accuracy", "expected"),
    [
        (-20.0, 0.0, INSIDE),  # inside by exactly the margin
        (-19.99, 0.0, UNCERTAIN),  # inside, but not by the margin
        (10.0, 30.0, INSIDE),  # centre outside, circle reaches 20 m in
        (10.0, 29.99, UNCERTAIN),
        (-50.0, 100.0, INSIDE),  # exactly the least precise fix allowed
        (-50.0, 100.01, UNCERTAIN),  # too imprecise to place anyone inside
        (-500.0, 150.0, UNCERTAIN),  # deep inside but imprecise
        (30.0, 10.0, UNCERTAIN),  # clear by exactly the margin
        (30.01, 10.0, OUTSIDE),
        (5000.0, 1000.0, OUTSIDE),  # imprecise but far away
    ],
)
def test_exclusion_presence_truth_table(signed: float, accuracy: float, expected: Presence) -> None:
    assert exclusion_presence(signed, accuracy, MARGIN, MAX_ACC) is expected


signed_st = st.floats(-5000.0, 5000.0, allow_nan=False)
accuracy_st = st.floats(0.0, 3000.0, allow_nan=False)
margin_st = st.floats(0.0, 1000.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(signed=signed_st, accuracy=accuracy_st, margin=margin_st, max_acc=st.floats(1.0, 5000.0))
def test_inclusion_and_exclusion_views_never_disagree(
    signed: float, accuracy: float, margin: float, max_acc: float
) -> None:
    """The same fix and edge are never INSIDE under one reading and OUTSIDE under the other:
    a point cannot be both confirmed in a zone and confirmed clear of it."""
    incl = inclusion_presence(signed, accuracy, margin)
    excl = exclusion_presence(signed, accuracy, margin, max_acc)
    assert {incl, excl} != {INSIDE, OUTSIDE}
    if incl is OUTSIDE or excl is OUTSIDE:
        # OUTSIDE does not depend on how the zone is used.
        assert incl is excl is OUTSIDE


@settings(max_examples=300, deadline=None)
@given(signed=signed_st, accuracy=accuracy_st, margin=margin_st)
def test_inclusion_presence_is_monotone_in_distance(
    signed: float, accuracy: float, margin: float
) -> None:
    """Moving the fix further out never turns OUTSIDE back into INSIDE/UNCERTAIN, and moving
    it further in never turns INSIDE into something else."""
    here = inclusion_presence(signed, accuracy, margin)
    if here is OUTSIDE:
        assert inclusion_presence(signed + 1.0, accuracy, margin) is OUTSIDE
    if here is INSIDE:
        assert inclusion_presence(signed - 1.0, accuracy, margin) is INSIDE


# A 400 m x 300 m rectangle with a notch, so it is not convex.
_L_SHAPE = shapely.Polygon([(-200, -150), (200, -150), (200, 150), (0, 150), (0, 0), (-200, 0)])
L_ZONE = Zone.build(
    "l",
    "l",
    ZoneKind.INCLUSION,
    shapely.Polygon([lonlat(x, y) for x, y in _L_SHAPE.exterior.coords]),
    PROJECTION,
)

coordinate_st = st.floats(-800.0, 800.0, allow_nan=False)
_FILTERED = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


@_FILTERED
@given(
    x=coordinate_st,
    y=coordinate_st,
    accuracy=st.floats(0.0, 200.0),
    margin=st.floats(0.0, 100.0),
)
def test_outside_of_inclusion_means_whole_circle_clear_by_margin(
    x: float, y: float, accuracy: float, margin: float
) -> None:
    presence = inclusion_presence(L_ZONE.signed_distance_m(x, y), accuracy, margin)
    assume(presence is OUTSIDE)
    # Every point of the accuracy circle (and its centre) is more than `margin` from the zone.
    for k in range(64):
        angle = 2.0 * math.pi * k / 64
        px, py = x + accuracy * math.cos(angle), y + accuracy * math.sin(angle)
        assert L_ZONE.geometry_m.distance(shapely.Point(px, py)) > margin - 1e-6
    assert not L_ZONE.geometry_m.contains(shapely.Point(x, y))


@_FILTERED
@given(
    x=st.floats(-200.0, 200.0),
    y=st.floats(-150.0, 150.0),
    accuracy=st.floats(0.0, 80.0),
    margin=st.floats(0.0, 60.0),
)
def test_inside_of_inclusion_means_circle_pokes_out_at_most_margin(
    x: float, y: float, accuracy: float, margin: float
) -> None:
    presence = inclusion_presence(L_ZONE.signed_distance_m(x, y), accuracy, margin)
    assume(presence is INSIDE)
    # The centre is in the zone (up to float rounding at the edge).
    assert L_ZONE.geometry_m.distance(shapely.Point(x, y)) <= 1e-9
    for k in range(64):
        angle = 2.0 * math.pi * k / 64
        px, py = x + accuracy * math.cos(angle), y + accuracy * math.sin(angle)
        assert L_ZONE.geometry_m.distance(shapely.Point(px, py)) <= margin + 1e-6


# ---------------------------------------------------------------------- signed distance


def test_signed_distance_sign_and_magnitude() -> None:
    zone = square_zone("sq", ZoneKind.INCLUSION, 0.0, 0.0, 100.0)
    assert zone.signed_distance_m(0.0, 0.0) == pytest.approx(-100.0)
    assert zone.signed_distance_m(60.0, 0.0) == pytest.approx(-40.0)
    assert zone.signed_distance_m(150.0, 0.0) == pytest.approx(50.0)
    assert zone.signed_distance_m(0.0, -130.0) == pytest.approx(30.0)
    # Diagonal from a corner: sqrt(30^2 + 40^2).
    assert zone.signed_distance_m(130.0, 140.0) == pytest.approx(50.0)
    assert zone.signed_distance_m(100.0, 0.0) == pytest.approx(0.0, abs=1e-6)


def test_signed_distance_in_the_notch_of_a_concave_zone_is_positive() -> None:
    # (-100, 75) lies in the notch of the L: outside, 75 m from the notch's floor/wall.
    assert L_ZONE.signed_distance_m(-100.0, 75.0) == pytest.approx(75.0)
    assert L_ZONE.signed_distance_m(-100.0, -75.0) == pytest.approx(-75.0)


def test_signed_distance_of_a_zone_with_a_hole() -> None:
    ring = shapely.Polygon(
        [lonlat(x, y) for x, y in [(-300, -300), (300, -300), (300, 300), (-300, 300)]],
        [[lonlat(x, y) for x, y in [(-100, -100), (100, -100), (100, 100), (-100, 100)]]],
    )
    zone = Zone.build("ring", "ring", ZoneKind.INCLUSION, ring, PROJECTION)
    assert zone.signed_distance_m(0.0, 0.0) == pytest.approx(100.0)  # in the hole: outside
    assert zone.signed_distance_m(200.0, 0.0) == pytest.approx(-100.0)  # in the ring


# ---------------------------------------------------------------------- spatial index


@st.composite
def zone_sets(draw: st.DrawFn) -> list[Zone]:
    count = draw(st.integers(0, 25))
    out: list[Zone] = []
    for index in range(count):
        cx = draw(st.floats(-5000.0, 5000.0))
        cy = draw(st.floats(-5000.0, 5000.0))
        half = draw(st.floats(5.0, 500.0))
        out.append(square_zone(f"z{index}", ZoneKind.EXCLUSION, cx, cy, half))
    return out


@settings(max_examples=80, deadline=None)
@given(
    zone_list=zone_sets(),
    x=st.floats(-6000.0, 6000.0),
    y=st.floats(-6000.0, 6000.0),
    radius=st.floats(0.0, 2000.0),
)
def test_zone_index_near_matches_brute_force(
    zone_list: list[Zone], x: float, y: float, radius: float
) -> None:
    point = shapely.Point(x, y)
    distances = {z.zone_id: z.geometry_m.distance(point) for z in zone_list}
    # Stay clear of exact ties, where the float rounding of two code paths may differ.
    assume(all(abs(d - radius) > 1e-6 for d in distances.values()))
    index = ZoneIndex(zone_list)
    assert len(index) == len(zone_list)
    found = [z.zone_id for z in index.near(x, y, radius)]
    assert len(found) == len(set(found))
    assert set(found) == {zid for zid, d in distances.items() if d <= radius}


def test_zone_index_near_includes_containing_zone_and_excludes_far_ones() -> None:
    near_zone = square_zone("near", ZoneKind.EXCLUSION, 0.0, 0.0, 50.0)
    mid_zone = square_zone("mid", ZoneKind.EXCLUSION, 200.0, 0.0, 50.0)  # edge at 150 m
    far_zone = square_zone("far", ZoneKind.EXCLUSION, 5000.0, 0.0, 50.0)
    index = ZoneIndex([near_zone, mid_zone, far_zone])
    assert {z.zone_id for z in index.near(0.0, 0.0, 0.0)} == {"near"}
    assert {z.zone_id for z in index.near(0.0, 0.0, 149.0)} == {"near"}
    assert {z.zone_id for z in index.near(0.0, 0.0, 151.0)} == {"near", "mid"}
    assert ZoneIndex([]).near(0.0, 0.0, 1e6) == []


# ---------------------------------------------------------------------- projection


def haversine_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def _destination(lon: float, lat: float, bearing: float, distance_m: float) -> tuple[float, float]:
    """Great-circle destination on the same sphere (independent of LocalProjection)."""
    d = distance_m / EARTH_RADIUS_M
    p1, l1 = math.radians(lat), math.radians(lon)
    p2 = math.asin(math.sin(p1) * math.cos(d) + math.cos(p1) * math.sin(d) * math.cos(bearing))
    l2 = l1 + math.atan2(
        math.sin(bearing) * math.sin(d) * math.cos(p1), math.cos(d) - math.sin(p1) * math.sin(p2)
    )
    return math.degrees(l2), math.degrees(p2)


@settings(max_examples=300, deadline=None)
@given(
    bearing_a=st.floats(0.0, 2 * math.pi),
    dist_a=st.floats(0.0, 10_000.0),
    bearing_b=st.floats(0.0, 2 * math.pi),
    dist_b=st.floats(0.0, 10_000.0),
)
def test_local_projection_distance_within_half_percent_of_haversine(
    bearing_a: float, dist_a: float, bearing_b: float, dist_b: float
) -> None:
    """Any two points within 10 km of the centre (so up to 20 km apart)."""
    projection = LocalProjection(114.05, 22.54)
    a = _destination(114.05, 22.54, bearing_a, dist_a)
    b = _destination(114.05, 22.54, bearing_b, dist_b)
    truth = haversine_m(*a, *b)
    assume(truth > 1.0)
    projected = math.dist(projection.forward(*a), projection.forward(*b))
    assert abs(projected - truth) / truth < 0.005


def test_local_projection_axes_and_centre() -> None:
    projection = LocalProjection(114.05, 22.54)
    assert projection.forward(114.05, 22.54) == (0.0, 0.0)
    east, north = projection.forward(114.06, 22.54)
    assert north == 0.0
    assert east == pytest.approx(haversine_m(114.05, 22.54, 114.06, 22.54), rel=1e-6)
    east, north = projection.forward(114.05, 22.55)
    assert east == 0.0
    assert north == pytest.approx(haversine_m(114.05, 22.54, 114.05, 22.55), rel=1e-6)


def test_local_projection_centred_on_bounds() -> None:
    geoms = [shapely.box(114.0, 22.5, 114.1, 22.6), shapely.box(113.9, 22.4, 114.05, 22.45)]
    projection = LocalProjection.centred_on(geoms)
    assert projection.lon0 == pytest.approx(114.0)
    assert projection.lat0 == pytest.approx(22.5)
    assert LocalProjection.centred_on([]) == LocalProjection(0.0, 0.0)
