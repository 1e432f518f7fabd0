"""The console's in-process parts, no servers: subject status (pure), console settings, and
the live fan-out (scope per stream, coalesced positions, bounded alert queues that drop a
slow stream, the pump's timing) over the real pipeline and the example config."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from pydantic import ValidationError

from alerts.model import Alert, AlertState, RuleId, Tier
from daemon.configfiles import ConfigError, LoadedConfig, load_config
from daemon.console.feed import (
    CLOSED_GONE,
    CLOSED_OUT_OF_SCOPE,
    CLOSED_SIGNED_OUT,
    CLOSED_SLOW,
    CLOSED_WRITE_TIMEOUT,
    HEARTBEAT,
    FeedClient,
    FeedFullError,
    LiveFeed,
    pump,
)
from daemon.console.settings import ConsoleSettings
from daemon.console.status import AlertSummary, LastFix, SubjectStatus, subject_status
from daemon.pipeline import Pipeline
from geofence.observation import FixSource, LocationFix

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
NOW = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai: no curfew
STALE = timedelta(minutes=30)
ALL = frozenset({"s001", "s002", "s003"})


# ---------------------------------------------------------------------- status (pure)


def _alert(state: AlertState, tier: Tier = Tier.HIGH, subject: str = "s001") -> Alert:
    return Alert(
        alert_id=f"a-{state.value}-{tier.value}", subject_id=subject, device_id="tag-s001",
        rule=RuleId.BOUNDARY_EXIT, zone_id=None, tier=tier, state=state, opened_at=NOW,
        updated_at=NOW, officer_id="off-li", trigger={}, last_evidence={},
    )


@pytest.mark.parametrize(
    ("states", "fix_age", "expected"),
    [
        ([AlertState.OPEN, AlertState.ACKNOWLEDGED], timedelta(0), SubjectStatus.ALERT),
        ([AlertState.OPEN], None, SubjectStatus.ALERT),  # an alert outranks a silent device
        ([AlertState.ACKNOWLEDGED], timedelta(hours=5), SubjectStatus.ACKNOWLEDGED),
        ([AlertState.RESOLVED], timedelta(minutes=31), SubjectStatus.STALE),
        ([], None, SubjectStatus.STALE),
        ([], timedelta(minutes=30), SubjectStatus.OK),  # exactly the threshold: not yet
        ([AlertState.RESOLVED], timedelta(minutes=1), SubjectStatus.OK),
    ],
)
def test_status_shows_the_worst_thing_first(
    states: list[AlertState], fix_age: timedelta | None, expected: SubjectStatus
) -> None:
    summary = AlertSummary.of(_alert(s) for s in states)
    last = NOW - fix_age if fix_age is not None else None
    assert subject_status(summary, last, NOW, STALE) is expected


def test_summary_counts_unresolved_and_names_the_most_urgent_tier() -> None:
    summary = AlertSummary.of([
        _alert(AlertState.OPEN, Tier.LOW), _alert(AlertState.ACKNOWLEDGED, Tier.CRITICAL),
        _alert(AlertState.RESOLVED, Tier.CRITICAL), _alert(AlertState.OPEN, Tier.HIGH),
    ])
    assert summary.to_wire() == {"open": 2, "acknowledged": 1, "top_tier": "critical"}
    assert AlertSummary.of([]).to_wire() == {"open": 0, "acknowledged": 0, "top_tier": None}


# ---------------------------------------------------------------------- settings


def test_console_settings_defaults_draw_on_a_plain_background() -> None:
    settings = ConsoleSettings()
    assert settings.tile_url is None
    assert settings.enabled


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tile_url": "http://tiles.local/{z}/{x}.png"}, "lacks {y}"),
        ({"tile_url": "ftp://tiles.local/{z}/{x}/{y}.png"}, "http:// or https://"),
        ({"tile_url": "javascript:alert(1)//{z}{x}{y}"}, "http:// or https://"),
        ({"tile_attribution": "© somebody"}, "tile_url is not"),
        ({"max_clients": 0}, "greater than or equal to 1"),
        ({"position_flush_seconds": 0.01}, "greater than or equal to 0.1"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_console_settings_refuse_what_cannot_work(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        ConsoleSettings.model_validate(fields)


def _with_console(tmp_path: Path, console: dict[str, Any]) -> Path:
    """A copy of the example config whose settings.yaml has this `console:` section."""
    directory = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, directory)
    path = directory / "settings.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    settings["console"] = console
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return directory


def test_bad_console_settings_are_reported_by_file_and_key(tmp_path: Path) -> None:
    directory = _with_console(tmp_path, {"tile_url": "http://tiles.local/{z}/{y}.png"})
    with pytest.raises(ConfigError) as info:
        load_config(directory, env={})
    [problem] = [p for p in info.value.problems if p.severity == "error"]
    assert (problem.file, problem.key) == ("settings.yaml", "console")
    assert "lacks {x}" in problem.reason


def test_tile_server_settings_load(tmp_path: Path) -> None:
    directory = _with_console(tmp_path, {
        "tile_url": "http://{s}.tiles.local:8080/{z}/{x}/{y}.png",
        "tile_attribution": "OpenStreetMap contributors",
    })
    loaded = load_config(directory, env={})
    assert loaded.settings.console.tile_url == "http://{s}.tiles.local:8080/{z}/{x}/{y}.png"


# ---------------------------------------------------------------------- the fan-out


@pytest.fixture(scope="module")
def loaded() -> LoadedConfig:
    return load_config(CONFIG_DIR, env={})


@dataclasses.dataclass
class Scopes:
    """Who sees what, as the console's scope function answers it (subjects.yaml)."""

    by_officer: dict[str, frozenset[str]]

    def __call__(self, officer_id: str) -> frozenset[str] | None:
        return self.by_officer.get(officer_id)


