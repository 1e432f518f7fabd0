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

from simulators.load import (
    DISCONNECT,
    MQTT_CONNACK,
    MQTT_PUBACK,
    _remaining_length,
    _str16,
    publish_packet,
)

REPO = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECONDS = 60.0
PUBLISH_RETRY_SECONDS = 0.5
# Publishes in flight per publisher connection (QoS 1, awaiting PUBACK).
PUBLISH_WINDOW = 200


def daemon_config(
    tmp_path: Path, client_id: str, settings_update: Callable[[dict[str, Any]], None] | None = None,
    source: Path = REPO / "config",
) -> Path:
    """A copy of `source` (the repo's config) with a client id of this test's own (and
    `settings_update` applied to settings.yaml)."""
    directory = tmp_path / "config"
    shutil.copytree(source, directory)
    settings_path = directory / "settings.yaml"
    settings = yaml.safe_load(settings_path.read_text(encoding="utf-8"))
    settings.setdefault("mqtt", {})["client_id"] = client_id
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


class _ReliablePublisher(asyncio.Protocol):
    """MQTT 3.1.1 QoS 1 publishing over one connection, batched per write like
    simulators/load.py's generator (aiomqtt manages about a twentieth of its rate here,
    bench/bench_fault_publisher.py, and logs a warning per call beyond ten in flight);
    tracks which packet ids the broker acknowledged."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = asyncio.Event()
        self.inflight: dict[int, int] = {}  # packet id -> message index
        self.acked: list[int] = []
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed before CONNACK"))
        self.lost.set()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 2:
            kind, length = self._buffer[0] >> 4, self._buffer[1]  # CONNACK, PUBACK: 2 bytes
            if len(self._buffer) < 2 + length:
                return
            body = bytes(self._buffer[2 : 2 + length])
            del self._buffer[: 2 + length]
            if kind == MQTT_CONNACK and not self.connected.done():
                if body[1:] == b"\x00":
                    self.connected.set_result(None)
                else:
                    self.connected.set_exception(ConnectionError(f"CONNACK {body!r}"))
            elif kind == MQTT_PUBACK:
                index = self.inflight.pop(int.from_bytes(body[:2], "big"), None)
                if index is not None:
                    self.acked.append(index)


def _connect_persistent(client_id: str) -> bytes:
    """CONNECT with clean session off (a device's session survives its reconnects)."""
    body = _str16("MQTT") + bytes([4, 0x00]) + (60).to_bytes(2, "big") + _str16(client_id)
    return bytes([0x10]) + _remaining_length(len(body)) + body


async def _publish_round(
    host: str, port: int, client_id: str, messages: Sequence[DeviceMessage],
    pending: list[int], acknowledged: set[int], pace_per_second: float | None,
) -> None:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(_ReliablePublisher, host, port), 5.0
    )
    assert protocol.transport is not None
    transport = protocol.transport
    try:
        transport.write(_connect_persistent(client_id))
        await asyncio.wait_for(protocol.connected, 5.0)
        started, position, next_id = loop.time(), 0, 0
        while position < len(pending) or protocol.inflight:
            if protocol.lost.is_set():
                raise ConnectionError("connection lost")
            due = len(pending) if pace_per_second is None else int(
                (loop.time() - started) * pace_per_second) + 1
            batch = bytearray()
            while (position < min(due, len(pending))
                   and len(protocol.inflight) < PUBLISH_WINDOW):
                index = pending[position]
                next_id = next_id % 65535 + 1
                message = messages[index]
                protocol.inflight[next_id] = index
                batch += publish_packet(_str16(message.topic), message.payload, 1, next_id)
                position += 1
            if batch:
                transport.write(bytes(batch))
            await asyncio.sleep(0.002)
            acknowledged.update(protocol.acked)
            protocol.acked.clear()
        transport.write(DISCONNECT)
    finally:
        acknowledged.update(protocol.acked)
        transport.close()


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
            await _publish_round(host, port, client_id, messages, pending, acknowledged,
                                 pace_per_second)
        except (OSError, ConnectionError, TimeoutError):
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
