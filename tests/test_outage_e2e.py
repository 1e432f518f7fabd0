"""Database outages end to end: `emon run` as a process, the simulator publishing over a
real Mosquitto, and a PostgreSQL server of the test's own that is stopped and started.

* A 32-second outage in the middle of the scripted day: the daemon keeps evaluating and
  alerting (the alerts arrive on MQTT during the outage), rows go to the journal, and
  afterwards every ping sent is in the database exactly once.
* kill -9 during an outage: messages are acknowledged only once their rows are in the
  journal, so a restarted daemon replays the journal and nothing is lost or doubled.

The PostgreSQL server and the broker are private (not the session's shared ones): stopping
the server cannot disturb other tests, and the device messages published here cannot
queue up in other tests' persistent MQTT sessions.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path

import aiomqtt
import pytest

from daemon.localservices import MosquittoProcess, PostgresProcess, find_free_port
from simulators.publisher import publish
from simulators.scripted_day import expected_alerts, scripted_day
from tests.fault_harness import DaemonProcess, count, daemon_config

pytestmark = [pytest.mark.e2e, pytest.mark.services, pytest.mark.fault]

REPO = Path(__file__).resolve().parent.parent
DAY = date(2026, 11, 20)
OUTAGE_SECONDS = 32.0
# The scripted day (24 h) published in ~40 s: the outage covers 03:00-20:30 of it (local
# time), with three of the four alerts.
PUBLISH_SPEED = 86_400 / 40
OUTAGE_STARTS_AFTER_SECONDS = 3.0
STARTUP_TIMEOUT_SECONDS = 60.0
CATCH_UP_TIMEOUT_SECONDS = 120.0


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A broker of this test's own: the device messages published here must not queue up
    in other tests' persistent sessions on the shared broker (they would be delivered to
    the next daemon that uses that client id, ahead of its own test's messages)."""
    broker = MosquittoProcess(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[PostgresProcess]:
    server = PostgresProcess(tmp_path / "pg")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def daemon(
    private_mosquitto: MosquittoProcess, private_postgres: PostgresProcess, tmp_path: Path
) -> AsyncIterator[DaemonProcess]:
    mosquitto = private_mosquitto
    env = dict(os.environ)
    env.update(
        EMON_MQTT_HOST=mosquitto.host,
        EMON_MQTT_PORT=str(mosquitto.port),
        EMON_DATABASE_URL=private_postgres.dsn,
        EMON_HTTP_PORT=str(find_free_port()),
        EMON_JOURNAL_DIR=str(tmp_path / "journal"),
    )
    client_id = f"emon-outage-{uuid.uuid4().hex[:8]}"
    process = DaemonProcess(daemon_config(tmp_path, client_id), env, tmp_path / "daemon.log")
    try:
        yield process
    finally:
        process.cleanup()
        sys.stderr.write(process.log_path.read_text(errors="replace")[-6000:])


async def test_a_32_second_database_outage_loses_nothing_and_alerting_goes_on(
    daemon: DaemonProcess, private_mosquitto: MosquittoProcess, private_postgres: PostgresProcess
) -> None:
    mosquitto = private_mosquitto
    daemon.start()
    await daemon.wait_healthy()
    messages = scripted_day(DAY)
    locations = sum(1 for m in messages if m.topic.endswith("/location"))
    expected = {(e.subject_id, e.rule.value) for e in expected_alerts()}
    opened_during_outage: set[tuple[str, str]] = set()
    outage = asyncio.Event()
    journalled_max = 0.0

    async with aiomqtt.Client(
        mosquitto.host, mosquitto.port, identifier=f"watch-{uuid.uuid4().hex[:8]}"
    ) as watch:
        await watch.subscribe("emon/v1/alerts/#", qos=1)
        opened: set[tuple[str, str]] = set()

        async def collect() -> None:
            async for message in watch.messages:
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                if body["transition"] == "opened":
                    opened.add((body["subject_id"], body["rule"]))
                    if outage.is_set():
                        opened_during_outage.add((body["subject_id"], body["rule"]))

        async def break_the_database() -> None:
            nonlocal journalled_max
            await asyncio.sleep(OUTAGE_STARTS_AFTER_SECONDS)
            port = private_postgres.port
            await asyncio.to_thread(private_postgres.stop)
            outage.set()
            loop = asyncio.get_running_loop()
            until = loop.time() + OUTAGE_SECONDS
            while loop.time() < until:
                journalled_max = max(
                    journalled_max,
                    await asyncio.to_thread(daemon.metric_sum, "emon_store_journal_rows"),
                )
                await asyncio.sleep(1.0)
            outage.clear()
            await asyncio.to_thread(private_postgres.start)
            assert private_postgres.port == port, "the server came back on another port"

        async with asyncio.TaskGroup() as tasks:
            collector = tasks.create_task(collect())
            breaker = tasks.create_task(break_the_database())
            sent = await publish(
                messages, host=mosquitto.host, port=mosquitto.port, speed=PUBLISH_SPEED,
                progress=False, client_id=f"sim-{uuid.uuid4().hex[:8]}",
            )  # fmt: skip
            await breaker
            await daemon.wait_metric(
                "emon_observations_processed_total", len(messages), CATCH_UP_TIMEOUT_SECONDS
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + CATCH_UP_TIMEOUT_SECONDS
            while opened != expected:
                assert loop.time() < deadline, f"alerts {opened} != {expected}"
                await asyncio.sleep(0.2)
            collector.cancel()

    assert sent == len(messages)
    # Evaluation and alerting went on without the database.
    assert opened_during_outage, "no alert was raised during the outage"
    assert journalled_max > 0, "nothing went to the journal during the outage"
    # The journal drains once the database is back.
    await daemon.wait_metric("emon_store_journalling", 0, CATCH_UP_TIMEOUT_SECONDS)
    assert daemon.stop() == 0

    dsn = private_postgres.dsn
    assert await count(dsn, "SELECT count(*), count(DISTINCT (device_id, ts)) FROM pings") == (
        locations, locations
    )
    assert await count(dsn, "SELECT count(*) FROM device_events") == (len(messages) - locations,)
    assert await count(dsn, "SELECT count(*) FROM store_rejects") == (0,)
    stored = await count(dsn, "SELECT count(DISTINCT (subject_id, rule)) FROM alerts")
    assert stored == (len(expected),)
    # Zone transitions were recorded too (the curfew violation among them).
    assert await count(
        dsn, "SELECT count(*) > 0 FROM zone_transitions WHERE kind = 'curfew_away'"
    ) == (True,)


async def test_kill_9_during_an_outage_loses_nothing(
    daemon: DaemonProcess, private_mosquitto: MosquittoProcess, private_postgres: PostgresProcess
) -> None:
    mosquitto = private_mosquitto
    daemon.start()
    await daemon.wait_healthy()
    messages = [m for m in scripted_day(DAY) if m.topic.endswith("/location")][:900]
    await asyncio.to_thread(private_postgres.stop)
    sent = await publish(
        messages, host=mosquitto.host, port=mosquitto.port, progress=False,
        client_id=f"sim-{uuid.uuid4().hex[:8]}",
    )  # fmt: skip
    assert sent == len(messages)
    await daemon.wait_metric("emon_observations_processed_total", len(messages), 60)
    # Every row is in the journal (so its message was acknowledged) before the kill.
    await daemon.wait_metric("emon_store_journal_rows", len(messages), 30)
    daemon.kill()
    await asyncio.to_thread(private_postgres.start)
    daemon.start()
    await daemon.wait_healthy()
    dsn = private_postgres.dsn
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CATCH_UP_TIMEOUT_SECONDS
    while (await count(dsn, "SELECT count(*) FROM pings"))[0] < len(messages):
        assert loop.time() < deadline, "the journal was not replayed"
        await asyncio.sleep(0.2)
    assert daemon.stop() == 0
    assert await count(dsn, "SELECT count(*), count(DISTINCT (device_id, ts)) FROM pings") == (
        len(messages), len(messages)
    )
