"""Shared pieces of the fault-injection suite (`pytest -m fault`, docs/faults.md): `emon run`
as a real process, a config of the test's own, and a device-side publisher that does what
docs/faults.md asks of a device (QoS 1, persistent session, resend until acknowledged).

Every fault test prints a "sent / survived" line and asserts the counts exactly."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0
PUBLISH_RETRY_SECONDS = 0.5
# Publishes in flight per publisher connection (QoS 1, awaiting PUBACK).
PUBLISH_WINDOW = 200


def daemon_config(
    tmp_path: Path, client_id: str, settings_update: Callable[[dict[str, Any]], None] | None = None
) -> Path:
    """The repo's config with a client id of this test's own (and `settings_update` applied
    to settings.yaml)."""
    directory = tmp_path / "config"
    shutil.copytree(REPO / "config", directory)
    settings_path = directory / "settings.yaml"
    settings = yaml.safe_load(settings_path.read_text(encoding="utf-8"))
    settings["mqtt"]["client_id"] = client_id
    if settings_update is not None:
        settings_update(settings)
    settings_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return directory


class DaemonProcess:
    def __init__(self, config: Path, env: dict[str, str], log: Path) -> None:
        self.config, self.env, self.log_path = config, env, log
        self.http_port = int(env["EMON_HTTP_PORT"])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daemon.cli", "run", "--config", str(self.config)],
                env=self.env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = out.get(name, 0.0) + float(value)
        return out

    def metric_sum(self, prefix: str) -> float:
        try:
            return sum(v for k, v in self.metrics().items() if k.startswith(prefix))
        except OSError:
            return -1.0

    async def wait_healthy(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT_SECONDS
        while await asyncio.to_thread(self.metric_sum, "emon_mqtt_connected") < 1:
            assert self.process is not None
            assert self.process.poll() is None, "daemon exited"
            assert loop.time() < deadline, "daemon not connected in time"
            await asyncio.sleep(0.2)

    async def wait_metric(self, prefix: str, at_least: float, within_seconds: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        while (value := await asyncio.to_thread(self.metric_sum, prefix)) < at_least:
            assert loop.time() < deadline, f"{prefix} is {value}, expected >= {at_least}"
            await asyncio.sleep(0.2)

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


async def count(dsn: str, query: str) -> tuple[Any, ...]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(query)
        row = await cur.fetchone()
        assert row is not None
        return tuple(row)




def new_client_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    topic: str
    payload: bytes


async def _send_round(
    client: aiomqtt.Client, messages: Sequence[DeviceMessage], pending: Sequence[int],
    acknowledged: set[int], pace_per_second: float | None,
) -> None:
    """One connection's worth: at most PUBLISH_WINDOW messages awaiting their PUBACK."""
    loop = asyncio.get_running_loop()
    window = asyncio.Semaphore(PUBLISH_WINDOW)
    started = loop.time()

    async def send(index: int) -> None:
        try:
            message = messages[index]
            await client.publish(message.topic, message.payload, qos=1)
            acknowledged.add(index)
        finally:
            window.release()

    async with asyncio.TaskGroup() as tasks:
        for position, index in enumerate(pending):
            if pace_per_second is not None:
                due = started + position / pace_per_second
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
            await window.acquire()
            tasks.create_task(send(index))


async def publish_reliably(
    host: str, port: int, messages: Sequence[DeviceMessage], *, client_id: str,
    pace_per_second: float | None = None, give_up_seconds: float = 120.0,
) -> int:
    """Publish every message with QoS 1 the way a device must: a persistent session, and
    each message resent (after a reconnect if need be) until the broker has acknowledged
    it. A message may so reach the broker twice (PUBACK lost); the store's key
    (device_id, ts) keeps one row. Returns the number of messages acknowledged."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + give_up_seconds
    pending = list(range(len(messages)))
    acknowledged: set[int] = set()
    while pending:
        assert loop.time() < deadline, f"{len(pending)} messages never acknowledged"
        try:
            async with aiomqtt.Client(host, port, identifier=client_id, clean_session=False,
                                      max_inflight_messages=PUBLISH_WINDOW,
                                      timeout=5.0) as client:
                await _send_round(client, messages, pending, acknowledged, pace_per_second)
        except* (aiomqtt.MqttError, TimeoutError):
            await asyncio.sleep(PUBLISH_RETRY_SECONDS)  # the broker is away: resend the rest
        pending = [i for i in pending if i not in acknowledged]
        pace_per_second = None  # what is left goes out at once
    return len(acknowledged)


class AlertWatch:
    """Every message on emon/v1/alerts/#, kept as decoded JSON (a subscriber of the
    test's own with a persistent session, so a broker restart loses nothing for it)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.bodies: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._client_id = new_client_id("t-alert-watch")
        self.subscribed = asyncio.Event()

    async def __aenter__(self) -> AlertWatch:
        self._task = asyncio.create_task(self._run(), name="test-alert-watch")
        await asyncio.wait_for(self.subscribed.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self._client_id,
                                          clean_session=False) as client:
                    await client.subscribe("emon/v1/alerts/#", qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.bodies.append(json.loads(message.payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(PUBLISH_RETRY_SECONDS)


def report(fault: str, **counts: int | str) -> None:
    """The suite's "what was sent, what survived" line (pytest -s shows it; -rA too)."""
    sys.stdout.write(f"\n[fault] {fault}: " + ", ".join(f"{k}={v}" for k, v in counts.items())
                     + "\n")
