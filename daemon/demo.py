"""`emon demo`: a private broker and database, the daemon, a simulated day, alerts printed.

Everything runs on loopback under the run directory; nothing is installed system-wide by
this module (scripts/demo.sh installs the Debian packages first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt

from daemon.app import Daemon
from daemon.configfiles import (
    ENV_DATABASE_URL,
    ENV_HTTP_PORT,
    ENV_MQTT_HOST,
    ENV_MQTT_PORT,
    ConfigError,
    load_config,
)
from daemon.localservices import MosquittoProcess, PostgresProcess
from daemon.store.lifecycle_repo import LifecycleStore, new_token
from daemon.store.pool import open_pool
from daemon.wire import ALERTS_TOPIC_PREFIX, DEADLETTER_TOPIC_PREFIX
from simulators.cli import default_day
from simulators.publisher import publish
from simulators.scripted_day import scripted_day

_LOGGER = logging.getLogger(__name__)

DEMO_TIMEZONE = ZoneInfo("Asia/Shanghai")
SETTLE_SECONDS = 3.0  # after the last message, time for the daemon to finish and publish
DEMO_HTTP_PORT = 9480
DEMO_CONSOLE_OFFICER = "cmd-futian"  # command: the console shows every subject


def format_alert(alert: dict[str, Any]) -> str:
    def local(value: str | None) -> str:
        if not value:
            return "-"
        return datetime.fromisoformat(value).astimezone(DEMO_TIMEZONE).strftime("%m-%d %H:%M")

    reason = alert.get("reason", "")
    if alert.get("transition") == "cleared":
        reason = "condition ended; the alert stays open until an officer resolves it"
    return (
        f"{local(alert.get('transition_at')):>11}  {str(alert.get('transition')).upper():<12} "
        f"{str(alert.get('tier')).upper():<8} {alert.get('rule', ''):<16} "
        f"subject {alert.get('subject_id')} -> officer {alert.get('officer_id')}  "
        f"{reason}"
    )


async def _print_alerts(host: str, port: int, subscribed: asyncio.Event) -> None:
    async with aiomqtt.Client(host, port, identifier="emon-demo-console") as client:
        await client.subscribe(ALERTS_TOPIC_PREFIX + "#", qos=1)
        await client.subscribe(DEADLETTER_TOPIC_PREFIX + "#", qos=0)
        subscribed.set()
        async for message in client.messages:
            body = message.payload if isinstance(message.payload, bytes) else b"{}"
            data = json.loads(body)
            if message.topic.value.startswith(DEADLETTER_TOPIC_PREFIX):
                print(f"  dead letter: {data.get('reason')}: {data.get('detail')}", flush=True)
            else:
                print(format_alert(data), flush=True)


async def _demo(args: argparse.Namespace, mosquitto: MosquittoProcess) -> int:
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"config invalid:\n{exc}")
        return 2
    daemon = Daemon(loaded)
    day = default_day()
    messages = scripted_day(day)
    printer_ready = asyncio.Event()

    async def drive() -> None:
        await asyncio.wait_for(daemon.ready.wait(), 60)
        await asyncio.wait_for(printer_ready.wait(), 30)
        token = await _console_token(loaded.settings.database.dsn or "")
        print(
            f"\nemon demo: daemon up (metrics http://127.0.0.1:{daemon.http_port}/metrics).\n"
            f"Officer console (live map): http://127.0.0.1:{daemon.http_port}/console/ ; "
            f"sign in with {token} ({DEMO_CONSOLE_OFFICER}: sees every subject).\n"
            f"Simulating {day} in Shenzhen (Asia/Shanghai): 3 subjects, {len(messages)} "
            f"messages at {args.speed:g}x. Alerts appear below as the day unfolds.\n"
            f"{'local time':>11}  {'transition':<12} {'tier':<8} {'rule':<16} who / why",
            flush=True,
        )
        await publish(
            messages, host=mosquitto.host, port=mosquitto.port, speed=args.speed,
            client_id="emon-demo-sim", progress=False,
        )
        await asyncio.sleep(SETTLE_SECONDS)
        print(f"\nSimulated day published. Open alerts: "
              f"{daemon.open_alert_count}.", flush=True)
        if args.exit_after_day:
            daemon.request_stop()
        else:
            print("The daemon keeps running; Ctrl-C stops it.", flush=True)

    async with asyncio.TaskGroup() as tasks:
        printer = tasks.create_task(
            _print_alerts(mosquitto.host, mosquitto.port, printer_ready), name="demo-printer"
        )
        tasks.create_task(drive(), name="demo-driver")
        await daemon.run()
        printer.cancel()
    return 0


async def _console_token(dsn: str) -> str:
    """A token for the command centre, so the demo's map can be opened at once."""
    async with open_pool(dsn, min_size=1, max_size=1) as pool:
        token = new_token()
        await LifecycleStore(pool).create_token(
            DEMO_CONSOLE_OFFICER, "emon demo", datetime.now(UTC) + timedelta(days=1), token
        )
    return token


def run_demo(args: argparse.Namespace) -> int:
    if not args.verbose:
        # The demo's own output is the alert lines; the daemon speaks up only for problems.
        logging.getLogger().setLevel(logging.WARNING)
    run_dir: Path = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"emon demo: starting Mosquitto and PostgreSQL under {run_dir} ...", flush=True)
    with (
        MosquittoProcess(run_dir / "mosquitto") as mosquitto,
        PostgresProcess(run_dir / "postgres") as postgres,
    ):
        os.environ[ENV_MQTT_HOST] = mosquitto.host
        os.environ[ENV_MQTT_PORT] = str(mosquitto.port)
        # A fresh database per run: the simulated day is deterministic, and yesterday's run
        # would otherwise turn today's "opened" into "updated".
        dsn = postgres.create_database(f"demo_{datetime.now(UTC):%Y%m%d_%H%M%S}")
        os.environ[ENV_DATABASE_URL] = dsn
        os.environ.setdefault(ENV_HTTP_PORT, str(DEMO_HTTP_PORT))
        print(f"  broker 127.0.0.1:{mosquitto.port}, database {dsn}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_demo(args, mosquitto))
    return 0
