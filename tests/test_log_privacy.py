"""No coordinates and no names in the logs at INFO (Art. 29: location data is confidential
and for corrections only; logs are read by more people, and kept elsewhere, than the
database). Ids are fine: a subject id means nothing without the roster.

Each test runs a real path with every logger captured at INFO and above (warnings,
errors and tracebacks included) and searches the text for every latitude and longitude
that went in, in the forms a log line would print them, and for any number with three or
more decimals inside the region's box. Names: the roster has no field for a subject's
name (a `name` is refused), so the names checked are those a device can smuggle in as an
extra field, and the officers' display names.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from daemon.configfiles import ConfigError, load_config
from daemon.localservices import MosquittoProcess
from daemon.replay import replay_lines
from daemon.store import PingWriter, migrate
from geofence.observation import FixSource, LocationFix
from simulators.publisher import publish
from simulators.scripted_day import LOCAL_TZ, SimMessage, replay_record, scripted_day
from tests.daemon_helpers import daemon_config, metric, running_daemon

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
PROCESS_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.1
# A name a device's firmware (or an attacker) might put in a payload.
SMUGGLED_NAME = "Zhang San 张三"
AFTERNOON = (time(14, 30), time(17, 30))
LOADED = load_config(CONFIG_DIR, env={})
OFFICER_NAMES = [officer.name for officer in LOADED.subjects.officers]
_REGION = LOADED.settings.region
assert _REGION is not None
LON_MIN, LAT_MIN, LON_MAX, LAT_MAX = _REGION.bbox
# Any decimal number with 3+ decimals (about 100 m): checked against the region below.
_PRECISE_NUMBER = re.compile(r"-?\d{1,3}\.\d{3,}")


def in_afternoon(message: SimMessage) -> bool:
    return AFTERNOON[0] <= message.at.astimezone(LOCAL_TZ).time() < AFTERNOON[1]


def coordinate_forms(value: float) -> set[str]:
    return {repr(value), str(value), f"{value:.6f}", f"{value:.5f}", f"{value:.4f}"}


def leaks(texts: Iterable[str], coordinates: Iterable[float], names: Iterable[str]) -> list[str]:
    """Every (text, what leaked) found; empty when the logs are clean."""
    needles = {form for value in coordinates for form in coordinate_forms(value)}
    needles |= set(names)
    found: list[str] = []
    for text in texts:
        found.extend(f"{needle!r} in {text[:300]!r}" for needle in needles if needle in text)
        for match in _PRECISE_NUMBER.finditer(text):
            number = float(match.group())
            if LAT_MIN <= number <= LAT_MAX or LON_MIN <= number <= LON_MAX:
                found.append(f"region coordinate {match.group()} in {text[:300]!r}")
    return found


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    formatter = logging.Formatter()
    texts = []
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + formatter.formatException(record.exc_info)
        texts.append(text)
    return texts


def coordinates_of(messages: Iterable[SimMessage]) -> set[float]:
    return {
        float(m.payload[key]) for m in messages for key in ("lat", "lon") if key in m.payload
    }


def test_leak_check_catches_coordinates_and_names() -> None:
    """The detector itself: it must fire on what it is meant to catch."""
    lat, lon = 22.5445123, 114.0462987
    assert leaks([f"fix at {lat}"], [lat, lon], [])
    assert leaks([f"fix at {lon:.4f}"], [lat, lon], [])
    assert leaks(["somewhere near 22.544"], [], [])  # any precise number in the region
    assert leaks([f"owner {SMUGGLED_NAME}"], [], [SMUGGLED_NAME])
    assert not leaks(["alert opened: subject s002 rule curfew_away, 130 m out, 6.0 m acc"],
                     [lat, lon], [SMUGGLED_NAME])


def hostile_with_coordinates(now: datetime, device: str) -> list[tuple[str, bytes]]:
    """Refused messages that carry coordinates (the dead letter keeps them; no log may)."""
    topic = f"emon/v1/devices/{device}/location"
    ts = now.isoformat()
    return [
        (topic, json.dumps({"ts": ts, "lat": 95.5432198, "lon": 114.0512345, "acc": 5}).encode()),
        (topic, json.dumps({"ts": ts, "lat": "22.5512345", "lon": 114.0512345, "acc": 5})
         .encode()),
        (topic, json.dumps({"ts": ts, "lat": 22.5512345, "lon": 114.0512345, "acc": -1}).encode()),
        (topic, json.dumps({"ts": ts, "lat": 22.5512345, "lon": 114.0512345, "acc": 5,
                            "owner": SMUGGLED_NAME, "bad": "\u0000"}).encode()),
        ("emon/v1/devices/not-in-roster/location",
         json.dumps({"ts": ts, "lat": 22.5512345, "lon": 114.0512345, "acc": 5}).encode()),
    ]


async def test_daemon_logs_no_coordinates_or_names_at_info(
    mosquitto: MosquittoProcess, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A simulated day through the live daemon (alerts opened and cleared, curfew ticks),
    refused messages full of coordinates, a device sending a name: nothing of it in the
    logs."""
    caplog.set_level(logging.INFO)
    now = datetime.now(UTC)
    # Yesterday, local time: every ping is in the past and within the 30-day window.
    day = (now.astimezone(LOCAL_TZ) - timedelta(days=1)).date()
    # The afternoon (s003 enters the school's exclusion zone, then leaves the district)
    # and every device event of the day (s001's strap opens), with a name smuggled into
    # each event: a few hundred messages, several alerts.
    messages = [
        SimMessage(
            m.topic,
            {**m.payload, "owner": SMUGGLED_NAME} if m.topic.endswith("/event") else m.payload,
            m.at,
        )
        for m in scripted_day(day)
        if m.topic.endswith("/event") or in_afternoon(m)
    ]
    hostile = hostile_with_coordinates(now, "tag-s001")
    client_id = f"emon-logtest-{uuid.uuid4().hex[:8]}"
    loaded = daemon_config(
        CONFIG_DIR, dsn=pg_dsn,
        mqtt={"host": mosquitto.host, "port": mosquitto.port, "client_id": client_id},
    )  # fmt: skip

    def processed() -> float:
        return sum(metric("emon_observations_processed_total", kind=k)
                   for k in ("LocationFix", "DeviceEvent"))

    def rejected() -> float:
        return sum(metric("emon_messages_rejected_total", reason=r)
                   for r in ("out_of_range", "bad_type", "not_json", "unknown_device"))

    processed_before, rejected_before = processed(), rejected()
    try:
        async with running_daemon(loaded):
            sent = await publish(messages, host=mosquitto.host, port=mosquitto.port,
                                 progress=False, client_id=f"{client_id}-sim")
            async with aiomqtt.Client(mosquitto.host, mosquitto.port) as device:
                for topic, raw in hostile:
                    await device.publish(topic, raw, qos=1)
            async with asyncio.timeout(PROCESS_TIMEOUT_SECONDS):
                while True:
                    if (processed() - processed_before >= sent
                            and rejected() - rejected_before >= len(hostile)):
                        break
                    await asyncio.sleep(POLL_SECONDS)
    finally:
        # Drop the test's persistent session from the shared broker.
        async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=client_id,
                                  clean_session=True):
            pass

    texts = log_texts(caplog)
    # The capture works and the paths ran: alerts were logged (by id), at INFO.
    opened = [text for text in texts if text.startswith("alert opened ")]
    assert len(opened) >= 3, texts[:40]  # strap_open, exclusion_entry, boundary_exit
    assert any("stopped cleanly" in text for text in texts)
    coordinates = coordinates_of(messages) | {95.5432198, 22.5512345, 114.0512345}
    assert leaks(texts, coordinates, [SMUGGLED_NAME, *OFFICER_NAMES]) == []
    # ...while the database keeps every ping, coordinates included: the evidence.
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute("SELECT count(*) FROM pings")
        row = await cursor.fetchone()
    assert row == (sum(1 for m in messages if m.topic.endswith("/location")),)