@pytest.fixture
def scopes() -> Scopes:
    return Scopes({"off-li": frozenset({"s001", "s002"}), "off-chen": frozenset({"s003"}),
                   "sup-wang": ALL})


@pytest.fixture
def pipeline(loaded: LoadedConfig) -> Pipeline:
    return Pipeline(loaded.core)


def _feed(pipeline: Pipeline, scopes: Scopes, **kw: Any) -> LiveFeed:
    options: dict[str, Any] = {"max_clients": 10, "queue_size": 5, "stale_after": STALE,
                               "clock": lambda: NOW, **kw}
    return LiveFeed(pipeline, scopes, **options)


def _fix(device: str, at: datetime, lat: float = 22.548, lon: float = 114.04) -> LocationFix:
    return LocationFix(device, at, lat, lon, 8.0, FixSource.GNSS, at)


def _event(pipeline: Pipeline, device: str, kind: str, at: datetime) -> list[Any]:
    payload = json.dumps({"ts": at.isoformat(), "type": kind}).encode()
    outcome = pipeline.handle(f"emon/v1/devices/{device}/event", payload, at)
    assert outcome.transitions, f"{kind} changes an alert"
    return outcome.transitions


def _strap_open(pipeline: Pipeline, device: str, at: datetime) -> list[Any]:
    return _event(pipeline, device, "strap_open", at)


def _events(chunks: list[bytes]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for chunk in chunks:
        for block in chunk.decode().split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line
                         and not line.startswith(":"))
            if "event" in lines:
                out.append((lines["event"], json.loads(lines["data"])))
    return out


def _drain(client: FeedClient) -> list[tuple[str, dict[str, Any]]]:
    return _events(client.take_alerts() + client.take_positions())


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_each_stream_gets_only_its_officers_subjects(pipeline: Pipeline, scopes: Scopes) -> None:
    feed = _feed(pipeline, scopes)
    li = feed.subscribe("off-li", scopes.by_officer["off-li"])
    chen = feed.subscribe("off-chen", scopes.by_officer["off-chen"])
    wang = feed.subscribe("sup-wang", ALL)
    feed.on_observation(_fix("tag-s001", NOW), "s001")
    feed.on_observation(_fix("tag-s003", NOW), "s003")
    feed.on_transitions(_strap_open(pipeline, "tag-s003", NOW))

    li_events, chen_events, wang_events = _drain(li), _drain(chen), _drain(wang)
    assert [(k, e["subject_id"]) for k, e in li_events] == [("position", "s001")]
    assert sorted((k, e["subject_id"]) for k, e in chen_events) == [
        ("alert", "s003"), ("position", "s003")]
    assert len(wang_events) == 3
    alert = next(e for k, e in chen_events if k == "alert")
    assert alert["transition"] == "opened"
    assert alert["rule"] == "strap_open"
    # The subject's status after the transition rides along, for the marker's colour.
    assert alert["subject"] == {"subject_id": "s003", "status": "alert",
                                "alerts": {"open": 1, "acknowledged": 0, "top_tier": "critical"}}


