"""`emon config check`: every problem the checker must catch, with file, line, key and value.

Pure: config directories written under tmp_path, no services.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from daemon import cli
from daemon.configfiles import ConfigError, ConfigProblem, load_config
from daemon.configlines import LineIndex, json_line_index, parse_yaml
from daemon.configtools import check_directory
from tests.configkit import (
    CENTRE,
    SCHEDULES_YAML,
    SETTINGS_YAML,
    SUBJECTS_YAML,
    basic_zones,
    copy_example_config,
    feature,
    line_of,
    offset,
    square,
    write_config,
)

LINE_FORMAT = re.compile(r"^(?P<file>\S+?):(?P<line>\d+): (warning: )?(?P<key>\S+)( = .*)?: .+$")


def problems(directory: Path) -> list[ConfigProblem]:
    _, found = check_directory(directory)
    return found


def errors(directory: Path) -> list[ConfigProblem]:
    return [p for p in problems(directory) if p.severity == "error"]


def warnings(directory: Path) -> list[ConfigProblem]:
    return [p for p in problems(directory) if p.severity == "warning"]


def only(found: list[ConfigProblem], text: str) -> ConfigProblem:
    matching = [p for p in found if text in p.reason]
    assert len(matching) == 1, (text, [str(p) for p in found])
    return matching[0]


# ---------------------------------------------------------------------- valid configs


def test_the_example_config_is_valid_and_warns_only_of_unused_zones(tmp_path: Path) -> None:
    directory = copy_example_config(tmp_path / "config")
    loaded, found = check_directory(directory)
    assert loaded is not None
    assert all(p.severity == "warning" for p in found)
    assert all(p.reason == "zone is not used by any subject" for p in found)
    assert all(p.line is not None for p in found)


def test_the_test_config_is_valid_without_warnings(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "c")
    assert problems(directory) == []
    assert load_config(directory).warnings == ()


# ---------------------------------------------------------------------- polygons


def test_invalid_polygon_names_where_it_self_intersects(tmp_path: Path) -> None:
    zones = basic_zones()
    lon, lat = CENTRE
    # A bow tie: the second and third corners swapped, so two edges cross in the middle.
    ring = square(lon, lat, 60)
    ring[1], ring[2] = ring[2], ring[1]
    zones["homes.wgs84.geojson"][0] = feature("home-a", "inclusion", ring)
    directory = write_config(tmp_path / "c", zones=zones)

    found = errors(directory)
    problem = only(found, "invalid polygon")
    assert problem.file == "zones/homes.wgs84.geojson"
    assert problem.value == "home-a"
    assert "Self-intersection" in problem.reason
    # The crossing is at the square's centre: the reason says where, in the file's datum.
    match = re.search(r"at lon (?P<lon>[\d.]+), lat (?P<lat>[\d.]+) \(WGS-84\)", problem.reason)
    assert match is not None
    assert float(match["lon"]) == pytest.approx(lon, abs=1e-6)
    assert float(match["lat"]) == pytest.approx(lat, abs=1e-6)
    # It names the two edges that cross (vertex numbers as in the file); the key and the
    # line are the first vertex of the first edge.
    assert problem.reason.endswith("on edges 0-1, 2-3 (vertex numbers)")
    assert problem.key == "features.0.geometry.coordinates.0.0"
    assert problem.line == line_of(directory / problem.file, json.dumps(ring[0]))
    # A subject's reference to the refused zone says so instead of "not defined".
    ref = only(found, "zone refused")
    assert (ref.file, ref.key, ref.value) == ("subjects.yaml", "subjects.0.home_zone", "home-a")


def test_swapped_latitude_and_longitude_are_caught(tmp_path: Path) -> None:
    zones = basic_zones()
    ring = [[lat, lon] for lon, lat in square(*CENTRE, 60)]
    zones["homes.wgs84.geojson"][1] = feature("home-b", "inclusion", ring)
    directory = write_config(tmp_path / "c", zones=zones)

    problem = only(errors(directory), "swapped")
    assert problem.key == "features.1.geometry.coordinates.0.0"
    assert problem.value == "home-b"
    assert "all 5 positions" in problem.reason
    assert problem.line == line_of(directory / problem.file, json.dumps(ring[0]))


def test_swapped_coordinates_inside_valid_ranges_are_caught_by_the_region(
    tmp_path: Path,
) -> None:
    # Paris: lon 2.35, lat 48.86; swapped, both numbers are still valid degrees.
    paris = (2.35, 48.86)
    settings = "region:\n  name: Paris\n  bbox: [2.2, 48.8, 2.5, 48.95]\n"
    zones = {
        "areas.wgs84.geojson": [feature("district", "inclusion", square(*paris, 5000))],
        "homes.wgs84.geojson": [
            feature("home-a", "inclusion", square(*paris, 60)),
            feature("home-b", "inclusion", [[lat, lon] for lon, lat in square(*paris, 60)]),
        ],
        "exclusions.wgs84.geojson": [
            feature("school", "exclusion", square(*offset(*paris, 1500, 0), 80))
        ],
    }
    directory = write_config(tmp_path / "c", settings=settings, zones=zones)

    problem = only(errors(directory), "look swapped")
    assert (problem.file, problem.key, problem.value) == (
        "zones/homes.wgs84.geojson", "features.1.geometry", "home-b",
    )
    assert problem.line == line_of(directory / problem.file, '"geometry"', occurrence=2)


def test_a_zone_outside_the_declared_region_is_refused(tmp_path: Path) -> None:
    zones = basic_zones()
    beijing = (116.40, 39.90)
    zones["homes.wgs84.geojson"][1] = feature("home-b", "inclusion", square(*beijing, 60))
    directory = write_config(tmp_path / "c", zones=zones)

    problem = only(errors(directory), "outside region")
    assert (problem.key, problem.value) == ("features.1.geometry", "home-b")
    assert "Shenzhen" in problem.reason


def test_ring_problems_too_few_positions_and_unclosed(tmp_path: Path) -> None:
    zones = basic_zones()
    ring = square(*CENTRE, 60)
    zones["homes.wgs84.geojson"][0] = feature("home-a", "inclusion", ring[:3])
    zones["homes.wgs84.geojson"][1] = feature(
        "home-b", "inclusion", square(*offset(*CENTRE, -800, 300), 60)[:4]
    )
    directory = write_config(tmp_path / "c", zones=zones)

    too_few = only(errors(directory), "at least 4 positions")
    assert (too_few.key, too_few.value) == ("features.0.geometry.coordinates.0", "home-a")
    unclosed = only(warnings(directory), "ring not closed")
    assert (unclosed.key, unclosed.value) == ("features.1.geometry.coordinates.0.3", "home-b")


def test_a_file_named_for_one_datum_that_declares_another_is_a_warning(
    tmp_path: Path,
) -> None:
    zones = basic_zones()
    zones["homes.gcj02.geojson"] = zones.pop("homes.wgs84.geojson")
    directory = write_config(tmp_path / "c", zones=zones)

    problem = only(warnings(directory), "file name says GCJ-02")
    assert (problem.file, problem.key, problem.value) == (
        "zones/homes.gcj02.geojson", "datum", "WGS-84",
    )
    assert problem.line == 3


def test_a_bad_feature_property_has_its_line(tmp_path: Path) -> None:
    zones = basic_zones()
    zones["exclusions.wgs84.geojson"][0]["properties"]["kind"] = "forbidden"
    directory = write_config(tmp_path / "c", zones=zones)

    found = errors(directory)
    problem = only(found, "Input should be 'inclusion' or 'exclusion'")
    assert problem.key == "features.0.properties.kind"
    assert problem.line == line_of(directory / problem.file, '"forbidden"')
    # The subject's reference to a zone of that refused file is not called undefined.
    only(found, "zone refused")


# ---------------------------------------------------------------------- references


def test_undefined_zone_officer_and_supervisor_are_reported_at_their_lines(
    tmp_path: Path,
) -> None:
    subjects = (
        SUBJECTS_YAML.replace("supervisor: sup}", "supervisor: sup-x}")
        .replace("    officer: off-a\n    devices:\n      - {id: tag-b",
                 "    officer: off-z\n    devices:\n      - {id: tag-b")
        .replace("      - {zone: school}", "      - {zone: school}\n      - {zone: school-2}")
    )
    directory = write_config(tmp_path / "c", subjects=subjects)
    path = directory / "subjects.yaml"

    found = {(p.key, p.value): p for p in errors(directory)}
    assert set(found) == {
        ("officers.0.supervisor", "sup-x"),
        ("subjects.1.officer", "off-z"),
        ("subjects.0.exclusion_zones.1.zone", "school-2"),
    }
    assert found["officers.0.supervisor", "sup-x"].reason == "officer not defined"
    assert found["officers.0.supervisor", "sup-x"].line == line_of(path, "sup-x")
    assert found["subjects.1.officer", "off-z"].line == line_of(path, "off-z")
    assert found["subjects.0.exclusion_zones.1.zone", "school-2"].reason == "zone not defined"
    assert found["subjects.0.exclusion_zones.1.zone", "school-2"].line == line_of(
        path, "school-2"
    )


def test_an_inclusion_zone_inside_an_exclusion_zone_of_the_same_subject(tmp_path: Path) -> None:
    zones = basic_zones()
    school = offset(*CENTRE, 1500, 0)
    zones["homes.wgs84.geojson"][0] = feature("home-a", "inclusion", square(*school, 20))
    directory = write_config(tmp_path / "c", zones=zones)

    problem = only(errors(directory), "lies inside exclusion zone school")
    assert (problem.file, problem.key, problem.value) == (
        "subjects.yaml", "subjects.0.home_zone", "home-a",
    )
    assert problem.line == line_of(directory / "subjects.yaml", "home_zone: home-a")


def test_inside_a_scheduled_exclusion_zone_is_a_warning(tmp_path: Path) -> None:
    zones = basic_zones()
    school = offset(*CENTRE, 1500, 0)
    zones["homes.wgs84.geojson"][0] = feature("home-a", "inclusion", square(*school, 20))
    subjects = SUBJECTS_YAML.replace("{zone: school}", "{zone: school, schedule: day}")
    schedules = SCHEDULES_YAML + '  day:\n    windows:\n      - {start: "08:00", end: "17:00"}\n'
    directory = write_config(tmp_path / "c", subjects=subjects, schedules=schedules, zones=zones)

    assert errors(directory) == []
    problem = only(warnings(directory), "while schedule day is active")
    assert problem.key == "subjects.0.home_zone"


def test_a_home_overlapping_an_exclusion_zone_is_a_warning(tmp_path: Path) -> None:
    zones = basic_zones()
    school = offset(*CENTRE, 1500, 0)
    # A 120 m home square whose west half overlaps the 160 m school square's east edge.
    zones["homes.wgs84.geojson"][0] = feature(
        "home-a", "inclusion", square(*offset(*school, 80, 0), 60)
    )
    directory = write_config(tmp_path / "c", zones=zones)

    problem = only(warnings(directory), "home overlaps exclusion zone school")
    assert problem.key == "subjects.0.home_zone"
    assert "(50% of the home)" in problem.reason


def test_a_subject_with_no_device(tmp_path: Path) -> None:
    subjects = SUBJECTS_YAML.replace(
        "    devices:\n      - {id: tag-b, kind: wearable}\n", "    devices: []\n"
    )
    directory = write_config(tmp_path / "c", subjects=subjects)
    problem = only(errors(directory), "subject has no device")
    assert (problem.key, problem.line) == (
        "subjects.1.devices", line_of(directory / "subjects.yaml", "devices: []"),
    )

    missing = SUBJECTS_YAML.replace("    devices:\n      - {id: tag-b, kind: wearable}\n", "")
    directory = write_config(tmp_path / "d", subjects=missing)
    problem = only(errors(directory), "subject has no device")
    # The key is absent, so the line is the subject's own.
    assert problem.line == line_of(directory / "subjects.yaml", "- id: s-b")


def test_a_supervisor_chain_that_loops(tmp_path: Path) -> None:
    subjects = SUBJECTS_YAML.replace(
        'role: supervisor}', 'role: supervisor, supervisor: off-a}'
    )
    directory = write_config(tmp_path / "c", subjects=subjects)
    problem = only(errors(directory), "supervisor chain loops")
    assert "off-a -> sup -> off-a" in problem.reason
    assert problem.key == "officers.0.supervisor"


def test_an_exclusion_zone_listed_twice(tmp_path: Path) -> None:
    subjects = SUBJECTS_YAML.replace("      - {zone: school}", "      - {zone: school}\n" * 2)
    directory = write_config(tmp_path / "c", subjects=subjects)
    problem = only(errors(directory), "listed twice")
    assert problem.key == "subjects.0.exclusion_zones.1.zone"


def test_an_unused_zone_is_a_warning(tmp_path: Path) -> None:
    zones = basic_zones()
    zones["exclusions.wgs84.geojson"].append(
        feature("bar", "exclusion", square(*offset(*CENTRE, 0, 2000), 30))
    )
    directory = write_config(tmp_path / "c", zones=zones)
    problem = only(warnings(directory), "not used by any subject")
    assert (problem.file, problem.key, problem.value) == (
        "zones/exclusions.wgs84.geojson", "features.1.properties.id", "bar",
    )
    assert problem.line == line_of(directory / problem.file, '"id": "bar"')


# ---------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("windows", "reason", "bad_window"),
    [
        # Same day, plainly overlapping.
        ('[{start: "08:00", end: "12:00"}, {start: "11:00", end: "13:00"}]', "on mon from 11:00",
         1),
        # Crossing midnight into the next day's window.
        ('[{start: "22:00", end: "06:00"}, {start: "05:00", end: "07:00", days: [tue]}]',
         "on tue from 05:00", 1),
        # Sunday night runs into Monday morning: the week wraps.
        ('[{start: "22:00", end: "06:00", days: [sun]}, {start: "05:30", end: "09:00", '
         "days: [mon]}]", "on mon from 05:30", 1),
    ],
)
def test_overlapping_windows(tmp_path: Path, windows: str, reason: str, bad_window: int) -> None:
    schedules = SCHEDULES_YAML + f"  extra:\n    windows: {windows}\n"
    directory = write_config(tmp_path / "c", schedules=schedules)
    problem = only(errors(directory), "overlaps window 0")
    assert reason in problem.reason
    assert problem.file == "schedules.yaml"
    assert problem.key == f"schedules.extra.windows.{bad_window}"
    assert problem.line == line_of(directory / "schedules.yaml", "extra:") + 1


def test_adjacent_windows_do_not_overlap(tmp_path: Path) -> None:
    schedules = SCHEDULES_YAML + (
        '  extra:\n    windows: [{start: "08:00", end: "12:00"}, {start: "12:00", end: "13:00"},'
        ' {start: "22:00", end: "06:00", days: [sun]},'
        ' {start: "06:00", end: "07:00", days: [mon]}]\n'
    )
    directory = write_config(tmp_path / "c", schedules=schedules)
    assert problems(directory) == []


def test_an_empty_window(tmp_path: Path) -> None:
    schedules = SCHEDULES_YAML.replace('{start: "22:00", end: "06:00"}',
                                       '{start: "22:00", end: "22:00"}')
    directory = write_config(tmp_path / "c", schedules=schedules)
    problem = only(errors(directory), "empty window")
    assert (problem.key, problem.value) == ("schedules.night.windows.0", "22:00-22:00")
    assert problem.line == line_of(directory / "schedules.yaml", "22:00")


def test_an_unquoted_time_is_refused_not_read_as_seconds(tmp_path: Path) -> None:
    # YAML 1.1 reads 22:00 as 1320 (sexagesimal); taken as seconds it would be 00:22.
    schedules = SCHEDULES_YAML.replace('start: "22:00"', "start: 22:00")
    directory = write_config(tmp_path / "c", schedules=schedules)
    problem = only(errors(directory), "write local times in quotes")
    assert (problem.key, problem.value) == ("schedules.night.windows.0.start", "1320")
    assert problem.line == line_of(directory / "schedules.yaml", "22:00")


def test_a_time_with_an_offset_is_refused(tmp_path: Path) -> None:
    schedules = SCHEDULES_YAML.replace('start: "22:00"', 'start: "22:00+08:00"')
    directory = write_config(tmp_path / "c", schedules=schedules)
    only(errors(directory), "without offset")


# ---------------------------------------------------------------------- YAML itself


def test_a_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    subjects = SUBJECTS_YAML + "officers: []\n"
    directory = write_config(tmp_path / "c", subjects=subjects)
    problem = only(errors(directory), "duplicate key (first on line 1)")
    assert (problem.key, problem.line) == ("officers", SUBJECTS_YAML.count("\n") + 1)


def test_an_unknown_key_is_named_with_its_line(tmp_path: Path) -> None:
    settings = SETTINGS_YAML + "rules:\n  zone:\n    margin: 20\n"
    directory = write_config(tmp_path / "c", settings=settings)
    problem = only(errors(directory), "unknown key")
    assert (problem.file, problem.key, problem.line) == (
        "settings.yaml", "rules.zone.margin", line_of(directory / "settings.yaml", "margin:"),
    )


def test_broken_yaml_has_its_line(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "c", schedules="schedules:\n  night: [\n")
    problem = errors(directory)[0]
    assert problem.key == "(yaml)"
    assert problem.line is not None


def test_line_index_falls_back_to_the_enclosing_key_and_handles_dots_in_ids() -> None:
    document = parse_yaml("schedules:\n  night.v2:\n    windows:\n      - {start: x}\n")
    lines = document.lines
    assert lines.line_of("schedules.night.v2.windows.0.start") == 4
    assert lines.line_of("schedules.night.v2.windows.0.end") == 4  # missing: the item
    assert lines.line_of("schedules.night.v2.exception_dates") == 2
    assert lines.line_of("nothing.here") == 1
    assert LineIndex().line_of("a.b") is None


def test_json_line_index_reads_tabs_and_compact_json() -> None:
    text = '{\n\t"features": [\n\t\t{"id":"a","geometry":{"coordinates":[[1,2],\n[3,4]]}}\n\t]\n}'
    index = json_line_index(text)
    assert index.line_of("features.0.geometry.coordinates.1") == 4
    assert index.line_of("features.0.id") == 3


# ---------------------------------------------------------------------- the command


def test_config_check_command_prints_one_line_per_problem_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subjects = SUBJECTS_YAML.replace("home_zone: home-b", "home_zone: home-x")
    schedules = SCHEDULES_YAML.replace('end: "06:00"', 'end: "22:00"')
    directory = write_config(tmp_path / "c", subjects=subjects, schedules=schedules)

    assert cli.main(["config", "check", str(directory)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"{directory}: INVALID: 2 error(s), 1 warning(s)"
    body = lines[:-1]
    assert len(body) == 3
    for line in body:
        match = LINE_FORMAT.match(line)
        assert match is not None, line
        assert match["file"].startswith(f"{directory}/")
    assert body[0] == (
        f"{directory}/schedules.yaml:4: schedules.night.windows.0 = 22:00-22:00: empty window: "
        "start equals end (for a rule that always applies, give no schedule)"
    )
    assert body[1] == (
        f"{directory}/subjects.yaml:18: subjects.1.home_zone = home-x: zone not defined"
    )
    assert body[2].startswith(f"{directory}/zones/homes.wgs84.geojson:20: warning: ")


def test_config_check_json_and_valid_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = write_config(tmp_path / "c")
    assert cli.main(["config", "check", str(directory)]) == 0
    assert "valid: 2 subjects, 2 devices, 4 zones" in capsys.readouterr().out

    subjects = SUBJECTS_YAML.replace("officer: off-a\n    devices:\n      - {id: tag-b",
                                     "officer: nobody\n    devices:\n      - {id: tag-b")
    write_config(directory, subjects=subjects)
    out = io.StringIO()
    from daemon.configtools import config_check

    assert config_check(directory, out, as_json=True) == 1
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records == [{
        "directory": str(directory), "file": "subjects.yaml", "line": 15,
        "key": "subjects.1.officer", "value": "nobody", "reason": "officer not defined",
        "severity": "error",
    }]


def test_config_error_lists_errors_then_warnings_with_lines(tmp_path: Path) -> None:
    zones = basic_zones()
    zones["exclusions.wgs84.geojson"].append(
        feature("bar", "exclusion", square(*offset(*CENTRE, 0, 2000), 30))
    )
    subjects = SUBJECTS_YAML.replace("officer: off-a\n    devices:\n      - {id: tag-b",
                                     "officer: nobody\n    devices:\n      - {id: tag-b")
    directory = write_config(tmp_path / "c", subjects=subjects, zones=zones)
    with pytest.raises(ConfigError) as caught:
        load_config(directory)
    assert [p.severity for p in caught.value.problems] == ["error", "warning"]
    assert all(p.line is not None for p in caught.value.problems)
    assert len(caught.value.errors) == 1


# ---------------------------------------------------------------------- secrets


def test_secrets_come_from_the_environment_or_files(tmp_path: Path) -> None:
    from daemon.configfiles import mqtt_password

    secret = tmp_path / "db-url"
    secret.write_text("postgresql://emon:s3cret@db/emon\n")
    password = tmp_path / "mqtt-password"
    password.write_text("hunter2\n")
    settings = SETTINGS_YAML + f"mqtt:\n  username: emon\n  password_file: {password}\n"
    directory = write_config(tmp_path / "c", settings=settings)

    loaded = load_config(directory, env={"EMON_DATABASE_URL_FILE": str(secret)})
    assert loaded.settings.database.dsn == "postgresql://emon:s3cret@db/emon"
    assert mqtt_password(loaded.settings.mqtt) == "hunter2"
    # The URL in the environment wins over the file.
    loaded = load_config(directory, env={"EMON_DATABASE_URL": "postgresql:///x",
                                          "EMON_DATABASE_URL_FILE": str(secret)})
    assert loaded.settings.database.dsn == "postgresql:///x"

    with pytest.raises(ConfigError) as caught:
        load_config(directory, env={"EMON_DATABASE_URL_FILE": str(tmp_path / "missing")})
    assert "EMON_DATABASE_URL_FILE: cannot read" in caught.value.errors[0].reason

    both = settings + "  password_env: EMON_MQTT_PASSWORD\n"
    directory = write_config(tmp_path / "d", settings=both)
    problem = only(errors(directory), "not both")
    assert (problem.key, problem.line) == ("mqtt", line_of(directory / "settings.yaml", "mqtt:"))
