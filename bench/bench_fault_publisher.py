"""Benchmark: the fault suite's device-side publisher (tests/fault_harness.py, QoS 1,
persistent session, resend until acknowledged) against aiomqtt publishing the same
messages with the same window, both against a private Mosquitto.

Why it exists: the fault tests need a few thousand msg/s of QoS 1 with exact
acknowledgement tracking; aiomqtt reached ~1,200 msg/s here (and logs a warning for every
call beyond ten in flight), so the harness batches raw MQTT packets like
simulators/load.py does.

    .venv/bin/python bench/bench_fault_publisher.py [--messages 20000]

Prints messages per second for each and the ratio. The machine (2 cores, shared) is noisy:
read the ratio, and run it on an otherwise idle machine for absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.localservices import MosquittoProcess
from tests.fault_harness import PUBLISH_WINDOW, DeviceMessage, publish_reliably

PAYLOAD = b'{"ts":"2026-11-20T00:00:00+00:00","lat":22.54,"lon":114.05,"acc":8.0,"src":"gnss"}'


async def aiomqtt_rate(host: str, port: int, messages: list[DeviceMessage]) -> float:
    logging.getLogger("mqtt").setLevel(logging.ERROR)  # its "pending publish calls" warnings
    window = asyncio.Semaphore(PUBLISH_WINDOW)
    async with aiomqtt.Client(host, port, identifier="bench-aiomqtt",
                              max_inflight_messages=PUBLISH_WINDOW) as client:

        async def send(message: DeviceMessage) -> None:
            try:
                await client.publish(message.topic, message.payload, qos=1)
            finally:
                window.release()

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for message in messages:
                await window.acquire()
                tasks.create_task(send(message))
        return len(messages) / (time.perf_counter() - started)


async def harness_rate(host: str, port: int, messages: list[DeviceMessage]) -> float:
    started = time.perf_counter()
    acknowledged = await publish_reliably(host, port, messages, client_id="bench-harness")
    assert acknowledged == len(messages)
    return len(messages) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    messages = [DeviceMessage(f"emon/v1/devices/tag-{i % 200:05d}/location", PAYLOAD)
                for i in range(args.messages)]
    with tempfile.TemporaryDirectory() as directory:
        broker = MosquittoProcess(Path(directory) / "mosquitto")
        broker.start()
        try:
            harness = await harness_rate(broker.host, broker.port, messages)
            library = await aiomqtt_rate(broker.host, broker.port, messages)
        finally:
            broker.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"messages: {args.messages:,} QoS 1, window {PUBLISH_WINDOW}")
    print(f"fault harness publisher: {harness:>9,.0f} msg/s acknowledged")
    print(f"aiomqtt publish:         {library:>9,.0f} msg/s acknowledged")
    print(f"ratio: {harness / library:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
