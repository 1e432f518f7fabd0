"""`emon replay`: the scripted day gives exactly the expected alerts, deterministically;
bad lines are skipped and counted; ticks run on the virtual clock."""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from daemon.configfiles import LoadedConfig, load_config
from daemon.replay import ReplayLineError, ReplayStats, parse_line, replay_lines
from simulators.scripted_day import LOCAL_TZ, expected_alerts, scripted_day, write_jsonl
from tests.core_helpers import DEVICE, HOME, TZ, local, lonlat, make_config

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DAY = date(2026, 11, 20)
TICK_SECONDS = 15.0


@dataclass(frozen=True)
class Run:
    output: str
    stats: ReplayStats

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output.splitlines()]


def run(lines: list[str], config: LoadedConfig) -> Run:
    out = io.StringIO()
    stats = replay_lines(lines, config.core, TICK_SECONDS, out, progress=None)
    return Run(out.getvalue(), stats)


@pytest.fixture(scope="module")
def config() -> LoadedConfig:
    return load_config(CONFIG_DIR, env={})


@pytest.fixture(scope="module")
def day_lines() -> list[str]:
    buffer = io.StringIO()
    count = write_jsonl(scripted_day(DAY), buffer)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == count
    return lines


@pytest.fixture(scope="module")
def day_run(day_lines: list[str], config: LoadedConfig) -> Run:
    return run(day_lines, config)


