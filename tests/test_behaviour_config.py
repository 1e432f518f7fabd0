"""Config of the issue-5 part-B rules: settings.yaml `behaviour:` and subjects.yaml
`co_offender_groups:` / `protected_persons:`; the example, and mistakes reported with the
file, key and line as `emon config check` prints them."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.configfiles import load_config
from geofence.behaviour_config import ProtectedLink
from tests.config_edit import CONFIG_DIR, copy_example_config, edit, problems_of


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    return copy_example_config(tmp_path)




def test_example_compiles_groups_protected_persons_and_tunables() -> None:
    behaviour = load_config(CONFIG_DIR, env={}).core.behaviour
    assert behaviour.co_offender_groups == {"case-2025-0417": frozenset({"s002", "s003"})}
    assert behaviour.shared_groups("s003", "s002") == {"case-2025-0417"}
    assert behaviour.links_of["s003"] == (ProtectedLink("p-0001", "s003", 500.0, 500.0),)
    assert behaviour.gathering.min_seconds == 600.0
    assert behaviour.victims.stale_seconds == 600.0
    assert not behaviour.habits.enabled
    assert behaviour.habits.far_seconds_per_day == 3 * 3600.0


def test_unknown_and_repeated_subjects_are_reported_with_their_line(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "subjects: [s002, s003]", "subjects: [s002, s009, s002]")
    edit(config_copy, "subjects.yaml", "{subject: s003, radius_m", "{subject: s404, radius_m")
    problems = problems_of(config_copy)
    found = {(p.key, p.reason) for p in problems}
    assert ("co_offender_groups.0.subjects.1", "subject not defined") in found
    assert ("co_offender_groups.0.subjects.2", "listed twice") in found
    assert ("protected_persons.0.subjects.0.subject", "subject not defined") in found
    text = (config_copy / "subjects.yaml").read_text(encoding="utf-8").splitlines()
    located = {p.key: p.line for p in problems}
    line = located["co_offender_groups.0.subjects.1"]
    assert line is not None
    assert "s009" in text[line - 1]


def test_cross_field_checks_of_the_settings(config_copy: Path) -> None:
    edit(config_copy, "settings.yaml", "min_history_days: 14", "min_history_days: 40")
    edit(config_copy, "settings.yaml", "stale_minutes: 5 ", "stale_minutes: 30 ")
    reasons = " | ".join(p.reason for p in problems_of(config_copy))
    assert "exceeds the 28 days of history_weeks" in reasons
    assert "stale_minutes must not exceed minutes" in reasons


def test_a_protected_person_id_may_not_be_a_subject_id(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "- id: p-0001", "- id: s002")
    problems = problems_of(config_copy)
    assert [(p.key, p.reason) for p in problems] == [
        ("protected_persons.0.id", "id already used by a subject")]
