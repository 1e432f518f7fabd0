"""Faults under load: `emon run` (a real process) while 200 devices publish 3,000 fixes at
a target of 2,000 msg/s, ten of them opening their strap mid-run (a critical alert each).

* kill -9 of the daemon, restarted at once;
* a Mosquitto restart (clean stop, persistence on: the daemon's persistent session and its
  queued messages are saved);
* PostgreSQL stopped under load (the rest of the load, with the strap events, published
  during the outage): alerts go out meanwhile, rows go to the journal, whose disk (a
  256 KiB tmpfs, or where mounting is not allowed the journal's size limit) fills up: a
  clear ERROR, a metric, backpressure (the daemon stops acknowledging, the broker holds the
  rest); PostgreSQL started again: all stored once (journal replayed, backlog taken).

Each test then checks what survived against what was sent, exactly: every fix in `pings`
once, every strap event in `device_events` once, exactly the ten expected alerts (their ids
are UUIDv5 of subject, rule and opening time, so computed here), each alert's `opened`
published on MQTT at least once (a receiver dedupes on alert_id: at-least-once), and no
alert that should not exist. The devices publish the way docs/faults.md asks of a device:
QoS 1, a persistent session, every message resent until the broker acknowledges it.

The broker is private to each test (messages published here must not queue up in other
tests' persistent sessions); PostgreSQL is the session's server with a fresh database
(stopped and started by the PostgreSQL test only; the other faults with the database
down are in tests/test_outage_e2e.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from alerts.model import RuleId, alert_id_for
from daemon.localservices import MosquittoProcess, PostgresProcess, find_free_port
from simulators.cli_fleet import write_fleet_config
from simulators.devices import Protocol
from simulators.fleet import Fleet, build_fleet
from tests.fault_harness import (
    AlertWatch,
    DaemonProcess,
    DeviceMessage,
    count,
    daemon_config,
    new_client_id,
    publish_reliably,
    report,
)

pytestmark = [pytest.mark.fault, pytest.mark.services, pytest.mark.e2e]

DEVICES = 200
FIXES_PER_DEVICE = 15
TAMPERED_DEVICES = 10
TARGET_RATE_PER_SECOND = 2_000.0
FLEET_SEED = 10
CATCH_UP_SECONDS = 120.0
JOURNAL_TMPFS_SIZE = "256k"
SMALLEST_BUFFER_ROWS = 1_000  # StoreSettings.buffer_rows' lower bound
STALL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Load:
    messages: list[DeviceMessage]
    fixes: int
    events: int
    alert_ids: frozenset[str]


@pytest.fixture(scope="module")
def fleet_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fleet, Path]:
    fleet = build_fleet(DEVICES, FLEET_SEED, Protocol.EMON)
    directory = tmp_path_factory.mktemp("fleet") / "config"
    write_fleet_config(fleet, directory, phones=False)
    return fleet, directory


def build_load(fleet: Fleet, strap_step: int = FIXES_PER_DEVICE // 2) -> Load:
    """Every device at home, one fix a second of event time (timestamps in the recent past,
    as a store-and-forward upload has them); ten straps open after `strap_step` fixes."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    messages: list[DeviceMessage] = []
    alert_ids: set[str] = set()
    for step in range(FIXES_PER_DEVICE):
        at = base + timedelta(seconds=step)
        for subject in fleet.subjects:
            body = {"ts": at.isoformat(), "lat": subject.home.lat, "lon": subject.home.lon,
                    "acc": 8.0, "src": "gnss", "batt": 80}
            messages.append(DeviceMessage(f"emon/v1/devices/{subject.wearable_id}/location",
                                          json.dumps(body).encode()))
        if step == strap_step:
            opened = at + timedelta(milliseconds=500)
            for subject in fleet.subjects[:TAMPERED_DEVICES]:
                event = {"ts": opened.isoformat(), "type": "strap_open"}
                messages.append(DeviceMessage(f"emon/v1/devices/{subject.wearable_id}/event",
                                              json.dumps(event).encode()))
                alert_ids.add(alert_id_for(subject.subject_id, RuleId.STRAP_OPEN, None, opened))
    fixes = DEVICES * FIXES_PER_DEVICE
    return Load(messages, fixes, len(messages) - fixes, frozenset(alert_ids))


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def start_env(broker: MosquittoProcess, dsn: str, journal: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(EMON_MQTT_HOST=broker.host, EMON_MQTT_PORT=str(broker.port),
               EMON_DATABASE_URL=dsn, EMON_HTTP_PORT=str(find_free_port()),
               EMON_JOURNAL_DIR=str(journal))
    return env


@contextlib.asynccontextmanager
async def fleet_daemon(
    fleet_config: tuple[Fleet, Path], broker: MosquittoProcess, dsn: str, tmp_path: Path,
    journal: Path | None = None, store: dict[str, Any] | None = None,
) -> AsyncIterator[DaemonProcess]:
    def update(settings: dict[str, Any]) -> None:
        if store:
            settings.setdefault("store", {}).update(store)

    config = daemon_config(tmp_path, new_client_id("emon-load"), update, source=fleet_config[1])
    env = start_env(broker, dsn, journal or tmp_path / "journal")
    process = DaemonProcess(config, env, tmp_path / "daemon.log")
    process.start()
    try:
        await process.wait_healthy()
        yield process
    finally:
        process.cleanup()
        sys.stderr.write(process.log_path.read_text(errors="replace")[-4000:])


async def processed(daemon: DaemonProcess) -> float:
    """Device messages the daemon has evaluated (fixes and events) since it started."""
    return await asyncio.to_thread(daemon.metric_sum, "emon_observations_processed_total")


async def wait_until_processed(daemon: DaemonProcess, at_least: float) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CATCH_UP_SECONDS
    while (value := await processed(daemon)) < at_least:
        assert loop.time() < deadline, f"processed {value}, expected >= {at_least}"
        await asyncio.sleep(0.05)
    return value


async def wait_all_stored(dsn: str, load: Load) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CATCH_UP_SECONDS
    while True:
        (pings,) = await count(dsn, "SELECT count(*) FROM pings")
        (alerts,) = await count(dsn, "SELECT count(*) FROM alerts")
        if pings >= load.fixes and alerts >= len(load.alert_ids):
            return
        assert loop.time() < deadline, f"stored {pings} pings and {alerts} alerts in time"
        await asyncio.sleep(0.2)


async def survived(dsn: str, load: Load, watch: AlertWatch) -> dict[str, int]:
    """What the database and the alert topic hold, checked against `load` exactly."""
    pings, distinct = await count(
        dsn, "SELECT count(*), count(DISTINCT (device_id, ts)) FROM pings"
    )
    (events,) = await count(dsn, "SELECT count(*) FROM device_events")
    (refused,) = await count(dsn, "SELECT count(*) FROM store_rejects")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT alert_id::text, rule FROM alerts")
        alerts = {(str(a), str(r)) for a, r in await cur.fetchall()}
    opened = [b["alert_id"] for b in watch.bodies if b["transition"] == "opened"]
    assert (pings, distinct) == (load.fixes, load.fixes)
    assert events == load.events
    assert refused == 0
    assert alerts == {(a, RuleId.STRAP_OPEN.value) for a in load.alert_ids}
    assert set(opened) == load.alert_ids
    return {"fixes_stored": pings, "events_stored": events, "alerts_stored": len(alerts),
            "alerts_published": len(opened), "alert_duplicates_on_mqtt": len(opened) - len(
                set(opened))}


def journal_errors(daemon: DaemonProcess) -> float:
    return daemon.metric_sum("emon_store_journal_write_errors_total")


@dataclass
class UnderLoad:
    load: Load
    watch: AlertWatch
    daemon: DaemonProcess
    publisher: asyncio.Task[int]  # resolves to the publishes the broker acknowledged


@contextlib.asynccontextmanager
async def fleet_under_load(
    fleet_config: tuple[Fleet, Path], broker: MosquittoProcess, pg_dsn: str, tmp_path: Path,
) -> AsyncIterator[UnderLoad]:
    """The fleet's daemon running, an alert watcher, and the whole load being published
    reliably (resent until acknowledged) at TARGET_RATE_PER_SECOND: the fault goes in
    while it runs."""
    load = build_load(fleet_config[0])
    async with (
        AlertWatch(broker.host, broker.port) as watch,
        fleet_daemon(fleet_config, broker, pg_dsn, tmp_path) as daemon,
    ):
        publisher = asyncio.create_task(publish_reliably(
            broker.host, broker.port, load.messages, client_id=new_client_id("t-fleet"),
            pace_per_second=TARGET_RATE_PER_SECOND), name="test-fault-publisher")
        try:
            yield UnderLoad(load, watch, daemon, publisher)
        finally:
            if not publisher.done():  # the test failed before it awaited the publisher
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await publisher


async def test_kill_9_under_load_loses_nothing_and_doubles_nothing(
    fleet_config: tuple[Fleet, Path], private_mosquitto: MosquittoProcess, pg_dsn: str,
    tmp_path: Path,
) -> None:
    async with fleet_under_load(fleet_config, private_mosquitto, pg_dsn, tmp_path) as run:
        load, daemon = run.load, run.daemon
        loop = asyncio.get_running_loop()
        started = loop.time()
        before_kill = await wait_until_processed(daemon, len(load.messages) / 3)
        await asyncio.to_thread(daemon.kill)  # SIGKILL: no drain, nothing flushed
        daemon.start()
        acknowledged = await run.publisher
        publish_seconds = loop.time() - started
        await daemon.wait_healthy()
        await wait_all_stored(pg_dsn, load)
        await asyncio.sleep(1.0)  # the alert transitions' publication after the records
        assert await asyncio.to_thread(daemon.stop) == 0
        counts = await survived(pg_dsn, load, run.watch)
    report("kill -9 under load", sent=len(load.messages), acknowledged_by_broker=acknowledged,
           rate_per_s=int(len(load.messages) / publish_seconds),
           handled_before_kill=int(before_kill), **counts)
    assert acknowledged == len(load.messages)


async def test_broker_restart_under_load_loses_nothing(
    fleet_config: tuple[Fleet, Path], private_mosquitto: MosquittoProcess, pg_dsn: str,
    tmp_path: Path,
) -> None:
    broker = private_mosquitto
    async with fleet_under_load(fleet_config, broker, pg_dsn, tmp_path) as run:
        load, daemon = run.load, run.daemon
        before = await wait_until_processed(daemon, len(load.messages) / 3)
        await asyncio.to_thread(broker.restart)  # SIGTERM (persistence saved), start
        acknowledged = await run.publisher
        await wait_all_stored(pg_dsn, load)
        await asyncio.sleep(1.0)
        reconnects = await asyncio.to_thread(daemon.metric_sum, "emon_mqtt_reconnects_total")
        assert await asyncio.to_thread(daemon.stop) == 0
        counts = await survived(pg_dsn, load, run.watch)
    report("broker restart under load", sent=len(load.messages),
           acknowledged_by_broker=acknowledged, handled_before_restart=int(before),
           daemon_reconnects=int(reconnects), **counts)
    assert acknowledged == len(load.messages)
    assert reconnects >= 1


@contextlib.contextmanager
def tiny_journal_disk(directory: Path) -> Iterator[dict[str, Any]]:
    """A 256 KiB tmpfs for the journal (root in a container that allows mounts); else the
    journal's own size limit at its minimum. Yields the store settings to use."""
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={JOURNAL_TMPFS_SIZE}", "tmpfs", str(directory)],
        capture_output=True, check=False,
    ).returncode == 0
    store: dict[str, Any] = {"buffer_rows": SMALLEST_BUFFER_ROWS,
                             "journal": {"segment_bytes": 64 * 1024}}
    if not mounted:
        store["journal"]["max_bytes"] = 1024 * 1024
    try:
        yield store | {"_mounted": mounted}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], check=False)


