"""Config of issue 5 part A: check-in schedules and Art. 29 authorisation periods in
subjects.yaml, the rule parameters in settings.yaml; `emon config check` names file, line
and key of each problem; months are counted as the Civil Code counts them. Pure."""

from __future__ import annotations

from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from daemon.compliancesettings import add_months
from daemon.configfiles import ConfigProblem, load_config
from daemon.configtools import check_directory
from geofence.compliancespec import AfterAuthorisation, UnauthorisedPings
from tests.configkit import SETTINGS_YAML, SUBJECTS_YAML, line_of, write_config

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _with_s_a(extra: str) -> str:
    """SUBJECTS_YAML with `extra` (indented lines) added to subject s-a."""
    marker = "    curfew: night\n  - id: s-b"
    return SUBJECTS_YAML.replace(marker, "    curfew: night\n" + extra + "  - id: s-b")


def _problems(directory: Path) -> list[ConfigProblem]:
    _, found = check_directory(directory)
    return found


@pytest.mark.parametrize(("start", "months", "expected"), [
    (date(2026, 11, 20), 3, date(2027, 2, 20)),
    (date(2026, 11, 30), 3, date(2027, 2, 28)),  # no 30 February: the month's last day
    (date(2027, 11, 30), 3, date(2028, 2, 29)),  # leap year
    (date(2026, 10, 31), 3, date(2027, 1, 31)),
    (date(2026, 12, 31), 2, date(2027, 2, 28)),
])
def test_months_are_counted_as_the_civil_code_counts_them(
    start: date, months: int, expected: date
) -> None:
    assert add_months(start, months) == expected


def test_valid_check_ins_and_periods_compile_to_local_instants(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "c", subjects=_with_s_a(
        '    checkins:\n'
        '      - {opens: "08:00", due: "20:00"}\n'
        '      - {due: "12:00", days: [mon], grace_minutes: 60}\n'
        '    authorisation:\n'
        '      periods:\n'
        '        - {start: 2026-11-20, end: 2027-02-20, basis: "left the county"}\n'
        '        - {start: 2027-02-21, end: 2027-05-21, basis: "renewed", reference: R1}\n'
    ))
    core = load_config(directory).core
    subject = core.subjects["s-a"]
    daily, weekly = subject.checkins
    assert (daily.opens, daily.due, daily.grace_seconds) == (time(8), time(20), 30 * 60.0)
    assert (weekly.weekdays, weekly.grace_seconds) == (frozenset({0}), 3600.0)
    assert subject.authorisation is not None
    first, renewal = subject.authorisation.periods
    assert first.start == datetime(2026, 11, 20, tzinfo=SHANGHAI)
    assert first.end == renewal.start == datetime(2027, 2, 21, tzinfo=SHANGHAI)
    assert subject.authorisation.chain_end(first) == datetime(2027, 5, 22, tzinfo=SHANGHAI)
    assert core.subjects["s-b"].authorisation is None


def test_a_period_longer_than_three_months_is_refused_with_its_line(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "c", subjects=_with_s_a(
        '    authorisation:\n'
        '      periods:\n'
        '        - {start: 2026-11-20, end: 2027-02-21, basis: "left the county"}\n'
    ))
    [problem] = _problems(directory)
    assert problem.severity == "error"
    assert problem.key == "subjects.0.authorisation.periods.0"
    assert problem.line == line_of(directory / "subjects.yaml", "2027-02-21")
    assert "at most 3 months (Art. 29)" in problem.reason
    assert "2027-02-20 at the latest" in problem.reason


def test_overlapping_periods_are_an_error_and_a_gap_a_warning(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "c", subjects=_with_s_a(
        '    authorisation:\n'
        '      periods:\n'
        '        - {start: 2026-06-01, end: 2026-08-31, basis: "order"}\n'
        '        - {start: 2026-08-31, end: 2026-10-31, basis: "renewed"}\n'
        '        - {start: 2026-11-10, end: 2027-01-31, basis: "renewed again"}\n'
    ))
    found = _problems(directory)
    by_severity = {p.severity: p for p in found}
    assert len(found) == 2
    overlap, gap = by_severity["error"], by_severity["warning"]
    assert overlap.key == "subjects.0.authorisation.periods.1.start"
    assert overlap.line == line_of(directory / "subjects.yaml", "2026-08-31, end: 2026-10-31")
    assert "overlaps period 0" in overlap.reason
    assert "starts the day after, 2026-09-01" in overlap.reason
    assert gap.key == "subjects.0.authorisation.periods.2.start"
    assert gap.line == line_of(directory / "subjects.yaml", "2026-11-10")
    assert "not authorised from 2026-11-01 to 2026-11-09" in gap.reason


def test_a_check_in_due_before_it_opens_is_refused(tmp_path: Path) -> None:
    directory = write_config(tmp_path / "c", subjects=_with_s_a(
        '    checkins:\n'
        '      - {opens: "20:00", due: "08:00"}\n'
    ))
    [problem] = _problems(directory)
    assert problem.key == "subjects.0.checkins.0"
    assert problem.line == line_of(directory / "subjects.yaml", 'opens: "20:00"')
    assert "must be before due" in problem.reason


def test_rule_settings_compile_and_are_bounded(tmp_path: Path) -> None:
    settings = SETTINGS_YAML + (
        "rules:\n"
        "  separation: {distance_m: 300, minutes: 10, silent_device: false}\n"
        "  checkin: {grace_minutes: 45, require_verification: false}\n"
        "  authorisation: {warn_days: 7, alerts: continue, pings: deadletter}\n"
    )
    behaviour = load_config(write_config(tmp_path / "c", settings=settings)).core.rules.compliance
    assert behaviour.separation is not None
    assert (behaviour.separation.distance_m, behaviour.separation.seconds) == (300.0, 600.0)
    assert not behaviour.separation.silent_device
    assert not behaviour.checkin.require_verification
    assert behaviour.authorisation.warn_seconds == 7 * 86400.0
    assert behaviour.authorisation.alerts is AfterAuthorisation.CONTINUE
    assert behaviour.authorisation.pings is UnauthorisedPings.DEADLETTER
    off = SETTINGS_YAML + "rules:\n  separation: {enabled: false}\n"
    assert load_config(write_config(tmp_path / "d", settings=off)).core.rules.compliance \
        .separation is None
    bad = SETTINGS_YAML + "rules:\n  authorisation: {warn_days: 120}\n"
    [problem] = _problems(write_config(tmp_path / "e", settings=bad))
    assert problem.key == "rules.authorisation.warn_days"
    assert problem.line is not None
