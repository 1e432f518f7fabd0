"""Checks of an operator config beyond what each file's pydantic model can say alone.

`daemon.configfiles.load_config` calls these; each appends `ConfigProblem`s (file, key
path, value, reason) to the shared `ProblemList`, which finds the line from the key path.
Errors refuse the config; warnings (`problems.warn`) are shown by `emon config check` and
sent with a reload, but the config is still used.

What is checked here, and why it matters at 3 a.m.:

- zone geometry: positions that are not [lon, lat] numbers in range (a swapped pair shows
  up as a latitude beyond 90), rings with too few positions, unclosed rings (warning), and
  for an invalid polygon *where* it is invalid, in the file's own datum, with the nearest
  vertex as the key, so the operator can find it in the drawing tool;
- a file named `*.gcj02.geojson` that declares another datum (warning: one of the two is
  wrong, and a wrong datum moves a fence by 100-700 m);
- an inclusion zone (home, permitted area) inside one of the same subject's exclusion
  zones: complying with one rule breaks the other, so the subject is always in violation
  (error; a warning when the exclusion only applies on a schedule), and a home that
  overlaps an exclusion zone (warning);
- schedules with an empty window (start equals end) or windows that overlap each other:
  the engine takes the first window containing an instant, so overlapping windows make an
  alert clear and reopen where they meet;
- an exclusion zone listed twice for one subject, a supervisor chain that loops (an
  escalation would never reach the top), zones nobody uses (warning).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import time
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from daemon.configfiles import (
    SCHEDULES_FILE,
    SUBJECTS_FILE,
    WEEKDAYS,
    ConfigProblem,
    ProblemList,
    ScheduleModel,
    SchedulesFile,
    Settings,
    SubjectModel,
    SubjectsFile,
    _RawZone,
)
from daemon.rulesettings import LeavesFile
from geofence.datum import Datum
from geofence.zones import LocalProjection, ZoneKind

SECONDS_PER_DAY = 86_400
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY
# A home that shares less than this with an exclusion zone is drawing noise, not a conflict.
MIN_REPORTED_OVERLAP_M2 = 1.0
# Report at most this many bad positions per zone: one swapped file must not flood the output.
MAX_POSITION_PROBLEMS_PER_ZONE = 3

# An edge within this of the fault point passes through it (~1 mm; GEOS reports the point
# rounded to the input's precision).
_ON_EDGE_DEG = 1e-8
_GEOS_REASON = re.compile(r"^(?P<what>[^\[]+)\[(?P<x>\S+) (?P<y>\S+)\]$")
_DATUM_IN_FILE_NAME: Mapping[str, Datum] = {
    "wgs84": Datum.WGS84,
    "gcj02": Datum.GCJ02,
    "bd09": Datum.BD09,
}
_GEOS_HINTS: Mapping[str, str] = {
    "Self-intersection": "edges cross each other",
    "Ring Self-intersection": "a ring touches itself",
    "Too few points": "too few distinct points",
    "Hole lies outside shell": "a hole lies outside its outer ring",
    "Nested shells": "one polygon lies inside another of the same zone",
    "Interior is disconnected": "a hole cuts the polygon in two",
    "Duplicate Rings": "a ring is repeated",
}


# ---------------------------------------------------------------------- pydantic messages


def explain_validation_error(
    file: str, loc: tuple[str | int, ...], error_type: str, message: str
) -> str:
    """An operator's reason for one pydantic error (pydantic's own text where it is clear)."""
    if (
        file == SUBJECTS_FILE
        and len(loc) == 3
        and loc[0] == "subjects"
        and loc[2] == "devices"
        and error_type in ("too_short", "missing")
    ):
        return (
            "subject has no device: a subject can only be monitored through at least one "
            "tag or phone listed here"
        )
    if error_type == "extra_forbidden":
        return "unknown key (not a setting emon has; misspelt, or in the wrong section?)"
    if error_type == "value_error":
        # Our own validators' words, without pydantic's "Value error, " in front.
        return message.removeprefix("Value error, ")
    return message


# ---------------------------------------------------------------------- zone files


def check_zone_file_name(file: str, datum: Datum, problems: list[ConfigProblem]) -> None:
    """Warn when the file name says one datum (`*.gcj02.geojson`) and the file another."""
    parts = file.rsplit("/", 1)[-1].lower().split(".")
    named = [_DATUM_IN_FILE_NAME[p] for p in parts[:-1] if p in _DATUM_IN_FILE_NAME]
    if named and named[-1] is not datum and isinstance(problems, ProblemList):
        problems.warn(
            file, "datum", datum.value,
            f"the file name says {named[-1].value}: one of the two is wrong, and a wrong "
            "datum moves every fence in the file by 100-700 m",
        )


def feature_ids(data: Any) -> set[str]:
    """The zone ids in a zone file's raw data, as far as they can be read (for a file that
    failed validation: its zones are refused, not undefined)."""
    features = data.get("features") if isinstance(data, dict) else None
    if not isinstance(features, list):
        return set()
    ids: set[str] = set()
    for feat in features:
        properties = feat.get("properties") if isinstance(feat, dict) else None
        if isinstance(properties, dict) and isinstance(properties.get("id"), str):
            ids.add(properties["id"])
    return ids


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _rings(geometry: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(key path below the geometry, ring) for each ring of a GeoJSON (Multi)Polygon."""
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list):
        return []
    polygons = (
        [(f"coordinates.{i}", p) for i, p in enumerate(coordinates)]
        if geometry.get("type") == "MultiPolygon"
        else [("coordinates", coordinates)]
    )
    rings: list[tuple[str, Any]] = []
    for prefix, polygon in polygons:
        if not isinstance(polygon, list):
            rings.append((prefix, polygon))
            continue
        rings.extend((f"{prefix}.{r}", ring) for r, ring in enumerate(polygon))
    return rings


