"""Hot reload end to end: `emon run` as a real process, real Mosquitto, real PostgreSQL.

Under a steady stream of pings, the config directory is rewritten the way an operator
copying files would: first subjects.yaml (which then names a zone the zone files do not
have yet: the directory is invalid as a whole), then the zone file. The daemon must refuse
the half-written state, keep the old config, say so on the operators' channel, then apply
the complete one; no ping may be lost, and every stored ping must name the one whole
config it was evaluated against, with a single switch from the old to the new.

A second test drives reloads by SIGHUP with file polling turned off.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import aiomqtt
import psycopg
import pytest

from daemon.configfiles import load_config
from daemon.localservices import MosquittoProcess, find_free_port
from daemon.reload import OPERATORS_CONFIG_TOPIC, read_config_files
from tests.configkit import (
    CENTRE,
    SCHEDULES_YAML,
    SETTINGS_YAML,
    feature,
    offset,
    square,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.services]

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0
EVENTUALLY_SECONDS = 30.0
DEVICES = 20
ROUND_PAUSE_SECONDS = 0.05  # one ping per device per round: ~400 pings/s
PUBLISH_BEFORE_CHANGE_SECONDS = 1.0
PUBLISH_AFTER_CHANGE_SECONDS = 1.0
WATCHED_DEVICE = 0  # the device the new exclusion zone is drawn around

POLLING = SETTINGS_YAML + "reload:\n  poll_interval_seconds: 0.1\n  settle_seconds: 0.2\n"
SIGNAL_ONLY = SETTINGS_YAML + "reload:\n  poll_interval_seconds: 0\n"


def _position(index: int) -> tuple[float, float]:
    return offset(*CENTRE, -2000 + 200 * index, 0)


def _subjects_yaml(*, with_new_zone: bool, officer: str = "off-a") -> str:
    lines = ["officers:", '  - {id: off-a, name: "Officer A"}', "subjects:"]
    for index in range(DEVICES):
        lines += [
            f"  - id: s{index:02d}",
            f"    officer: {officer}",
            "    devices:",
            f"      - {{id: tag-{index:02d}, kind: wearable}}",
            "    permitted_zone: district",
        ]
        if with_new_zone and index == WATCHED_DEVICE:
            lines += ["    exclusion_zones:", "      - {zone: x-new}"]
    return "\n".join(lines) + "\n"


def _zones(*, with_new_zone: bool) -> dict[str, list[dict[str, Any]]]:
    zones = {"areas.wgs84.geojson": [feature("district", "inclusion", square(*CENTRE, 5000))]}
    if with_new_zone:
        zones["exclusions.wgs84.geojson"] = [
            feature("x-new", "exclusion", square(*_position(WATCHED_DEVICE), 100))
        ]
    return zones


def _write(directory: Path, settings: str, *, subjects_new: bool, zones_new: bool) -> None:
    write_config(
        directory, settings=settings, subjects=_subjects_yaml(with_new_zone=subjects_new),
        schedules=SCHEDULES_YAML.replace("night", "unused-night"), zones=_zones(
            with_new_zone=zones_new
        ),
    )


# ---------------------------------------------------------------------- the daemon


def _get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
        body: bytes = response.read()
        return body


def _health(port: int) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(_get(port, "/healthz"))
        return data
    except OSError:
        return {}


def _metric(port: int, name: str, **labels: str) -> float:
    total = 0.0
    for line in _get(port, "/metrics").decode().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture
def daemon_env(mosquitto: MosquittoProcess, pg_dsn: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        EMON_MQTT_HOST=mosquitto.host, EMON_MQTT_PORT=str(mosquitto.port),
        EMON_DATABASE_URL=pg_dsn, EMON_HTTP_PORT=str(find_free_port()),
    )
    return env


@pytest.fixture
def daemon_log(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "daemon.log"
    yield path
    if path.exists():
        sys.stderr.write(path.read_text(errors="replace")[-4000:])


def _spawn(config: Path, env: dict[str, str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
        env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
    )


@asynccontextmanager
async def running_daemon(
    config: Path, env: dict[str, str], log: Path
) -> AsyncIterator[tuple[subprocess.Popen[bytes], int]]:
    port = int(env["EMON_HTTP_PORT"])
    with log.open("wb") as out:
        process = _spawn(config, env, out)
        try:
            await _until(lambda: _health(port).get("ok") is True, process)
            yield process, port
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


async def _until(predicate: Any, process: subprocess.Popen[bytes] | None = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY_SECONDS
    while not await asyncio.to_thread(predicate):
        assert process is None or process.poll() is None, "daemon exited"
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, EVENTUALLY_SECONDS) == 0


# ---------------------------------------------------------------------- MQTT watchers


class OperatorChannel:
    """Collects the daemon's messages on the operators' config topic."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def collect(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if message.topic.matches(OPERATORS_CONFIG_TOPIC) and message.payload:
                assert isinstance(message.payload, bytes)
                self.messages.append(json.loads(message.payload))

    async def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EVENTUALLY_SECONDS
        while True:
            for message in self.messages:
                if message["event"] != event:
                    continue
                if all(message.get(k) == v for k, v in fields.items()):
                    return message
            assert loop.time() < deadline, f"no {event} {fields}; got {self.messages}"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def operators_channel(broker: MosquittoProcess, name: str) -> AsyncIterator[OperatorChannel]:
    channel = OperatorChannel()
    async with aiomqtt.Client(broker.host, broker.port, identifier=name) as client:
        # Another test's retained status must not be mistaken for this daemon's.
        await client.publish(OPERATORS_CONFIG_TOPIC, b"", qos=1, retain=True)
        await client.subscribe(OPERATORS_CONFIG_TOPIC, qos=1)
        task = asyncio.create_task(channel.collect(client), name=f"{name}-collect")
        try:
            yield channel
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _publish_pings(
    broker: MosquittoProcess, stop: asyncio.Event, sent: dict[str, list[datetime]]
) -> None:
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    async with aiomqtt.Client(broker.host, broker.port, identifier="reload-load") as client:
        round_index = 0
        while not stop.is_set():
            ts = base + timedelta(seconds=round_index)
            for index in range(DEVICES):
                lon, lat = _position(index)
                device = f"tag-{index:02d}"
                payload = {"ts": ts.isoformat(), "lat": lat, "lon": lon, "acc": 5.0}
                await client.publish(f"emon/v1/devices/{device}/location",
                                     json.dumps(payload).encode(), qos=1)
                sent[device].append(ts)
            round_index += 1
            await asyncio.sleep(ROUND_PAUSE_SECONDS)


