"""Publish simulator messages to an MQTT broker, optionally paced against virtual time."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from typing import Final, TextIO

import aiomqtt

from simulators.scripted_day import SimMessage

_LOGGER = logging.getLogger(__name__)

QOS_AT_LEAST_ONCE: Final = 1
PROGRESS_INTERVAL_S: Final = 2.0
"""Wall-clock seconds between progress lines."""
PUBLISH_TIMEOUT_S: Final = 10.0
"""How long one publish may wait for the broker's PUBACK before the run fails."""


def encode_payload(payload: object) -> bytes:
    """Compact JSON, UTF-8: what a device puts on the wire."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _progress_line(count: int, total: int, last: SimMessage) -> str:
    """Count and virtual time; the device's own `ts` (local offset) when it has one."""
    ts = last.payload.get("ts")
    virtual = ts if isinstance(ts, str) else last.at.isoformat()
    return f"emon sim: published {count}/{total}, virtual time {virtual}\n"


async def publish(
    messages: Sequence[SimMessage],
    *,
    host: str,
    port: int,
    speed: float | None = None,
    client_id: str = "emon-sim",
    progress: bool = True,
    progress_stream: TextIO | None = None,
) -> int:
    """Publish `messages` in order with QoS 1 and return how many the broker acknowledged.

    With `speed`, message `i` is sent `(at_i - at_0) / speed` wall seconds after the first:
    virtual time runs `speed` times faster than wall time. With `speed=None` each message is
    sent as soon as the previous one is acknowledged. Progress lines (count, virtual time of
    the last message) go to stderr every ~2 s, and once at the end, unless `progress` is off.
    Raises `aiomqtt.MqttError` if the broker cannot be reached or stops acknowledging.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    stream = progress_stream if progress_stream is not None else sys.stderr
    total = len(messages)
    if total == 0:
        return 0

    loop = asyncio.get_running_loop()
    virtual_start = messages[0].at
    published = 0
    async with aiomqtt.Client(
        host, port, identifier=client_id, timeout=PUBLISH_TIMEOUT_S
    ) as client:
        _LOGGER.info("Connected to %s:%s, publishing %s messages", host, port, total)
        wall_start = loop.time()
        next_progress = wall_start + PROGRESS_INTERVAL_S
        for message in messages:
            if speed is not None:
                delay_s = (
                    wall_start + (message.at - virtual_start).total_seconds() / speed - loop.time()
                )
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
            await client.publish(
                message.topic, encode_payload(message.payload), qos=QOS_AT_LEAST_ONCE
            )
            published += 1
            if progress and loop.time() >= next_progress:
                stream.write(_progress_line(published, total, message))
                stream.flush()
                next_progress = loop.time() + PROGRESS_INTERVAL_S
        if progress:
            stream.write(_progress_line(published, total, messages[-1]))
            stream.flush()
    _LOGGER.info("Published %s messages in %.1f s", published, loop.time() - wall_start)
    return published


DEFAULT_INFLIGHT: Final = 200
"""QoS 1 publishes awaiting their PUBACK at once (the broker's inflight limit is higher)."""


async def publish_stream(
    messages: Iterable[SimMessage],
    *,
    host: str,
    port: int,
    speed: float | None = None,
    client_id: str = "emon-sim",
    progress: bool = True,
    progress_stream: TextIO | None = None,
    inflight: int = DEFAULT_INFLIGHT,
) -> int:
    """Publish a (possibly endless, lazily generated) stream in order with QoS 1.

    Like `publish`, but up to `inflight` messages await their PUBACK at once, so a fleet is
    not held to one broker round trip per message; they still leave in order on the one
    connection. Returns how many the broker acknowledged; raises `aiomqtt.MqttError`."""
    if inflight <= 0:
        raise ValueError(f"inflight must be positive, got {inflight}")
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")
    stream = progress_stream if progress_stream is not None else sys.stderr
    loop = asyncio.get_running_loop()
    window = asyncio.Semaphore(inflight)
    acknowledged = 0

    async with aiomqtt.Client(
        host, port, identifier=client_id, timeout=PUBLISH_TIMEOUT_S
    ) as client:
        # A full window of publishes awaiting PUBACK is intended, not a warning sign.
        client.pending_calls_threshold = inflight + 1

        async def send(message: SimMessage) -> None:
            nonlocal acknowledged
            try:
                await client.publish(
                    message.topic, encode_payload(message.payload), qos=QOS_AT_LEAST_ONCE
                )
                acknowledged += 1
            finally:
                window.release()

        wall_start = loop.time()
        next_progress = wall_start + PROGRESS_INTERVAL_S
        virtual_start = None
        last_count, last_wall = 0, wall_start
        async with asyncio.TaskGroup() as tasks:
            for index, message in enumerate(messages):
                if virtual_start is None:
                    virtual_start = message.at
                if speed is not None:
                    delay_s = (
                        wall_start
                        + (message.at - virtual_start).total_seconds() / speed
                        - loop.time()
                    )
                    if delay_s > 0:
                        await asyncio.sleep(delay_s)
                await window.acquire()
                tasks.create_task(send(message), name=f"emon-sim-publish-{index}")
                now = loop.time()
                if progress and now >= next_progress:
                    rate = (acknowledged - last_count) / (now - last_wall)
                    stream.write(
                        f"emon sim: published {acknowledged} ({rate:,.0f}/s), "
                        f"virtual time {message.at.isoformat(timespec='seconds')}\n"
                    )
                    stream.flush()
                    last_count, last_wall = acknowledged, now
                    next_progress = now + PROGRESS_INTERVAL_S
        if progress:
            elapsed_s = loop.time() - wall_start
            stream.write(f"emon sim: published {acknowledged} in {elapsed_s:.1f} s\n")
            stream.flush()
    return acknowledged
