"""Config directory loading: the example config, and each way of breaking it reported with
the file and key that are wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import shapely

from daemon.configfiles import ConfigProblem, LoadedConfig, load_config
from geofence.observation import DeviceKind
from geofence.zones import ZoneKind
from tests.config_edit import CONFIG_DIR, copy_example_config, edit, problems_of

SCHOOL_RING = (
    "[[[114.0694164,22.551593],[114.0705836,22.551593],[114.0705836,22.552407],"
    "[114.0694164,22.552407],[114.0694164,22.551593]]]"
)


@pytest.fixture(scope="module")
def example() -> LoadedConfig:
    return load_config(CONFIG_DIR, env={})


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    return copy_example_config(tmp_path)




def only(problems: list[ConfigProblem], file: str) -> ConfigProblem:
    matching = [p for p in problems if p.file == file]
    assert len(matching) == 1, problems
    return matching[0]


# ---------------------------------------------------------------------- the example config


def test_example_config_loads_three_subjects(example: LoadedConfig) -> None:
    core = example.core
    assert set(core.subjects) == {"s001", "s002", "s003"}
    assert set(core.devices) == {"tag-s001", "tag-s002", "tag-s003"}
    for n in ("001", "002", "003"):
        subject = core.subjects[f"s{n}"]
        assert subject.home_zone_id == f"home-s{n}"
        assert subject.permitted_zone_id == "district-futian"
        assert subject.exclusion_zone_ids == {"school-futian-1"}
        assert subject.curfew is not None
        assert subject.curfew.schedule_id == "night-curfew"
        assert str(subject.timezone) == "Asia/Shanghai"
        assert core.devices[f"tag-s{n}"].kind is DeviceKind.WEARABLE
        assert core.devices[f"tag-s{n}"].subject_id == f"s{n}"
    assert core.subjects["s003"].officer_id == "off-chen"
    assert set(example.officers) == {"off-li", "off-chen", "sup-wang", "cmd-futian"}
    assert core.rules.zone.margin_m == 20.0
    assert example.settings.tick_interval_seconds == 15.0


def test_example_zones_have_their_kinds(example: LoadedConfig) -> None:
    zones = example.core.zones
    assert zones["school-futian-1"].kind is ZoneKind.EXCLUSION
    for zone_id in ("district-futian", "district-nanshan", "home-s001", "work-s001"):
        assert zones[zone_id].kind is ZoneKind.INCLUSION
    assert [
        z.zone_id for z in example.core.exclusion_index.near(*_xy(example, 114.07, 22.552), 0)
    ] == ["school-futian-1"]
    assert example.core.version == load_config(CONFIG_DIR, env={}).core.version


def _xy(example: LoadedConfig, lon: float, lat: float) -> tuple[float, float]:
    return example.core.projection.forward(lon, lat)


def test_futian_district_converted_from_gcj02(example: LoadedConfig) -> None:
    raw = json.loads((CONFIG_DIR / "zones" / "district-futian.gcj02.geojson").read_text("utf-8"))
    assert raw["datum"] == "GCJ-02"
    gcj_bounds = shapely.geometry.shape(raw["features"][0]["geometry"]).bounds
    wgs_bounds = example.core.zones["district-futian"].geometry_wgs84.bounds
    # In Shenzhen GCJ-02 sits ~0.005 deg east (and ~0.003 deg south) of WGS-84.
    for gcj_lon, wgs_lon in ((gcj_bounds[0], wgs_bounds[0]), (gcj_bounds[2], wgs_bounds[2])):
        assert 0.004 < gcj_lon - wgs_lon < 0.006
    for gcj_lat, wgs_lat in ((gcj_bounds[1], wgs_bounds[1]), (gcj_bounds[3], wgs_bounds[3])):
        assert 0.001 < wgs_lat - gcj_lat < 0.004


def test_homes_are_inside_the_permitted_district(example: LoadedConfig) -> None:
    # A sanity check of the converted geometry against the WGS-84 home circles.
    district = example.core.zones["district-futian"].geometry_wgs84
    for n in ("001", "002", "003"):
        assert district.contains(example.core.zones[f"home-s{n}"].geometry_wgs84)


def test_environment_overrides_settings() -> None:
    loaded = load_config(
        CONFIG_DIR,
        env={
            "EMON_MQTT_HOST": "broker.local",
            "EMON_MQTT_PORT": "8883",
            "EMON_DATABASE_URL": "postgresql://x@y/z",
            "EMON_HTTP_PORT": "0",
        },
    )
    assert loaded.settings.mqtt.host == "broker.local"
    assert loaded.settings.mqtt.port == 8883
    assert loaded.settings.database.dsn == "postgresql://x@y/z"
    assert loaded.settings.http.port == 0


# ---------------------------------------------------------------------- broken configs


def test_undefined_zone_referenced(config_copy: Path) -> None:
    edit(
        config_copy,
        "subjects.yaml",
        "permitted_zone: district-futian",
        "permitted_zone: district-nowhere",
    )
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert (problem.key, problem.value, problem.reason) == (
        "subjects.0.permitted_zone",
        "district-nowhere",
        "zone not defined",
    )


def test_undefined_officer(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "officer: off-chen", "officer: off-ghost")
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert (problem.key, problem.value, problem.reason) == (
        "subjects.2.officer",
        "off-ghost",
        "officer not defined",
    )


def test_undefined_supervisor(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "supervisor: cmd-futian", "supervisor: cmd-luohu")
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert (problem.key, problem.value) == ("officers.2.supervisor", "cmd-luohu")


def test_undefined_schedule(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "curfew: night-curfew", "curfew: weekend-curfew")
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert (problem.key, problem.value, problem.reason) == (
        "subjects.0.curfew",
        "weekend-curfew",
        "schedule not defined",
    )


def test_exclusion_zone_referenced_as_home(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "home_zone: home-s002", "home_zone: school-futian-1")
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert problem.key == "subjects.1.home_zone"
    assert problem.value == "school-futian-1"
    assert problem.reason == "zone is exclusion, expected inclusion"


def test_inclusion_zone_referenced_as_exclusion(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "{zone: school-futian-1,", "{zone: work-s001,")
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert problem.key == "subjects.0.exclusion_zones.0.zone"
    assert problem.reason == "zone is inclusion, expected exclusion"


def test_self_intersecting_polygon_reported_with_location(config_copy: Path) -> None:
    bow_tie = (
        "[[[114.0694164,22.551593],[114.0705836,22.552407],[114.0705836,22.551593],"
        "[114.0694164,22.552407],[114.0694164,22.551593]]]"
    )
    edit(config_copy, "zones/exclusions.wgs84.geojson", SCHOOL_RING, bow_tie)
    problems = problems_of(config_copy)
    problem = only(problems, "zones/exclusions.wgs84.geojson")
    # The key names the vertex nearest the fault (tests/test_config_check.py checks which).
    assert problem.key.startswith("features.0.geometry.coordinates.0.")
    assert problem.value == "school-futian-1"
    match = re.search(
        r"invalid polygon: .*Self-intersection.* at lon ([\d.]+), lat ([\d.]+)", problem.reason
    )
    assert match is not None, problem.reason
    # The crossing of the two diagonals: the centre of the rectangle.
    assert float(match.group(1)) == pytest.approx(114.0700, abs=1e-3)
    assert float(match.group(2)) == pytest.approx(22.5520, abs=1e-3)


def test_swapped_lat_lon_zone_reported_as_swapped(config_copy: Path) -> None:
    swapped = re.sub(r"\[([\d.]+),([\d.]+)\]", r"[\2,\1]", SCHOOL_RING)
    edit(config_copy, "zones/exclusions.wgs84.geojson", SCHOOL_RING, swapped)
    problem = only(problems_of(config_copy), "zones/exclusions.wgs84.geojson")
    assert problem.key == "features.0.geometry.coordinates.0.0"  # the whole ring, at its start
    assert problem.value == "school-futian-1"
    assert "swapped" in problem.reason


def test_zone_outside_region_reported(config_copy: Path) -> None:
    # Moved ~1 degree north, out of the Shenzhen bbox but not a lat/lon swap.
    moved = SCHOOL_RING.replace("22.55", "23.55")
    edit(config_copy, "zones/exclusions.wgs84.geojson", SCHOOL_RING, moved)
    problem = only(problems_of(config_copy), "zones/exclusions.wgs84.geojson")
    assert problem.reason.startswith("lies outside region Shenzhen")


def test_duplicate_device_across_subjects(config_copy: Path) -> None:
    edit(
        config_copy,
        "subjects.yaml",
        "{id: tag-s003, kind: wearable}",
        "{id: tag-s001, kind: wearable}",
    )
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert (problem.key, problem.value, problem.reason) == (
        "subjects.2.devices.0.id",
        "tag-s001",
        "device already assigned to s001",
    )


def test_duplicate_subject_id(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "- id: s003", "- id: s001")
    problems = problems_of(config_copy)
    assert any(p.key == "subjects.2.id" and p.reason == "duplicate subject id" for p in problems)


def test_unknown_time_zone(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "timezone: Asia/Shanghai", "timezone: Asia/Shenzhen")
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert problem.key == "subjects.0.timezone"
    assert "Asia/Shenzhen" in problem.value
    assert "unknown time zone" in problem.reason


def test_extra_unknown_key_in_settings_is_forbidden(config_copy: Path) -> None:
    edit(
        config_copy,
        "settings.yaml",
        "  keepalive_seconds: 30",
        "  keepalive_seconds: 30\n  keepalive_secs: 30",
    )
    problem = only(problems_of(config_copy), "settings.yaml")
    assert problem.key == "mqtt.keepalive_secs"
    assert problem.reason.startswith("unknown key")


def test_extra_unknown_top_level_key_in_settings(config_copy: Path) -> None:
    edit(
        config_copy,
        "settings.yaml",
        "tick_interval_seconds: 15",
        "tick_interval_seconds: 15\nalert_colour: red",
    )
    problem = only(problems_of(config_copy), "settings.yaml")
    assert (problem.key, problem.value) == ("alert_colour", '"red"')


def test_out_of_range_setting(config_copy: Path) -> None:
    edit(config_copy, "settings.yaml", "margin_m: 20", "margin_m: -5")
    problem = only(problems_of(config_copy), "settings.yaml")
    assert problem.key == "rules.zone.margin_m"
    assert problem.value == "-5"


def test_invalid_yaml_reports_the_line(config_copy: Path) -> None:
    text = (config_copy / "subjects.yaml").read_text(encoding="utf-8").splitlines()
    target = next(i for i, line in enumerate(text, start=1) if line.startswith("  - id: s002"))
    edit(config_copy, "subjects.yaml", "  - id: s002\n", "  - id: s002\n   bad: [\n")
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert problem.key == "(yaml)"
    assert problem.line == target + 1
    assert str(problem).startswith(f"subjects.yaml:{target + 1}: (yaml)")


def test_invalid_zone_json_reports_the_line(config_copy: Path) -> None:
    edit(config_copy, "zones/homes.wgs84.geojson", '"datum": "WGS-84",', '"datum": "WGS-84"')
    problem = only(problems_of(config_copy), "zones/homes.wgs84.geojson")
    assert problem.key == "(json)"
    assert problem.line == 5  # line 1 "{", 2 "$schema", 3 "type", 4 the datum, 5 what follows


def test_missing_subjects_file(config_copy: Path) -> None:
    (config_copy / "subjects.yaml").unlink()
    problem = only(problems_of(config_copy), "subjects.yaml")
    assert (problem.key, problem.reason) == ("(file)", "missing")


def test_all_problems_reported_at_once(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "officer: off-chen", "officer: off-ghost")
    edit(config_copy, "subjects.yaml", "curfew: night-curfew", "curfew: weekend-curfew")
    edit(
        config_copy,
        "subjects.yaml",
        "{id: tag-s003, kind: wearable}",
        "{id: tag-s001, kind: wearable}",
    )
    keys = {p.key for p in problems_of(config_copy)}
    assert keys == {"subjects.2.officer", "subjects.0.curfew", "subjects.2.devices.0.id"}


def test_not_a_directory(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nope")
    assert [p.key for p in problems] == ["(dir)"]