async def test_refused_row_is_logged_without_its_coordinates(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's last-resort path (the database refuses a row) used to log the whole row.
    The row stays in store_rejects; the log names the device."""
    caplog.set_level(logging.INFO)
    await migrate(pg_dsn)
    at = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    refused = LocationFix(
        device_id="tag-s001", ts=at, lat=22.5487654, lon=114.0398765, accuracy_m=7.0,
        source=FixSource.GNSS, received_at=at, extra={"owner": SMUGGLED_NAME, "x": "a\x00b"},
    )  # fmt: skip
    async with PingWriter(pg_dsn) as writer:
        await writer.put(refused, "s001")
    texts = log_texts(caplog)
    assert any("refused a pings row of device tag-s001" in text for text in texts), texts
    assert leaks(texts, [refused.lat, refused.lon], [SMUGGLED_NAME]) == []
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute("SELECT row_text FROM store_rejects")
        row = await cursor.fetchone()
    assert row is not None
    assert repr(refused.lat) in row[0]


def test_replay_logs_no_coordinates(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    messages = [m for m in scripted_day(datetime(2026, 11, 20, tzinfo=UTC).date())
                if m.topic.endswith("/event") or in_afternoon(m)]
    lines = [json.dumps(replay_record(m), ensure_ascii=False) for m in messages]
    received_at = messages[-1].at.isoformat()
    for topic, raw in hostile_with_coordinates(messages[-1].at, "tag-s002"):
        lines.append(json.dumps({"topic": topic, "payload": raw.decode(),
                                 "received_at": received_at}))
    lines.append(
        '{"topic": "emon/v1/devices/tag-s002/location", "payload": {"ts": "22.5512345"}}'
    )
    lines.append("not json 22.5512345")
    out = io.StringIO()
    stats = replay_lines(lines, LOADED.core, LOADED.settings.tick_interval_seconds, out, None)
    assert stats.bad_lines == 2
    assert out.getvalue().count('"transition": "opened"') >= 1
    texts = log_texts(caplog)
    assert len(texts) == 2  # one warning per bad line
    assert leaks(texts, coordinates_of(messages) | {22.5512345, 114.0512345}, []) == []


def test_roster_has_no_place_for_a_subjects_name(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    for item in CONFIG_DIR.iterdir():
        if item.name != "subjects.yaml":
            (config / item.name).symlink_to(item)
    text = (CONFIG_DIR / "subjects.yaml").read_text(encoding="utf-8")
    (config / "subjects.yaml").write_text(
        text.replace("  - id: s001\n", f"  - id: s001\n    name: {SMUGGLED_NAME}\n", 1),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(config, env={})
    problem: Any = info.value.problems[0]
    assert (problem.file, problem.key) == ("subjects.yaml", "subjects.0.name")
    assert "unknown key" in problem.reason
