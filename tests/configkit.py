"""Small operator config directories for tests: written from Python, one file per call.

Zone files are written with one position per line, so a test can check that a problem's
line number points at the very vertex it names.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config"
EARTH_RADIUS_M = 6_371_008.8

# A point in Futian, Shenzhen (WGS-84), inside the example region's bbox.
CENTRE = (114.05, 22.54)

SETTINGS_YAML = """\
region:
  name: Shenzhen
  bbox: [113.70, 22.30, 114.70, 22.90]
"""


def offset(lon: float, lat: float, east_m: float, north_m: float) -> tuple[float, float]:
    d_lat = math.degrees(north_m / EARTH_RADIUS_M)
    d_lon = math.degrees(east_m / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return lon + d_lon, lat + d_lat


def square(lon: float, lat: float, half_m: float) -> list[list[float]]:
    """A closed ring: a square of side 2*half_m around (lon, lat)."""
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1), (-1, -1)]
    return [
        [round(c, 7) for c in offset(lon, lat, sx * half_m, sy * half_m)] for sx, sy in corners
    ]


def feature(zone_id: str, kind: str, ring: Sequence[Sequence[float]]) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"id": zone_id, "name": zone_id, "kind": kind},
        "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
    }


def zone_file_text(features: Sequence[dict[str, Any]], datum: str = "WGS-84") -> str:
    """GeoJSON with one position per line (and everything else compact)."""
    out = ["{", '  "type": "FeatureCollection",', f'  "datum": "{datum}",', '  "features": [']
    for f_index, feat in enumerate(features):
        head = {k: v for k, v in feat.items() if k != "geometry"}
        out.append("    {")
        for key, value in head.items():
            out.append(f"      {json.dumps(key)}: {json.dumps(value)},")
        geometry = feat["geometry"]
        out.append(f'      "geometry": {{"type": {json.dumps(geometry["type"])}, "coordinates": [')
        rings = geometry["coordinates"]
        for r_index, ring in enumerate(rings):
            out.append("        [")
            for p_index, position in enumerate(ring):
                comma = "," if p_index < len(ring) - 1 else ""
                out.append(f"          {json.dumps(position)}{comma}")
            out.append("        ]" + ("," if r_index < len(rings) - 1 else ""))
        out.append("      ]}")
        out.append("    }" + ("," if f_index < len(features) - 1 else ""))
    out += ["  ]", "}"]
    return "\n".join(out) + "\n"


def basic_zones() -> dict[str, list[dict[str, Any]]]:
    lon, lat = CENTRE
    school = offset(lon, lat, 1500, 0)
    return {
        "areas.wgs84.geojson": [
            feature("district", "inclusion", square(lon, lat, 5000)),
        ],
        "homes.wgs84.geojson": [
            feature("home-a", "inclusion", square(lon, lat, 60)),
            feature("home-b", "inclusion", square(*offset(lon, lat, -800, 300), 60)),
        ],
        "exclusions.wgs84.geojson": [
            feature("school", "exclusion", square(*school, 80)),
        ],
    }


SUBJECTS_YAML = """\
officers:
  - {id: off-a, name: "Officer A", supervisor: sup}
  - {id: sup, name: "Supervisor", role: supervisor}
subjects:
  - id: s-a
    officer: off-a
    devices:
      - {id: tag-a, kind: wearable}
    home_zone: home-a
    permitted_zone: district
    exclusion_zones:
      - {zone: school}
    curfew: night
  - id: s-b
    officer: off-a
    devices:
      - {id: tag-b, kind: wearable}
    home_zone: home-b
    permitted_zone: district
    curfew: night
"""

SCHEDULES_YAML = """\
schedules:
  night:
    windows:
      - {start: "22:00", end: "06:00"}
"""


def write_config(
    directory: Path,
    *,
    settings: str = SETTINGS_YAML,
    subjects: str = SUBJECTS_YAML,
    schedules: str = SCHEDULES_YAML,
    zones: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "settings.yaml").write_text(settings, encoding="utf-8")
    (directory / "subjects.yaml").write_text(subjects, encoding="utf-8")
    (directory / "schedules.yaml").write_text(schedules, encoding="utf-8")
    zone_dir = directory / "zones"
    if zone_dir.exists():
        shutil.rmtree(zone_dir)
    zone_dir.mkdir()
    for name, features in (basic_zones() if zones is None else zones).items():
        (zone_dir / name).write_text(zone_file_text(features), encoding="utf-8")
    return directory


def copy_example_config(directory: Path) -> Path:
    shutil.copytree(REPO_CONFIG, directory)
    return directory


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line number of the `occurrence`-th line containing `needle`."""
    seen = 0
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if needle in text:
            seen += 1
            if seen == occurrence:
                return number
    raise AssertionError(f"{needle!r} not in {path}")