def _position_problem(position: Any) -> str | None:
    if not isinstance(position, list) or len(position) < 2:
        return "a position must be [lon, lat]"
    lon, lat = position[0], position[1]
    if not (_is_number(lon) and _is_number(lat)):
        return "a position must be two numbers [lon, lat]"
    try:
        finite = math.isfinite(lon) and math.isfinite(lat)
    except OverflowError:  # an integer beyond any double (json reads 400 digits)
        finite = False
    if not finite:
        return "a position must be finite numbers"
    if not -90.0 <= lat <= 90.0:
        if -90.0 <= lon <= 90.0 and -180.0 <= lat <= 180.0:
            return (
                f"latitude {lat} is beyond ±90: latitude and longitude look swapped "
                "(GeoJSON order is [lon, lat])"
            )
        return f"latitude {lat} is beyond ±90"
    if not -180.0 <= lon <= 180.0:
        return f"longitude {lon} is beyond ±180"
    return None


def _positions_fine(ring: list[Any]) -> bool:
    """Fast path (numpy, no Python loop per position) for the usual all-good ring."""
    try:
        array = np.asarray(ring, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return False  # ragged or not numbers: the slow path says which position
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        return False
    lon, lat = array[:, 0], array[:, 1]
    return bool(
        np.isfinite(array[:, :2]).all()
        and (np.abs(lon) <= 180.0).all()
        and (np.abs(lat) <= 90.0).all()
    )


def check_coordinates(
    file: str, key: str, zone_id: str, geometry: Mapping[str, Any], problems: list[ConfigProblem]
) -> bool:
    """Check every position and ring of one feature; False if it cannot become a polygon."""
    ok = True
    for ring_key, ring in _rings(geometry):
        where = f"{key}.{ring_key}"
        if not isinstance(ring, list):
            problems.append(ConfigProblem(file, where, zone_id, "a ring must be a list"))
            ok = False
            continue
        bad = [] if _positions_fine(ring) else [
            (i, r) for i, r in enumerate(map(_position_problem, ring)) if r is not None
        ]
        if bad:
            ok = False
            _report_positions(file, where, zone_id, len(ring), bad, problems)
            continue
        if len(ring) < 4:
            problems.append(
                ConfigProblem(
                    file, where, zone_id,
                    f"a ring needs at least 4 positions (3 corners and the first repeated), "
                    f"has {len(ring)}",
                )
            )
            ok = False
        elif ring[0][:2] != ring[-1][:2] and isinstance(problems, ProblemList):
            problems.warn(
                file, f"{where}.{len(ring) - 1}", zone_id,
                "ring not closed (GeoJSON repeats the first position last); closed here "
                "with a straight edge back to the first position: check that is meant",
            )
    return ok


def _report_positions(
    file: str,
    ring_key: str,
    zone_id: str,
    ring_size: int,
    bad: list[tuple[int, str]],
    problems: list[ConfigProblem],
) -> None:
    if len(bad) == ring_size and "swapped" in bad[0][1]:
        # A whole ring in [lat, lon] order: one line says it all.
        problems.append(
            ConfigProblem(
                file, f"{ring_key}.0", zone_id,
                f"{bad[0][1]}, and so in all {ring_size} positions of this ring",
            )
        )
        return
    for v_index, reason in bad[:MAX_POSITION_PROBLEMS_PER_ZONE]:
        problems.append(ConfigProblem(file, f"{ring_key}.{v_index}", zone_id, reason))
    if len(bad) > MAX_POSITION_PROBLEMS_PER_ZONE:
        v_index = bad[MAX_POSITION_PROBLEMS_PER_ZONE][0]
        problems.append(
            ConfigProblem(
                file, f"{ring_key}.{v_index}", zone_id,
                f"and {len(bad) - MAX_POSITION_PROBLEMS_PER_ZONE} more bad positions in this "
                "ring",
            )
        )


def describe_invalid_polygon(geometry: BaseGeometry, datum: Datum) -> tuple[str, str]:
    """(key suffix naming the place of the fault, reason) for an invalid (Multi)Polygon.

    GEOS names the fault and a point, e.g. "Self-intersection[114.05 22.54]"; the point is
    in the file's own coordinates (this runs before datum conversion). The reason adds the
    edges that pass through that point (vertex numbers as in the file), and the key names
    the first vertex of the first of them, else the vertex nearest the point."""
    reason = shapely.is_valid_reason(geometry)
    match = _GEOS_REASON.match(reason)
    if match is None:
        return "", f"invalid polygon: {reason}"
    what = match["what"].strip()
    x, y = float(match["x"]), float(match["y"])
    polygons: Sequence[Polygon] = (
        list(geometry.geoms) if isinstance(geometry, MultiPolygon) else [geometry]
    )
    point = shapely.Point(x, y)
    nearest: tuple[float, str] | None = None
    crossing: list[tuple[str, int]] = []  # (ring key, first vertex) of edges through the point
    touching: list[tuple[str, int]] = []  # ...of edges that only end there
    for p_index, polygon in enumerate(polygons):
        prefix = f".coordinates.{p_index}" if isinstance(geometry, MultiPolygon) else (
            ".coordinates"
        )
        for r_index, ring in enumerate([polygon.exterior, *polygon.interiors]):
            coords = np.asarray(ring.coords)[:, :2]
            if len(coords) < 2:
                continue
            ring_key = f"{prefix}.{r_index}"
            distances = np.hypot(coords[:, 0] - x, coords[:, 1] - y)
            vertex = int(np.argmin(distances))
            if nearest is None or distances[vertex] < nearest[0]:
                nearest = (float(distances[vertex]), f"{ring_key}.{vertex}")
            segments = shapely.linestrings(np.stack([coords[:-1], coords[1:]], axis=1))
            for i in np.flatnonzero(shapely.distance(segments, point) <= _ON_EDGE_DEG):
                ends_there = min(distances[i], distances[i + 1]) <= _ON_EDGE_DEG
                (touching if ends_there else crossing).append((ring_key, int(i)))
    hint = _GEOS_HINTS.get(what, what.lower())
    text = f"invalid polygon: {hint} ({what}) at lon {x:.6f}, lat {y:.6f} ({datum.value})"
    # Edges that cross at the point say more than edges that merely end there.
    edges = crossing or touching
    if edges:
        named = ", ".join(f"{i}-{i + 1}" for _, i in edges[:4])
        return f"{edges[0][0]}.{edges[0][1]}", f"{text}, on edges {named} (vertex numbers)"
    if nearest is None:
        return "", text
    return nearest[1], f"{text}; nearest vertex named in the key"


# ---------------------------------------------------------------------- cross-file


def inclusion_refs(subject: SubjectModel) -> list[tuple[str, str]]:
    """(key under the subject, zone id) of every inclusion zone a subject must stay in.

    New inclusion-like references (work zones, ...) belong here so that the containment
    check covers them too."""
    refs: list[tuple[str, str]] = []
    if subject.home_zone is not None:
        refs.append(("home_zone", subject.home_zone))
    if subject.permitted_zone is not None:
        refs.append(("permitted_zone", subject.permitted_zone))
    for index, inclusion in enumerate(subject.inclusion_zones):
        refs.append((f"inclusion_zones.{index}.zone", inclusion.zone))
    return refs


def _area_m2(geometry: BaseGeometry) -> float:
    if geometry.is_empty:
        return 0.0
    projection = LocalProjection.centred_on([geometry])
    return float(projection.forward_geometry(geometry).area)


def _check_subject_zones(
    index: int,
    subject: SubjectModel,
    geometries: Mapping[str, BaseGeometry],
    kinds: Mapping[str, ZoneKind],
    problems: ProblemList,
) -> None:
    where = f"subjects.{index}"
    listed: dict[str, int] = {}
    for e_index, ref in enumerate(subject.exclusion_zones):
        if ref.zone in listed:
            problems.append(
                ConfigProblem(
                    SUBJECTS_FILE, f"{where}.exclusion_zones.{e_index}.zone", ref.zone,
                    f"exclusion zone listed twice for this subject (also "
                    f"exclusion_zones.{listed[ref.zone]})",
                )
            )
            continue
        listed[ref.zone] = e_index
        exclusion = geometries.get(ref.zone)
        if exclusion is None or kinds.get(ref.zone) is not ZoneKind.EXCLUSION:
            continue  # reported as undefined or of the wrong kind already
        for inc_key, inc_zone in inclusion_refs(subject):
            inclusion = geometries.get(inc_zone)
            if inclusion is None or kinds.get(inc_zone) is not ZoneKind.INCLUSION:
                continue
            if exclusion.covers(inclusion):
                text = (
                    f"inclusion zone {inc_zone} lies inside exclusion zone {ref.zone} "
                    f"(exclusion_zones.{e_index}) of the same subject: keeping to one "
                    "breaks the other"
                )
                if ref.schedule is None:
                    problems.append(ConfigProblem(SUBJECTS_FILE, f"{where}.{inc_key}",
                                                  inc_zone, text))
                else:
                    problems.warn(
                        SUBJECTS_FILE, f"{where}.{inc_key}", inc_zone,
                        f"{text} while schedule {ref.schedule} is active",
                    )
            elif inc_key == "home_zone" and exclusion.intersects(inclusion):
                shared = _area_m2(exclusion.intersection(inclusion))
                if shared >= MIN_REPORTED_OVERLAP_M2:
                    share = shared / max(_area_m2(inclusion), MIN_REPORTED_OVERLAP_M2)
                    problems.warn(
                        SUBJECTS_FILE, f"{where}.{inc_key}", inc_zone,
                        f"home overlaps exclusion zone {ref.zone} (exclusion_zones."
                        f"{e_index}) by {shared:,.0f} m² ({share:.0%} of the home): being "
                        "at home there raises an exclusion alert",
                    )


def _week_intervals(start: time, end: time, days: Sequence[str]) -> list[tuple[float, float]]:
    """Seconds-of-week intervals [begin, finish) of a window, split where the week wraps."""
    begin_s = start.hour * 3600 + start.minute * 60 + start.second + start.microsecond / 1e6
    end_s = end.hour * 3600 + end.minute * 60 + end.second + end.microsecond / 1e6
    duration = (end_s - begin_s) % SECONDS_PER_DAY
    out: list[tuple[float, float]] = []
    for day in sorted(set(days), key=WEEKDAYS.index):
        first = WEEKDAYS.index(day) * SECONDS_PER_DAY + begin_s
        last = first + duration
        if last <= SECONDS_PER_WEEK:
            out.append((first, last))
        else:  # Sunday night into Monday morning
            out.append((first, SECONDS_PER_WEEK))
            out.append((0.0, last - SECONDS_PER_WEEK))
    return out


def _weekday_at(second_of_week: float) -> str:
    return WEEKDAYS[int(second_of_week // SECONDS_PER_DAY) % 7]


def check_schedules(schedules: SchedulesFile, problems: list[ConfigProblem]) -> None:
    """Empty and overlapping windows, repeated days and dates (schedules.yaml alone)."""
    if not isinstance(problems, ProblemList):
        raise TypeError("check_schedules needs a ProblemList")
    for schedule_id, model in schedules.schedules.items():
        _check_schedule(schedule_id, model, problems)


def _check_schedule(schedule_id: str, model: ScheduleModel, problems: ProblemList) -> None:
    where = f"schedules.{schedule_id}"
    intervals: list[tuple[int, list[tuple[float, float]]]] = []
    for w_index, window in enumerate(model.windows):
        key = f"{where}.windows.{w_index}"
        if window.start == window.end:
            problems.append(
                ConfigProblem(
                    SCHEDULES_FILE, key, f"{window.start:%H:%M}-{window.end:%H:%M}",
                    "empty window: start equals end (for a rule that always applies, give "
                    "no schedule)",
                )
            )
            continue
        repeated = sorted({d for d in window.days if window.days.count(d) > 1})
        if repeated:
            problems.warn(SCHEDULES_FILE, f"{key}.days", ",".join(repeated),
                          "day listed more than once")
        intervals.append((w_index, _week_intervals(window.start, window.end, window.days)))
    for a_pos, (a_index, a_spans) in enumerate(intervals):
        for b_index, b_spans in intervals[a_pos + 1:]:
            overlap = next(
                (
                    max(a0, b0)
                    for a0, a1 in a_spans
                    for b0, b1 in b_spans
                    if a0 < b1 and b0 < a1
                ),
                None,
            )
            if overlap is not None:
                a, b = model.windows[a_index], model.windows[b_index]
                problems.append(
                    ConfigProblem(
                        SCHEDULES_FILE, f"{where}.windows.{b_index}",
                        f"{b.start:%H:%M}-{b.end:%H:%M}",
                        f"overlaps window {a_index} ({a.start:%H:%M}-{a.end:%H:%M}) on "
                        f"{_weekday_at(overlap)} from {_clock(overlap)}: an alert would clear "
                        "and reopen where they meet; merge them into one window",
                    )
                )
    seen_dates: set[Any] = set()
    for d_index, day in enumerate(model.exception_dates):
        if day in seen_dates:
            problems.warn(SCHEDULES_FILE, f"{where}.exception_dates.{d_index}",
                          day.isoformat(), "date listed more than once")
        seen_dates.add(day)


def _clock(second_of_week: float) -> str:
    second_of_day = int(second_of_week) % SECONDS_PER_DAY
    return f"{second_of_day // 3600:02d}:{second_of_day % 3600 // 60:02d}"


def _check_supervisor_chains(subjects: SubjectsFile, problems: ProblemList) -> None:
    supervisor_of = {o.id: o.supervisor for o in subjects.officers}
    index_of = {o.id: i for i, o in reversed(list(enumerate(subjects.officers)))}
    reported: set[str] = set()
    for officer in subjects.officers:
        chain = [officer.id]
        current = supervisor_of.get(officer.id)
        while current is not None and current in supervisor_of and current not in chain:
            chain.append(current)
            current = supervisor_of.get(current)
        if current is None or current not in chain:
            continue
        loop = chain[chain.index(current):]
        if reported & set(loop):
            continue
        reported.update(loop)
        first = min(loop, key=index_of.__getitem__)
        problems.append(
            ConfigProblem(
                SUBJECTS_FILE, f"officers.{index_of[first]}.supervisor",
                str(supervisor_of[first]),
                "supervisor chain loops (" + " -> ".join([*loop, loop[0]]) + "): an "
                "escalation would never reach command",
            )
        )


def _strings_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, Mapping):
        return set().union(*(_strings_in(v) for v in value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*(_strings_in(v) for v in value)) if value else set()
    return set()


def check_cross_file(
    settings: Settings,
    subjects: SubjectsFile,
    schedules: SchedulesFile,
    zones: Mapping[str, _RawZone],
    problems: list[ConfigProblem],
    leaves: LeavesFile | None = None,
) -> None:
    """Checks that need more than one file (zones by id, their geometry in WGS-84)."""
    if not isinstance(problems, ProblemList):
        raise TypeError("check_cross_file needs a ProblemList")
    geometries = {zone_id: raw.geometry for zone_id, raw in zones.items()}
    kinds = {zone_id: raw.properties.kind for zone_id, raw in zones.items()}
    for index, subject in enumerate(subjects.subjects):
        _check_subject_zones(index, subject, geometries, kinds, problems)
    _check_supervisor_chains(subjects, problems)
    # Any string anywhere in the subjects' or settings' data counts as a use, so that new
    # kinds of zone reference are never reported as unused.
    used = _strings_in(subjects.model_dump(mode="json")) | _strings_in(
        settings.model_dump(mode="json")
    )
    if leaves is not None:  # a destination zone used only by approved leave is used
        used |= _strings_in(leaves.model_dump(mode="json"))
    for zone_id in sorted(geometries.keys() - used):
        raw = zones[zone_id]
        problems.warn(raw.file, f"features.{raw.index}.properties.id", zone_id,
                      "zone is not used by any subject")