def test_positions_are_coalesced_newest_per_subject_and_late_uploads_skipped(
    pipeline: Pipeline, scopes: Scopes
) -> None:
    feed = _feed(pipeline, scopes)
    li = feed.subscribe("off-li", scopes.by_officer["off-li"])
    for minutes in (1, 2, 3):
        feed.on_observation(_fix("tag-s001", NOW + timedelta(minutes=minutes)), "s001")
    # Stored and forwarded: older than what the map shows, so not a live position.
    feed.on_observation(_fix("tag-s002", NOW), "s002")
    feed.on_observation(_fix("tag-s002", NOW - timedelta(hours=1)), "s002")
    events = _drain(li)
    assert sorted((e["subject_id"], e["ts"]) for _, e in events) == [
        ("s001", (NOW + timedelta(minutes=3)).isoformat()), ("s002", NOW.isoformat())]
    last = feed.last_fix("s002")
    assert last is not None
    assert last.ts == NOW


def test_a_stream_that_falls_behind_is_dropped_and_counted(
    pipeline: Pipeline, scopes: Scopes
) -> None:
    feed = _feed(pipeline, scopes, queue_size=3)
    slow = feed.subscribe("sup-wang", ALL)
    fine = feed.subscribe("off-chen", scopes.by_officer["off-chen"])
    overflow_before = metric("emon_queue_overflow_total", queue="console_stream")
    for device in ("tag-s001", "tag-s002", "tag-s003"):
        feed.on_transitions(_strap_open(pipeline, device, NOW))
    assert slow.closed is None
    assert slow.alerts.qsize() == 3  # full, and nobody has written them out
    fine.take_alerts()  # this one's browser keeps up
    feed.on_transitions(_event(pipeline, "tag-s003", "strap_closed", NOW + timedelta(minutes=1)))
    assert slow.closed == CLOSED_SLOW
    assert fine.closed is None
    assert metric("emon_queue_overflow_total", queue="console_stream") == overflow_before + 1
    # A closed stream takes nothing more; the hub forgets it when its handler ends.
    feed.on_observation(_fix("tag-s001", NOW + timedelta(minutes=5)), "s001")
    assert not slow.positions
    closed_before = metric("emon_console_streams_closed_total", reason=CLOSED_SLOW)
    feed.unsubscribe(slow)
    assert metric("emon_console_streams_closed_total", reason=CLOSED_SLOW) == closed_before + 1
    assert feed.client_count == 1


def test_too_many_streams_are_refused(pipeline: Pipeline, scopes: Scopes) -> None:
    feed = _feed(pipeline, scopes, max_clients=2)
    before = metric("emon_console_streams_refused_total")
    first = feed.subscribe("off-li", ALL)
    feed.subscribe("off-li", ALL)
    with pytest.raises(FeedFullError):
        feed.subscribe("off-li", ALL)
    assert metric("emon_console_streams_refused_total") == before + 1
    feed.unsubscribe(first)
    feed.subscribe("off-li", ALL)  # room again


def test_scopes_follow_a_new_config_and_a_removed_officer_is_closed(
    pipeline: Pipeline, scopes: Scopes, loaded: LoadedConfig
) -> None:
    feed = _feed(pipeline, scopes)
    li = feed.subscribe("off-li", scopes.by_officer["off-li"])
    chen = feed.subscribe("off-chen", scopes.by_officer["off-chen"])
    # s003 moves to off-li's caseload and off-chen leaves (what a hot reload can do).
    scopes.by_officer = {"off-li": ALL}
    pipeline.swap_config(dataclasses.replace(loaded.core, version="next"))
    feed.on_observation(_fix("tag-s003", NOW), "s003")
    assert [e["subject_id"] for _, e in _drain(li)] == ["s003"]
    assert chen.closed == CLOSED_OUT_OF_SCOPE


async def test_shutdown_closes_every_stream(pipeline: Pipeline, scopes: Scopes) -> None:
    feed = _feed(pipeline, scopes)
    written: list[bytes] = []

    async def write(data: bytes) -> None:
        written.append(data)

    async with feed:
        client = feed.subscribe("off-li", ALL)

        async def handler() -> str:
            try:
                return await pump(client, write, position_flush_seconds=0.1)
            finally:
                feed.unsubscribe(client)

        task = asyncio.create_task(handler())
        await asyncio.sleep(0.05)
    # Leaving the feed waited for the handler to finish.
    assert task.done()
    assert task.result() == "shutdown"
    assert feed.client_count == 0


# ---------------------------------------------------------------------- the pump