# ---------------------------------------------------------------------- the tests


async def test_reload_under_load_loses_no_ping_and_never_mixes_configs(
    tmp_path: Path, mosquitto: MosquittoProcess, pg_dsn: str, daemon_env: dict[str, str],
    daemon_log: Path,
) -> None:
    config = tmp_path / "config"
    _write(config, POLLING, subjects_new=False, zones_new=False)
    version_a = load_config(config).core.version
    sent: dict[str, list[datetime]] = defaultdict(list)
    alerts: list[dict[str, Any]] = []

    async with (
        operators_channel(mosquitto, "reload-ops") as operators,
        running_daemon(config, daemon_env, daemon_log) as (process, port),
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="reload-alerts") as watch,
    ):
        await operators.wait_for("loaded", running_version=version_a)
        await watch.subscribe("emon/v1/alerts/#", qos=1)

        async def collect_alerts() -> None:
            async for message in watch.messages:
                assert isinstance(message.payload, bytes)
                alerts.append(json.loads(message.payload))

        stop_load = asyncio.Event()
        async with asyncio.TaskGroup() as tasks:
            load = tasks.create_task(_publish_pings(mosquitto, stop_load, sent), name="load")
            collector = tasks.create_task(collect_alerts(), name="alerts")
            await asyncio.sleep(PUBLISH_BEFORE_CHANGE_SECONDS)

            # Step 1: subjects.yaml names x-new before any zone file has it.
            (config / "subjects.yaml").write_text(_subjects_yaml(with_new_zone=True))
            rejected = await operators.wait_for("rejected", running_version=version_a)
            assert any(p["value"] == "x-new" and p["reason"] == "zone not defined"
                       for p in rejected["problems"])
            assert _health(port)["config_version"] == version_a

            # Step 2: the zone file arrives; the directory is whole again.
            _write(config, POLLING, subjects_new=True, zones_new=True)
            version_b = load_config(config).core.version
            applied = await operators.wait_for("applied", running_version=version_b)
            assert applied["previous_version"] == version_a
            await asyncio.sleep(PUBLISH_AFTER_CHANGE_SECONDS)
            stop_load.set()
            await load
            total = sum(len(v) for v in sent.values())
            await _until(lambda: _metric(port, "emon_observations_processed_total") >= total)
            await _until(lambda: any(a["transition"] == "opened" for a in alerts))
            collector.cancel()

        health = _health(port)
        assert health["config_version"] == version_b
        assert health["config_reload"]["failing"] is False
        assert _metric(port, "emon_config_reloads_total", result="rejected") >= 1
        assert _metric(port, "emon_config_reloads_total", result="applied") == 1
        assert _metric(port, "emon_config_reload_failing") == 0
        assert _metric(port, "emon_config_info", version=version_b) == 1
        assert _metric(port, "emon_config_info", version=version_a) == 0
        await _stop(process)

    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute(
            "SELECT device_id, ts, received_at, config_version FROM pings ORDER BY received_at"
        )
        rows = await cursor.fetchall()
        cursor = await conn.execute("SELECT version, files FROM config_versions")
        recorded: dict[str, dict[str, str]] = dict(await cursor.fetchall())
        cursor = await conn.execute(
            "SELECT subject_id, rule, zone_id, opened_at, trigger FROM alerts"
        )
        stored_alerts = await cursor.fetchall()

    # No ping lost, none stored twice.
    assert sorted((d, ts) for d, ts, _, _ in rows) == sorted(
        (d, ts) for d, stamps in sent.items() for ts in stamps
    )
    # Every ping names one of the two whole configs, never the refused half-written one...
    versions = [v for _, _, _, v in rows]
    assert set(versions) == {version_a, version_b}
    # ...and the switch happens once, between two messages: all A, then all B.
    first_b = versions.index(version_b)
    assert version_a not in versions[first_b:]
    by_device: dict[str, list[str]] = defaultdict(list)
    for device, _, _, version in sorted(rows, key=lambda r: (r[0], r[1])):
        by_device[device].append(version)
    for device, sequence in by_device.items():
        switch = sequence.index(version_b)
        assert set(sequence[:switch]) == {version_a}, device
        assert set(sequence[switch:]) == {version_b}, device
    # Both versions are recorded with their files; B's are the directory's final contents.
    assert set(recorded) == {version_a, version_b}
    assert recorded[version_b] == {
        name: content.decode() for name, content in read_config_files(config).items()
    }
    # The one alert the new zone causes was decided by config B: its pings are B's.
    assert [(s, r, z) for s, r, z, _, _ in stored_alerts] == [
        ("s00", "exclusion_entry", "x-new")
    ]
    opened_at, trigger = stored_alerts[0][3], stored_alerts[0][4]
    version_at = {(d, ts): v for d, ts, _, v in rows}
    trigger_ts = datetime.fromisoformat(trigger["ping"]["ts"])
    assert version_at["tag-00", opened_at] == version_b
    assert version_at["tag-00", trigger_ts] == version_b
    assert [a["transition"] for a in alerts if a["subject_id"] == "s00"][:1] == ["opened"]


