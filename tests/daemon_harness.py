"""Run the real Daemon in-process (real Mosquitto, real PostgreSQL) for API-level tests."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt

from daemon.app import Daemon
from daemon.configfiles import LoadedConfig, load_config

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 30.0


def config_dir(tmp_path: Path, policies_yaml: str | None = None) -> Path:
    """A copy of the repository's config, optionally with another policies.yaml."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    if policies_yaml is not None:
        (target / "policies.yaml").write_text(policies_yaml, encoding="utf-8")
    return target


def load(directory: Path, mqtt_host: str, mqtt_port: int, dsn: str, **env: str) -> LoadedConfig:
    loaded = load_config(
        directory,
        env={
            "EMON_MQTT_HOST": mqtt_host, "EMON_MQTT_PORT": str(mqtt_port),
            "EMON_DATABASE_URL": dsn, "EMON_HTTP_PORT": "0", **env,
        },
    )
    # A client id of its own: the persistent session of another test's daemon stays apart.
    mqtt = loaded.settings.mqtt.model_copy(update={"client_id": f"emon-t-{uuid.uuid4().hex[:8]}"})
    return dataclasses.replace(loaded, settings=loaded.settings.model_copy(update={"mqtt": mqtt}))


@asynccontextmanager
async def running_daemon(loaded: LoadedConfig) -> AsyncIterator[Daemon]:
    daemon = Daemon(loaded)
    task = asyncio.create_task(daemon.run(), name="test-daemon")
    try:
        ready = asyncio.create_task(daemon.ready.wait())
        done, _ = await asyncio.wait({ready, task}, timeout=READY_TIMEOUT_SECONDS,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task.done():
                task.result()  # raises what stopped it
            raise AssertionError("daemon not ready in time")
        yield daemon
    finally:
        daemon.request_stop()
        try:
            await asyncio.wait_for(task, STOP_TIMEOUT_SECONDS)
        finally:
            if not task.done():
                task.cancel()


async def publish_event(host: str, port: int, device_id: str, kind: str,
                        at: datetime | None = None) -> None:
    payload = {"ts": (at or datetime.now(UTC)).isoformat(), "type": kind}
    async with aiomqtt.Client(host, port, identifier=f"t-pub-{uuid.uuid4().hex[:8]}") as client:
        await client.publish(f"emon/v1/devices/{device_id}/event", json.dumps(payload), qos=1)


async def eventually(predicate: Any, within: float = 15.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {within} s")
        await asyncio.sleep(0.05)