class Socket:
    """What the pump writes to, with a switch to make it stall like a browser that stopped
    reading, or fail like one that went away."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.stall = False
        self.gone = False

    async def write(self, data: bytes) -> None:
        if self.gone:
            raise ConnectionResetError("peer went away")
        if self.stall:
            await asyncio.sleep(3600)
        self.chunks.append((asyncio.get_running_loop().time(), data))


async def _run_pump(client: FeedClient, socket: Socket, **kw: Any) -> asyncio.Task[str]:
    options: dict[str, Any] = {"position_flush_seconds": 0.2, "heartbeat_seconds": 5.0, **kw}
    return asyncio.create_task(pump(client, socket.write, **options))


async def test_alerts_go_at_once_and_positions_at_most_every_flush_interval(
    pipeline: Pipeline, scopes: Scopes
) -> None:
    feed = _feed(pipeline, scopes)
    client = feed.subscribe("sup-wang", ALL)
    socket = Socket()
    task = await _run_pump(client, socket)
    loop = asyncio.get_running_loop()
    feed.on_observation(_fix("tag-s001", NOW), "s001")
    for _ in range(200):  # the first positions go at once (polled: the machine may be loaded)
        if socket.chunks:
            break
        await asyncio.sleep(0.01)
    for i in range(20):  # 20 pings within one interval: one more write, the newest
        feed.on_observation(_fix("tag-s001", NOW + timedelta(seconds=i + 1)), "s001")
    await asyncio.sleep(0)
    sent_alert_at = loop.time()
    feed.on_transitions(_strap_open(pipeline, "tag-s002", NOW))
    await asyncio.sleep(0.5)
    client.close("test")
    assert await task == "test"
    events = [(at, e) for at, chunk in socket.chunks for e in _events([chunk])]
    positions = [(at, e) for at, (kind, e) in events if kind == "position"]
    alerts = [(at, e) for at, (kind, e) in events if kind == "alert"]
    assert [e["ts"] for _, e in positions] == [
        NOW.isoformat(), (NOW + timedelta(seconds=20)).isoformat()]
    assert positions[1][0] - positions[0][0] >= 0.2 - 0.01
    assert len(alerts) == 1
    # Not held back by the position interval: out before the held-back positions.
    assert sent_alert_at <= alerts[0][0] < positions[1][0]


async def test_heartbeat_when_idle(pipeline: Pipeline, scopes: Scopes) -> None:
    client = _feed(pipeline, scopes).subscribe("off-li", ALL)
    socket = Socket()
    task = await _run_pump(client, socket, heartbeat_seconds=0.05)
    await asyncio.sleep(0.2)
    client.close("test")
    await task
    assert len(socket.chunks) >= 2
    assert all(data == HEARTBEAT for _, data in socket.chunks)


async def test_a_stalled_browser_is_dropped_after_the_write_timeout(
    pipeline: Pipeline, scopes: Scopes
) -> None:
    feed = _feed(pipeline, scopes)
    client = feed.subscribe("off-li", ALL)
    socket = Socket()
    socket.stall = True
    task = await _run_pump(client, socket, write_timeout_seconds=0.1)
    feed.on_observation(_fix("tag-s001", NOW), "s001")
    assert await asyncio.wait_for(task, 2.0) == CLOSED_WRITE_TIMEOUT


async def test_a_browser_that_went_away_ends_its_stream(
    pipeline: Pipeline, scopes: Scopes
) -> None:
    feed = _feed(pipeline, scopes)
    client = feed.subscribe("off-li", ALL)
    socket = Socket()
    socket.gone = True
    task = await _run_pump(client, socket)
    feed.on_observation(_fix("tag-s001", NOW), "s001")
    assert await asyncio.wait_for(task, 2.0) == CLOSED_GONE


async def test_a_signed_out_session_ends_its_stream(pipeline: Pipeline, scopes: Scopes) -> None:
    client = _feed(pipeline, scopes).subscribe("off-li", ALL)
    checks: list[float] = []

    async def still_signed_in() -> bool:
        checks.append(asyncio.get_running_loop().time())
        return len(checks) < 3

    task = await _run_pump(client, Socket(), still_signed_in=still_signed_in,
                           recheck_seconds=0.05)
    assert await asyncio.wait_for(task, 2.0) == CLOSED_SIGNED_OUT
    assert len(checks) == 3


def test_last_fix_wire_form() -> None:
    fix = LastFix.of(_fix("tag-s001", NOW), "s001")
    assert fix.to_wire() == {
        "subject_id": "s001", "device_id": "tag-s001", "ts": NOW.isoformat(), "lat": 22.548,
        "lon": 114.04, "acc": 8.0, "src": "gnss", "batt": None,
    }

