"""Fault: handling one message raises unexpectedly (a bug in the pipeline, an observation
the store cannot take). The reader must go on: the message is logged with the exception's
type and frames (no coordinates), counted in `emon_messages_failed_total{stage}`,
dead-lettered with reason `internal_error`, and acknowledged only once that dead letter is
with the broker; the next message is handled and stored.

The failure is injected by wrapping the running daemon's pipeline (the daemon in the
test's own loop, real Mosquitto, real PostgreSQL). A second daemon on the same persistent
session then proves the failed message was acknowledged: the broker does not deliver it
again (if it did, the unwrapped pipeline would store it)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from daemon.localservices import MosquittoProcess
from daemon.pipeline import Pipeline
from tests.daemon_helpers import daemon_config, metric, running_daemon
from tests.test_log_privacy import leaks, log_texts

pytestmark = [pytest.mark.fault, pytest.mark.services]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
DEVICE = "tag-s001"
TOPIC = f"emon/v1/devices/{DEVICE}/location"
LAT, LON = 22.543219, 114.057781
WAIT_SECONDS = 20.0


def fix(at: datetime) -> bytes:
    return json.dumps(
        {"ts": at.isoformat(), "lat": LAT, "lon": LON, "acc": 8.0, "src": "gnss", "batt": 80}
    ).encode()


def reader_config(mosquitto: MosquittoProcess, pg_dsn: str) -> Any:
    mqtt = {"host": mosquitto.host, "port": mosquitto.port,
            "client_id": f"emon-fault-reader-{uuid.uuid4().hex[:8]}"}
    return daemon_config(CONFIG_DIR, dsn=pg_dsn, mqtt=mqtt)


def poison(pipeline: Pipeline, fails: Callable[[str, bytes], bool]) -> None:
    """Make the pipeline raise for the messages `fails` picks (the exception text quotes
    the payload, as a careless one would); every other message is handled as usual."""
    original = pipeline.handle

    def poisoned(
        topic: str,
        payload: bytes,
        received_at: datetime,
        future_reference: datetime | None = None,
    ) -> Any:
        if fails(topic, payload):
            raise RuntimeError(f"injected failure for {payload!r}")
        return original(topic, payload, received_at, future_reference)

    pipeline.handle = poisoned  # type: ignore[method-assign]


async def stored_pings(dsn: str) -> list[datetime]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT ts FROM pings WHERE device_id = %s ORDER BY ts", (DEVICE,))
        return [row[0] for row in await cur.fetchall()]


async def until(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not await predicate():
        assert loop.time() < deadline, f"{what} not reached in {WAIT_SECONDS} s"
        await asyncio.sleep(0.1)


async def test_a_message_whose_handling_raises_is_dead_lettered_and_the_next_is_stored(
    mosquitto: MosquittoProcess, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    loaded = reader_config(mosquitto, pg_dsn)
    now = datetime.now(UTC).replace(microsecond=0)
    poisoned_at, good_at = now - timedelta(seconds=20), now - timedelta(seconds=10)
    failed_before = metric("emon_messages_failed_total", stage="evaluate")

    async with aiomqtt.Client(mosquitto.host, mosquitto.port,
                              identifier=f"t-watch-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(f"emon/v1/deadletter/{DEVICE}", qos=1)
        async with running_daemon(loaded) as daemon:
            poison(daemon._pipeline,
                   lambda _topic, payload: poisoned_at.isoformat().encode() in payload)
            await client.publish(TOPIC, fix(poisoned_at), qos=1)
            await client.publish(TOPIC, fix(good_at), qos=1)
            await until(lambda: _true_if(stored_pings(pg_dsn), [good_at]), "the good fix stored")
            async with asyncio.timeout(WAIT_SECONDS):
                letter = await anext(aiter(client.messages))
            # Acknowledged once the dead letter was with the broker and the writer caught
            # up: wait for the acks queue to drain before stopping.
            await until(_async(lambda: metric("emon_queue_depth", queue="acks") == 0), "acks")

    assert isinstance(letter.payload, bytes)
    body = json.loads(letter.payload)
    assert (body["reason"], body["topic"]) == ("internal_error", TOPIC)
    assert body["detail"] == "RuntimeError at evaluate"
    assert metric("emon_messages_failed_total", stage="evaluate") - failed_before == 1
    failures = [r for r in caplog.records if "dead-lettered as internal_error" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.ERROR
    assert "RuntimeError" in failures[0].getMessage()
    assert leaks(log_texts(caplog), [LAT, LON], []) == []
    print(f"\nsent 2 fixes; stored {len(await stored_pings(pg_dsn))}; dead-lettered 1")

    # The same persistent session again, with the real pipeline: had the poisoned message
    # not been acknowledged, the broker would deliver it now and it would be stored.
    async with running_daemon(loaded):
        await client_roundtrip(mosquitto, now)
        await until(lambda: _true_if(stored_pings(pg_dsn), [good_at, now]), "the marker fix")
    assert await stored_pings(pg_dsn) == [good_at, now]


async def client_roundtrip(mosquitto: MosquittoProcess, at: datetime) -> None:
    """A marker fix after the restart: once it is stored, anything redelivered ahead of it
    (same device, same session queue) has been handled too."""
    async with aiomqtt.Client(mosquitto.host, mosquitto.port,
                              identifier=f"t-pub-{uuid.uuid4().hex[:8]}") as client:
        await client.publish(TOPIC, fix(at), qos=1)


async def _true_if(rows: Any, expected: list[datetime]) -> bool:
    return bool(await rows == expected)


def _async(check: Any) -> Any:
    async def run() -> bool:
        return bool(check())
    return run


async def test_a_protected_persons_message_that_raises_is_counted_and_dropped_unlogged(
    mosquitto: MosquittoProcess, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 5: a protected person's position is never stored, dead-lettered or logged;
    the guard keeps to that: counted, logged without the topic or the position, dropped."""
    caplog.set_level(logging.INFO)
    protected_id = "v-fault-test"
    protected_topic = f"emon/v1/protected/{protected_id}/location"
    loaded = reader_config(mosquitto, pg_dsn)
    failed_before = metric("emon_messages_failed_total", stage="evaluate")
    async with aiomqtt.Client(mosquitto.host, mosquitto.port,
                              identifier=f"t-watch-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe("emon/v1/deadletter/#", qos=1)
        async with running_daemon(loaded) as daemon:
            poison(daemon._pipeline, lambda topic, _payload: topic == protected_topic)
            await client.publish(protected_topic, fix(datetime.now(UTC)), qos=1)
            await until(_async(lambda: metric("emon_messages_failed_total", stage="evaluate")
                               - failed_before == 1), "the failure counted")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await anext(aiter(client.messages))  # no dead letter
    texts = log_texts(caplog)
    assert any("protected person's message failed" in t for t in texts)
    assert not [t for t in texts if protected_id in t]
    assert leaks(texts, [LAT, LON], []) == []