def local_time(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(LOCAL_TZ)


# ---------------------------------------------------------------------- the scripted day


def test_scripted_day_opens_exactly_the_expected_alerts(day_run: Run) -> None:
    opened = [r for r in day_run.records if r["transition"] in ("opened", "reopened")]
    got = Counter((r["subject_id"], r["rule"], r["tier"], r["zone_id"]) for r in opened)
    want = Counter((a.subject_id, a.rule.value, a.tier.value, a.zone_id) for a in expected_alerts())
    assert got == want
    assert all(r["transition"] == "opened" for r in opened)


def test_scripted_day_has_no_noise(day_run: Run) -> None:
    """Each alert is opened once and cleared once: no updates, no flapping."""
    kinds = Counter(r["transition"] for r in day_run.records)
    assert kinds == {"opened": len(expected_alerts()), "cleared": len(expected_alerts())}
    by_alert = Counter((r["alert_id"], r["transition"]) for r in day_run.records)
    assert set(by_alert.values()) == {1}
    assert day_run.stats.bad_lines == 0
    assert day_run.stats.rejections == Counter()
    assert day_run.stats.transitions == len(day_run.records)


def test_scripted_day_alerts_open_when_the_script_says(day_run: Run) -> None:
    opened = {
        (r["subject_id"], r["rule"]): local_time(r["opened_at"])
        for r in day_run.records
        if r["transition"] == "opened"
    }
    assert opened[("s001", "strap_open")] == datetime(2026, 11, 20, 10, 15, tzinfo=LOCAL_TZ)
    school = opened[("s003", "exclusion_entry")]
    assert datetime(2026, 11, 20, 14, 50, tzinfo=LOCAL_TZ) <= school
    assert school <= datetime(2026, 11, 20, 15, 5, tzinfo=LOCAL_TZ)
    nanshan = opened[("s003", "boundary_exit")]
    assert datetime(2026, 11, 20, 17, 0, tzinfo=LOCAL_TZ) <= nanshan
    assert nanshan <= datetime(2026, 11, 20, 17, 40, tzinfo=LOCAL_TZ)
    curfew = opened[("s002", "curfew_away")]
    assert datetime(2026, 11, 20, 23, 0, tzinfo=LOCAL_TZ) <= curfew
    assert curfew <= datetime(2026, 11, 20, 23, 18, tzinfo=LOCAL_TZ)


def test_scripted_day_alerts_carry_officer_and_evidence(day_run: Run) -> None:
    officers = {"s001": "off-li", "s002": "off-li", "s003": "off-chen"}
    for record in day_run.records:
        assert record["officer_id"] == officers[record["subject_id"]]
        assert record["state"] == "open"
        assert record["trigger"]
    strap = next(r for r in day_run.records if r["rule"] == "strap_open")
    assert strap["trigger"]["event"]["type"] == "strap_open"
    school = next(r for r in day_run.records if r["rule"] == "exclusion_entry")
    assert school["trigger"]["ping"]["device_id"] == "tag-s003"


def test_two_replays_are_byte_identical(
    day_lines: list[str], config: LoadedConfig, day_run: Run
) -> None:
    again = run(day_lines, config)
    assert again.output == day_run.output
    assert again.output  # not trivially equal


def test_malformed_lines_are_skipped_and_counted(
    day_lines: list[str], config: LoadedConfig, day_run: Run
) -> None:
    # The morning, up to just after s001's strap blip (10:17 local), with junk mixed in.
    cut = next(i for i, line in enumerate(day_lines) if "strap_closed" in line) + 30
    junk = [
        "this is not json",
        "[1, 2, 3]",
        '{"topic": 5, "payload": {}}',
        '{"payload": {"ts": "2026-11-20T02:00:00Z"}}',
        '{"topic": "emon/v1/devices/tag-s001/location", "payload": {}}',
        '{"topic": "emon/v1/devices/tag-s001/location", "payload": {}, "received_at": "noon"}',
        '{"topic": "emon/v1/devices/tag-s001/location", "payload": {},'
        ' "received_at": "2026-11-20T02:00:00"}',
    ]
    lines = list(day_lines[:cut])
    for k, bad in enumerate(junk):
        lines.insert(100 + 200 * k, bad)
    lines.insert(50, "   ")  # blank lines are not counted at all
    result = run(lines, config)
    assert result.stats.bad_lines == len(junk)
    assert result.stats.lines == cut + len(junk)
    strap_lines = [line for line in day_run.output.splitlines() if '"strap_open"' in line]
    assert len(strap_lines) == 2
    assert result.output.splitlines() == strap_lines


def test_wire_rejections_in_replay_are_counted_not_fatal(config: LoadedConfig) -> None:
    lines = [
        json.dumps(
            {
                "topic": "emon/v1/devices/tag-s001/location",
                "payload": "{broken",
                "received_at": "2026-11-20T02:00:00Z",
            }
        ),
        json.dumps(
            {
                "topic": "emon/v1/devices/tag-zzz/location",
                "payload": {"ts": "2026-11-20T02:00:01Z", "lat": 22.5, "lon": 114.0, "acc": 5},
                "received_at": "2026-11-20T02:00:02Z",
            }
        ),
        json.dumps(
            {
                "topic": "emon/v1/devices/tag-s001/event",
                "payload": {"ts": "2026-11-20T02:00:03Z", "type": "strap_open"},
            }
        ),
    ]
    result = run(lines, config)
    assert result.stats.bad_lines == 0
    assert result.stats.rejections == {"not_json": 1, "unknown_device": 1}
    assert [(r["transition"], r["rule"]) for r in result.records] == [("opened", "strap_open")]


# ---------------------------------------------------------------------- virtual clock


def location_lines(
    fixes: list[tuple[datetime, tuple[float, float]]], latency: timedelta
) -> list[str]:
    """Replay lines for DEVICE of the tiny config, each received `latency` after its ts."""
    lines = []
    for ts, (x, y) in fixes:
        lon, lat = lonlat(x, y)
        record = {
            "topic": f"emon/v1/devices/{DEVICE}/location",
            "payload": {"ts": ts.isoformat(), "lat": lat, "lon": lon, "acc": 5},
            "received_at": (ts + latency).isoformat(),
        }
        lines.append(json.dumps(record))
    return lines


AWAY = (HOME[0], HOME[1] + 500.0)  # 450 m outside the home square


def test_replay_ticks_raise_curfew_at_window_start_between_sparse_fixes() -> None:
    """Fixes every 20 minutes; the curfew still opens at 22:00 local, from a tick, before the
    22:10 fix is read."""
    fixes = [(local(21), HOME), (local(21, 1), HOME)]
    fixes += [(local(21, 30) + timedelta(minutes=20 * k), AWAY) for k in range(3)]
    out = io.StringIO()
    lines = location_lines(fixes, timedelta(seconds=2))
    stats = replay_lines(lines, make_config(), TICK_SECONDS, out, progress=None)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["transition"], r["rule"]) for r in records] == [("opened", "curfew_away")]
    opened_at = datetime.fromisoformat(records[0]["opened_at"])
    assert opened_at == local(22)
    assert opened_at.astimezone(TZ).hour == 22
    assert stats.transitions == 1


