"""Config schema of the issue-4 rules: settings.yaml rule parameters, subjects' scheduled
inclusions, approach bands and device thresholds, and leaves.yaml; the example config and
each way of getting them wrong, reported with the file and key."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import shapely

from alerts.model import RuleId
from daemon.configfiles import ConfigProblem, LoadedConfig, load_config
from geofence.observation import DeviceKind
from geofence.windows import ConfigLeaveCalendar
from tests.config_edit import CONFIG_DIR, copy_example_config, edit, problems_of


@pytest.fixture(scope="module")
def example() -> LoadedConfig:
    return load_config(CONFIG_DIR, env={})


@pytest.fixture
def config_copy(tmp_path: Path) -> Path:
    return copy_example_config(tmp_path)




def keys(problems: list[ConfigProblem]) -> list[tuple[str, str]]:
    return [(p.file, p.key) for p in problems]


# ---------------------------------------------------------------------- the example


def test_example_rule_parameters(example: LoadedConfig) -> None:
    rules = example.core.rules
    assert rules.zone_params(RuleId.EXCLUSION_APPROACH).dwell_fixes == 3
    assert rules.zone_params(RuleId.EXCLUSION_APPROACH).dwell_seconds == 120.0
    assert rules.zone_params(RuleId.BOUNDARY_EXIT).dwell_fixes == 2
    assert rules.crossing.min_chord_m == 50.0
    assert rules.crossing.max_gap_seconds == 600.0
    assert rules.late_horizon_seconds == 6 * 3600.0
    wearable = rules.thresholds(DeviceKind.WEARABLE)
    assert (wearable.silence_seconds, wearable.gnss_lost_seconds) == (900.0, 1200.0)
    assert (wearable.battery_low_pct, wearable.battery_critical_pct) == (20.0, 10.0)
    phone = rules.thresholds(DeviceKind.PHONE)
    assert (phone.silence_seconds, phone.gnss_lost_seconds) == (3600.0, None)


def test_example_subjects_rules(example: LoadedConfig) -> None:
    core = example.core
    s001 = core.subjects["s001"]
    (work,) = s001.inclusions
    assert (work.zone_id, work.schedule.schedule_id, work.grace_seconds) == (
        "work-s001", "work-hours", 900.0)
    assert date(2027, 1, 1) in work.schedule.exception_dates
    assert all(a.approach_m == 100.0 for s in core.subjects.values() for a in s.exclusions)
    s003 = core.subjects["s003"]
    assert core.thresholds(s003, DeviceKind.WEARABLE).silence_seconds == 25 * 60.0
    # Fields not overridden keep the kind's value.
    assert core.thresholds(s003, DeviceKind.WEARABLE).gnss_lost_seconds == 1200.0
    assert core.thresholds(core.subjects["s002"], DeviceKind.WEARABLE).silence_seconds == 900.0


def test_example_leave_widens_futian_to_nanshan_and_the_route(example: LoadedConfig) -> None:
    (leave,) = example.core.subjects["s003"].leaves
    assert leave.leave_id == "leave-s003-20261205"
    assert leave.start == datetime(2026, 12, 5, 0, 0, tzinfo=UTC)
    assert leave.end == datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    assert leave.return_grace_seconds == 1800.0
    area = leave.area.geometry_wgs84
    for lon, lat in [(114.05, 22.54), (113.93, 22.53), (113.96, 22.531)]:  # Futian, Nanshan
        assert area.contains(shapely.Point(lon, lat))
    assert not area.contains(shapely.Point(114.14, 22.57))  # Luohu
    assert example.leaves.leaves[0].approved_by == "off-chen"


# ---------------------------------------------------------------------- subjects.yaml


def test_inclusion_zone_must_be_an_inclusion_with_a_schedule(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml",
         "{zone: work-s001, schedule: work-hours, grace_minutes: 15}",
         "{zone: school-futian-1, schedule: no-such-schedule, grace_minutes: 15}")
    problems = problems_of(config_copy)
    assert ("subjects.yaml", "subjects.0.inclusion_zones.0.zone") in keys(problems)
    assert ("subjects.yaml", "subjects.0.inclusion_zones.0.schedule") in keys(problems)


def test_a_zone_has_one_role_per_subject(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "{zone: work-s001, schedule", "{zone: home-s001, schedule")
    (problem,) = problems_of(config_copy)
    assert problem.key == "subjects.0.inclusion_zones.0.zone"
    assert problem.reason == "zone already used as home_zone"


def test_subject_thresholds_must_stay_ordered_after_merging(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "wearable: {silence_minutes: 25}",
         "wearable: {battery_low_pct: 8}")
    (problem,) = problems_of(config_copy)
    assert problem.key == "subjects.2.device_thresholds.wearable"
    assert "battery_critical_pct 10 must be below battery_low_pct 8" in problem.reason


def test_grace_and_band_are_bounded(config_copy: Path) -> None:
    edit(config_copy, "subjects.yaml", "grace_minutes: 15", "grace_minutes: 9999")
    edit(config_copy, "subjects.yaml", "approach_m: 100", "approach_m: -5")
    assert keys(problems_of(config_copy)) == [
        ("subjects.yaml", "subjects.0.exclusion_zones.0.approach_m"),
        ("subjects.yaml", "subjects.0.inclusion_zones.0.grace_minutes"),
    ]


# ---------------------------------------------------------------------- settings.yaml


def test_zone_overrides_only_for_zone_rules(config_copy: Path) -> None:
    edit(config_copy, "settings.yaml", "exclusion_approach: {dwell_fixes: 3",
         "strap_open: {dwell_fixes: 3")
    (problem,) = problems_of(config_copy)
    assert (problem.file, problem.key) == ("settings.yaml", "rules.zone_overrides")
    assert "not zone rules: strap_open" in problem.reason


def test_battery_thresholds_ordered_and_unknown_keys_refused(config_copy: Path) -> None:
    edit(config_copy, "settings.yaml", "battery_critical_pct: 10", "battery_critical_pct: 30")
    edit(config_copy, "settings.yaml", "silence_minutes: 60", "silence_minute: 60")
    problems = problems_of(config_copy)
    assert ("settings.yaml", "rules.devices.wearable") in keys(problems)
    assert ("settings.yaml", "rules.devices.phone.silence_minute") in keys(problems)


def test_a_rule_can_be_switched_off_per_kind(config_copy: Path) -> None:
    edit(config_copy, "settings.yaml", "gnss_lost_minutes: 20", "gnss_lost_minutes: null")
    core = load_config(config_copy, env={}).core
    assert core.rules.thresholds(DeviceKind.WEARABLE).gnss_lost_seconds is None
    assert core.rules.thresholds(DeviceKind.WEARABLE).silence_seconds == 900.0


# ---------------------------------------------------------------------- leaves.yaml


def test_leave_problems_are_reported_with_their_keys(config_copy: Path) -> None:
    edit(config_copy, "leaves.yaml", "subject: s003", "subject: s999")
    edit(config_copy, "leaves.yaml", "destination_zone: district-nanshan",
         "destination_zone: school-futian-1")
    edit(config_copy, "leaves.yaml", "approved_by: off-chen", "approved_by: off-nobody")
    edit(config_copy, "leaves.yaml", "[113.9900, 22.5330]", "[121.4700, 31.2300]")  # Shanghai
    problems = problems_of(config_copy)
    got = {(p.key, p.reason) for p in problems if p.file == "leaves.yaml"}
    assert ("leaves.0.subject", "subject not defined") in got
    assert ("leaves.0.destination_zone", "zone is exclusion, expected inclusion") in got
    assert ("leaves.0.approved_by", "officer not defined") in got
    assert ("leaves.0.route.path.1", "outside the region (order is [lon, lat])") in got


def test_swapped_route_coordinates_are_refused(config_copy: Path) -> None:
    edit(config_copy, "leaves.yaml", "[113.9900, 22.5330]", "[22.5330, 113.9900]")
    (problem,) = problems_of(config_copy)
    assert (problem.file, problem.key) == ("leaves.yaml", "leaves.0.route.path")
    assert "out of range (order is [lon, lat])" in problem.reason


def test_leave_period_must_be_forwards_and_bounded(config_copy: Path) -> None:
    edit(config_copy, "leaves.yaml", 'end: "2026-12-05T20:00:00+08:00"',
         'end: "2026-12-05T07:00:00+08:00"')
    (problem,) = problems_of(config_copy)
    assert (problem.file, problem.key) == ("leaves.yaml", "leaves.0")
    assert "end must be after start" in problem.reason
    edit(config_copy, "leaves.yaml", 'end: "2026-12-05T07:00:00+08:00"',
         'end: "2027-06-05T07:00:00+08:00"')
    (problem,) = problems_of(config_copy)
    assert "at most 92 days" in problem.reason


def test_leave_times_need_an_offset(config_copy: Path) -> None:
    edit(config_copy, "leaves.yaml", 'start: "2026-12-05T08:00:00+08:00"',
         'start: "2026-12-05T08:00:00"')
    (problem,) = problems_of(config_copy)
    assert problem.key == "leaves.0.start"


def test_overlapping_leaves_of_one_subject_are_refused(config_copy: Path) -> None:
    text = (config_copy / "leaves.yaml").read_text(encoding="utf-8")
    second = text[text.index("  - id: leave-s003-20261205"):].replace(
        "leave-s003-20261205", "leave-s003-second").replace(
        'start: "2026-12-05T08:00:00+08:00"', 'start: "2026-12-05T20:10:00+08:00"').replace(
        'end: "2026-12-05T20:00:00+08:00"', 'end: "2026-12-06T08:00:00+08:00"')
    (config_copy / "leaves.yaml").write_text(text + second, encoding="utf-8")
    (problem,) = problems_of(config_copy)  # 20:10 is inside the first one's return grace
    assert (problem.key, problem.reason) == (
        "leaves.1.start", "overlaps leave leave-s003-20261205 of the same subject")


def test_no_leaves_file_is_no_leave(config_copy: Path) -> None:
    (config_copy / "leaves.yaml").unlink()
    core = load_config(config_copy, env={}).core
    assert all(s.leaves == () for s in core.subjects.values())


def test_the_leave_calendar_tells_the_alert_lifecycle_who_is_on_leave(
    example: LoadedConfig,
) -> None:
    calendar = ConfigLeaveCalendar(lambda: example.core)
    at = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)  # 10:00 local
    assert calendar.on_leave("s003", at)
    assert not calendar.on_leave("s001", at)
    assert not calendar.on_leave("nobody", at)
    # The return grace (30 min after 20:00 local) still counts; after it, not.
    assert calendar.on_leave("s003", datetime(2026, 12, 5, 12, 20, tzinfo=UTC))
    assert not calendar.on_leave("s003", datetime(2026, 12, 5, 12, 30, tzinfo=UTC))
    assert not calendar.on_leave("s003", datetime(2026, 12, 4, 23, 59, tzinfo=UTC))