async def test_sighup_reloads_and_a_refused_config_keeps_the_old_one(
    tmp_path: Path, mosquitto: MosquittoProcess, daemon_env: dict[str, str], daemon_log: Path,
) -> None:
    config = tmp_path / "config"
    _write(config, SIGNAL_ONLY, subjects_new=False, zones_new=False)
    version_a = load_config(config).core.version

    async with (
        operators_channel(mosquitto, "sighup-ops") as operators,
        running_daemon(config, daemon_env, daemon_log) as (process, port),
    ):
        await operators.wait_for("loaded", running_version=version_a)
        _write(config, SIGNAL_ONLY, subjects_new=True, zones_new=True)
        version_b = load_config(config).core.version
        await asyncio.sleep(1.0)  # polling is off: nothing happens by itself
        assert _health(port)["config_version"] == version_a

        process.send_signal(signal.SIGHUP)
        applied = await operators.wait_for("applied", running_version=version_b)
        assert applied["trigger"] == "signal"
        assert _health(port)["config_version"] == version_b

        (config / "subjects.yaml").write_text(
            _subjects_yaml(with_new_zone=True, officer="nobody")
        )
        process.send_signal(signal.SIGHUP)
        rejected = await operators.wait_for("rejected", trigger="signal")
        assert rejected["running_version"] == version_b
        assert rejected["errors"] == DEVICES
        assert rejected["problems"][0]["reason"] == "officer not defined"
        assert rejected["problems"][0]["line"] == 5
        assert _health(port)["config_version"] == version_b
        assert _metric(port, "emon_config_reload_failing") == 1
        assert _metric(port, "emon_config_reloads_total", trigger="signal", result="rejected") == 1
        await _stop(process)
