"""End to end: `emon run` as a real process against real Mosquitto and PostgreSQL.

The simulator's scripted day is published over MQTT; exactly the expected alerts must
arrive on the alerts topic and in the database, every ping must be stored once, a malformed
payload must go to the dead-letter topic without stopping the daemon, and SIGTERM must
drain and exit 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from daemon.localservices import MosquittoProcess, find_free_port
from simulators.publisher import publish
from simulators.scripted_day import expected_alerts, scripted_day

pytestmark = [pytest.mark.e2e, pytest.mark.services]

REPO = Path(__file__).resolve().parent.parent
DAY = date(2026, 11, 20)
STARTUP_TIMEOUT_SECONDS = 60.0
DRAIN_TIMEOUT_SECONDS = 60.0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(json.load(response).get("ok"))
    except OSError:
        return False


@pytest.fixture
def daemon_process(
    mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    http_port = find_free_port()
    env = dict(os.environ)
    env.update(
        EMON_MQTT_HOST=mosquitto.host,
        EMON_MQTT_PORT=str(mosquitto.port),
        EMON_DATABASE_URL=pg_dsn,
        EMON_HTTP_PORT=str(http_port),
        EMON_JOURNAL_DIR=str(tmp_path / "journal"),
    )
    log = (tmp_path / "daemon.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "run", "--config", str(REPO / "config")],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        yield process, http_port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        sys.stderr.write((tmp_path / "daemon.log").read_text(errors="replace")[-4000:])


async def _wait_healthy(process: subprocess.Popen[bytes], port: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_SECONDS
    while not await asyncio.to_thread(_healthy, port):
        assert process.poll() is None, "daemon exited during start-up"
        assert loop.time() < deadline, "daemon not healthy in time"
        await asyncio.sleep(0.2)


def _processed_count(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("emon_observations_processed_total{")
    )


async def _wait_processed(port: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT_SECONDS
    while await asyncio.to_thread(_processed_count, port) < count:
        assert loop.time() < deadline, "daemon did not process every message in time"
        await asyncio.sleep(0.2)


async def test_scripted_day_end_to_end(
    daemon_process: tuple[subprocess.Popen[bytes], int],
    mosquitto: MosquittoProcess,
    pg_dsn: str,
) -> None:
    process, http_port = daemon_process
    await _wait_healthy(process, http_port)
    messages = scripted_day(DAY)
    expected = {(e.subject_id, e.rule, e.tier, e.zone_id) for e in expected_alerts()}
    received: list[dict[str, Any]] = []
    deadletters: list[dict[str, Any]] = []

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="e2e-watch") as watch:
        await watch.subscribe("emon/v1/alerts/#", qos=1)
        await watch.subscribe("emon/v1/deadletter/#", qos=1)

        async def collect() -> None:
            async for message in watch.messages:
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                if message.topic.value.startswith("emon/v1/deadletter/"):
                    deadletters.append(body)
                else:
                    received.append(body)
                opened = [a for a in received if a["transition"] == "opened"]
                if len(opened) >= len(expected) and deadletters:
                    return

        async with asyncio.TaskGroup() as tasks:
            collector = tasks.create_task(collect())
            # A malformed payload first: it must be dead-lettered and change nothing else.
            await watch.publish("emon/v1/devices/tag-s001/location", b'{"lat": "x"}', qos=1)
            sent = await publish(messages, host=mosquitto.host, port=mosquitto.port,
                                 progress=False, client_id="e2e-sim")
            await asyncio.wait_for(asyncio.shield(collector), timeout=120)

    assert sent == len(messages)
    opened = {
        (a["subject_id"], a["rule"], a["tier"], a["zone_id"])
        for a in received if a["transition"] == "opened"
    }
    assert opened == expected
    assert len([a for a in received if a["transition"] == "opened"]) == len(expected)
    for alert in received:
        for field in ("alert_id", "subject_id", "device_id", "rule", "tier", "state",
                      "opened_at", "trigger"):
            assert alert[field] is not None or field == "zone_id", field
    assert deadletters[0]["reason"] in {"missing_field", "bad_type"}

    # Wait until the daemon has handled every message, then SIGTERM: it drains (alerts
    # recorded, pings flushed) and exits 0.
    await _wait_processed(http_port, len(messages))
    process.send_signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(process.wait, DRAIN_TIMEOUT_SECONDS)
    assert exit_code == 0

    locations = sum(1 for m in messages if m.topic.endswith("/location"))
    events = len(messages) - locations
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cursor = await conn.execute("SELECT count(*), count(DISTINCT (device_id, ts)) FROM pings")
        assert await cursor.fetchone() == (locations, locations)
        cursor = await conn.execute("SELECT count(*) FROM device_events")
        assert await cursor.fetchone() == (events,)
        cursor = await conn.execute("SELECT subject_id, rule, tier, zone_id FROM alerts")
        stored = {tuple(row) for row in await cursor.fetchall()}
        assert stored == expected
        cursor = await conn.execute(
            "SELECT count(*) FROM alert_history WHERE kind = 'opened'"
        )
        assert await cursor.fetchone() == (len(expected),)