async def test_postgres_down_under_load_alerts_flow_journal_fills_then_all_stored(
    fleet_config: tuple[Fleet, Path], private_mosquitto: MosquittoProcess,
    postgres: PostgresProcess, pg_dsn: str, tmp_path: Path,
) -> None:
    """PostgreSQL stopped after the first quarter of the load; the rest (with the strap
    events) published during the outage: evaluation and alerting go on, rows go to the
    journal until its disk is full, then backpressure; PostgreSQL back: all stored once."""
    broker = private_mosquitto
    strap_step = FIXES_PER_DEVICE // 4 + 1
    load = build_load(fleet_config[0], strap_step)
    first_part = DEVICES * (FIXES_PER_DEVICE // 4)
    with tiny_journal_disk(tmp_path / "journal-disk") as store:
        mounted = store.pop("_mounted")
        async with (
            AlertWatch(broker.host, broker.port) as watch,
            fleet_daemon(fleet_config, broker, pg_dsn, tmp_path,
                         journal=tmp_path / "journal-disk", store=store) as daemon,
        ):
            acknowledged = await publish_reliably(
                broker.host, broker.port, load.messages[:first_part],
                client_id=new_client_id("t-fleet"), pace_per_second=TARGET_RATE_PER_SECOND)
            await wait_until_processed(daemon, first_part)
            port = postgres.port
            await asyncio.to_thread(postgres.stop)
            try:
                acknowledged += await publish_reliably(
                    broker.host, broker.port, load.messages[first_part:],
                    client_id=new_client_id("t-fleet"), pace_per_second=TARGET_RATE_PER_SECOND)
                # The journal fills up, then backpressure: the daemon stops acknowledging
                # (rows wait in memory), so the broker stops delivering (its in-flight
                # window) and holds the rest.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + CATCH_UP_SECONDS
                while await asyncio.to_thread(journal_errors, daemon) == 0:
                    assert loop.time() < deadline, "the journal never reported a full disk"
                    await asyncio.sleep(0.2)
                stalled_at, last = loop.time(), -1.0
                while loop.time() - stalled_at < STALL_SECONDS:
                    assert loop.time() < deadline, "the daemon never stopped taking messages"
                    value = await processed(daemon)
                    if value != last:
                        stalled_at, last = loop.time(), value
                    await asyncio.sleep(0.2)
                metrics = await asyncio.to_thread(daemon.metrics)
                opened_in_outage = {b["alert_id"] for b in watch.bodies
                                    if b["transition"] == "opened"}
            finally:
                await asyncio.to_thread(postgres.start)
            assert postgres.port == port
            await wait_all_stored(pg_dsn, load)
            await daemon.wait_metric("emon_store_journalling", 0, CATCH_UP_SECONDS)
            await asyncio.sleep(1.0)
            assert await asyncio.to_thread(daemon.stop) == 0
            counts = await survived(pg_dsn, load, watch)
            log = daemon.log_path.read_text(errors="replace")
    errors = sum(v for k, v in metrics.items()
                 if k.startswith("emon_store_journal_write_errors_total"))
    appended = metrics.get("emon_store_journal_rows_appended_total", 0.0)
    buffered = metrics.get("emon_store_buffered_rows", 0.0)
    report("PostgreSQL down under load, journal disk full",
           disk="tmpfs 256 KiB" if mounted else "journal.max_bytes 1 MiB",
           sent=len(load.messages), acknowledged_by_broker=acknowledged,
           handled_before_outage=first_part, handled_when_stalled=int(last),
           alerts_published_in_outage=len(opened_in_outage), journal_rows=int(appended),
           journal_write_errors=int(errors), rows_waiting_in_memory=int(buffered), **counts)
    assert acknowledged == len(load.messages)
    assert opened_in_outage == load.alert_ids
    assert last < len(load.messages), "no backpressure: everything was taken"
    assert errors > 0
    assert appended > 0
    assert buffered > 0
    full = [line for line in log.splitlines() if "cannot append to the journal" in line]
    assert len(full) >= 1
    assert "ERROR" in full[0]
