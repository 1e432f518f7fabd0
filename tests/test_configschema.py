"""The JSON Schema files editors use: committed, current, and in agreement with the loader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from daemon import cli
from daemon.configschema import SCHEMA_MODELS, render_schemas, stale_schemas

CONFIG = Path(__file__).resolve().parent.parent / "config"
SCHEMA_DIR = CONFIG / "schema"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(?P<path>\S+)$")


def _as_editor_sees_it(path: Path) -> Any:
    """The YAML as JSON data: editors read YAML 1.2, where a date is just a string."""
    return json.loads(json.dumps(yaml.safe_load(path.read_text(encoding="utf-8")), default=str))


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_committed_schema_files_are_current() -> None:
    # Fails when a config model changed: run `emon config schema` and commit the result.
    assert stale_schemas(SCHEMA_DIR) == []
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted(SCHEMA_MODELS)


def test_schema_check_command_reports_stale_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", "schema", "--out", str(tmp_path), "--check"]) == 1
    assert len(capsys.readouterr().out.splitlines()) == len(SCHEMA_MODELS)
    assert cli.main(["config", "schema", "--out", str(tmp_path)]) == 0
    assert cli.main(["config", "schema", "--out", str(tmp_path), "--check"]) == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == render_schemas()


@pytest.mark.parametrize("name", ["settings", "subjects", "schedules", "policies"])
def test_example_yaml_names_its_schema_and_is_valid_under_it(name: str) -> None:
    path = CONFIG / f"{name}.yaml"
    match = MODELINE.match(path.read_text(encoding="utf-8").splitlines()[0])
    assert match is not None, "first line must be the yaml-language-server modeline"
    schema_path = (path.parent / match["path"]).resolve()
    assert schema_path == (SCHEMA_DIR / f"{name}.schema.json").resolve()
    errors = list(_validator(schema_path.name).iter_errors(_as_editor_sees_it(path)))
    assert errors == []


def test_example_zone_files_name_their_schema_and_are_valid_under_it() -> None:
    validator = _validator("zones.schema.json")
    for path in sorted((CONFIG / "zones").glob("*.geojson")):
        data = json.loads(path.read_text(encoding="utf-8"))
        assert (path.parent / data["$schema"]).resolve() == SCHEMA_DIR / "zones.schema.json"
        assert list(validator.iter_errors(data)) == [], path.name


def test_schemas_refuse_what_the_loader_refuses() -> None:
    subjects = _as_editor_sees_it(CONFIG / "subjects.yaml")
    subjects["subjects"][0]["permited_zone"] = "district-futian"  # a typo
    subjects["subjects"][1]["devices"] = []
    messages = [e.message for e in _validator("subjects.schema.json").iter_errors(subjects)]
    assert any("permited_zone" in m for m in messages)
    assert any("should be non-empty" in m or "too short" in m for m in messages)

    schedules = {"schedules": {"night": {"windows": [{"start": 1320, "end": "06:00"}]}}}
    assert list(_validator("schedules.schema.json").iter_errors(schedules)) != []
    schedules["schedules"]["night"]["windows"][0]["start"] = "22:00"
    assert list(_validator("schedules.schema.json").iter_errors(schedules)) == []

    zones = json.loads((CONFIG / "zones" / "homes.wgs84.geojson").read_text(encoding="utf-8"))
    zones["datum"] = "WGS84"
    messages = [e.message for e in _validator("zones.schema.json").iter_errors(zones)]
    assert any("WGS84" in m for m in messages)