def test_replay_curfew_does_not_flap_with_upload_latency() -> None:
    # One fix a minute at hh:mm:59, received 2 s later; ticks every 15 s from 21:01:01,
    # so the 22:00:01 tick runs just before the 21:59:59 fix is read.
    fixes = [(local(21, 0, 59), HOME), (local(21, 1, 59), HOME)]
    fixes += [(local(21, 30, 59) + timedelta(minutes=k), AWAY) for k in range(35)]
    out = io.StringIO()
    lines = location_lines(fixes, timedelta(seconds=2))
    replay_lines(lines, make_config(), TICK_SECONDS, out, progress=None)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["transition"], r["rule"]) for r in records] == [("opened", "curfew_away")]


# ---------------------------------------------------------------------- line parsing


def test_parse_line_defaults_received_at_to_payload_ts() -> None:
    message = parse_line(json.dumps({"topic": "t", "payload": {"ts": "2026-11-20T10:00:00+08:00"}}))
    assert message.received_at == datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    assert json.loads(message.payload) == {"ts": "2026-11-20T10:00:00+08:00"}


def test_parse_line_passes_raw_string_payload_through() -> None:
    message = parse_line(
        json.dumps({"topic": "t", "payload": "{raw", "received_at": "2026-11-20T02:00:00.123Z"})
    )
    assert message.payload == b"{raw"
    assert message.received_at == datetime(2026, 11, 20, 2, 0, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize(
    "line",
    [
        "{",
        "[]",
        '{"topic": null}',
        '{"topic": "t", "payload": {}}',
        '{"topic": "t", "payload": {}, "received_at": "2026-11-20T02:00:00"}',
        '{"topic": "t", "payload": {}, "received_at": [1]}',
    ],
)
def test_parse_line_rejects_with_replay_line_error(line: str) -> None:
    with pytest.raises(ReplayLineError):
        parse_line(line)


@pytest.mark.parametrize("where", ["received_at", "payload_ts"])
def test_parse_line_accepts_epoch_seconds(where: str) -> None:
    epoch = datetime(2026, 11, 20, 2, 0, tzinfo=UTC).timestamp()
    record: dict[str, Any] = {"topic": "t", "payload": {"ts": epoch}}
    if where == "received_at":
        record["received_at"] = epoch
    message = parse_line(json.dumps(record))
    assert message.received_at == datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "bad",
    [
        '{"topic": "t", "payload": "\\ud800", "received_at": "2026-11-20T02:00:00Z"}',
        '{"topic": "t", "payload": {}, "received_at": "0001-01-01T00:00:00+01:00"}',
        '{"topic": "t", "payload": {}, "received_at": 1' + "0" * 400 + "}",
    ],
    ids=["surrogate", "year-1", "huge-int"],
)
def test_replay_survives_pathological_lines(bad: str, config: LoadedConfig) -> None:
    good = json.dumps(
        {
            "topic": "emon/v1/devices/tag-s001/event",
            "payload": {"ts": "2026-11-20T02:00:03Z", "type": "strap_open"},
        }
    )
    result = run([bad, good], config)
    assert result.stats.lines == 2
    assert result.stats.bad_lines + sum(result.stats.rejections.values()) == 1
    assert [r["rule"] for r in result.records] == ["strap_open"]
