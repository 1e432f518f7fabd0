"""Benchmark: the load generator (`emon sim load`) against a real, private Mosquitto.

Prints, for this machine, the rate the generator reaches (QoS 1: messages the broker
acknowledged per second; QoS 0: messages handed to the connection), beside paho-mqtt's
publish rate in one process as the library baseline, and a run with a counting subscriber
that checks the broker delivers everything (and reports Mosquitto's dropped-message count).

    .venv/bin/python bench/load_generator.py [--seconds 20] [--rate 20000]

Mosquitto runs with max_queued_messages raised (daemon.localservices), so a lagging
subscriber does not silently lose messages. Numbers vary with the machine's other load:
run it on an otherwise idle machine and read the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import select
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from daemon.localservices import MosquittoProcess
from simulators.load import LoadPlan, LoadResult, run_load

BASELINE_MESSAGES = 100_000
CHECK_RATE = 5_000
PAYLOAD = b'{"ts":1700000000.0,"lat":22.54,"lon":114.05,"acc":8.0,"src":"gnss","batt":80}'


def paho_baseline(host: str, port: int, qos: int) -> float:
    """paho-mqtt publishing as fast as it can from one process, driven by its own
    non-threaded loop (the faster of its two ways: ~8-11k msg/s measured here, against
    ~0.5-1k msg/s for QoS 1 through `loop_start`'s network thread)."""
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{qos}")
    client.max_inflight_messages_set(65000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, port)
    sock = client.socket()
    start = time.perf_counter()
    sent = 0
    while acked < BASELINE_MESSAGES and time.perf_counter() - start < 120:
        if sent < BASELINE_MESSAGES and sent - acked < 5000:
            for _ in range(min(200, BASELINE_MESSAGES - sent)):
                client.publish(f"emon/v1/devices/d{sent % 1000}/location", PAYLOAD, qos=qos)
                sent += 1
        readable, writable, _ = select.select(
            [sock], [sock] if client.want_write() else [], [], 0
        )
        if writable:
            client.loop_write()
        if readable:
            client.loop_read(1000)
        client.loop_misc()
    elapsed = time.perf_counter() - start
    client.disconnect()
    return acked / elapsed


def _subscriber(host: str, port: int, counter: Any, dropped: Any, ready: Any, stop: Any) -> None:
    def on_message(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic.startswith("$SYS/"):
            with contextlib.suppress(ValueError):
                dropped.value = int(message.payload)
        else:
            counter.value += 1

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-counter")
    client.on_message = on_message
    client.connect(host, port)
    client.subscribe("emon/v1/devices/+/location", qos=0)
    client.subscribe("$SYS/broker/publish/messages/dropped", qos=0)
    client.loop_start()
    ready.set()
    stop.wait()
    time.sleep(1.0)
    client.loop_stop()
    client.disconnect()


def with_subscriber(host: str, port: int, plan: LoadPlan) -> tuple[LoadResult, int, int]:
    context = multiprocessing.get_context("spawn")
    counter, dropped = context.Value("q", 0, lock=False), context.Value("q", -1, lock=False)
    ready, stop = context.Event(), context.Event()
    process = context.Process(target=_subscriber,
                              args=(host, port, counter, dropped, ready, stop))
    process.start()
    ready.wait(30)
    result = run_load(plan, progress=None)
    stop.set()
    process.join(30)
    return result, int(counter.value), int(dropped.value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}")
    results: dict[str, Any] = {"cores": os.cpu_count(), "cpu": cpu, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="emon-bench-load-") as run_dir, \
            MosquittoProcess(Path(run_dir) / "mosquitto") as broker:
        host, port = broker.host, broker.port
        baseline = {qos: paho_baseline(host, port, qos) for qos in (1, 0)}
        for qos, rate in baseline.items():
            print(f"paho-mqtt, 1 process, QoS {qos}, as fast as it goes: {rate:>10,.0f} msg/s")
        results["paho_baseline"] = baseline

        runs = [
            ("QoS 1, 1 process, 8 connections, 5,000 devices", 1, 1, args.rate),
            ("QoS 1, 2 processes, 8 connections, 5,000 devices", 1, 2, args.rate),
            ("QoS 1, 1 process, ceiling (target 2x)", 1, 1, args.rate * 2),
            ("QoS 0, 1 process, ceiling (target 4x)", 0, 1, args.rate * 4),
        ]
        print(f"\n{'run':<52} {'steady msg/s':>12} {'x target':>9} {'x paho':>7}  behind")
        for label, qos, processes, rate in runs:
            plan = LoadPlan(host, port, devices=5000, connections=8, rate=rate,
                            duration_s=args.seconds, processes=processes, qos=qos)
            result = run_load(plan, progress=None)
            steady = result.steady_rate()
            print(f"{label:<52} {steady:>12,.0f} {steady / args.rate:>9.2f} "
                  f"{steady / baseline[qos]:>7.2f}  {result.behind:,}")
            results["runs"][label] = result.to_json()

        # A paho subscriber counts deliveries; it is itself the limit well below 20k/s on a
        # loaded 2-core machine, so this check runs at a rate it can follow.
        plan = LoadPlan(host, port, devices=5000, connections=8, rate=CHECK_RATE,
                        duration_s=args.seconds, processes=1, qos=1)
        result, delivered, dropped = with_subscriber(host, port, plan)
        print(f"\nwith a counting subscriber (QoS 0) at {CHECK_RATE:,} msg/s: generator "
              f"{result.steady_rate():,.0f} "
              f"msg/s steady, {result.acknowledged:,} acknowledged, {delivered:,} delivered "
              f"to the subscriber, Mosquitto dropped "
              f"{'(no $SYS report yet)' if dropped < 0 else dropped}")
        results["with_subscriber"] = {"result": result.to_json(), "delivered": delivered,
                                      "broker_dropped": dropped}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
